"""A DuckDB project copied or moved to another folder reads its own files (issue 9, item 7).

The warehouse's views read source paths relative to the project folder each connection names, and the
registry keeps where each source resolved at the last build, so a build in the new folder reports the
relocation, recreates the views and lets the next materialize recompute the online values.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from conftest import POSTGRES_URL

from fsql import Store
from fsql.errors import EngineError, FsqlError

T0 = datetime(2025, 6, 1, tzinfo=UTC)
END = T0 + timedelta(days=1)
TS = pa.timestamp("us", tz="UTC")

CONFIG = """
[project]
name = "moving"
dialect = "duckdb"

[warehouse]
engine = "duckdb"
path = ".fsql/warehouse.duckdb"
schema = "fsql"

[online]
store = "sqlite"
path = ".fsql/online.db"

[registry]
url = "sqlite:///.fsql/registry.db"

[entities.customer]
keys = ["customer_id"]

[sources.events]
path = "data/events.parquet"

[sources.parts]
path = "data/parts/*.parquet"
"""

SPEND = """\
-- @feature_view spend
-- @entity customer
-- @timestamp event_ts
SELECT customer_id, event_ts, amount FROM events
"""

BONUS = """\
-- @feature_view bonus
-- @entity customer
-- @timestamp event_ts
SELECT customer_id, event_ts, bonus FROM parts
"""

SET = """\
-- @training_set labels
-- @timestamp label_ts
-- @features spend.amount, bonus.bonus
SELECT * FROM (VALUES (1, TIMESTAMPTZ '2025-06-01 12:00:00+00'), (2, TIMESTAMPTZ '2025-06-01 12:00:00+00'))
  AS t(customer_id, label_ts)
"""


def write_data(root: Path, scale: float) -> None:
    """Two customers with one event each; ``scale`` makes every value of one folder distinct."""
    (root / "data" / "parts").mkdir(parents=True, exist_ok=True)
    times = pa.array([T0, T0], TS)
    ids = pa.array([1, 2], pa.int64())
    pq.write_table(pa.table({"customer_id": ids, "event_ts": times, "amount": pa.array([1.0 * scale, 2.0 * scale])}),
                   root / "data" / "events.parquet")
    pq.write_table(pa.table({"customer_id": ids, "event_ts": times, "bonus": pa.array([10.0 * scale, 20.0 * scale])}),
                   root / "data" / "parts" / "p1.parquet")


def make_project(root: Path, scale: float = 1.0) -> Path:
    (root / "features").mkdir(parents=True)
    (root / "fsql.toml").write_text(CONFIG)
    (root / "features" / "spend.sql").write_text(SPEND)
    (root / "features" / "bonus.sql").write_text(BONUS)
    (root / "features" / "labels.sql").write_text(SET)
    write_data(root, scale)
    return root


@pytest.fixture
def built(tmp_path: Path) -> Iterator[Path]:
    """A project built and materialized in ``tmp_path/original``; every store closed again."""
    root = make_project(tmp_path / "original")
    with Store(root) as store:
        store.build()
        store.materialize(end=END)
    yield root


def online(store: Store) -> dict[int, tuple[float, float]]:
    rows = store.online_dicts(["spend.amount", "bonus.bonus"], {"customer_id": [1, 2]}, now=END)
    return {r["customer_id"]: (r["amount"], r["bonus"]) for r in rows}


def offline(store: Store) -> dict[int, tuple[float, float]]:
    frame = store.training_set("labels")
    return {r["customer_id"]: (r["amount"], r["bonus"]) for r in frame.to_dicts()}


def test_a_copy_whose_data_changed_reads_and_serves_its_own_data(built: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(built, copy)
    write_data(copy, scale=100.0)
    with Store(copy) as store:
        # the views already read the copy's files, before any build
        assert offline(store) == {1: (100.0, 1000.0), 2: (200.0, 2000.0)}
        plan = store.plan()
        relocated = {c.name: c for c in plan.pending if c.kind == "source"}
        assert set(relocated) == {"events", "parts"}
        assert str(copy / "data" / "events.parquet") in relocated["events"].reasons[0]
        assert str(built / "data" / "events.parquet") in relocated["events"].reasons[0]
        result = store.build()
        assert result.built
        # the copied online store holds the original's values: the build made the next run recompute
        [spend, bonus] = sorted(store.materialize(end=END), key=lambda r: r.view, reverse=True)
        assert spend.start is None and bonus.start is None
        assert online(store) == {1: (100.0, 1000.0), 2: (200.0, 2000.0)}
        assert offline(store) == {1: (100.0, 1000.0), 2: (200.0, 2000.0)}
        assert not store.plan().pending
    with Store(built) as store:  # the original is untouched
        assert online(store) == {1: (1.0, 10.0), 2: (2.0, 20.0)}
        assert offline(store) == {1: (1.0, 10.0), 2: (2.0, 20.0)}
        assert not store.plan().pending


def test_a_moved_project_materializes_before_and_after_its_next_build(built: Path, tmp_path: Path) -> None:
    moved = tmp_path / "moved"
    built.rename(moved)
    with Store(moved) as store:
        # the warehouse's views find the files in the new folder: nothing is stuck on the old path
        [spend, bonus] = sorted(store.materialize(end=END + timedelta(hours=1)), key=lambda r: r.view, reverse=True)
        assert spend.outcome == bonus.outcome == "success"
        assert offline(store) == {1: (1.0, 10.0), 2: (2.0, 20.0)}
        assert {c.name for c in store.plan().pending} == {"events", "parts"}
        store.build()
        assert not store.plan().pending
        runs = store.materialize(end=END + timedelta(hours=2))
        assert {r.outcome for r in runs} == {"success"}
        assert online(store) == {1: (1.0, 10.0), 2: (2.0, 20.0)}


def test_a_registry_without_recorded_locations_gets_its_views_recreated(built: Path, tmp_path: Path) -> None:
    """A warehouse built by an older fsql has views reading absolute paths (here: the folder the project
    came from) and a registry that never recorded where sources resolved: the next build recreates
    the views."""
    old = make_project(tmp_path / "old", scale=5.0)
    con = duckdb.connect(str(built / ".fsql" / "warehouse.duckdb"))
    con.execute(f"CREATE OR REPLACE VIEW fsql.spend AS SELECT customer_id, event_ts, amount FROM "
                f"read_parquet('{old / 'data' / 'events.parquet'}')")
    con.close()
    registry = sa.create_engine(f"sqlite:///{built / '.fsql' / 'registry.db'}")
    with registry.begin() as conn:
        conn.execute(sa.text("UPDATE sources SET location = NULL"))
    registry.dispose()
    with Store(built) as store:
        # the old folder is not a source: refused, with what to do
        with pytest.raises(EngineError, match="disabled by configuration.*moved, run `fsql build`"):
            store.training_set("labels")
        reasons = {c.name: c.reasons[0] for c in store.plan().pending}
        assert "did not record" in reasons["events"]
        store.build()
        assert offline(store) == {1: (1.0, 10.0), 2: (2.0, 20.0)}
        assert not store.plan().pending


def test_a_duckdb_console_in_the_project_folder_reads_the_views(built: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(built)
    con = duckdb.connect(str(built / ".fsql" / "warehouse.duckdb"), read_only=True)
    try:
        assert con.execute("SELECT sum(amount) FROM fsql.spend").fetchone() == (3.0,)
        assert con.execute("SELECT sum(bonus) FROM fsql.bonus").fetchone() == (30.0,)
    finally:
        con.close()


def test_the_project_folder_variable_cannot_widen_the_locked_down_access(built: Path, tmp_path: Path) -> None:
    """Pointing the connection's project folder elsewhere reads nothing there: the lock-down still
    allows only the declared sources of the project's real folder."""
    elsewhere = make_project(tmp_path / "elsewhere", scale=7.0)
    with Store(built) as store:
        with pytest.raises(FsqlError, match="disabled by configuration"):
            store.query(f"SET VARIABLE fsql_root = '{elsewhere}'; SELECT * FROM spend")
        frame = store.query("SELECT sum(amount) AS total FROM spend")
        assert frame.to_dicts() == [{"total": 3.0}]
    assert pl.read_parquet(elsewhere / "data" / "events.parquet")["amount"].sum() == 21.0


