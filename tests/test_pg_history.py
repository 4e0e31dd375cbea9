"""PostgreSQL's persisted view history (``<view>__history``): refreshed by difference, never rewritten
by a run with nothing new, serialized per view and schema, and indexes on loaded sources.

The reference for every refresh is the view itself: after a refresh the history holds exactly the
view's rows, as a multiset (``SELECT * FROM view``), whatever changed in between.
"""

from __future__ import annotations

import math
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import POSTGRES_URL, unique_name
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fsql.compiler.indexes import source_indexes
from fsql.compiler.views import volatile_calls
from fsql.engines import HistoryInputs
from fsql.engines.postgres import PostgresEngine
from fsql.errors import ContentionError
from tests.service_adapter import Service
from tests.test_materialize import T0, T1, T2, events_table, history, spend_sql

LIVE_CONFIG = """
[project]
name = "live"
dialect = "duckdb"

[entities.customer]
keys = ["customer_id"]

[sources.events]
table = "{schema}.events"
"""

WINDOWED = """\
-- @feature_view spend
-- @entity customer
-- @timestamp event_ts
-- @created loaded_at
-- Each order with the customer's spend over the previous day.
SELECT customer_id, event_ts, loaded_at, amount,
       SUM(amount) OVER (PARTITION BY customer_id ORDER BY event_ts
                         RANGE BETWEEN INTERVAL 1 DAY PRECEDING AND CURRENT ROW) AS spend_1d
FROM events
"""


def rows_of(pg: psycopg.Connection, schema: str, relation: str) -> list[tuple[Any, ...]]:
    """Every row, as a sorted multiset (NaN made comparable)."""
    rows = pg.execute(f'SELECT * FROM "{schema}"."{relation}"').fetchall()
    key = [tuple("NaN" if isinstance(v, float) and math.isnan(v) else v for v in row) for row in rows]
    return sorted(key, key=repr)


def identities(pg: psycopg.Connection, schema: str, relation: str) -> dict[str, str]:
    """Each row's physical identity (ctid) and writing transaction (xmin), by row text."""
    return {r[0]: f"{r[1]}/{r[2]}" for r in pg.execute(
        f'SELECT CAST(ROW(h.*) AS TEXT), CAST(h.ctid AS TEXT), CAST(h.xmin AS TEXT) FROM "{schema}"."{relation}" AS h')}


def file_project(tmp_path: Path, schema: str) -> Service:
    root = tmp_path / "project"
    (root / "features").mkdir(parents=True)
    (root / "fsql.toml").write_text(LIVE_CONFIG.replace('table = "{schema}.events"', 'path = "events.parquet"'))
    (root / "features" / "spend.sql").write_text(spend_sql())
    pq.write_table(events_table(history(30)), root / "events.parquet")
    return Service.open(root, {
        "warehouse": {"engine": "postgres", "url": POSTGRES_URL, "schema": schema},
        "registry": {"url": f"sqlite:///{tmp_path / 'registry.db'}"},
        "online": {"store": "sqlite", "path": str(tmp_path / "online.db")},
    })


def live_project(tmp_path: Path, schema: str, view: str) -> Service:
    """A project whose source is a table other processes write to (no build sees a change)."""
    root = tmp_path / "project"
    (root / "features").mkdir(parents=True)
    (root / "fsql.toml").write_text(LIVE_CONFIG.format(schema=schema))
    (root / "features" / "spend.sql").write_text(view)
    return Service.open(root, {
        "warehouse": {"engine": "postgres", "url": POSTGRES_URL, "schema": schema},
        "registry": {"url": f"sqlite:///{tmp_path / 'registry.db'}"},
        "online": {"store": "sqlite", "path": str(tmp_path / "online.db")},
    })


def create_events(pg: psycopg.Connection, schema: str, rows: list[dict[str, Any]]) -> None:
    pg.execute(f'CREATE TABLE "{schema}".events (customer_id BIGINT, event_ts TIMESTAMPTZ, loaded_at TIMESTAMPTZ, '
               "amount DOUBLE PRECISION, note TEXT, code TEXT)")
    insert(pg, schema, rows)


