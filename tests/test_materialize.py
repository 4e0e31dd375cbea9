"""Materialization (DESIGN.md section 4): incremental windows, watermarks, --full, backfills,
idempotence, versioned keyspaces, concurrent runs, and the CLI round trip ``fsql materialize`` /
``fsql get`` / ``fsql training-set``.

Every test uses an explicit run end and read time (``end=`` / ``now=``) except the CLI test, which
is about the wall-clock defaults. Projects are written into tmp dirs; ``Project`` below is also used
by test_faults.py.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
from conftest import POSTGRES_URL, REDIS_URL
from typer.testing import CliRunner

from fsql.errors import MaterializationError
from fsql.online import open_online_store
from fsql.online.base import online_table_of
from tests.service_adapter import Service

TS = pa.timestamp("us", tz="UTC")
T0 = datetime(2025, 6, 1, tzinfo=UTC)
T1 = T0 + timedelta(hours=1)
T2 = T1 + timedelta(hours=1)
T3 = T2 + timedelta(hours=1)

CONFIG = """
[project]
name = "mat"
dialect = "duckdb"

[warehouse]
engine = "duckdb"
path = ".fsql/warehouse.duckdb"
schema = "fsql"

[entities.customer]
keys = ["customer_id"]

[sources.events]
path = "events.parquet"
"""

SPEND = """\
-- @feature_view spend
-- @entity customer
-- @timestamp event_ts
-- @created loaded_at{ttl}
-- The latest order of a customer; code_num fails to compute when a code is not a number.
SELECT customer_id, event_ts, loaded_at, amount {scale} AS amount, note, CAST(code AS INTEGER) AS code_num
FROM events
"""


def spend_sql(scale: str = "", ttl: str | None = None) -> str:
    return SPEND.format(scale=scale, ttl=f"\n-- @ttl {ttl}" if ttl else "")


def event(
    cid: int, ts: datetime, loaded: datetime | None, amount: float, note: str | None = "", code: str = "1"
) -> dict[str, Any]:
    return {
        "customer_id": cid,
        "event_ts": ts,
        "loaded_at": loaded,
        "amount": amount,
        "note": note,
        "code": code,
    }


def events_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.table(
        {
            "customer_id": pa.array([r["customer_id"] for r in rows], pa.int64()),
            "event_ts": pa.array([r["event_ts"] for r in rows], TS),
            "loaded_at": pa.array([r["loaded_at"] for r in rows], TS),
            "amount": pa.array([r["amount"] for r in rows], pa.float64()),
            "note": pa.array([r["note"] for r in rows], pa.string()),
            "code": pa.array([r["code"] for r in rows], pa.string()),
        }
    )


def history(customers: int, per_customer: int = 4) -> list[dict[str, Any]]:
    """Rows for customers 1..n, all known by T1: events spread over the day before T0, loaded 5
    minutes after the event; amounts encode (customer, row) so every value is distinct."""
    rows = []
    for cid in range(1, customers + 1):
        for j in range(per_customer):
            ts = T0 - timedelta(hours=24) + timedelta(minutes=(cid * 7 + j * 331) % 1400)
            rows.append(event(cid, ts, ts + timedelta(minutes=5), cid * 1000 + j + 0.5, note=f"n{j}"))
    return rows


class Project:
    """A tiny project in a tmp dir: one source ``events`` and the ``spend`` view."""

    def __init__(
        self, root: Path, overrides: dict[str, dict[str, Any]], *, store: str, prefix: str | None = None
    ) -> None:
        self.root = root
        self.overrides = overrides
        self.store = store
        self.prefix = prefix
        self.rows: list[dict[str, Any]] = []
        self._services: list[Service] = []
        (root / "features").mkdir(parents=True, exist_ok=True)
        (root / "fsql.toml").write_text(CONFIG)
        self.write_view(spend_sql())

    def write_view(self, text: str) -> None:
        (self.root / "features" / "spend.sql").write_text(text)

    def write(self, rows: list[dict[str, Any]]) -> None:
        self.rows = list(rows)
        pq.write_table(events_table(self.rows), self.root / "events.parquet")

    def append(self, rows: list[dict[str, Any]]) -> None:
        self.write(self.rows + rows)

    def service(self) -> Service:
        service = Service.open(self.root, self.overrides)
        self._services.append(service)
        return service

    def build(self, service: Service) -> None:
        # PostgreSQL holds file sources as tables that a build loads; force it so new rows are seen
        service.build(force=service.engine.dialect == "postgres")

    def close(self) -> None:
        for service in self._services:
            service.close()

    def dump(self) -> dict[Any, Any]:
        """Every stored online value, raw, of every view version."""
        if self.store == "redis":
            client = redis.Redis.from_url(REDIS_URL)
            try:
                keys = sorted(client.scan_iter(match=f"{self.prefix}:*", count=1000))
                # a version's state key (its namespace without the colon) records runs, not values
                keys = [k for k in keys if not any(other.startswith(k + b":") for other in keys)]
                values = client.mget(keys) if keys else []
                # which generation holds the values is the store's business, not what it serves
                return {re.sub(rb":%g\d+:", b":", k): v for k, v in zip(keys, values, strict=True)}
            finally:
                client.close()
        path = self.overrides["online"]["path"]
        con = sqlite3.connect(path)
        try:
            out: dict[Any, Any] = {}
            tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            for table in tables:
                for row in con.execute(f'SELECT k, event_ts, created, payload FROM "{table}" ORDER BY k'):
                    out[(table, row[0])] = row[1:]
            return out
        finally:
            con.close()


COMBOS = ["duckdb-sqlite", "duckdb-redis", "postgres-redis"]


def make_project(request: pytest.FixtureRequest, tmp_path: Path, combo: str) -> Project:
    overrides: dict[str, dict[str, Any]] = {"registry": {"url": f"sqlite:///{tmp_path / 'registry.db'}"}}
    if combo.startswith("postgres"):
        schema = request.getfixturevalue("pg_schema")
        overrides["warehouse"] = {"engine": "postgres", "url": POSTGRES_URL, "schema": schema}
    prefix = None
    if combo.endswith("redis"):
        prefix = request.getfixturevalue("redis_prefix")
        overrides["online"] = {"store": "redis", "url": REDIS_URL, "prefix": prefix}
        store = "redis"
    else:
        overrides["online"] = {"store": "sqlite", "path": str(tmp_path / "online.db")}
        store = "sqlite"
    return Project(tmp_path / "project", overrides, store=store, prefix=prefix)


@pytest.fixture(params=COMBOS)
def project(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Project]:
    p = make_project(request, tmp_path, request.param)
    yield p
    p.close()


@pytest.fixture
def duck_project(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Project]:
    p = make_project(request, tmp_path, "duckdb-sqlite")
    yield p
    p.close()


# --- checks ----------------------------------------------------------------------------------------


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b if a is not None and b is not None else a is None and b is None


def online_rows(service: Service, ids: list[int], now: datetime) -> list[dict[str, Any]]:
    return service.online("spend", {"customer_id": ids}, now=now, as_dicts=True)


def assert_no_skew(service: Service, ids: list[int], now: datetime) -> list[dict[str, Any]]:
    """online(now) equals the training set with spine (id, now) for every id, and every status is
    the one the PIT rules give on the source rows; returns the online rows."""
    online = online_rows(service, ids, now)
    spine = pa.table({"customer_id": pa.array(ids, pa.int64()), "ts": pa.array([now] * len(ids), TS)})
    offline = service.training_set(features=["spend.*"], spine=spine, timestamp="ts").to_pylist()
    features = ["amount", "note", "code_num"]
    bad = [
        (on["customer_id"], f, on[f], on[f + "__status"], off[f])
        for on, off in zip(online, offline, strict=True)
        for f in features
        if not same(on[f], off[f])
    ]
    assert not bad, f"online != training set at {now} (id, feature, online, status, offline): {bad[:10]}"
    expected = expected_statuses(service, ids, now)
    wrong = [
        (on["customer_id"], f, on[f + "__status"], want)
        for on, want in zip(online, expected, strict=True)
        for f in features
        if on[f + "__status"] != want
    ]
    assert not wrong, f"statuses at {now} (id, feature, online, PIT rules): {wrong[:10]}"
    return online


def expected_statuses(service: Service, ids: list[int], now: datetime) -> list[str]:
    """Per id, from the source file: 'missing' without a row known at ``now`` (rules 1 and 3),
    'stale' when the newest such row is older than the view's TTL (rule 2), else 'present'."""
    ttl = service.definitions()[0]["spend"].ttl
    newest: dict[int, datetime] = {}
    for row in pq.read_table(service.config.root / "events.parquet").to_pylist():
        ts, known = row["event_ts"], row["loaded_at"]
        if ts is not None and ts <= now and (known is None or known <= now):
            newest[row["customer_id"]] = max(ts, newest.get(row["customer_id"], ts))
    return [
        "missing" if c not in newest else "stale" if ttl is not None and newest[c] < now - ttl else "present"
        for c in ids
    ]


