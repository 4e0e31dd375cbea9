"""Registry tests, each on a SQLite file and on PostgreSQL (a schema per test)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fsql.definitions import (
    Column,
    Entity,
    FeatureRef,
    FeatureView,
    Model,
    Project,
    Source,
    TrainingSet,
    fingerprint,
)
from fsql.errors import NotFoundError, RegistryError
from fsql.registry import LineageEdge, Registry, from_json, to_json
from fsql.registry import tables as t
from fsql.registry.registry import HEAD_REVISION, _script_revisions
from tests.conftest import POSTGRES_URL

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2024, 1, 1, tzinfo=UTC)


# -- tiny hand-made projects ---------------------------------------------------------------------------


def make_view(
    name: str,
    *,
    sql: str | None = None,
    features: tuple[str, ...] = ("spend",),
    deps: tuple[str, ...] = ("orders",),
    owner: str | None = "growth",
    tags: tuple[str, ...] = ("finance",),
    description: str | None = None,
    ttl: timedelta | None = timedelta(days=30),
) -> FeatureView:
    sql = sql or f"SELECT customer_id, ts, {', '.join(features)} FROM {deps[0]}"
    columns = (
        Column("customer_id", "BIGINT"),
        Column("ts", "TIMESTAMP"),
        *(Column(f, "DOUBLE", f"the {f} of a customer") for f in features),
    )
    return FeatureView(
        name=name,
        path=f"features/{name}.sql",
        line=1,
        entity="customer",
        entity_keys=("customer_id",),
        timestamp="ts",
        query=sql,
        dialect="duckdb",
        columns=columns,
        ttl=ttl,
        owner=owner,
        tags=tags,
        description=description,
        depends_on=deps,
        fingerprint=fingerprint({"name": name, "sql": sql, "ttl": str(ttl)}),
    )


def make_set(name: str, refs: tuple[str, ...], deps: tuple[str, ...] = ("labels",)) -> TrainingSet:
    sql = "SELECT customer_id, label_ts, churned FROM labels"
    return TrainingSet(
        name=name,
        path=f"features/{name}.sql",
        line=1,
        timestamp="label_ts",
        features=tuple(FeatureRef(*ref.split(".")) for ref in refs),
        query=sql,
        dialect="duckdb",
        description=f"training set {name}",
        depends_on=deps,
        fingerprint=fingerprint({"name": name, "sql": sql, "refs": refs}),
    )


def make_project(
    *views: FeatureView, sets: tuple[TrainingSet, ...] = (), models: tuple[Model, ...] = ()
) -> Project:
    return Project(
        name="demo",
        dialect="duckdb",
        entities={"customer": Entity("customer", ("customer_id",), "a customer")},
        sources={
            "orders": Source("orders", path="data/orders.parquet"),
            "labels": Source("labels", table="raw.labels"),
        },
        views={v.name: v for v in views},
        training_sets={s.name: s for s in sets},
        models={m.name: m for m in models},
    )


# -- fixtures ------------------------------------------------------------------------------------------


def pg_url(schema: str) -> str:
    sep = "&" if "?" in POSTGRES_URL else "?"
    return f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'reg' / 'registry.db'}"
    return pg_url(request.getfixturevalue("pg_schema"))


@pytest.fixture
def registry(registry_url: str) -> Iterator[Registry]:
    reg = Registry.open(registry_url)
    yield reg
    reg.close()


def dump(registry: Registry) -> dict[str, list[str]]:
    """Every row of every registry table (and Alembic's), as sorted JSON lines."""
    out = {}
    with registry._engine.connect() as conn:
        for table in [*t.metadata.sorted_tables, sa.table("alembic_version", sa.column("version_num"))]:
            rows = conn.execute(sa.select(table)).all()
            out[table.name] = sorted(json.dumps(list(row), sort_keys=True, default=str) for row in rows)
    return out


# -- migrations ----------------------------------------------------------------------------------------


def test_migrations_apply_on_fresh_db_and_are_a_noop_the_second_time(registry_url: str) -> None:
    first = Registry.open(registry_url)
    try:
        assert first.migrated
        assert first.current_revision() == (HEAD_REVISION,)
        before = dump(first)
        assert before["alembic_version"] == [json.dumps([HEAD_REVISION])]
    finally:
        first.close()
    start = time.perf_counter()
    second = Registry.open(registry_url)
    elapsed = time.perf_counter() - start
    try:
        assert not second.migrated
        assert dump(second) == before
        assert elapsed < 2.0
    finally:
        second.close()


def test_head_revision_constant_matches_the_migration_scripts() -> None:
    revisions, heads = _script_revisions()
    assert heads == {HEAD_REVISION}
    assert HEAD_REVISION in revisions


def test_migrated_schema_matches_the_tables(registry: Registry) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with registry._engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diffs = [d for d in compare_metadata(ctx, t.metadata) if "alembic_version" not in repr(d)]
    assert diffs == []


def test_postgres_version_table_lives_in_the_registry_schema(pg_schema: str) -> None:
    with Registry.open(pg_url(pg_schema)) as reg, reg._engine.connect() as conn:
        schemas = conn.execute(
            sa.text("SELECT table_schema FROM information_schema.tables WHERE table_name = 'alembic_version'")
        ).scalars()
        assert pg_schema in set(schemas)
        tables = set(sa.inspect(conn).get_table_names(schema=pg_schema))
    assert {tb.name for tb in t.metadata.sorted_tables} | {"alembic_version"} <= tables


def test_postgres_missing_schema_is_created(pg_schema: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as con:
        con.execute(f'DROP SCHEMA "{pg_schema}"')
    with Registry.open(pg_url(pg_schema)) as reg:
        assert reg.migrated
        assert reg.current_revision() == (HEAD_REVISION,)


def test_default_url_is_a_sqlite_file_under_dot_fsql(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with Registry.open() as reg:
        assert reg.dialect == "sqlite"
    assert (tmp_path / ".fsql" / "registry.db").is_file()
    project_root = tmp_path / "project"
    with Registry.open("sqlite:///.fsql/registry.db", base_dir=project_root):
        pass
    assert (project_root / ".fsql" / "registry.db").is_file()


_OPEN_SCRIPT = """
import sys, time
from pathlib import Path
from fsql.registry import Registry
import alembic.command, alembic.script  # imported up front so that the opens really overlap
ready, go = Path(sys.argv[2]), Path(sys.argv[3])
ready.touch()
while not go.exists():
    time.sleep(0.001)
reg = Registry.open(sys.argv[1])
print(reg.current_revision()[0], reg.migrated)
reg.close()
"""


def test_concurrent_open_of_a_fresh_database(registry_url: str, tmp_path: Path) -> None:
    go = tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in range(3)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _OPEN_SCRIPT, registry_url, str(flag), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for flag in ready
    ]
    deadline = time.monotonic() + 120
    while not all(flag.exists() for flag in ready) and time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.01)
    go.touch()
    results = [p.communicate(timeout=120) for p in procs]
    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err
        assert out.split()[0] == HEAD_REVISION
    migrated = [out.split()[1] for out, _ in results]
    assert migrated.count("True") == 1  # the others waited for the lock, then found the schema current
    with Registry.open(registry_url) as reg:
        assert not reg.migrated
        assert reg.current_revision() == (HEAD_REVISION,)


def test_unreachable_postgres_is_a_clear_registry_error() -> None:
    with pytest.raises(RegistryError) as info:
        Registry.open("postgresql://fsql:hunter2@127.0.0.1:1/registry")
    message = str(info.value)
    assert "cannot connect to the registry database" in message
    assert "127.0.0.1:1/registry" in message
    assert "hunter2" not in message
    assert info.value.hint and "running" in info.value.hint


def test_unsupported_url_is_a_registry_error() -> None:
    with pytest.raises(RegistryError, match="unsupported"):
        Registry.open("mysql://user@localhost/db")


# -- apply ---------------------------------------------------------------------------------------------


def test_apply_adds_everything_then_is_idempotent(registry: Registry) -> None:
    project = make_project(
        make_view("spend", features=("spend", "orders")),
        make_view("profile", features=("age",), deps=("spend",)),
        sets=(make_set("churn", ("spend.spend", "profile.age")),),
        models=(Model("churn_model", "churn", path="models/churn.onnx", kind="onnx"),),
    )
    first = registry.apply(project, compiled={"spend": {"duckdb": "SELECT 1"}})
    assert first.views.added == ("profile", "spend")
    assert first.training_sets.added == ("churn",)
    assert first.entities.added == ("customer",)
    assert first.sources.added == ("labels", "orders")
    assert first.models.added == ("churn_model",)
    before = dump(registry)

    second = registry.apply(project, compiled={"spend": {"duckdb": "SELECT 1"}})
    assert not second.changed
    assert second.views.unchanged == ("profile", "spend")
    assert second.training_sets.unchanged == ("churn",)
    assert dump(registry) == before


def test_a_cache_sees_another_connections_write_at_the_next_validated_read(registry_url: str) -> None:
    """The cache skips the version query while a SQLite file's change counter stands still; a write
    through another connection (another process, as far as this one's write count can tell) must
    still be seen by the very next validated read, on SQLite and on PostgreSQL (no counter)."""
    from fsql.registry.cache import RegistryCache

    reader, writer = Registry.open(registry_url), Registry.open(registry_url)
    reader.local_writes = lambda: 0  # type: ignore[method-assign]  # blind to this process's writes
    try:
        cache = RegistryCache(reader, lambda r: sorted(r.snapshot().views))
        counter = reader.change_counter()
        assert (counter is None) == registry_url.startswith("postgresql")
        assert cache.get(0, validate=True) == []
        assert cache.get(0, validate=True) == []
        writer.apply(make_project(make_view("spend")))
        if counter is not None:
            assert reader.change_counter() != counter
        assert cache.get(0, validate=True) == ["spend"]
        writer.apply(make_project(make_view("spend"), make_view("profile", features=("age",))))
        assert cache.get(0, validate=True) == ["profile", "spend"]
        assert cache.get(0, validate=True) == ["profile", "spend"]
    finally:
        reader.close()
        writer.close()


def test_snapshot_returns_the_stored_definitions(registry: Registry) -> None:
    spend = make_view("spend", description="Spend per customer", ttl=timedelta(days=30, microseconds=7))
    churn = make_set("churn", ("spend.spend",))
    model = Model("m", "churn", entry_point="pkg.mod:predict")
    project = make_project(spend, sets=(churn,), models=(model,))
    assert registry.snapshot().views == {}
    registry.apply(project)
    snap = registry.snapshot()
    assert snap.project == "demo"
    assert snap.views == {"spend": spend.fingerprint}
    assert snap.training_sets == {"churn": churn.fingerprint}
    assert snap.view_definitions["spend"] == spend
    assert snap.training_set_definitions["churn"] == churn
    assert snap.entity_definitions == project.entities
    assert snap.source_definitions == project.sources
    assert snap.model_definitions == {"m": model}


def test_definitions_round_trip_through_json() -> None:
    view = make_view("v", ttl=timedelta(days=400, microseconds=1))
    assert from_json(FeatureView, json.loads(json.dumps(to_json(view)))) == view
    no_ttl = replace(view, ttl=None, created="loaded_at")
    assert from_json(FeatureView, to_json(no_ttl)) == no_ttl
    # Keys written by a newer fsql are ignored.
    assert from_json(FeatureView, {**to_json(view), "future_field": 1}) == view


def test_a_changed_view_adds_a_version_and_keeps_the_old(registry: Registry) -> None:
    v1 = make_view("spend")
    registry.apply(make_project(v1), compiled={"spend": {"duckdb": "SELECT 1"}})
    v2 = make_view("spend", sql="SELECT customer_id, ts, spend * 2 AS spend FROM orders")
    result = registry.apply(make_project(v2), compiled={"spend": {"duckdb": "SELECT 2"}})
    assert result.views.changed == ("spend",)
    assert v1.version != v2.version

    history = registry.view_history("spend")
    assert [h.version for h in history] == [v1.version, v2.version]
    assert [h.current for h in history] == [False, True]
    assert history[0].definition == v1
    assert history[0].compiled == {"duckdb": "SELECT 1"}
    assert history[1].compiled == {"duckdb": "SELECT 2"}
    assert registry.get_view("spend").version == v2.version

    with registry._engine.connect() as conn:
        versions = conn.execute(sa.select(t.features.c.version).where(t.features.c.view == "spend")).scalars()
        assert sorted(versions) == sorted([v1.version, v2.version])

    # Going back to the first definition reuses its version row.
    back = registry.apply(make_project(v1))
    assert back.views.changed == ("spend",)
    assert [h.version for h in registry.view_history("spend")] == [v1.version, v2.version]
    assert registry.get_view("spend").version == v1.version


def test_metadata_change_updates_in_place_without_a_new_version(registry: Registry) -> None:
    view = make_view("spend")
    registry.apply(make_project(view))
    moved = replace(view, owner="risk", path="features/finance/spend.sql", description="Moved")
    result = registry.apply(make_project(moved), compiled={"spend": {"postgres": "SELECT 1"}})
    assert result.views.updated == ("spend",)
    assert result.views.changed == ()
    record = registry.get_view("spend")
    assert (record.owner, record.path, record.description) == ("risk", "features/finance/spend.sql", "Moved")
    [only] = registry.view_history("spend")
    assert only.definition == moved
    assert only.compiled == {"postgres": "SELECT 1"}
    # Compiled SQL for one dialect does not erase another's.
    registry.apply(make_project(moved), compiled={"spend": {"duckdb": "SELECT 2"}})
    assert registry.view_history("spend")[0].compiled == {"postgres": "SELECT 1", "duckdb": "SELECT 2"}


def test_removal_keeps_history_and_a_view_can_come_back(registry: Registry) -> None:
    spend, profile = make_view("spend"), make_view("profile", features=("age",))
    registry.apply(make_project(spend, profile))
    result = registry.apply(make_project(spend))
    assert result.views.removed == ("profile",)
    assert [v.name for v in registry.list_views()] == ["spend"]
    assert registry.snapshot().views == {"spend": spend.fingerprint}
    gone = registry.get_view("profile")
    assert gone.removed_at is not None and gone.removed_at.tzinfo is not None
    assert [h.current for h in registry.view_history("profile")] == [False]
    assert [v.name for v in registry.list_views(include_removed=True)] == ["profile", "spend"]

    again = registry.apply(make_project(spend))
    assert again.views.removed == () and not again.changed

    back = registry.apply(make_project(spend, profile))
    assert back.views.added == ("profile",)
    assert registry.get_view("profile").removed_at is None


def test_removed_sources_entities_sets_and_models(registry: Registry) -> None:
    project = make_project(
        make_view("spend"), sets=(make_set("churn", ("spend.spend",)),), models=(Model("m", "churn"),)
    )
    registry.apply(project)
    bare = Project("demo", "duckdb", views={"spend": make_view("spend")})
    result = registry.apply(bare)
    assert result.training_sets.removed == ("churn",)
    assert result.models.removed == ("m",)
    assert result.entities.removed == ("customer",)
    assert result.sources.removed == ("labels", "orders")
    snap = registry.snapshot()
    assert (snap.training_sets, snap.models, snap.entities, snap.sources) == ({}, {}, {}, {})


def test_a_failing_transaction_leaves_every_table_as_before(registry: Registry) -> None:
    registry.apply(make_project(make_view("spend"), make_view("profile", features=("age",))))
    run = registry.start_run("spend", make_view("spend").version, T0, T0 + timedelta(days=1))
    registry.finish_run(run, rows=3, outcome="success", watermark=T0)
    before = dump(registry)

    changed = make_project(
        make_view("spend", sql="SELECT customer_id, ts, 1 AS spend FROM orders"),
        make_view("new", features=("x",)),
        sets=(make_set("churn", ("new.x",)),),
        models=(Model("m", "churn"),),
    )
    with pytest.raises(RuntimeError, match="warehouse failed"), registry.transaction() as tx:
        result = tx.apply(changed, compiled={"new": {"duckdb": "SELECT 1"}})
        assert result.views.changed == ("spend",) and result.views.removed == ("profile",)
        assert tx.snapshot().views.keys() == {"spend", "new"}
        raise RuntimeError("warehouse failed")
    assert dump(registry) == before
    with pytest.raises(RegistryError, match="ended"):
        tx.apply(changed)


def test_two_step_transaction_commits_on_clean_exit(registry: Registry) -> None:
    with registry.transaction() as tx:
        result = tx.apply(make_project(make_view("spend")))
        assert result.views.added == ("spend",)
    assert [v.name for v in registry.list_views()] == ["spend"]


def test_apply_rejects_views_without_fingerprint(registry: Registry) -> None:
    view = replace(make_view("spend"), fingerprint="")
    with pytest.raises(RegistryError, match="no fingerprint") as info:
        registry.apply(make_project(view))
    assert info.value.path == "features/spend.sql"
    assert registry.snapshot().views == {}


# -- reads ---------------------------------------------------------------------------------------------


def test_list_and_get_views(registry: Registry) -> None:
    registry.apply(
        make_project(make_view("spend", features=("spend", "orders"), description="Trailing spend"))
    )
    [record] = registry.list_views()
    assert record == registry.get_view("spend")
    assert record.entity == "customer" and record.keys == ("customer_id",)
    assert record.feature_names == ("spend", "orders")
    assert record.features[0].dtype == "DOUBLE"
    assert record.features[0].description == "the spend of a customer"
    assert record.ttl == timedelta(days=30)
    assert record.tags == ("finance",) and record.owner == "growth"
    assert record.updated_at.tzinfo == UTC
    assert record.watermark is None and record.last_materialized_at is None
    assert json.dumps(record.to_dict())
    with pytest.raises(NotFoundError) as info:
        registry.get_view("spnd")
    assert info.value.hint == "did you mean 'spend'?"


def test_training_sets(registry: Registry) -> None:
    churn = make_set("churn", ("spend.spend", "profile.age"))
    registry.apply(
        make_project(
            make_view("spend"),
            make_view("profile", features=("age",)),
            sets=(churn,),
            models=(Model("m", "churn"),),
        )
    )
    [record] = registry.list_training_sets()
    assert record == registry.get_training_set("churn")
    assert record.features == (FeatureRef("spend", "spend"), FeatureRef("profile", "age"))
    assert record.models == ("m",)
    assert record.version == churn.version
    with pytest.raises(NotFoundError):
        registry.get_training_set("nope")


def test_lineage_up_and_down(registry: Registry) -> None:
    spend = make_view("spend", features=("spend",), deps=("orders",))
    value = make_view("value", features=("value",), deps=("spend",))
    project = make_project(
        spend, value, sets=(make_set("churn", ("value.value",)),), models=(Model("m", "churn"),)
    )
    edges = [
        LineageEdge(
            downstream_name="spend",
            downstream_column="spend",
            upstream_kind="source",
            upstream_name="orders",
            upstream_column="amount",
        ),
        LineageEdge(
            downstream_name="value",
            downstream_column="value",
            upstream_kind="view",
            upstream_name="spend",
            upstream_column="spend",
        ),
    ]
    registry.apply(project, lineage=edges)
    before = dump(registry)
    registry.apply(project, lineage=edges)
    assert dump(registry) == before

    graph = registry.lineage("spend")
    assert graph.kind == "view" and graph.version == spend.version
    assert {(e.upstream_name, e.upstream_column, e.downstream_column) for e in graph.upstream} == {
        ("orders", None, None),
        ("orders", "amount", "spend"),
    }
    assert {(e.downstream_kind, e.downstream_name, e.downstream_column) for e in graph.downstream} == {
        ("view", "value", None),
        ("view", "value", "value"),
    }

    down = registry.lineage("spend", transitive=True).downstream
    assert {(e.downstream_kind, e.downstream_name) for e in down} == {
        ("view", "value"),
        ("training_set", "churn"),
        ("model", "m"),
    }
    up = registry.lineage("m", transitive=True).upstream
    assert {(e.upstream_kind, e.upstream_name) for e in up} == {
        ("training_set", "churn"),
        ("view", "value"),
        ("source", "labels"),
        ("view", "spend"),
        ("source", "orders"),
    }
    assert {e.downstream_name for e in registry.lineage("orders").downstream} == {"spend"}
    assert registry.lineage("orders").kind == "source"

    # Lineage follows current versions: a removed downstream drops out, history keeps its edges.
    registry.apply(make_project(spend))
    assert registry.lineage("spend").downstream == ()
    with pytest.raises(NotFoundError):
        registry.lineage("value")


def test_lineage_edges_must_name_project_objects(registry: Registry) -> None:
    edge = LineageEdge(downstream_name="ghost", upstream_kind="source", upstream_name="orders")
    with pytest.raises(RegistryError, match="ghost"):
        registry.apply(make_project(make_view("spend")), lineage=[edge])


def test_search_is_case_insensitive_over_names_descriptions_tags_and_features(registry: Registry) -> None:
    registry.apply(
        make_project(
            make_view(
                "customer_spend", features=("spend_30d",), tags=("Finance",), description="Trailing SPEND"
            ),
            make_view("profile", features=("age",), tags=("demographics",), description="Who they are"),
            sets=(make_set("churn", ("profile.age",)),),
        )
    )
    hits = registry.search("SPEND")
    assert [(h.kind, h.name) for h in hits] == [
        ("view", "customer_spend"),
        ("feature", "customer_spend.spend_30d"),
    ]
    assert hits[0].matched == ("name", "description", "features")
    assert [h.name for h in registry.search("finance")] == ["customer_spend"]
    assert [(h.kind, h.name) for h in registry.search("AGE")] == [
        ("feature", "profile.age"),
        ("view", "profile"),
        ("training_set", "churn"),
    ]
    assert registry.search("no such thing") == []


# -- materialization -----------------------------------------------------------------------------------


def test_materialization_state_survives_reapply(registry: Registry) -> None:
    v1 = make_view("spend")
    registry.apply(make_project(v1))
    run = registry.start_run("spend", v1.version, T0, T0 + timedelta(days=1))
    finished = registry.finish_run(run, rows=10, outcome="success", watermark=T0 + timedelta(days=1))
    assert finished.outcome == "success" and finished.rows == 10
    assert finished.duration_s is not None and finished.duration_s >= 0

    registry.apply(make_project(v1, make_view("other", features=("x",))))
    registry.apply(make_project(v1))
    assert registry.watermark("spend", v1.version) == T0 + timedelta(days=1)
    assert registry.get_view("spend").watermark == T0 + timedelta(days=1)
    assert registry.get_view("spend").last_materialized_at is not None

    # A new version starts its own state; the old version's state is kept.
    v2 = make_view("spend", sql="SELECT customer_id, ts, 2 AS spend FROM orders")
    registry.apply(make_project(v2))
    assert registry.watermark("spend", v2.version) is None
    assert registry.get_view("spend").watermark is None
    assert registry.watermark("spend", v1.version) == T0 + timedelta(days=1)
    assert [r.id for r in registry.runs("spend")] == [run]
    assert registry.runs("spend", v2.version) == []


def test_watermark_never_goes_backwards(registry: Registry) -> None:
    view = make_view("spend")
    registry.apply(make_project(view))
    v = view.version

    def run(watermark: datetime, outcome: str = "success") -> None:
        run_id = registry.start_run("spend", v, None, watermark)
        registry.finish_run(run_id, rows=1, outcome=outcome, watermark=watermark)  # type: ignore[arg-type]

    run(T0 + timedelta(hours=2))
    run(T0 + timedelta(hours=1))
    assert registry.watermark("spend", v) == T0 + timedelta(hours=2)
    run(T0 + timedelta(hours=5), outcome="failed")
    assert registry.watermark("spend", v) == T0 + timedelta(hours=2)
    run(T0 + timedelta(hours=3))
    assert registry.watermark("spend", v) == T0 + timedelta(hours=3)
    runs = registry.runs("spend", v, limit=2)
    assert [r.outcome for r in runs] == ["success", "failed"]
    assert len(registry.runs("spend")) == 4

    # Concurrent runs finishing in any order leave the greatest watermark.
    marks = [T0 + timedelta(hours=h) for h in (9, 4, 12, 7, 11, 6, 10, 8)]
    ids = [registry.start_run("spend", v, None, m) for m in marks]
    errors: list[BaseException] = []

    def finish(run_id: int, mark: datetime) -> None:
        try:
            registry.finish_run(run_id, rows=1, outcome="success", watermark=mark)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=finish, args=pair) for pair in zip(ids, marks, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert registry.watermark("spend", v) == T0 + timedelta(hours=12)


_example = itertools.count()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 1000), st.booleans()), min_size=1, max_size=6))
def test_watermark_is_the_greatest_successful_mark(registry: Registry, runs: list[tuple[int, bool]]) -> None:
    view = make_view(f"v{next(_example)}")  # a fresh view (and state) per example
    registry.apply(make_project(view))
    for minutes, ok in runs:
        mark = T0 + timedelta(minutes=minutes)
        run_id = registry.start_run(view.name, view.version, None, mark)
        registry.finish_run(run_id, rows=0, outcome="success" if ok else "failed", watermark=mark)
    successes = [T0 + timedelta(minutes=m) for m, ok in runs if ok]
    assert registry.watermark(view.name, view.version) == (max(successes) if successes else None)


