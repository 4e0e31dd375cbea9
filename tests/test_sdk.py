"""The SDK facade on the example project: spines of every kind give the same training set."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pandas as pd
import polars as pl
import pyarrow.parquet as pq
import pytest
import redis

import fsql
from fsql.errors import FsqlError
from tests.conftest import REDIS_URL
from tests.example_reference import connect, data_time, pit_sql
from tests.projects import example_project


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> fsql.Store:
    project = example_project(tmp_path_factory.mktemp("sdk") / "proj", tmp_path_factory.getbasetemp())
    store = fsql.Store(project)
    store.build()
    yield store
    store.close()


def test_spines_of_every_kind_agree(store: fsql.Store) -> None:
    labels = pl.from_arrow(pq.read_table(store.config.root / "data" / "churn_labels.parquet"))
    labels = labels.filter(pl.col("label_ts") >= pl.datetime(2026, 2, 1))
    from_set = store.training_set("churn")
    from_polars = store.training_set("churn", spine=labels)
    from_pandas = store.training_set("churn", spine=labels.to_pandas())
    from_arrow = store.training_set("churn", spine=labels.to_arrow())
    from_sql = store.training_set(
        "churn", spine="SELECT customer_id, label_ts, churned FROM churn_labels WHERE label_ts >= TIMESTAMP '2026-02-01'"
    )
    assert from_polars.height == labels.height
    # DataFrame spines keep their row order exactly; the spine columns come back unchanged.
    assert from_polars.select(labels.columns).equals(labels)
    assert from_pandas.equals(from_polars) and from_arrow.equals(from_polars)
    key = ["customer_id", "label_ts", "churned"]
    for other in (from_set, from_sql):
        assert other.sort(key).equals(from_polars.sort(key))
    assert from_polars.columns == [
        "customer_id", "label_ts", "churned", "spend_30d", "orders_30d", "avg_order_value_30d", "country", "segment", "age",
    ]


def reference_training_set(store: fsql.Store, spine: pl.DataFrame, timestamp: str,
                           features: list[tuple[str, str, str]], mode: str = "known-at") -> list[dict]:
    """The training set by tests/example_reference.py, in spine order (the spine needs a column ``i``)."""
    con = connect(store.config.root, warehouse=False)
    try:
        con.register("spine_frame", spine.to_arrow())
        query = pit_sql("SELECT * FROM spine_frame", spine.columns, timestamp, features, mode)
        rows = con.sql(query).pl().sort("i").to_dicts()
    finally:
        con.close()
    return rows


def test_ad_hoc_features_and_name_collisions(store: fsql.Store) -> None:
    t = data_time(store.config.root).replace(tzinfo=None)
    ids = [1, 2, 3, 42, 2050, 3000]  # 2050: only labels, no history; 3000: unknown
    spine = pd.DataFrame({"customer_id": ids, "ts": [t - timedelta(days=d) for d in range(len(ids))],
                          "i": range(len(ids))})
    frame = store.training_set(
        features=["customer_spend.spend_30d", "customer_value.*", "customer_profile.age"], spine=spine, timestamp="ts"
    )
    assert frame.columns == ["customer_id", "ts", "i", "spend_30d", "avg_order_value_30d", "high_spender", "age"]
    expected = reference_training_set(store, pl.from_pandas(spine), "ts", [
        ("customer_spend", "spend_30d", "spend_30d"), ("customer_value", "avg_order_value_30d", "avg_order_value_30d"),
        ("customer_value", "high_spender", "high_spender"), ("customer_profile", "age", "age")])
    assert frame.to_dicts() == expected
    assert frame["age"].null_count() < len(ids) and frame["spend_30d"].null_count() < len(ids)
    # A feature named like a spine column is prefixed with its view; the spine column is untouched.
    clash = store.training_set(features=["customer_profile.age"], spine=spine.assign(age=-1), timestamp="ts")
    assert clash.columns == ["customer_id", "ts", "i", "age", "customer_profile__age"]
    assert clash["age"].to_list() == [-1] * len(ids)
    assert clash["customer_profile__age"].to_list() == [r["age"] for r in expected]


def test_event_time_mode_can_see_late_rows(store: fsql.Store) -> None:
    late = store.query(
        "SELECT customer_id, event_ts, loaded_at, spend_30d FROM customer_spend "
        "WHERE loaded_at > event_ts + INTERVAL 1 DAY ORDER BY event_ts, customer_id LIMIT 20"
    )
    assert late.height == 20
    spine = late.select("customer_id", pl.col("event_ts").alias("ts"), pl.int_range(pl.len()).alias("i"))
    features = [("customer_spend", "spend_30d", "spend_30d")]
    known = store.training_set(features=["customer_spend.spend_30d"], spine=spine, timestamp="ts")
    feast = store.training_set(features=["customer_spend.spend_30d"], spine=spine, timestamp="ts", pit_mode="event-time")
    assert known.to_dicts() == reference_training_set(store, spine, "ts", features, "known-at")
    assert feast.to_dicts() == reference_training_set(store, spine, "ts", features, "event-time")
    # At its own event time a late row is not known yet: event-time mode serves it, known-at cannot.
    assert feast["spend_30d"].to_list() == late["spend_30d"].to_list()
    assert all(k != f for k, f in zip(known["spend_30d"].to_list(), feast["spend_30d"].to_list(), strict=True))


def test_feature_views_and_query(store: fsql.Store) -> None:
    views = {v.name: v for v in store.feature_views()}
    assert sorted(views) == ["customer_merchant_stats", "customer_profile", "customer_spend", "customer_value",
                             "order_amount_usd"]
    spend = views["customer_spend"]
    assert (spend.entity, spend.entity_keys, spend.timestamp, spend.created, spend.ttl) == (
        "customer", ("customer_id",), "event_ts", "loaded_at", timedelta(days=30))
    assert (spend.owner, spend.tags) == ("growth-team", ("orders", "finance"))
    assert spend.description == "Trailing spend statistics per customer, one row per order."
    assert [(c.name, c.dtype, c.description) for c in spend.features] == [
        ("spend_30d", "DOUBLE", "total spend over the trailing 30 days"),
        ("orders_30d", "BIGINT", "number of orders over the trailing 30 days"),
    ]
    merchant = views["customer_merchant_stats"]
    assert merchant.entity_keys == ("customer_id", "merchant_id") and merchant.ttl == timedelta(days=90)
    assert merchant.created is None and merchant.feature_names == ("merchant_orders_90d", "merchant_avg_amount_90d")
    assert views["customer_value"].depends_on == ("customer_spend",)
    assert [s.name for s in store.training_sets()] == ["churn"]
    # Plain SQL over the generated views, checked against the raw file.
    got = store.query("SELECT country, count(*) AS n, max(age) AS oldest FROM customer_profile GROUP BY country")
    raw = pl.read_parquet(store.config.root / "data" / "customers.parquet")
    want = raw.group_by("country").agg(pl.len().cast(pl.Int64).alias("n"), pl.col("age").max().alias("oldest"))
    assert got.sort("country").to_dicts() == want.sort("country").to_dicts()
    assert got["n"].sum() == raw.height


def test_bad_requests_are_clear(store: fsql.Store) -> None:
    spine = pl.DataFrame({"customer_id": [1]})
    with pytest.raises(FsqlError, match="the spine has no column 'ts'"):
        store.training_set(features=["customer_spend.spend_30d"], spine=spine, timestamp="ts")
    with pytest.raises(FsqlError, match="has no feature 'spend'; did you mean 'spend_30d'"):
        store.training_set(features=["customer_spend.spend"], spine=spine, timestamp="ts")
    with pytest.raises(FsqlError, match="no training set named 'chrun'; did you mean 'churn'"):
        store.training_set("chrun")
    with pytest.raises(FsqlError, match="unknown PIT mode"):
        store.training_set("churn", pit_mode="sometimes")  # type: ignore[arg-type]


@pytest.fixture
def project(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return example_project(tmp_path / "proj", tmp_path_factory.getbasetemp())


def test_store_reads_sections_overrides(project: Path, redis_prefix: str) -> None:
    """``Store(root, online={...})`` materializes into and reads from the overriding store."""
    t = data_time(project)
    ids = list(range(1, 401))
    refs = ["customer_spend.spend_30d", "customer_spend.orders_30d"]
    with fsql.Store(project, online={"store": "redis", "url": REDIS_URL, "prefix": redis_prefix}) as store:
        assert store.config.online.store == "redis"
        store.build()
        assert [r.outcome for r in store.materialize(["customer_spend"], end=t)] == ["success"]
        online = store.online(refs, entities={"customer_id": ids}, now=t)
        spine = pl.DataFrame({"customer_id": ids, "ts": [t] * len(ids)})
        offline = store.training_set(features=refs, spine=spine, timestamp="ts")
    columns = ["customer_id", "spend_30d", "orders_30d"]
    assert online.columns == ["customer_id", "spend_30d", "spend_30d__status", "orders_30d", "orders_30d__status"]
    assert online.select(columns).equals(offline.select(columns))
    statuses = online["spend_30d__status"].to_list()
    assert statuses.count("present") > 50 and set(statuses) <= {"present", "stale", "missing"}
    assert [s == "present" for s in statuses] == [v is not None for v in offline["spend_30d"].to_list()]
    client = redis.Redis.from_url(REDIS_URL)
    try:
        stored = list(client.scan_iter(match=f"{redis_prefix}:customer_spend:*", count=1000))
    finally:
        client.close()
    assert len(stored) >= statuses.count("present")
    # The project's own online store (SQLite) was never written.
    with fsql.Store(project) as plain:
        assert plain.config.online.store == "sqlite"
        assert set(plain.online(refs, entities={"customer_id": ids}, now=t)["spend_30d__status"]) == {"missing"}


def test_online_right_after_a_rebuild_serves_the_new_version(project: Path) -> None:
    """The same Store reads online values, rebuilds a changed view, and reads again at once: the
    definitions it caches for online reads never serve the old version's values."""
    t = data_time(project)
    ids = list(range(1, 201))
    entities = {"customer_id": ids}
    with fsql.Store(project) as store:
        store.build()
        store.materialize(["customer_profile"], end=t)
        before = store.online("customer_profile", entities, now=t)
        assert before["age__status"].to_list().count("present") > 100
        path = project / "features" / "customer_profile.sql"
        path.write_text(path.read_text().replace("    age        --", "    age + 1000 AS age  --"))
        assert store.build().built
        after = store.online("customer_profile", entities, now=t)
        assert set(after["age__status"]) == {"not_materialized"}, "served values of the old version"
        store.materialize(["customer_profile"], end=t)
        again = store.online("customer_profile", entities, now=t)
    assert again["age__status"].to_list() == before["age__status"].to_list()
    assert again["age"].to_list() == [a + 1000 if a is not None else None for a in before["age"].to_list()]