def run_rows(service: Service) -> list[Any]:
    views, _ = service.definitions()
    return service.registry.runs("spend", views["spend"].version)


def watermark(service: Service) -> datetime | None:
    views, _ = service.definitions()
    return service.registry.watermark("spend", views["spend"].version)


# --- incremental windows ---------------------------------------------------------------------------


def test_incremental_run_processes_only_the_new_window(project: Project) -> None:
    ids = list(range(1, 101))
    project.write(history(100))
    service = project.service()
    project.build(service)

    [first] = service.materialize(end=T1)
    assert (first.outcome, first.start, first.end, first.rows) == ("success", None, T1, 100)
    assert watermark(service) == T1
    assert_no_skew(service, ids, T1)

    project.append(
        # 1..10: new events known in (T1, T2]
        [event(c, T1 + timedelta(minutes=10), T1 + timedelta(minutes=15), -c) for c in range(1, 11)]
        # 11..15: late rows, known in (T1, T2] but with an old event time: they lose to the newer rows
        + [event(c, T0 - timedelta(days=5), T1 + timedelta(minutes=20), -c) for c in range(11, 16)]
        # 16..17: events after T2, and 18: known only after T2: not in this window
        + [event(c, T2 + timedelta(hours=1), None, -c) for c in (16, 17)]
        + [event(18, T1 + timedelta(minutes=30), T2 + timedelta(minutes=1), -18.0)]
        # 19: event at the window end exactly, known at its event time (NULL created): included
        + [event(19, T2, None, -19.0)]
    )
    project.build(service)
    [second] = service.materialize(end=T2)
    assert (second.outcome, second.start, second.end, second.rows) == ("success", T1, T2, 16)
    [latest, previous] = run_rows(service)[:2]
    assert (latest.interval_start, latest.interval_end, latest.rows, latest.outcome) == (
        T1,
        T2,
        16,
        "success",
    )
    assert (previous.interval_start, previous.interval_end, previous.rows) == (None, T1, 100)
    assert watermark(service) == T2
    rows = assert_no_skew(service, ids, T2)
    amounts = {r["customer_id"]: r["amount"] for r in rows}
    assert [amounts[c] for c in (1, 10, 19)] == [-1.0, -10.0, -19.0]
    assert all(amounts[c] > 0 for c in (11, 15, 16, 17, 18))  # late, future or unknown rows did not win

    # nothing new up to T2: the run is skipped and records nothing
    [again] = service.materialize(end=T2)
    assert (again.outcome, again.rows) == ("skipped", 0)
    assert len(run_rows(service)) == 2

    # the rows held back become eligible in a later window
    [third] = service.materialize(end=T3 + timedelta(hours=1))
    assert (third.start, third.rows) == (T2, 3)
    assert_no_skew(service, ids, T3 + timedelta(hours=1))