def test_runs_record_errors_and_cannot_finish_twice(registry: Registry) -> None:
    view = make_view("spend")
    registry.apply(make_project(view))
    run_id = registry.start_run("spend", view.version, T0, None)
    [running] = registry.runs("spend")
    assert running.outcome == "running" and running.finished_at is None
    failed = registry.finish_run(run_id, rows=None, outcome="failed", error="boom", watermark=T0)
    assert (failed.outcome, failed.error) == ("failed", "boom")
    assert registry.watermark("spend", view.version) is None
    with pytest.raises(RegistryError, match="already finished"):
        registry.finish_run(run_id, rows=1, outcome="success")
    with pytest.raises(NotFoundError):
        registry.finish_run(10_000, rows=1, outcome="success")
    with pytest.raises(NotFoundError, match="fsql build"):
        registry.start_run("spend", "0" * 12, None, None)
    with pytest.raises(ValueError):
        registry.finish_run(run_id, rows=1, outcome="running")  # type: ignore[arg-type]


def test_datetimes_come_back_tz_aware_utc(registry: Registry) -> None:
    view = make_view("spend")
    registry.apply(make_project(view))
    plus_two = timezone(timedelta(hours=2))
    start = datetime(2024, 3, 1, 12, 0, 0, 123456, tzinfo=plus_two)
    naive_end = datetime(2024, 3, 2, 0, 0)  # naive means UTC
    run_id = registry.start_run("spend", view.version, start, naive_end)
    registry.finish_run(run_id, rows=1, outcome="success", watermark=start)
    [run] = registry.runs("spend")
    assert run.interval_start == start and run.interval_start.tzinfo == UTC
    assert run.interval_end == naive_end.replace(tzinfo=UTC)
    assert run.started_at.tzinfo == UTC and run.finished_at is not None
    mark = registry.watermark("spend", view.version)
    assert mark == start and mark is not None and mark.tzinfo == UTC
    assert mark.hour == 10 and mark.microsecond == 123456