def test_postgres_reads_the_copy_it_loaded_so_a_move_changes_no_plan(tmp_path: Path, pg_schema: str) -> None:
    """PostgreSQL views read the tables a build loaded the files into: where the files lie does not
    change what they read, and builds from several checkouts of one registry must not fight."""
    warehouse = {"engine": "postgres", "url": POSTGRES_URL, "schema": pg_schema}
    root = make_project(tmp_path / "original")
    with Store(root, warehouse=warehouse) as store:
        store.build()
        store.materialize(end=END)
    moved = tmp_path / "moved"
    root.rename(moved)
    with Store(moved, warehouse=warehouse) as store:
        assert not store.plan().pending
        store.build()
        assert [r.outcome for r in store.materialize(end=END)] == ["skipped", "skipped"]  # watermarks kept
        assert offline(store) == {1: (1.0, 10.0), 2: (2.0, 20.0)}


def test_a_registry_from_before_locations_and_run_owners_upgrades_in_place(built: Path) -> None:
    """Revision 0003 on a registry holding rows: they survive with no location and no run owner, an
    old 'running' run is left alone (its process cannot be judged), and the next build records where
    the sources resolve."""
    from alembic import command
    from alembic.config import Config

    from fsql.registry import Registry
    from fsql.registry.registry import HEAD_REVISION, MIGRATIONS_DIR

    url = f"sqlite:///{built / '.fsql' / 'registry.db'}"
    with Store(built) as store:
        version = store.definition("spend").version
        store._ctx.registry.start_run("spend", version, None, END)  # left running, like an old crash
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.attributes["connection"] = conn
        command.downgrade(config, "0002")
    with engine.connect() as conn:
        assert "location" not in {c["name"] for c in sa.inspect(conn).get_columns("sources")}
        runs_before = conn.execute(sa.text("SELECT id, outcome FROM materialization_runs WHERE view = 'spend' ORDER BY id")).all()
    engine.dispose()

    with Registry.open(url) as reg:
        assert reg.migrated and reg.current_revision() == (HEAD_REVISION,)
        runs = reg.runs("spend")
        assert sorted((r.id, r.outcome) for r in runs) == [tuple(r) for r in runs_before]
        assert all(r.pid is None and r.host is None for r in runs)
        assert reg.fail_interrupted_runs() == []
        assert reg.snapshot().source_locations == {"events": None, "parts": None}
    with Store(built) as store:
        assert {c.name for c in store.plan().pending} == {"events", "parts"}
        store.build()
        assert store._ctx.registry.snapshot().source_locations == {
            "events": str(built / "data" / "events.parquet"), "parts": str(built / "data" / "parts" / "*.parquet")}