def test_watermark_advances_only_on_success_and_never_backwards(duck_project: Project) -> None:
    project = duck_project
    ids = list(range(1, 21))
    project.write(history(20))
    service = project.service()
    project.build(service)
    service.materialize(end=T1)
    assert watermark(service) == T1
    before = project.dump()

    # a row that cannot be computed (CAST('oops' AS INTEGER)) arrives: the run fails cleanly
    project.append([event(3, T1 + timedelta(minutes=1), None, 7.0, code="oops")])
    with pytest.raises(MaterializationError) as failed:
        service.materialize(end=T2)
    message = str(failed.value)
    assert "materializing 'spend' failed" in message and "watermark did not advance" in message
    assert watermark(service) == T1
    run = run_rows(service)[0]
    assert (run.outcome, run.interval_start, run.interval_end) == ("failed", T1, T2)
    assert run.error and "oops" in run.error
    assert project.dump() == before
    with pytest.raises(MaterializationError):
        service.materialize(full=True, end=T2)
    assert watermark(service) == T1

    # fixed upstream: the next run resumes from the old watermark and covers the whole window
    project.write([r if r["code"] != "oops" else {**r, "code": "3"} for r in project.rows])
    [ok] = service.materialize(end=T2)
    assert (ok.outcome, ok.start, ok.rows) == ("success", T1, 1)
    assert watermark(service) == T2
    assert_no_skew(service, ids, T2)

    # an end before the watermark is skipped; --full or a backfill ending earlier never moves it back
    assert service.materialize(end=T1)[0].outcome == "skipped"
    # a full recompute as of an earlier time than the store holds is superseded: it changes nothing
    assert service.materialize(full=True, end=T1)[0].outcome == "superseded"
    assert service.materialize(start=T0 - timedelta(days=2), end=T0)[0].outcome == "success"
    assert watermark(service) == T2
    # a backfill window starting after the watermark leaves a gap: no advance
    assert service.materialize(start=T3, end=T3 + timedelta(hours=1))[0].outcome == "success"
    assert watermark(service) == T2
    # a window starting at or before the watermark covers it: the watermark moves to its end
    assert service.materialize(start=T1, end=T3)[0].outcome == "success"
    assert watermark(service) == T3
    outcomes = [r.outcome for r in run_rows(service)]
    assert outcomes.count("failed") == 2 and outcomes[0] == "success"
    assert_no_skew(service, ids, T3)


