"""`fsql build` on the example project: DuckDB and PostgreSQL give the same views and rows."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
import sqlglot
from sqlglot import exp
from typer.testing import CliRunner

import fsql
from fsql.cli import app
from fsql.definitions import FeatureView
from tests.conftest import POSTGRES_URL
from tests.example_reference import (
    KNOWN,
    VIEWS,
    add_edge_rows,
    connect,
    latest_sql,
    multiset_diff,
    normalized,
    pit_sql,
)
from tests.projects import example_project, registry_dump, warehouse_dump
from tests.service_adapter import Service

runner = CliRunner()
EXAMPLE_VIEWS = ["customer_merchant_stats", "customer_profile", "customer_spend", "customer_value", "order_amount_usd"]


@pytest.fixture
def project(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return example_project(tmp_path / "proj", tmp_path_factory.getbasetemp())


def test_build_creates_views_with_expected_rows(project: Path) -> None:
    """Every generated view, its ``__latest`` and the training set hold exactly the rows an
    independent query over the raw Parquet gives (tests/example_reference.py)."""
    add_edge_rows(project, datetime.now(UTC))
    result = runner.invoke(app, ["build", "-p", str(project)])
    assert result.exit_code == 0, result.output
    assert "built 5 feature views and 1 training set (" in result.output
    with fsql.Store(project) as store:
        churn = next(s for s in store.training_sets() if s.name == "churn")
    con = connect(project)
    # One transaction: CURRENT_TIMESTAMP is the same instant in the views and in the reference.
    con.execute("BEGIN TRANSACTION")
    for view in VIEWS.values():
        columns = [view.keys, (view.timestamp,), (view.created,) if view.created else (), view.features, (KNOWN,)]
        relation = con.sql(f"SELECT * FROM wh.fsql.{view.name}")
        assert relation.columns == [c for group in columns for c in group], view.name
        problem = multiset_diff(con.sql(view.rows).fetchall(), relation.fetchall())
        assert problem is None, f"{view.name}: {problem}"
        latest = con.sql(f"SELECT * FROM wh.fsql.{view.name}__latest").fetchall()
        problem = multiset_diff(con.sql(latest_sql(view)).fetchall(), latest)
        assert problem is None, f"{view.name}__latest: {problem}"
        assert latest, f"{view.name}__latest is empty: the edge rows are recent, so it cannot be"
    # The training set view: its registered spine query, joined point in time by the reference.
    spine_columns = [c.name for c in churn.spine_columns]
    con.execute("CREATE TEMP VIEW churn_labels AS SELECT * FROM ref_churn_labels")
    features = [(f.view, f.feature, f.feature) for f in churn.features]
    expected = con.sql(pit_sql(churn.query, spine_columns, churn.timestamp, features)).fetchall()
    problem = multiset_diff(expected, con.sql("SELECT * FROM wh.fsql.churn").fetchall())
    assert problem is None, f"churn: {problem}"
    con.execute("COMMIT")
    con.close()


def test_second_build_does_nothing(project: Path) -> None:
    assert runner.invoke(app, ["build", "-p", str(project)]).exit_code == 0
    registry, warehouse = registry_dump(project), warehouse_dump(project)
    result = runner.invoke(app, ["build", "-p", str(project)])
    assert result.exit_code == 0
    assert "nothing to do" in result.output
    assert registry_dump(project) == registry
    assert warehouse_dump(project) == warehouse


def test_ls_json_lists_views_with_types_and_descriptions(project: Path) -> None:
    assert runner.invoke(app, ["build", "-p", str(project)]).exit_code == 0
    result = runner.invoke(app, ["ls", "-p", str(project), "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    # A training set and the model trained on it may share a name; each is listed once.
    assert len({(i["kind"], i["name"]) for i in listed}) == len(listed)
    items = {i["name"]: i for i in listed if i["kind"] != "model"}
    assert sorted(n for n, i in items.items() if i["kind"] == "feature_view") == EXAMPLE_VIEWS
    spend = items["customer_spend"]
    assert spend["entity"] == "customer" and spend["entity_keys"] == ["customer_id"]
    assert spend["ttl"] == 30 * 86400 and spend["created"] == "loaded_at"
    features = {f["name"]: f for f in spend["features"]}
    assert features["spend_30d"]["type"] == "DOUBLE"
    assert features["orders_30d"]["type"] == "BIGINT"
    assert features["spend_30d"]["description"] == "total spend over the trailing 30 days"
    merchant = items["customer_merchant_stats"]
    assert merchant["entity_keys"] == ["customer_id", "merchant_id"]
    assert items["churn"]["kind"] == "training_set"
    assert "customer_profile.country" in items["churn"]["features"]
    models = {i["name"]: i for i in listed if i["kind"] == "model"}
    assert models["churn"]["training_set"] == "churn"


def test_describe_and_plan(project: Path) -> None:
    assert runner.invoke(app, ["build", "-p", str(project)]).exit_code == 0
    described = json.loads(runner.invoke(app, ["describe", "customer_value", "-p", str(project), "--json"]).output)
    assert [f["name"] for f in described["features"]] == ["avg_order_value_30d", "high_spender"]
    assert runner.invoke(app, ["plan", "-p", str(project)]).output.startswith("no changes")
    # A compatible change (a new column) and a breaking one (a removed column).
    path = project / "features" / "customer_value.sql"
    text = path.read_text()
    path.write_text(text.replace("spend_30d >= 500 AS high_spender", "spend_30d >= 500 AS high_spender,\n    orders_30d"))
    plan = json.loads(runner.invoke(app, ["plan", "-p", str(project), "--json"]).output)
    change = next(c for c in plan if c["name"] == "customer_value")
    assert change["action"] == "changed" and not change["breaking"]
    path.write_text(
        text.replace("AS avg_order_value_30d,", "AS avg_order_value_30d").replace(
            "spend_30d >= 500 AS high_spender", ""
        )
    )
    plan = json.loads(runner.invoke(app, ["plan", "-p", str(project), "--json"]).output)
    change = next(c for c in plan if c["name"] == "customer_value")
    assert change["breaking"] and "high_spender" in " ".join(change["reasons"])


def test_changed_view_gets_a_new_version_and_keeps_history(project: Path) -> None:
    service = Service.open(project)
    service.build()
    before_views, before_sets = service.definitions()
    path = project / "features" / "customer_spend.sql"
    path.write_text(path.read_text().replace("COUNT(*)    OVER w AS orders_30d", "COUNT(amount) OVER w AS orders_30d"))
    service.build()
    after_views, after_sets = service.definitions()
    changed = {n for n in after_views if after_views[n].fingerprint != before_views[n].fingerprint}
    # customer_value reads customer_spend, so its fingerprint changes too; nothing else does.
    assert changed == {"customer_spend", "customer_value"}
    for name in EXAMPLE_VIEWS:
        assert (after_views[name].version != before_views[name].version) == (name in changed), name
    for name in changed:
        history = service.registry.view_history(name)
        assert {v.version for v in history} == {before_views[name].version, after_views[name].version}, name
    service.close()


def test_init_scaffolds_the_repository_example(tmp_path: Path) -> None:
    result = runner.invoke(app, ["init", str(tmp_path / "new"), "--no-sample"])
    assert result.exit_code == 0, result.output
    root = Path(__file__).resolve().parent.parent
    for file in (root / "features").glob("*.sql"):
        assert (tmp_path / "new" / "features" / file.name).read_text() == file.read_text()
    assert (tmp_path / "new" / "fsql.toml").read_text() == (root / "fsql.toml").read_text()
    again = runner.invoke(app, ["init", str(tmp_path / "new")])
    assert again.exit_code == 1 and "already exists" in again.output


def test_compile_prints_sql_for_every_dialect(project: Path) -> None:
    assert runner.invoke(app, ["build", "-p", str(project)]).exit_code == 0
    churn_columns = ["customer_id", "label_ts", "churned", "spend_30d", "orders_30d", "avg_order_value_30d",
                     "country", "segment", "age"]
    spend_columns = ["customer_id", "event_ts", "loaded_at", "spend_30d", "orders_30d", "__known_at"]
    for dialect in ("duckdb", "postgres", "snowflake", "bigquery", "spark", "trino"):
        result = runner.invoke(app, ["compile", "churn", "--dialect", dialect, "-p", str(project)])
        assert result.exit_code == 0, f"{dialect}: {result.output}"
        assert _parsed_back(result.stdout, dialect).named_selects == churn_columns, dialect
        if dialect == "duckdb":
            # The printed SQL is what runs: executed on the warehouse, it gives the training set.
            con = duckdb.connect(str(project / ".fsql" / "warehouse.duckdb"), read_only=True)
            con.execute("SET TimeZone = 'UTC'")
            con.execute("SET VARIABLE fsql_root = ?", [str(project)])
            problem = multiset_diff(con.sql("SELECT * FROM fsql.churn").fetchall(), con.sql(result.stdout).fetchall())
            con.close()
            assert problem is None, problem
        view = runner.invoke(app, ["compile", "customer_spend", "--dialect", dialect, "-p", str(project)])
        assert view.exit_code == 0, view.output
        assert "@feature_view" not in view.output  # the header stays in the file
        if dialect == "bigquery":
            # BigQuery has no NULLS LAST in aggregate windows and needs a numeric RANGE key
            assert "NULLS" not in view.output and "UNIX_MICROS(" in view.output, view.output
        else:
            assert view.exit_code == 0, view.output
            assert "@feature_view" not in view.output  # the header stays in the file
            assert _parsed_back(view.stdout, dialect).named_selects == spend_columns, dialect


def _parsed_back(printed: str, dialect: str) -> exp.Query:
    """The printed SQL parsed in its own dialect; printing the tree again gives the same text."""
    tree = sqlglot.parse_one(printed, read=dialect)
    assert isinstance(tree, exp.Query), printed
    assert tree.sql(dialect, pretty=True) == printed.strip(), dialect
    return tree


def _pg_overrides(schema: str) -> dict[str, dict[str, str]]:
    return {"warehouse": {"engine": "postgres", "url": POSTGRES_URL, "schema": schema}}


def test_postgres_build_matches_duckdb(project: Path, pg_schema: str) -> None:
    """The same rows on both engines, exactly: every view, every ``__latest`` and the training set;
    floats to the bit, timestamps as the same instants with the same time-zone awareness."""
    add_edge_rows(project, datetime.now(UTC))
    duck = Service.open(project)
    duck.build()
    pg = Service.open(project, {**_pg_overrides(pg_schema), "registry": {"url": "sqlite:///.fsql/registry-pg.db"}})
    result = pg.build()
    assert result.built
    dv, pv = duck.definitions()[0], pg.definitions()[0]
    for name in EXAMPLE_VIEWS:
        assert [(c.name, c.dtype) for c in dv[name].columns] == [(c.name, c.dtype) for c in pv[name].columns], name
    for view in [*EXAMPLE_VIEWS, "churn"]:
        problem = _engines_differ(duck, pg, f"SELECT * FROM {view}")
        assert problem is None, f"{view}: {problem}"
    for name in EXAMPLE_VIEWS:
        # __latest reads CURRENT_TIMESTAMP: retry the rare read pair that straddles a row's boundary.
        for _ in range(3):
            began = datetime.now(UTC)
            problem = _engines_differ(duck, pg, f"SELECT * FROM {name}__latest")
            if problem is None or not _boundary_between(duck, dv[name], began, datetime.now(UTC)):
                break
        assert problem is None, f"{name}__latest: {problem}"
    assert not pg.build().built
    duck.close()
    pg.close()


def test_postgres_history_as_view_gives_the_duckdb_training_sets(project: Path, pg_schema: str) -> None:
    """``[warehouse] history = "view"``: no persisted copies, training sets read the live views and
    equal DuckDB's exactly, in both PIT modes and for the set's own spine."""
    import pyarrow.parquet as pq

    add_edge_rows(project, datetime.now(UTC))
    duck = Service.open(project)
    duck.build()
    overrides = _pg_overrides(pg_schema)
    overrides["warehouse"]["history"] = "view"
    pg = Service.open(project, {**overrides, "registry": {"url": "sqlite:///.fsql/registry-pg.db"}})
    assert pg.build().built
    relations = pg.engine.list_relations(pg_schema)
    assert {f"{v}__latest" for v in EXAMPLE_VIEWS} <= set(relations)
    assert not [r for r in relations if r.endswith("__history")], relations
    compiled = pg.compile("churn", "postgres")
    assert "customer_spend" in compiled and "__history" not in compiled

    problem = _tables_differ(duck.training_set("churn"), pg.training_set("churn"))
    assert problem is None, f"churn, its own spine: {problem}"
    spine = pq.read_table(project / "data" / "churn_labels.parquet")
    features = ["customer_spend.*", "customer_value.*", "customer_profile.*", "order_amount_usd.*"]
    for mode in ("known-at", "event-time"):
        d = duck.training_set(features=features, spine=spine, timestamp="label_ts", mode=mode)  # type: ignore[arg-type]
        p = pg.training_set(features=features, spine=spine, timestamp="label_ts", mode=mode)  # type: ignore[arg-type]
        assert d.num_rows == spine.num_rows
        assert _tables_differ(d, p, ordered=True) is None, mode
    # a materialization run leaves it alone: nothing to refresh
    pg_online = {"online": {"store": "sqlite", "path": str(project / ".fsql" / "online-pg.db")}}
    pg.close()
    pg = Service.open(project, {**overrides, **pg_online, "registry": {"url": "sqlite:///.fsql/registry-pg.db"}})
    assert [r.outcome for r in pg.materialize(["customer_profile"])] == ["success"]
    assert not [r for r in pg.engine.list_relations(pg_schema) if r.endswith("__history")]
    duck.close()
    pg.close()


def _engines_differ(duck: Service, pg: Service, sql: str) -> str | None:
    return _tables_differ(duck.query(sql), pg.query(sql))


def _tables_differ(d: pa.Table, p: pa.Table, *, ordered: bool = False) -> str | None:
    if d.schema.names != p.schema.names:
        return f"columns {d.schema.names} != {p.schema.names}"
    for field_d, field_p in zip(d.schema, p.schema, strict=True):
        # the same kind of value: naive timestamps stay naive, aware ones aware (compared as instants)
        if pa.types.is_timestamp(field_d.type) != pa.types.is_timestamp(field_p.type) or (
            pa.types.is_timestamp(field_d.type) and (field_d.type.tz is None) != (field_p.type.tz is None)
        ):
            return f"column {field_d.name}: {field_d.type} != {field_p.type}"
    rows_d = [tuple(_exact(v) for v in r.values()) for r in d.to_pylist()]
    rows_p = [tuple(_exact(v) for v in r.values()) for r in p.to_pylist()]
    if ordered and multiset_diff(rows_d, rows_p) is None and normalized(rows_d) != normalized(rows_p):
        return "the same rows in another order"
    return multiset_diff(rows_d, rows_p)


def _exact(value: object) -> object:
    # bool is an int in Python: keep the type in the comparison, so 1 and True differ
    return (type(value).__name__, value) if isinstance(value, bool | int | float) else value


def _boundary_between(duck: Service, view: FeatureView, start: datetime, end: datetime) -> bool:
    """Whether a row of ``view`` becomes eligible, known or expired within [start, end] (widened by a
    second): two reads of its __latest in that interval may then rightly differ."""
    ts = exp.column(view.timestamp)
    instants = [ts] + ([exp.column(view.created)] if view.created else [])
    if view.ttl:
        seconds = exp.Interval(this=exp.Literal.string(str(int(view.ttl.total_seconds()))), unit=exp.var("SECOND"))
        instants.append(exp.Add(this=ts.copy(), expression=seconds))
    lo, hi = (start - timedelta(seconds=1)).replace(tzinfo=None), (end + timedelta(seconds=1)).replace(tzinfo=None)
    near = exp.or_(*(exp.Between(this=e, low=exp.cast(exp.Literal.string(str(lo)), "TIMESTAMP"),
                                 high=exp.cast(exp.Literal.string(str(hi)), "TIMESTAMP")) for e in instants))
    query = exp.select(exp.Count(this=exp.Star()).as_("n")).from_(view.name).where(near)
    return duck.query(query.sql("duckdb")).to_pylist()[0]["n"] > 0


def test_postgres_rebuild_reloads_changed_file_sources(project: Path, pg_schema: str) -> None:
    import pyarrow.parquet as pq

    pg = Service.open(project, {**_pg_overrides(pg_schema), "registry": {"url": "sqlite:///.fsql/registry-pg.db"}})
    pg.build()
    before = pg.query("SELECT count(*) AS n FROM customer_profile").to_pylist()[0]["n"]
    path = project / "data" / "customers.parquet"
    table = pq.read_table(path)
    pq.write_table(table.slice(0, 100), path)
    result = pg.build()
    assert not result.built and result.reloaded == ["customers"]
    assert "reloaded changed source data: customers" in result.summary
    assert pg.query("SELECT count(*) AS n FROM customer_profile").to_pylist()[0]["n"] == 100 != before
    assert pg.build().reloaded == []
    pg.close()


def test_lineage_reaches_source_columns_and_training_sets(project: Path) -> None:
    assert runner.invoke(app, ["build", "-p", str(project)]).exit_code == 0
    graph = json.loads(runner.invoke(app, ["lineage", "customer_spend", "-p", str(project), "--json"]).output)
    upstream = {(e["downstream_column"], e["upstream_name"], e["upstream_column"]) for e in graph["upstream"]}
    assert ("spend_30d", "orders", "amount") in upstream
    downstream = {(e["downstream_name"], e["downstream_column"]) for e in graph["downstream"]}
    assert ("churn", "spend_30d") in downstream and ("customer_value", "avg_order_value_30d") in downstream
