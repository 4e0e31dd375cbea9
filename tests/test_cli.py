"""CLI paths on a copy of the example project: ``build --allow-breaking``, ``search``, ``materialize
--start/--end`` (naive times are UTC), ``get`` for a training set with several entities and for a
composite key, and ``training-set`` with ``--pit-mode`` and CSV files.

``fsql get`` reads at the wall clock. So that its answers do not depend on the day the tests run, the
shared project drops the views' TTLs and is materialized up to a fixed instant of the sample data
(TTLs at read time are tested through ``now=`` in test_materialize.py and test_no_skew.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner, Result

import fsql
from fsql.cli import app
from tests.example_reference import data_time
from tests.projects import example_project

runner = CliRunner()
VIEWS = ["customer_merchant_stats", "customer_profile", "customer_spend", "customer_value", "order_amount_usd"]


def fsql_cli(project: Path, *args: str) -> Result:
    return runner.invoke(app, [*args, "--project", str(project)])


def ok(project: Path, *args: str) -> str:
    result = fsql_cli(project, *args)
    assert result.exit_code == 0, f"fsql {' '.join(args)}: {result.output}"
    return result.stdout


def one_line_error(project: Path, *args: str) -> str:
    result = fsql_cli(project, *args)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


@pytest.fixture(scope="module")
def materialized(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, datetime]]:
    """The example project without TTLs, built and materialized up to a fixed instant T."""
    project = example_project(tmp_path_factory.mktemp("cli") / "proj", tmp_path_factory.getbasetemp())
    for path in (project / "features").glob("*.sql"):
        path.write_text(re.sub(r"^-- @ttl .*\n", "", path.read_text(), flags=re.M))
    t = data_time(project)
    ok(project, "build")
    ok(project, "materialize", "--end", t.isoformat())
    yield project, t


@pytest.fixture
def project(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return example_project(tmp_path / "proj", tmp_path_factory.getbasetemp())


def test_build_allow_breaking_accepts_a_changed_type(project: Path) -> None:
    ok(project, "build")
    path = project / "features" / "customer_profile.sql"
    path.write_text(path.read_text().replace("    age        --", "    CAST(age AS DOUBLE) AS age  --"))
    line = one_line_error(project, "build")
    assert line.startswith("features/customer_profile.sql:1: type of column 'age' changed from INTEGER to DOUBLE")
    assert "--allow-breaking" in line
    result = json.loads(ok(project, "build", "--allow-breaking", "--json"))
    assert result["built"] is True
    # the training set that reads customer_profile.* changes with it
    assert {(c["name"], c["action"]) for c in result["changes"] if c["action"] != "unchanged"} == {
        ("customer_profile", "changed"), ("churn", "changed")
    }
    described = json.loads(ok(project, "describe", "customer_profile", "--json"))
    assert [(f["name"], f["type"]) for f in described["features"]] == [
        ("country", "VARCHAR"), ("segment", "VARCHAR"), ("age", "DOUBLE")]
    ages = json.loads(ok(project, "get", "customer_profile", "--entity", "customer_id=1", "--json"))
    assert ages[0]["age__status"] == "not_materialized"  # the new version was never materialized
    with fsql.Store(project) as store:
        assert store.query("SELECT age FROM customer_profile LIMIT 1").schema["age"] == pl.Float64
    assert "nothing to do" in ok(project, "build", "--allow-breaking")


def test_search_names_descriptions_and_tags(materialized: tuple[Path, datetime]) -> None:
    project, _ = materialized
    hits = json.loads(ok(project, "search", "FX", "--json"))
    assert [(h["kind"], h["name"], h["matched"]) for h in hits] == [("view", "order_amount_usd", ["tags"])]
    hits = json.loads(ok(project, "search", "trailing 30", "--json"))
    # every word matches somewhere: a view by its description and its features' names
    assert {(h["kind"], h["name"]) for h in hits} == {
        ("view", "customer_spend"),
        ("view", "customer_value"),
        ("feature", "customer_spend.spend_30d"),
        ("feature", "customer_spend.orders_30d"),
        ("feature", "customer_value.avg_order_value_30d"),
        ("feature", "customer_value.high_spender"),
    }
    hits = json.loads(ok(project, "search", "churn", "--json"))
    assert ("training_set", "churn") in {(h["kind"], h["name"]) for h in hits}
    printed = ok(project, "search", "merchant")
    assert printed.splitlines()[0].split()[:2] == ["view", "customer_merchant_stats"]
    assert {line.split()[1] for line in printed.splitlines()} >= {
        "customer_merchant_stats.merchant_orders_90d", "customer_merchant_stats.merchant_avg_amount_90d"}
    assert ok(project, "search", "no-such-thing").strip() == "nothing matches 'no-such-thing'"


def test_materialize_start_and_end_parsing(materialized: tuple[Path, datetime]) -> None:
    project, t = materialized
    day = t.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=3)
    # a naive date and a naive time are UTC; an offset is converted
    runs = json.loads(ok(project, "materialize", "customer_profile", "--start", (day - timedelta(days=2)).date().isoformat(),
                         "--end", day.replace(tzinfo=None).isoformat(), "--json"))
    assert [(r["view"], r["outcome"], r["start"], r["end"]) for r in runs] == [
        ("customer_profile", "success", (day - timedelta(days=2)).isoformat(), day.isoformat())]
    start = (day + timedelta(hours=12)).astimezone(timezone(timedelta(hours=2)))  # 14:00+02:00
    end = (day + timedelta(hours=18)).replace(tzinfo=None)
    runs = json.loads(ok(project, "materialize", "customer_profile", "--start", start.isoformat(),
                         "--end", end.isoformat(), "--json"))
    assert (runs[0]["start"], runs[0]["end"]) == (
        (day + timedelta(hours=12)).isoformat(), (day + timedelta(hours=18)).isoformat())
    with fsql.Store(project) as store:
        version = next(v.version for v in store.feature_views() if v.name == "customer_profile")
        recorded = [r for r in store.runs("customer_profile") if r.version == version][:2]
    assert [(r.interval_start, r.interval_end) for r in recorded] == [
        (day + timedelta(hours=12), day + timedelta(hours=18)), (day - timedelta(days=2), day)]
    for flag in ("--start", "--end"):
        line = one_line_error(project, "materialize", flag, "yesterday")
        assert line == (f"{flag} 'yesterday' is not an ISO timestamp; "
                        "e.g. 2026-01-31 or 2026-01-31T12:00:00+00:00 (naive times are UTC)")


def test_get_training_set_for_several_entities(materialized: tuple[Path, datetime], tmp_path: Path) -> None:
    project, t = materialized
    ids = [1, 42, 7, 2049, 99999]  # 2049: labels only, 99999: unknown
    spine = pl.DataFrame({"customer_id": ids, "label_ts": [t.replace(tzinfo=None)] * len(ids),
                          "churned": [False] * len(ids)})
    spine.write_parquet(tmp_path / "spine.parquet")
    ok(project, "training-set", "churn", "--spine", str(tmp_path / "spine.parquet"), "-o", str(tmp_path / "t.parquet"))
    expected = pl.read_parquet(tmp_path / "t.parquet").to_dicts()
    features = ["spend_30d", "orders_30d", "avg_order_value_30d", "country", "segment", "age"]
    args = [a for i in ids for a in ("--entity", f"customer_id={i}")]
    rows = json.loads(ok(project, "get", "churn", *args, "--json"))
    assert [r["customer_id"] for r in rows] == list(ids)  # keys keep their type in JSON
    for row, want in zip(rows, expected, strict=True):
        for feature in features:
            status = "present" if want[feature] is not None else "missing"
            assert (row[feature], row[f"{feature}__status"]) == (want[feature], status), (row["customer_id"], feature)
    assert [r["age__status"] for r in rows] == ["present", "present", "present", "missing", "missing"]
    # the table form: one block per entity, one line per feature with its value and status
    blocks = [b for b in ok(project, "get", "churn", *args).split("\n\n") if b.strip()]
    assert len(blocks) == len(ids)
    first = dict((line.split()[0], line.split()[1:]) for line in blocks[0].splitlines())
    assert first["customer_id"] == ["1"] and first["age"] == [str(expected[0]["age"]), "present"]


def test_get_with_a_composite_key(materialized: tuple[Path, datetime]) -> None:
    project, t = materialized
    with fsql.Store(project) as store:
        pairs = store.query("SELECT DISTINCT customer_id, merchant_id FROM customer_merchant_stats "
                            "ORDER BY customer_id, merchant_id LIMIT 3").rows()
        pairs.append((pairs[0][0], 999))  # a known customer with an unknown merchant
        spine = pl.DataFrame({"customer_id": [p[0] for p in pairs], "merchant_id": [p[1] for p in pairs],
                              "ts": [t] * len(pairs)})
        expected = store.training_set(features=["customer_merchant_stats.*"], spine=spine, timestamp="ts").to_dicts()
    args = [a for c, m in pairs for a in ("--entity", f"customer_id={c}", "--entity", f"merchant_id={m}")]
    rows = json.loads(ok(project, "get", "customer_merchant_stats", *args, "--json"))
    assert [(int(r["customer_id"]), int(r["merchant_id"])) for r in rows] == pairs
    for row, want in zip(rows, expected, strict=True):
        for feature in ("merchant_orders_90d", "merchant_avg_amount_90d"):
            status = "present" if want[feature] is not None else "missing"
            assert (row[feature], row[f"{feature}__status"]) == (want[feature], status)
    assert [r["merchant_orders_90d__status"] for r in rows] == ["present"] * 3 + ["missing"]
    line = one_line_error(project, "get", "customer_merchant_stats", "--entity", f"customer_id={pairs[0][0]}")
    assert "needs entity key(s) merchant_id" in line


def test_training_set_pit_mode_and_csv_files(materialized: tuple[Path, datetime], tmp_path: Path) -> None:
    project, _ = materialized
    with fsql.Store(project) as store:
        late = store.query("SELECT customer_id, event_ts AS label_ts, FALSE AS churned FROM customer_spend "
                           "WHERE loaded_at > event_ts + INTERVAL 1 DAY ORDER BY event_ts, customer_id LIMIT 30")
        want = {mode: store.training_set("churn", spine=late, pit_mode=mode) for mode in ("known-at", "event-time")}
    late.write_csv(tmp_path / "spine.csv")
    late.write_parquet(tmp_path / "spine.parquet")
    for mode in ("known-at", "event-time"):
        for spine in ("spine.csv", "spine.parquet"):
            out = tmp_path / f"{mode}-{spine}.csv"
            printed = ok(project, "training-set", "churn", "--spine", str(tmp_path / spine), "-o", str(out),
                         "--pit-mode", mode)
            assert printed.startswith(f"wrote 30 rows x 9 columns to {out}")
            got = pl.read_csv(out, schema=want[mode].schema)
            assert got.equals(want[mode]), (mode, spine)
    # the late rows are what tells the modes apart
    assert not want["known-at"]["spend_30d"].equals(want["event-time"]["spend_30d"])
    line = one_line_error(project, "training-set", "churn", "-o", str(tmp_path / "x.csv"), "--pit-mode", "sometimes")
    assert "unknown PIT mode 'sometimes'" in line


def test_models_in_ls_describe_and_lineage(materialized: tuple[Path, datetime]) -> None:
    project, _ = materialized
    with fsql.Store(project) as store:
        (model,) = store.models()
        features = [c.name for c in store.definition("churn").spine_columns]
        set_features = [str(f) for f in store.definition("churn").features]
    from fsql.registry import model_fingerprint
    version = model_fingerprint(model)[:12]

    items = json.loads(ok(project, "ls", "--json"))
    (listed,) = [i for i in items if i["kind"] == "model"]
    assert listed["name"] == "churn" and listed["training_set"] == "churn" and listed["model_kind"] == "onnx"
    assert listed["version"] == version and listed["inputs"] == list(model.inputs) and len(model.inputs) == 6
    assert re.search(rf"^churn +model onnx <- churn +6 inputs +v{version}$", ok(project, "ls"), re.M)

    # The example's set and model share a name: the set comes first, --kind picks the model.
    as_set = json.loads(ok(project, "describe", "churn", "--json"))
    assert as_set["kind"] == "training_set" and as_set["models"] == ["churn"] and as_set["spine_columns"] == features
    assert json.loads(ok(project, "describe", "churn", "--kind", "model", "--json")) == listed
    text = ok(project, "describe", "churn", "--kind", "model")
    order = re.findall(r"^ +\d+\. (\w+) +training set feature$", text, re.M)
    assert order == list(model.inputs) and f"version: {version}" in text
    assert "no model named 'chrn'; did you mean 'churn'?" in one_line_error(project, "describe", "chrn", "--kind", "model")
    assert "unknown --kind" in one_line_error(project, "describe", "churn", "--kind", "views")

    down = json.loads(ok(project, "lineage", "churn", "--json"))["downstream"]
    assert {(e["downstream_kind"], e["downstream_name"], e["upstream_kind"]) for e in down} == {("model", "churn", "training_set")}
    assert re.search(r"^read by:\n +model churn +<- training set churn$", ok(project, "lineage", "churn"), re.M)
    up = ok(project, "lineage", "churn", "--kind", "model")
    assert up.splitlines()[0] == f"model churn v{version}" and re.search(r"churn +<- training set churn", up)
    transitive = json.loads(ok(project, "lineage", "customer_spend", "--transitive", "--json"))["downstream"]
    assert ("model", "churn") in {(e["downstream_kind"], e["downstream_name"]) for e in transitive}
    assert {f.split(".")[0] for f in set_features} >= {"customer_spend"}