def test_full_recomputes_everything(project: Project) -> None:
    ids = list(range(1, 51))
    project.write(history(50))
    service = project.service()
    project.build(service)
    service.materialize(end=T1)
    views, _ = service.definitions()
    service.online_store.drop(service.online_table(views["spend"]))  # the online store lost its data
    assert {r["amount__status"] for r in online_rows(service, ids, T1)} == {"missing"}

    # The keyspace marker went with the data, so even an incremental run recomputes everything.
    [incremental] = service.materialize(end=T1)
    assert (incremental.outcome, incremental.start, incremental.rows) == ("success", None, 50)
    service.online_store.drop(service.online_table(views["spend"]))
    [full] = service.materialize(full=True, end=T1)
    assert (full.outcome, full.start, full.rows) == ("success", None, 50)
    assert watermark(service) == T1
    rows = assert_no_skew(service, ids, T1)
    assert {r["amount__status"] for r in rows} == {"present"}


def test_backfill_of_an_old_window_never_overwrites_newer_values(project: Project) -> None:
    ids = list(range(1, 41))
    rows = history(40)
    # 1..10: the latest event corrected (same event time, known later, another value);
    # 11..40: newer events; all known in (T1, T2]
    latest: dict[int, dict[str, Any]] = {}
    for row in rows:
        if (
            row["event_ts"] > latest.get(row["customer_id"], row)["event_ts"]
            or row["customer_id"] not in latest
        ):
            latest[row["customer_id"]] = row
    rows += [
        {**latest[c], "loaded_at": T1 + timedelta(minutes=30), "amount": -1000.0 - c} for c in range(1, 11)
    ]
    rows += [event(c, T1 + timedelta(minutes=c), T1 + timedelta(minutes=c + 1), -c) for c in range(11, 41)]
    project.write(rows)
    service = project.service()
    project.build(service)
    service.materialize(end=T2)
    newest = project.dump()
    assert_no_skew(service, ids, T2)

    # old windows: the latest rows as of T0 or as of the day before; all older than what is stored
    windows = [
        (None, T0),
        (T0 - timedelta(days=2), T0 - timedelta(hours=12)),
        (T0 - timedelta(hours=1), T1 + timedelta(minutes=20)),
    ]
    for start, end in windows:
        [run] = service.materialize(start=start, end=end, full=start is None)
        # a full recompute as of the past is superseded by the newer data the store holds
        assert run.outcome == ("superseded" if start is None else "success") and run.rows > 0
        assert project.dump() == newest
    assert watermark(service) == T2
    online = assert_no_skew(service, ids, T2)
    assert [r["amount"] for r in online] == [-1000.0 - c for c in range(1, 11)] + [
        -float(c) for c in range(11, 41)
    ]


