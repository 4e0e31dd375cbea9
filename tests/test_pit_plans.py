"""The PIT plan per view: measured shapes in the registry, the automatic choice, `@pit_plan`, and the
per-call override, on the example project. Every plan gives the same training set (the plans
themselves are checked against the brute-force reference in test_pit_property.py)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

import fsql
from fsql.cli import app
from fsql.errors import FsqlError
from tests.example_reference import data_time
from tests.projects import example_project


@pytest.fixture
def project(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return example_project(tmp_path / "proj", tmp_path_factory.getbasetemp())


def expected_shape(store: fsql.Store, view: str) -> dict[str, float]:
    """The shape computed in polars from the view's rows."""
    ts = store._ctx.definitions().views[view].timestamp
    rows = store.query(f"SELECT customer_id, {ts} AS event_ts FROM {view}").drop_nulls()
    per = rows.group_by("customer_id").agg(pl.len().alias("n"), pl.col("event_ts").n_unique().alias("d"))
    return {
        "rows": rows.height,
        "entities": per.height,
        "events_mean": per["n"].mean(),
        "events_p99": per["n"].cast(pl.Float64).quantile(0.99, interpolation="linear"),
        "span_seconds": (rows["event_ts"].max() - rows["event_ts"].min()).total_seconds(),
        "tie_share": 1 - per["d"].sum() / rows.height,
    }


def test_build_measures_every_view_and_compile_names_each_plan(project: Path) -> None:
    with fsql.Store(project) as store:
        store.build()
        shapes = store._ctx.registry.view_shapes()
        assert set(shapes) == set(store._ctx.definitions().views)  # with or without a TTL
        for name in ("customer_spend", "order_amount_usd", "customer_profile"):
            measured, want = shapes[name], expected_shape(store, name)
            for field, value in want.items():
                assert getattr(measured, field) == pytest.approx(value, rel=1e-9), (name, field)
        sql = store.compile("churn")
    notes = [line for line in sql.splitlines() if line.startswith("/* PIT plan for ")]
    assert notes[0].startswith("/* PIT plan for customer_spend: range: ~") or \
        notes[0].startswith("/* PIT plan for customer_spend: asof: ~"), notes
    # a few profile versions per customer: without a TTL the range join takes the whole short history
    profile = shapes["customer_profile"]
    assert profile.events_mean < 4 and profile.events_p99 < 8
    want = f"range: no TTL, ~{profile.events_mean:.1f} rows per entity, p99 ~{profile.events_p99:.0f}"
    assert f"/* PIT plan for customer_profile: {want} */" in notes, notes
    assert len(notes) == 3  # customer_spend, customer_value, customer_profile


def test_a_view_annotation_and_a_call_override_the_choice_with_the_same_rows(project: Path) -> None:
    path = project / "features" / "customer_profile.sql"
    path.write_text(path.read_text().replace("-- @entity customer\n", "-- @entity customer\n-- @pit_plan range\n"))
    t = data_time(project).replace(tzinfo=None)
    spine = pl.DataFrame({"customer_id": list(range(1, 301)) * 2,
                          "ts": [t] * 300 + [t - timedelta(days=20)] * 300})
    features = ["customer_spend.spend_30d", "customer_profile.age", "customer_value.high_spender"]
    with fsql.Store(project) as store:
        store.build()
        sql = store.compile("churn")
        assert "/* PIT plan for customer_profile: range: @pit_plan of the view" in sql
        forced = store.compile("churn", plan="asof")
        assert forced.count("asof: requested for this call") == 3
        auto = store.training_set(features=features, spine=spine, timestamp="ts")
        assert auto["age"].null_count() < 300 and auto["spend_30d"].null_count() < 600
        for plan in ("asof", "range", "timeline", "lateral"):
            for mode in ("known-at", "event-time"):
                got = store.training_set(features=features, spine=spine, timestamp="ts", plan=plan, pit_mode=mode)
                want = store.training_set(features=features, spine=spine, timestamp="ts", pit_mode=mode)
                assert got.equals(want), (plan, mode)
        # the annotation is metadata: the view keeps its version, the registry its definition
        path.write_text(path.read_text().replace("-- @pit_plan range\n", "-- @pit_plan asof\n"))
        result = store.build()
        change = next(c for c in result.changes if c.name == "customer_profile")
        assert change.action == "updated" and "pit_plan changed" in change.reasons
        assert "/* PIT plan for customer_profile: asof: @pit_plan of the view" in store.compile("churn")
        # the same file compiled for an engine without ASOF joins falls back to the automatic choice
        assert ("/* PIT plan for customer_profile: range: no TTL, ~1.7 rows per entity, p99 ~3 "
                "(@pit_plan asof is not available on postgres)" in store.compile("churn", "postgres"))


def test_bad_plans_are_refused_where_they_are_written(project: Path) -> None:
    path = project / "features" / "customer_profile.sql"
    path.write_text(path.read_text().replace("-- @entity customer\n", "-- @entity customer\n-- @pit_plan fastest\n"))
    with fsql.Store(project) as store, pytest.raises(FsqlError, match="unknown PIT plan 'fastest'") as error:
        store.build()
    assert "customer_profile.sql:" in str(error.value)
    result = CliRunner().invoke(app, ["compile", "churn", "--plan", "quick", "-p", str(project)])
    assert result.exit_code != 0 and "unknown PIT plan 'quick'" in result.output