def insert(pg: psycopg.Connection, schema: str, rows: list[dict[str, Any]]) -> None:
    with pg.cursor() as cur:
        cur.executemany(f'INSERT INTO "{schema}".events VALUES (%s, %s, %s, %s, %s, %s)',
                        [(r["customer_id"], r["event_ts"], r["loaded_at"], r["amount"], r["note"], r["code"])
                         for r in rows])


# -- a run with nothing new writes nothing -----------------------------------------------------------


def test_a_run_with_nothing_new_leaves_the_history_untouched(tmp_path: Path, pg_schema: str, pg) -> None:
    service = file_project(tmp_path, pg_schema)
    try:
        service.build()
        service.materialize(end=T1)
        before = identities(pg, pg_schema, "spend__history")
        assert len(before) == 30 * 4
        # a rewrite (DELETE + INSERT, or a merge that touched every row) gives every row a new ctid/xmin
        assert service.ctx.refresh_history(service.definitions()[0]["spend"]) == "unchanged"
        stats = {r.feature: r.stats for r in service.registry.stats("spend", scope="latest")}
        service.materialize(end=T2)
        assert identities(pg, pg_schema, "spend__history") == before
        # what is served did not change: the statistics hold, now as of the run's end
        after_run = service.registry.stats("spend", scope="latest")
        assert {r.feature: r.stats for r in after_run} == stats and {r.as_of for r in after_run} == {T2}
        # --full still rewrites everything
        service.materialize(end=T2, full=True)
        after = identities(pg, pg_schema, "spend__history")
        assert set(after) == set(before) and all(after[k] != before[k] for k in before)
        assert rows_of(pg, pg_schema, "spend__history") == rows_of(pg, pg_schema, "spend")
    finally:
        service.close()


def all_visible(pg: psycopg.Connection, schema: str, table: str) -> bool:
    """Whether every page of ``table`` is marked all-visible (what lets an index-only scan skip the heap)."""
    pages, visible = pg.execute(
        "SELECT relpages, relallvisible FROM pg_class WHERE oid = %s::regclass", [f'"{schema}"."{table}"']
    ).fetchone()
    return pages > 0 and visible == pages


def test_a_written_history_is_vacuumed_after_its_transaction(tmp_path: Path, pg_schema: str, pg) -> None:
    """A history created by a build (inside the build's transaction) or rewritten by a materialization
    is vacuumed once the transaction commits, so the PIT join's index-only probes never read the heap."""
    service = file_project(tmp_path, pg_schema)
    try:
        service.build()
        assert all_visible(pg, pg_schema, "spend__history")
        service.materialize(end=T1, full=True)
        assert all_visible(pg, pg_schema, "spend__history")
    finally:
        service.close()


def test_a_view_calling_now_is_compared_on_every_refresh(tmp_path: Path, pg_schema: str, pg) -> None:
    service = file_project(tmp_path, pg_schema)
    try:
        service.build()
        views = service.definitions()[0]
        assert service.ctx.history_inputs(views["spend"], views) == HistoryInputs(("spend",), ("events",))
        (service.config.root / "features" / "spend.sql").write_text(
            spend_sql().replace("AS code_num", "AS code_num, event_ts < now() - INTERVAL 1 DAY AS old"))
        service.build()
        views = service.definitions()[0]
        assert service.ctx.history_inputs(views["spend"], views) is None
        # its rows change with the clock alone: never trusted as unchanged, merged (here: nothing to write)
        before = identities(pg, pg_schema, "spend__history")
        assert [service.ctx.refresh_history(views["spend"]) for _ in range(2)] == ["merged", "merged"]
        assert identities(pg, pg_schema, "spend__history") == before
    finally:
        service.close()


def test_volatile_calls_are_found_wherever_they_are_written() -> None:
    import sqlglot

    sql = ("SELECT now(), age(x), age(a, b), random(), current_date, sum(y) OVER w, "
           "(SELECT max(t) FROM s WHERE t < current_timestamp) FROM r")
    assert volatile_calls(sqlglot.parse_one(sql, read="duckdb")) == [
        "NOW()", "AGE(x)", "RAND()", "CURRENT_DATE", "CURRENT_TIMESTAMP()"]
    assert volatile_calls(sqlglot.parse_one("SELECT date_trunc('day', t), age(a, b) FROM r", read="duckdb")) == []