def test_rerunning_a_window_is_idempotent(project: Project) -> None:
    ids = list(range(1, 31))
    project.write_view(spend_sql(ttl="7h"))  # about half the entities are stale at T2
    rows = history(30)
    # exact ties on (event, created) that only the values break, and NaN / NULL / '' values
    rows += [
        event(c, T1, T1, v, note=n) for c in (1, 2, 3) for v, n in [(1.0, None), (math.nan, ""), (2.0, "z")]
    ]
    project.write(rows)
    service = project.service()
    project.build(service)
    service.materialize(end=T2)
    first = project.dump()
    for _ in range(2):
        [run] = service.materialize(full=True, end=T2)
        assert run.outcome == "success" and run.rows == 30
        assert project.dump() == first
    [run] = service.materialize(start=T0, end=T2)
    assert project.dump() == first
    assert service.materialize(end=T2)[0].outcome == "skipped"
    online = assert_no_skew(service, ids, T2)
    assert all(math.isnan(online[c - 1]["amount"]) for c in (1, 2, 3))  # NaN ranks above every number
    statuses = [r["amount__status"] for r in online]
    assert 10 <= statuses.count("stale") <= 20 and "missing" not in statuses, statuses


def test_ttl_is_checked_at_read_time(project: Project) -> None:
    """Values older than the TTL read back NULL and 'stale', to the microsecond (rule 2: an event
    exactly ``ttl`` old is still served), while the stored rows stay as they are."""
    ids = list(range(1, 41))
    project.write_view(spend_sql(ttl="6h"))
    project.write(history(40))
    service = project.service()
    project.build(service)
    [run] = service.materialize(end=T1)
    assert (run.outcome, run.rows) == ("success", 40)
    stored = project.dump()
    counts = []
    for now in (T1, T1 + timedelta(hours=1), T1 + timedelta(hours=3)):
        statuses = [r["amount__status"] for r in assert_no_skew(service, ids, now)]
        counts.append(statuses.count("stale"))
    assert counts[0] < counts[1] < counts[2] == 40, counts
    newest = max(r["event_ts"] for r in project.rows)
    edge = newest + timedelta(hours=6)
    for now, status in ((edge, "present"), (edge + timedelta(microseconds=1), "stale")):
        rows = assert_no_skew(service, ids, now)
        assert [r["amount__status"] for r in rows].count("present") == (status == "present")
    assert project.dump() == stored


def test_changed_definition_starts_a_new_version_with_its_own_keys(project: Project) -> None:
    ids = list(range(1, 31))
    project.write(history(30))
    service = project.service()
    project.build(service)
    service.materialize(end=T1)
    old_view = service.definitions()[0]["spend"]
    old_values = {r["customer_id"]: r["amount"] for r in assert_no_skew(service, ids, T1)}

    project.write_view(spend_sql("* 2"))
    service.build()
    new_view = service.definitions()[0]["spend"]
    assert new_view.version != old_view.version
    assert service.registry.watermark("spend", new_view.version) is None
    assert service.registry.watermark("spend", old_view.version) == T1
    # the old version's values are not served through the new definition, which was never materialized
    assert {r["amount__status"] for r in online_rows(service, ids, T1)} == {"not_materialized"}
    # ... but they are still stored under the old version's namespace
    old_table = service.online_table(old_view)
    stored = service.online_store.read([(old_table, [(c,) for c in ids])])[0]
    assert [row.values[0] for row in stored] == [old_values[c] for c in ids]

    [run] = service.materialize(end=T1)
    assert (run.version, run.start, run.rows) == (new_view.version, None, 30)
    rows = assert_no_skew(service, ids, T1)
    assert [r["amount"] for r in rows] == [old_values[c] * 2 for c in ids]


# --- concurrency -----------------------------------------------------------------------------------


class RegressionWatch:
    """Polls the stored (event_ts, created) of every entity while runs go on; records any decrease."""

    def __init__(self, read: Any) -> None:
        self.read = read  # () -> {key: (event_ts, created) ordering tuple}
        self.seen: dict[Any, tuple] = {}
        self.regressions: list[Any] = []
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            time.sleep(0.002)

    def poll(self) -> None:
        for key, rank in self.read().items():
            before = self.seen.get(key)
            if before is not None and rank < before:
                self.regressions.append((key, before, rank))
            self.seen[key] = rank
        self.polls += 1

    def __enter__(self) -> RegressionWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.poll()


def _rank(event_ts: datetime, created: datetime | None) -> tuple:
    return (event_ts, (0,) if created is None else (1, created))