def test_the_spine_size_takes_part_in_the_choice_and_in_the_cached_sql(project: Path) -> None:
    """A small spine joins few rows in a range join; a spine as large as the history makes the ASOF
    plan cheaper. Each size gets its own compiled SQL, and both give the rows of the forced plans."""
    t = data_time(project).replace(tzinfo=None)
    features = ["customer_spend.spend_30d"]
    with fsql.Store(project) as store:
        store.build()
        history = store._ctx.registry.view_shapes()["customer_spend"].rows
        small = pl.DataFrame({"customer_id": [1, 2, 3], "ts": [t] * 3})
        large = pl.DataFrame({"customer_id": [i % 500 + 1 for i in range(history)], "ts": [t] * history})
        auto = [store.training_set(features=features, spine=spine, timestamp="ts") for spine in (small, large)]
        chosen = {plan for key in store._ctx._compiled[1] for view, plan, *_ in key[4] if view == "customer_spend"}
        for spine, got in zip((small, large), auto, strict=True):
            for plan in ("asof", "range"):
                assert got.equals(store.training_set(features=features, spine=spine, timestamp="ts", plan=plan))
    assert chosen == {"range", None}, chosen  # None: the engine's default (ASOF on DuckDB)


def _deep_project(root: Path, events: pl.DataFrame) -> None:
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "features").mkdir(exist_ok=True)
    events.write_parquet(root / "data" / "events.parquet")
    (root / "fsql.toml").write_text(
        '[project]\nname = "deep"\ndialect = "duckdb"\n\n'
        '[warehouse]\nengine = "duckdb"\npath = ".fsql/warehouse.duckdb"\nschema = "fsql"\n\n'
        '[online]\nstore = "sqlite"\npath = ".fsql/online.db"\n\n'
        '[registry]\nurl = "sqlite:///.fsql/registry.db"\n\n'
        '[entities.customer]\nkeys = ["customer_id"]\n\n'
        '[sources.events]\npath = "data/events.parquet"\n\n[sources.labels]\npath = "data/labels.parquet"\n'
    )
    (root / "features" / "ev.sql").write_text(
        "-- @feature_view ev\n-- @entity customer\n-- @timestamp event_ts\n-- @created loaded_at\n"
        "SELECT customer_id, event_ts, loaded_at, amount FROM events\n"
    )
    (root / "features" / "labelled.sql").write_text(
        "-- @training_set labelled\n-- @timestamp label_ts\n-- @features ev.amount\n"
        "SELECT customer_id, label_ts FROM labels\n"
    )


def test_tie_free_views_skip_the_tie_check_until_their_files_change(tmp_path: Path) -> None:
    """A deep view whose measured history has one row per (key, event time) takes the winner from the
    ASOF join itself (event-time matching only). Rewriting the source file with a tie at a winning time
    must bring the tie check back at the very next call, in the same session: the tie order's winner
    (the later created time) is returned, not whichever tied row the ASOF join happens to match."""
    from datetime import datetime

    t0 = datetime(2024, 1, 1)
    rows = [(c, t0 + timedelta(hours=3 * i), t0 + timedelta(hours=3 * i, minutes=5), float(100 * c + i))
            for c in range(1, 9) for i in range(40)]
    events = pl.DataFrame(rows, schema=["customer_id", "event_ts", "loaded_at", "amount"], orient="row")
    root = tmp_path / "deep"
    _deep_project(root, events)
    labels = pl.DataFrame({"customer_id": [1, 2, 3], "label_ts": [t0 + timedelta(hours=30, minutes=30)] * 3})
    labels.write_parquet(root / "data" / "labels.parquet")
    with fsql.Store(root) as store:
        store.build()
        assert store._ctx.registry.view_shapes()["ev"].tie_share == 0
        assert "no tie check" in store.compile("labelled", mode="event-time")
        assert "no tie check" not in store.compile("labelled")  # known-at: matched on the created time
        with store.session():
            first = store.training_set("labelled", spine=labels, pit_mode="event-time")
            assert first["amount"].to_list() == [110.0, 210.0, 310.0]  # the row at hour 30 of each

            # customers 2 and 3 get a second row at hour 30, created later: it wins in the tie order
            # (one written before the original row, one after, so no file order picks both by chance)
            def tie(customer: int) -> pl.DataFrame:
                return pl.DataFrame([(customer, t0 + timedelta(hours=30), t0 + timedelta(hours=30, minutes=9),
                                      float(customer))], schema=events.schema, orient="row")

            pl.concat([tie(2), events, tie(3)]).write_parquet(root / "data" / "events.parquet")
            again = store.training_set("labelled", spine=labels, pit_mode="event-time")
            assert again["amount"].to_list() == [110.0, 2.0, 3.0]
            for plan in ("range", "timeline"):
                assert store.training_set("labelled", spine=labels, pit_mode="event-time", plan=plan).equals(again)
        assert "no tie check" not in store.compile("labelled", mode="event-time")
        # a build measures the rewritten history again: it has ties now, so the check stays
        store.build()
        assert store._ctx.registry.view_shapes()["ev"].tie_share > 0
        assert "no tie check" not in store.compile("labelled", mode="event-time")
        # and a history without ties again is trusted again once measured
        events.write_parquet(root / "data" / "events.parquet")
        store.build()
        assert "no tie check" in store.compile("labelled", mode="event-time")
        assert store.training_set("labelled", spine=labels, pit_mode="event-time").equals(first)
