"""The catalog without a browser: history and diffs, governance, ranked search, feature lineage,
statistics against a brute-force reference, and the page's escaping and links."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import duckdb
import polars as pl
import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from fsql.cli import app
from fsql.server.catalog import catalog_app
from fsql.store import Store
from tests.catalog_site import catalog_project
from tests.projects import example_project, registry_dump, warehouse_dump

runner = CliRunner()


@pytest.fixture
def project(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return example_project(tmp_path / "proj", tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return catalog_project(tmp_path_factory.mktemp("catalog") / "proj", tmp_path_factory.getbasetemp())


def cli(project: Path, *args: str) -> str:
    result = runner.invoke(app, [*args, "-p", str(project)])
    assert result.exit_code == 0, result.output
    return result.output


def edit(project: Path, old: str, new: str, file: str = "customer_spend.sql") -> None:
    path = project / "features" / file
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


# -- history and diffs ---------------------------------------------------------------------------------


def test_history_records_metadata_edits_new_versions_and_verdicts(project: Path) -> None:
    cli(project, "build")
    edit(project, "-- Trailing spend statistics", "-- Rolling spend statistics")
    cli(project, "build")
    edit(project, "SUM(amount) OVER w", "SUM(amount * 2) OVER w")
    cli(project, "build")
    edit(project, "SUM(amount * 2) OVER w AS spend_30d", "sum(AMOUNT * 2)   over w   as spend_30d")
    cli(project, "build")
    history = json.loads(cli(project, "describe", "customer_spend", "--history", "--json"))
    assert [h["revision"] for h in history] == [1, 2, 3, 4]
    assert history[0]["version"] == history[1]["version"] != history[2]["version"] != history[3]["version"]
    assert [h["breaking"] for h in history] == [False, False, True, False]
    assert history[1]["reasons"] == ["description changed"]
    assert history[2]["reasons"] == ["expressions changed: spend_30d"]
    assert history[3]["reasons"] == ["query reformatted (same normalized SQL)"]
    assert [h["current"] for h in history] == [False, False, False, True]

    breaking = json.loads(cli(project, "diff", "customer_spend", "2", "3", "--json"))
    assert breaking["breaking"] and breaking["action"] == "changed"
    assert breaking["columns"] == [{"name": "spend_30d", "action": "expression", "breaking": True, "detail": ""}]
    assert "-  SUM(amount) OVER w AS spend_30d, /* total spend over the trailing 30 days */" in breaking["sql_diff"]
    text = cli(project, "diff", "customer_spend")  # the last two: a reformatting only
    assert "r3" in text and "r4" in text and "compatible" in text and "breaking" not in text
    # A removed column and a retyped one are breaking, an added one compatible.
    edit(project, "spend_30d >= 500 AS high_spender", "CAST(spend_30d >= 500 AS INTEGER) AS high_spender,\n    orders_30d",
         "customer_value.sql")
    cli(project, "build", "--allow-breaking")
    columns = {(c["name"], c["action"]): c["breaking"]
               for c in json.loads(cli(project, "diff", "customer_value", "--json"))["columns"]}
    assert columns[("high_spender", "retyped")] is True
    assert columns[("orders_30d", "added")] is False


def test_history_lists_runs_and_the_git_commit(project: Path) -> None:
    git = ["git", "-C", str(project), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    (project / ".gitignore").write_text(".fsql/\ndata/\n")
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "features"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    cli(project, "build")
    cli(project, "materialize", "customer_spend")
    [first] = json.loads(cli(project, "describe", "customer_spend", "--history", "--json"))
    assert first["git_commit"] == head
    assert [r["outcome"] for r in first["runs"]] == ["success"]
    edit(project, "-- Trailing spend statistics", "-- Rolling spend statistics")
    cli(project, "build")
    second = json.loads(cli(project, "describe", "customer_spend", "--history", "--json"))[1]
    assert second["git_commit"] == f"{head}+dirty"


# -- governance ------------------------------------------------------------------------------------------


GOVERNANCE = """
[governance]
require_owner = true
require_description = true
allowed_tags = ["orders", "finance", "profile", "merchants", "fx"]
max_ttl = "60d"
require_ttl = true
feature_name_pattern = "^[a-z][a-z0-9_]*$"
"""


def test_broken_rules_fail_the_build_with_every_location_and_change_nothing(project: Path) -> None:
    cli(project, "build")
    before_registry, before_warehouse = registry_dump(project), warehouse_dump(project)
    with (project / "fsql.toml").open("a") as f:
        f.write(GOVERNANCE)
    edit(project, "-- @owner growth-team\n", "")
    edit(project, "-- @tags orders, finance", "-- @tags orders, secret")
    edit(project, "    loaded_at,\n", "    loaded_at,\n    COUNT(*) OVER w AS Orders30,\n")
    result = runner.invoke(app, ["build", "-p", str(project)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert lines == [  # every violation, in file order, each at its annotation or column
        "features/customer_merchant_stats.sql:4: @ttl 90d is longer than the maximum 60d; [governance] max_ttl = \"60d\"",
        "features/customer_profile.sql:1: feature view 'customer_profile' has no @ttl; "
        "[governance] require_ttl: add -- @ttl 30d to the header",
        "features/customer_spend.sql:1: feature view 'customer_spend' has no owner; "
        "[governance] require_owner: add -- @owner team-name to the header",
        "features/customer_spend.sql:6: tag 'secret' is not allowed; "
        "[governance] allowed_tags: use orders, finance, profile, merchants, fx",
        "features/customer_spend.sql:12: feature name 'Orders30' does not match the naming pattern; "
        "[governance] feature_name_pattern = '^[a-z][a-z0-9_]*$'",
        "features/customer_spend.sql:12: feature 'Orders30' has no description; "
        "[governance] require_description: add a -- comment after the column",
    ]
    assert all("; [governance]" in line for line in lines)
    assert registry_dump(project) == before_registry
    assert warehouse_dump(project) == before_warehouse
    check = runner.invoke(app, ["check", "-p", str(project)])
    assert check.exit_code == 1 and check.output.strip().splitlines() == lines


def test_check_passes_without_touching_any_database(project: Path) -> None:
    result = runner.invoke(app, ["check", "-p", str(project)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok: 5 feature views and 1 training sets")
    assert not (project / ".fsql").exists()


def test_governance_config_errors_are_located(project: Path) -> None:
    with (project / "fsql.toml").open("a") as f:
        f.write('\n[governance]\nmax_ttl = "forever"\n')
    result = runner.invoke(app, ["check", "-p", str(project)])
    assert result.exit_code == 1
    line = (project / "fsql.toml").read_text().splitlines().index('max_ttl = "forever"') + 1
    assert result.output.startswith(f"fsql.toml:{line}: [governance] max_ttl 'forever' is not a duration")


# -- search and lineage ----------------------------------------------------------------------------------


def test_search_ranks_names_before_features_tags_and_descriptions(built: Path) -> None:
    with Store(built) as store:
        hits = store.search_ranked("trailing spend")
        names = [h.name for h in hits]
        assert len(names) == len(set(names))  # each hit once
        assert "customer_spend.spend_30d" in names
        assert names[:2] == ["customer_spend", "customer_spend.spend_30d"]  # "spend" in the name
        assert [h.name for h in store.search_ranked("spend_30d")][:2] == ["customer_spend.spend_30d", "customer_spend"]
        ranked = store.search_ranked("finance")
        assert {h.name for h in ranked} == {"customer_spend", "customer_value", "order_amount_usd"}
        assert all("tags" in h.matched for h in ranked)
        by_owner = store.search_ranked("", owner="crm-team")
        assert {h.name for h in by_owner} == {"customer_profile", "customer_profile.country",
                                              "customer_profile.segment", "customer_profile.age"}
        assert {h.name for h in store.search_ranked("orders", tag="merchants", entity="customer_merchant")} == {
            "customer_merchant_stats", "customer_merchant_stats.merchant_orders_90d"}
        assert store.search_ranked("spend", entity="nobody") == []
    out = json.loads(cli(built, "search", "spend", "--tag", "finance", "--json"))
    assert [h["name"] for h in out][0] == "customer_spend"


def test_feature_lineage_walks_views_on_views_to_sources_and_down_to_models(built: Path) -> None:
    data = json.loads(cli(built, "lineage", "customer_value.avg_order_value_30d", "--json"))
    up = {(e["downstream_name"], e["downstream_column"], e["upstream_kind"], e["upstream_name"],
           (e["upstream_column"] or "").lower()) for e in data["upstream"]}
    assert ("customer_value", "avg_order_value_30d", "view", "customer_spend", "spend_30d") in up
    assert ("customer_spend", "spend_30d", "source", "orders", "amount") in up
    assert ("customer_spend", "orders_30d", "source", "orders", "customer_id") in up
    assert not any(e[1] == "high_spender" for e in up)  # only this feature's lineage
    down = {(e["downstream_kind"], e["downstream_name"]) for e in data["downstream"]}
    assert down == {("training_set", "churn"), ("model", "churn"), ("model", "churn_model")}
    text = cli(built, "lineage", "customer_spend.spend_30d")
    assert "view customer_value.avg_order_value_30d" in text and "model churn_model" in text
    missing = runner.invoke(app, ["lineage", "customer_spend.spend_3d", "-p", str(built)])
    assert missing.exit_code == 1 and "did you mean 'spend_30d'" in missing.output


# -- statistics ------------------------------------------------------------------------------------------


def test_stats_match_a_brute_force_reference(built: Path) -> None:
    with Store(built) as store:
        records = {r.feature: r for r in store.stored_stats("customer_spend", scope="history")}
        frame = store.query("SELECT * FROM customer_spend")
    assert set(records) == {"spend_30d", "orders_30d"}
    # The history as known at the time the statistics describe: rows whose event time has passed and
    # whose whole input was known (the view's derived known time).
    as_of = records["spend_30d"].as_of.replace(tzinfo=None)
    known = pl.max_horizontal(pl.col("event_ts"), pl.col("__known_at").fill_null(pl.col("event_ts")))
    frame = frame.filter(known.cast(pl.Datetime("us")) <= as_of)
    for feature, record in records.items():
        s, column = record.stats, frame[feature].cast(pl.Float64)
        assert s["rows"] == frame.height and s["non_null"] == column.drop_nulls().len()
        assert s["entities"] == frame["customer_id"].n_unique()
        assert s["min"] == pytest.approx(column.min()) and s["max"] == pytest.approx(column.max())
        assert s["mean"] == pytest.approx(column.mean()) and s["std"] == pytest.approx(column.std())
        assert s["p50"] == pytest.approx(column.quantile(0.5, "linear"))
        assert s["p99"] == pytest.approx(column.quantile(0.99, "linear"))
        assert abs(s["distinct"] - column.n_unique()) <= 0.05 * column.n_unique() + 1  # HyperLogLog
        hist = s["histogram"]
        assert sum(hist["counts"]) == s["non_null"]
        edges = hist["edges"]
        for i, count in enumerate(hist["counts"]):
            upper = column <= edges[i + 1] if i == len(hist["counts"]) - 1 else column < edges[i + 1]
            assert count == ((column >= edges[i]) & upper).sum(), (feature, i)


def test_materialize_stores_stats_of_what_it_wrote_and_at_filters_history(built: Path) -> None:
    with Store(built) as store:
        latest = {r.feature: r for r in store.stored_stats("customer_value", scope="latest")}
        assert set(latest) == {"avg_order_value_30d", "high_spender"}
        entities = store.query("SELECT count(DISTINCT customer_id) AS n FROM customer_value")["n"][0]
        assert latest["avg_order_value_30d"].stats["rows"] == entities == latest["high_spender"].stats["entities"]
        assert 0 <= latest["high_spender"].stats["mean"] <= 1  # booleans: the share of true
        early = store.query("SELECT min(greatest(event_ts, coalesce(loaded_at, event_ts))) AS t FROM customer_spend")["t"][0]
    out = json.loads(cli(built, "stats", "customer_spend", "--at", early.isoformat(), "--json"))
    assert out[0]["as_of"].startswith(early.isoformat()[:19]) and 0 < out[0]["stats"]["rows"] < 100
    with Store(built) as store:
        store.compute_stats("customer_spend")  # leave the module's project as it was


# -- the page --------------------------------------------------------------------------------------------


def test_pages_escape_user_text_and_never_open_the_warehouse(built: Path) -> None:
    warehouse = built / ".fsql" / "warehouse.duckdb"
    lock = duckdb.connect(str(warehouse))  # an exclusive writer: the page must not need the file
    try:
        with Store(built) as store:
            client = TestClient(catalog_app(store))
            page = client.get("/views/hostile_view")
            assert page.status_code == 200
            assert "<script>" not in page.text and "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in page.text
            assert "&lt;b&gt;bold&lt;/b&gt;" in page.text
            for path in ("/", "/search?q=%3Cscript%3E", "/views/customer_spend", "/sets/churn", "/models/churn_model",
                         "/views/customer_spend/diff"):
                response = client.get(path)
                assert response.status_code == 200, path
                assert "<script" not in response.text.lower()
            assert client.get("/views/nope").status_code == 404
            assert client.get("/sets/customer_spend").status_code == 404
    finally:
        lock.close()


def test_histogram_geometry_is_finite() -> None:
    from fsql.server.catalog.graphics import histogram

    h = histogram({"histogram": {"edges": [0.0, 0.5, 1.0], "counts": [3, 0]}})
    assert h is not None and [b.height for b in h.bars][1] == 0 and all(math.isfinite(b.y) for b in h.bars)
    assert histogram({"histogram": {"edges": [2.0, 2.0], "counts": None}}) is None