def concurrent_history(customers: int) -> list[dict[str, Any]]:
    """Every customer has a latest row known by T1 and a newer one known in (T1, T2]: a later event,
    or for every third customer a correction (the same event time, known later, another value)."""
    rows = history(customers, per_customer=2)
    for c in range(1, customers + 1):
        ts = T1 - timedelta(minutes=30) + timedelta(seconds=c % 1500)
        rows.append(event(c, ts, ts, -c))
        if c % 3 == 0:
            rows.append(event(c, ts, T1 + timedelta(seconds=c % 3000), -c - 0.5))
        else:
            later = T1 + timedelta(seconds=c % 3000)
            rows.append(event(c, later, later, -c - 0.25))
    return rows


@pytest.mark.parametrize("combo", ["duckdb-sqlite", "duckdb-redis"])
def test_concurrent_runs_in_threads_never_regress(
    request: pytest.FixtureRequest, tmp_path: Path, combo: str
) -> None:
    project = make_project(request, tmp_path, combo)
    try:
        customers = 3000
        ids = list(range(1, customers + 1))
        project.write(concurrent_history(customers))
        setup = project.service()
        project.build(setup)
        table = setup.online_table(setup.definitions()[0]["spend"])

        def read() -> dict[Any, tuple]:
            rows = setup.online_store.read([(table, [(c,) for c in ids])])[0]
            return {c: _rank(r.event_ts, r.created) for c, r in zip(ids, rows, strict=True) if r is not None}

        errors: list[BaseException] = []

        def materialize(end: datetime, full: bool) -> None:
            try:
                service = project.service()
                service.materialize(
                    full=full, end=end, batch_size=100, progress=lambda _v, _n: time.sleep(0.0005)
                )
            except BaseException as e:  # reported below
                errors.append(e)

        with RegressionWatch(read) as watch:
            for _ in range(2):
                runs = [
                    threading.Thread(target=materialize, args=(T2, True)),
                    threading.Thread(target=materialize, args=(T1, True)),  # an older state, at the same time
                    threading.Thread(target=materialize, args=(T2, False)),
                ]
                for thread in runs:
                    thread.start()
                for thread in runs:
                    thread.join(timeout=120)
                assert not any(thread.is_alive() for thread in runs), "a materialization hung"
        assert not errors, errors
        assert watch.polls > 3 and len(watch.seen) == customers
        assert not watch.regressions, watch.regressions[:5]
        assert watermark(setup) == T2
        assert_no_skew(setup, ids, T2)
    finally:
        project.close()


WORKER = """
import sys
from datetime import datetime
from tests.service_adapter import Service
root, registry, schema, redis_url, prefix, end, full, pg_url = sys.argv[1:]
service = Service.open(root, {
    "registry": {"url": registry},
    "warehouse": {"engine": "postgres", "url": pg_url, "schema": schema},
    "online": {"store": "redis", "url": redis_url, "prefix": prefix},
})
results = service.materialize(full=full == "full", end=datetime.fromisoformat(end), batch_size=200)
print(results[0].outcome, results[0].rows)
service.close()
"""