def test_online_in_another_store_right_after_a_rebuild_serves_the_new_version(project: Path) -> None:
    t = data_time(project)
    entities = {"customer_id": list(range(1, 201))}
    with fsql.Store(project) as reader, fsql.Store(project) as builder:
        builder.build()
        builder.materialize(["customer_profile"], end=t)
        assert "present" in reader.online("customer_profile", entities, now=t)["age__status"].to_list()
        path = project / "features" / "customer_profile.sql"
        path.write_text(path.read_text().replace("    age        --", "    age + 1000 AS age  --"))
        assert builder.build().built
        # the new version was never materialized: nothing of the old one is served
        assert set(reader.online("customer_profile", entities, now=t)["age__status"]) == {"not_materialized"}


def _age_spine(project: Path) -> pl.DataFrame:
    t = data_time(project).replace(tzinfo=None)
    return pl.DataFrame({"customer_id": list(range(1, 51)), "ts": [t] * 50})


def test_training_sets_in_a_loop_see_a_build_by_another_process_at_once(project: Path) -> None:
    """Training sets reuse the registry read and the compiled SQL between calls, yet a build made by
    another process (which this process's write counter cannot see) is used by the very next call."""
    import os
    import subprocess
    import sys

    spine = _age_spine(project)
    with fsql.Store(project) as store:
        store.build()
        before = store.training_set(features=["order_amount_usd.amount_usd"], spine=spine, timestamp="ts")
        again = store.training_set(features=["order_amount_usd.amount_usd"], spine=spine, timestamp="ts")
        assert again.equals(before)
        path = project / "features" / "order_amount_usd.sql"
        path.write_text(path.read_text().replace("AS amount_usd,", "* 2 AS usd,"))
        root = Path(__file__).resolve().parent.parent
        built = subprocess.run([sys.executable, "-m", "fsql.cli", "build"], cwd=project, capture_output=True,
                               text=True, env={**os.environ, "PYTHONPATH": str(root)}, timeout=300)
        assert built.returncode == 0, built.stdout + built.stderr
        after = store.training_set(features=["order_amount_usd.usd"], spine=spine, timestamp="ts")
        with pytest.raises(FsqlError, match="has no feature 'amount_usd'"):
            store.training_set(features=["order_amount_usd.amount_usd"], spine=spine, timestamp="ts")
    assert before["amount_usd"].null_count() < spine.height
    assert after["usd"].to_list() == [a * 2 if a is not None else None for a in before["amount_usd"].to_list()]