# -- a late row reaches the history by difference ----------------------------------------------------


@pytest.mark.parametrize("view", [spend_sql(), WINDOWED], ids=["rowwise", "windowed"])
def test_a_late_row_reaches_the_history_incrementally(tmp_path: Path, pg_schema: str, pg, view: str) -> None:
    rows = history(20)
    create_events(pg, pg_schema, rows)
    service = live_project(tmp_path, pg_schema, view)
    try:
        service.build()
        service.materialize(end=T1)
        before = identities(pg, pg_schema, "spend__history")
        # a correction of customer 3's last order: the same event time, loaded later, another amount
        last = max((r for r in rows if r["customer_id"] == 3), key=lambda r: r["event_ts"])
        late = dict(last, loaded_at=T1 + timedelta(minutes=10), amount=-1.0, note="corrected")
        insert(pg, pg_schema, [late])
        assert service.ctx.refresh_history(service.definitions()[0]["spend"]) == "merged"
        assert rows_of(pg, pg_schema, "spend__history") == rows_of(pg, pg_schema, "spend")
        after = identities(pg, pg_schema, "spend__history")
        assert len(after) == len(before) + 1
        # rows the late row does not change keep their place: nothing was rewritten
        kept = [k for k in before if not k.startswith("(3,")]
        assert kept and all(after.get(k) == before[k] for k in kept)
        # served online as a training set sees it; in the row-wise view the correction wins the tie
        # at its event time (in the windowed one the row it corrects is known as late, and ranks first)
        service.materialize(end=T2)
        online = service.online("spend", {"customer_id": [3]}, now=T2, as_dicts=True)[0]
        spine = pa.table({"customer_id": pa.array([3], pa.int64()), "ts": pa.array([T2], pa.timestamp("us", tz="UTC"))})
        offline = service.training_set(features=["spend.amount"], spine=spine, timestamp="ts").to_pylist()
        assert online["amount"] == offline[0]["amount"]
        if view == spend_sql():
            assert online["amount"] == -1.0
        # and with nothing new the next refresh writes nothing
        again = identities(pg, pg_schema, "spend__history")
        service.materialize(end=T2 + timedelta(minutes=1))
        assert identities(pg, pg_schema, "spend__history") == again
    finally:
        service.close()


_VALUES = st.one_of(st.none(), st.just(float("nan")), st.sampled_from([0.0, 1.5, -2.0]))
_ROW = st.tuples(st.integers(1, 4), st.integers(0, 3), _VALUES)
_STEP = st.tuples(st.sampled_from(["insert", "delete", "update"]), st.lists(_ROW, max_size=6))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(initial=st.lists(_ROW, max_size=12), steps=st.lists(_STEP, min_size=1, max_size=4))
def test_a_merged_history_always_equals_the_view(pg_schema: str, pg, initial, steps) -> None:
    """Property: after any inserts, deletes and updates of a live table (duplicates, NULLs and NaN
    included), a refresh by difference leaves exactly the view's rows; a window makes one change
    move the values of other rows."""
    pg.execute(f'DROP TABLE IF EXISTS "{pg_schema}".t CASCADE')
    pg.execute(f'DROP TABLE IF EXISTS "{pg_schema}".w__history')
    pg.execute(f'CREATE TABLE "{pg_schema}".t (k INT, ts INT, x DOUBLE PRECISION)')
    pg.execute(f'CREATE VIEW "{pg_schema}".w AS SELECT k, ts, x, SUM(x) OVER (PARTITION BY k ORDER BY ts) AS s '
               f'FROM "{pg_schema}".t')
    engine = PostgresEngine(POSTGRES_URL, pg_schema, Path("."))
    try:
        def write(rows: list[tuple[int, int, float | None]]) -> None:
            with pg.cursor() as cur:
                cur.executemany(f'INSERT INTO "{pg_schema}".t VALUES (%s, %s, %s)', rows)

        write(initial)
        assert engine.refresh_history("w", None, recreate=True) == "created"
        for action, rows in steps:
            if action == "insert":
                write(rows)
            elif action == "delete":
                for k, ts, _ in rows:
                    pg.execute(f'DELETE FROM "{pg_schema}".t WHERE k = %s AND ts = %s', [k, ts])
            else:
                for k, ts, x in rows:
                    pg.execute(f'UPDATE "{pg_schema}".t SET x = %s WHERE k = %s AND ts = %s', [x, k, ts])
            engine.refresh_history("w", None)
            assert rows_of(pg, pg_schema, "w__history") == rows_of(pg, pg_schema, "w")
    finally:
        engine.close()