def test_concurrent_runs_in_processes_never_regress(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Two processes (PostgreSQL + Redis) materialize the same view at once, one of them an older state."""
    project = make_project(request, tmp_path, "postgres-redis")
    try:
        customers = 4000
        ids = list(range(1, customers + 1))
        project.write(concurrent_history(customers))
        setup = project.service()
        project.build(setup)
        view = setup.definitions()[0]["spend"]
        client = open_online_store("redis", url=REDIS_URL, prefix=project.prefix or "fsql")
        table = online_table_of(view)

        def read() -> dict[Any, tuple]:
            # through the store: a full run's rows live in a generation of their own until it commits
            rows = client.read([(table, [(c,) for c in ids])])[0]
            return {c: _rank(r.event_ts, r.created) for c, r in zip(ids, rows, strict=True) if r is not None}

        schema = project.overrides["warehouse"]["schema"]
        registry = project.overrides["registry"]["url"]

        def start(end: datetime, full: bool) -> subprocess.Popen[str]:
            args = [
                str(project.root),
                registry,
                schema,
                REDIS_URL,
                project.prefix or "",
                end.isoformat(),
                "full" if full else "incremental",
                POSTGRES_URL,
            ]
            return subprocess.Popen(
                [sys.executable, "-c", WORKER, *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )

        with RegressionWatch(read) as watch:
            workers = [start(T2, True), start(T1, True), start(T2, True)]
            outputs = []
            for worker in workers:
                out, err = worker.communicate(timeout=180)
                assert worker.returncode == 0, err[-2000:]
                outputs.append(out.split())
        client.close()
        # Full recomputes race: each writes a generation of its own, and one as of an earlier time than
        # the store already holds is superseded instead of replacing newer values.
        assert {o[0] for o in outputs} <= {"success", "superseded"}
        assert "success" in (outputs[0][0], outputs[2][0])  # a run as of T2 is what is served
        assert all(o == ["success", str(customers)] for o in outputs if o[0] == "success")
        assert watch.polls > 3 and len(watch.seen) == customers
        assert not watch.regressions, watch.regressions[:5]
        assert watermark(setup) == T2
        assert_no_skew(setup, ids, T2)
    finally:
        project.close()


# --- the CLI ---------------------------------------------------------------------------------------


def test_cli_get_matches_the_training_set_now(tmp_path: Path) -> None:
    """`fsql materialize --end T` then `fsql get` prints present values equal to `fsql training-set`
    with the spine (entity, T). T is a fixed instant of the sample data and reads of views with a TTL
    pin it with ``now=``, so the outcome does not depend on the day the test runs."""
    from fsql.cli import app
    from fsql.sample import scaffold
    from fsql.store import Store
    from tests.example_reference import data_time

    root = tmp_path / "demo"
    scaffold(root)
    runner = CliRunner()

    def cli(*args: str) -> str:
        result = runner.invoke(app, [*args, "--project", str(root)])
        assert result.exit_code == 0, f"fsql {' '.join(args)}: {result.output}"
        return result.stdout

    t = data_time(root)
    cli("build")
    runs = json.loads(cli("materialize", "--end", t.replace(tzinfo=None).isoformat(), "--json"))
    assert {(r["view"], r["outcome"], r["end"]) for r in runs} == {
        (v, "success", t.isoformat()) for v in (
            "customer_merchant_stats", "customer_profile", "customer_spend", "customer_value", "order_amount_usd")}
    # an entity that ordered within the week before T, and whose profile existed at T
    orders = pl.read_parquet(root / "data" / "orders.parquet")
    naive = t.replace(tzinfo=None)
    recent = orders.filter((pl.col("order_ts") > naive - timedelta(days=7)) & (pl.col("loaded_at") <= naive))
    profiles = pl.read_parquet(root / "data" / "customers.parquet").filter(pl.col("updated_at") <= naive)
    entity = min(set(recent["customer_id"]) & set(profiles["customer_id"]), key=lambda c: (c != 42, c))

    spine = tmp_path / "spine.parquet"
    pq.write_table(pa.table({
        "customer_id": pa.array([7, entity], pa.int64()),
        "label_ts": pa.array([t - timedelta(days=30), t], TS),
        "churned": pa.array([False, False]),
    }), spine)
    output = tmp_path / "churn.parquet"
    cli("training-set", "churn", "--spine", str(spine), "--output", str(output))
    last = pl.read_parquet(output).to_dicts()[-1]
    assert (last["customer_id"], last["label_ts"]) == (entity, t)

    # customer_profile has no TTL: `fsql get` serves what the run at T wrote, whatever the clock says.
    printed = cli("get", "customer_profile", "--entity", f"customer_id={entity}")
    values = {}
    for line in printed.splitlines():
        if line.strip():
            name, value, *status = line.split()
            values[name] = (value, status[0] if status else None)
    assert values == {"customer_id": (str(entity), None),
                      **{f: (str(last[f]), "present") for f in ("country", "segment", "age")}}
    as_json = json.loads(cli("get", "customer_profile", "--entity", f"customer_id={entity}", "--json"))
    assert as_json == [{"customer_id": entity, **{k: last[k] for k in ("country", "segment", "age")},
                        **{f"{k}__status": "present" for k in ("country", "segment", "age")}}]
    # Views with a TTL are read at T through the SDK: fresh values, equal to the training set.
    with Store(root) as store:
        online = store.online("churn", {"customer_id": [entity]}, now=t).to_dicts()[0]
    for feature in ("spend_30d", "orders_30d", "avg_order_value_30d", "country", "segment", "age"):
        assert (online[feature], online[f"{feature}__status"]) == (last[feature], "present"), feature