def test_compiled_sql_is_reused_only_for_the_same_request_shape(project: Path) -> None:
    """Spines of other columns or types, other features, modes and plans each get their own SQL."""
    spine = _age_spine(project)
    with fsql.Store(project) as store:
        store.build()
        base = store.training_set(features=["customer_profile.age"], spine=spine, timestamp="ts")
        wider = store.training_set(features=["customer_profile.age"], spine=spine.with_columns(x=pl.lit("a")),
                                   timestamp="ts")
        assert wider.columns == ["customer_id", "ts", "x", "age"] and wider["age"].equals(base["age"])
        renamed = store.training_set(features=["customer_profile.age"], spine=spine.rename({"ts": "at"}),
                                     timestamp="at")
        assert renamed.columns == ["customer_id", "at", "age"] and renamed["age"].equals(base["age"])
        other = store.training_set(features=["customer_profile.segment"], spine=spine, timestamp="ts")
        assert other.columns == ["customer_id", "ts", "segment"]
        for plan in ("asof", "range", "timeline", "lateral"):
            forced = store.training_set(features=["customer_profile.age"], spine=spine, timestamp="ts", plan=plan)
            assert forced.equals(base), plan
        with pytest.raises(FsqlError, match="unknown PIT plan 'fast'"):
            store.training_set(features=["customer_profile.age"], spine=spine, timestamp="ts", plan="fast")  # type: ignore[arg-type]


def test_a_session_holds_the_warehouse_for_reads_and_refuses_writes(project: Path) -> None:
    spine = _age_spine(project)
    with fsql.Store(project) as store:
        store.build()
        with store.session():
            first = store.training_set(features=["customer_profile.age"], spine=spine, timestamp="ts")
            engine = store._ctx._engine
            second = store.training_set(features=["customer_profile.age"], spine=spine, timestamp="ts")
            assert store._ctx._engine is engine is not None, "the warehouse was reopened inside the session"
            with pytest.raises(FsqlError, match="read-only session"):
                store.build()
        assert store._ctx._engine is None  # a DuckDB file is released when the block ends
        assert second.equals(first)
        assert store.build() is not None  # writes work again after the block