# -- overlapping refreshes and builds take turns -----------------------------------------------------


def test_overlapping_refreshes_of_one_view_leave_no_duplicate(pg_schema: str, pg) -> None:
    pg.execute(f'CREATE TABLE "{pg_schema}".t AS SELECT g AS k, g * 0.5 AS x FROM generate_series(1, 20000) AS g')
    pg.execute(f'CREATE VIEW "{pg_schema}".v AS SELECT k, x FROM "{pg_schema}".t')
    setup = PostgresEngine(POSTGRES_URL, pg_schema, Path("."))
    setup.refresh_history("v", None, recreate=True)
    setup.close()
    barrier = threading.Barrier(3)
    errors: list[BaseException] = []

    def refresh(full: bool) -> None:
        engine = PostgresEngine(POSTGRES_URL, pg_schema, Path("."))
        try:
            for _ in range(3):
                barrier.wait()
                engine.refresh_history("v", None, full=full)
        except BaseException as e:  # reported by the assertion below
            errors.append(e)
        finally:
            engine.close()

    threads = [threading.Thread(target=refresh, args=(full,)) for full in (True, True, False)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    assert pg.execute(f'SELECT count(*) FROM "{pg_schema}".v__history').fetchone()[0] == 20000
    assert rows_of(pg, pg_schema, "v__history") == rows_of(pg, pg_schema, "v")


def test_a_refresh_that_cannot_get_its_turn_says_so_in_one_line(pg_schema: str, pg) -> None:
    pg.execute(f'CREATE VIEW "{pg_schema}".v AS SELECT 1 AS k')
    holder = PostgresEngine(POSTGRES_URL, pg_schema, Path("."))
    waiter = PostgresEngine(POSTGRES_URL, pg_schema, Path("."), lock_wait=0.3)
    try:
        with holder.transaction():
            holder.hold_lock("history:v", doing="a refresh of the history of view 'v'")
            with pytest.raises(ContentionError) as caught:
                waiter.refresh_history("v", None)
        message = str(caught.value)
        assert "\n" not in message
        assert "refresh of the history of view 'v' is already running" in message
        pid = holder.arrow("SELECT pg_backend_pid() AS p").column(0)[0].as_py()
        assert f"backend {pid}" in message and "run the command again" in message
        # the lock went with the holder's transaction: the waiter's turn comes
        assert waiter.refresh_history("v", None) == "created"
    finally:
        holder.close()
        waiter.close()


def test_two_builds_into_a_new_schema_take_turns(tmp_path: Path) -> None:
    schema = unique_name("fsqltest")
    services = []
    for i in range(2):
        root = tmp_path / f"p{i}"
        (root / "features").mkdir(parents=True)
        (root / "fsql.toml").write_text(LIVE_CONFIG.replace('table = "{schema}.events"', 'path = "events.parquet"'))
        (root / "features" / "spend.sql").write_text(spend_sql())
        pq.write_table(events_table(history(200)), root / "events.parquet")
        services.append(Service.open(root, {
            "warehouse": {"engine": "postgres", "url": POSTGRES_URL, "schema": schema},
            "registry": {"url": f"sqlite:///{tmp_path / f'registry{i}.db'}"},
            "online": {"store": "sqlite", "path": str(tmp_path / f"online{i}.db")},
        }))
    for service in services:
        # opened here: Alembic's migration of each new registry is not thread-safe
        assert service.registry is not None and service.engine is not None
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def build(service: Service) -> None:
        barrier.wait()
        try:
            service.build()
            outcomes.append("built")
        except ContentionError as e:
            outcomes.append(f"contention: {e}")
        except Exception as e:  # the raw duplicate-key error this test guards against
            outcomes.append(f"{type(e).__name__}: {e}")

    try:
        threads = [threading.Thread(target=build, args=(s,)) for s in services]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert len(outcomes) == 2
        assert all(o == "built" or (o.startswith("contention: ") and "\n" not in o) for o in outcomes), outcomes
        assert "built" in outcomes
        with psycopg.connect(POSTGRES_URL) as con:
            count = con.execute(f'SELECT count(*) FROM "{schema}".spend__history').fetchone()[0]
        assert count == 200 * 4
    finally:
        for service in services:
            service.close()
        with psycopg.connect(POSTGRES_URL, autocommit=True) as con:
            con.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


# -- indexes on loaded sources -----------------------------------------------------------------------


def test_loaded_sources_get_the_index_their_asof_join_probes(tmp_path: Path, pg_schema: str, pg) -> None:
    root = tmp_path / "project"
    (root / "features").mkdir(parents=True)
    (root / "fsql.toml").write_text(LIVE_CONFIG.replace('table = "{schema}.events"', 'path = "events.parquet"')
                                    + '\n[sources.rates]\npath = "rates.parquet"\n')
    (root / "features" / "usd.sql").write_text(
        "-- @feature_view usd\n-- @entity customer\n-- @timestamp event_ts\n"
        "SELECT e.customer_id, e.event_ts, e.amount * r.rate AS usd\n"
        "FROM events AS e ASOF LEFT JOIN rates AS r ON e.note = r.currency AND e.event_ts >= r.rate_ts\n")
    pq.write_table(events_table(history(5)), root / "events.parquet")
    pq.write_table(pa.table({"currency": ["n0", "n1"], "rate_ts": pa.array([T0 - timedelta(days=2)] * 2,
                                                                             pa.timestamp("us", tz="UTC")),
                             "rate": [1.0, 2.0]}), root / "rates.parquet")
    service = Service.open(root, {
        "warehouse": {"engine": "postgres", "url": POSTGRES_URL, "schema": pg_schema},
        "registry": {"url": f"sqlite:///{tmp_path / 'registry.db'}"},
        "online": {"store": "sqlite", "path": str(tmp_path / "online.db")},
    })
    try:
        service.build()
        indexes = pg.execute("SELECT tablename, indexdef FROM pg_indexes WHERE schemaname = %s AND tablename LIKE 'src%%'",
                             [pg_schema]).fetchall()
        assert [(t, d.split(" USING btree ")[1]) for t, d in indexes] == [("src__rates", "(currency, rate_ts)")]
        assert not service.build().built  # nothing changed, nothing to index
        # a warehouse built before sources were indexed gets the index at its next build
        pg.execute(f'DROP INDEX "{pg_schema}"."__fsql_src__rates__currency__rate_ts"')
        assert service.build().built
        assert pg.execute("SELECT count(*) FROM pg_indexes WHERE schemaname = %s AND tablename = 'src__rates'",
                          [pg_schema]).fetchone()[0] == 1
    finally:
        service.close()


def test_source_indexes_come_from_join_conditions_only() -> None:
    import sqlglot

    orders, rates = (sqlglot.exp.table_(n, db="s", quoted=True) for n in ("src__orders", "src__rates"))
    query = sqlglot.parse_one(
        'SELECT * FROM "s"."src__orders" AS o JOIN "s"."src__rates" AS r ON o.cur = r.cur AND r.day = o.day '
        "WHERE o.amount > 5 AND o.status = 'x'", read="postgres")
    sql = [c.sql("postgres") for c in source_indexes([query], [orders, rates], "postgres")]
    # the constant filters on orders are no lookup; both equalities of the join are, in name order
    assert sql == ['CREATE INDEX IF NOT EXISTS "__fsql_src__rates__cur__day" ON "s"."src__rates"(cur, day)']
    assert source_indexes([query], [orders, rates], "duckdb") == []
