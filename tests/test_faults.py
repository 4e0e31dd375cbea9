"""Faults during materialization: the online store or the warehouse goes away in the middle of a run.

The contract: the run fails with a clear ``MaterializationError`` (or the engine's / store's own error
when the resource is unreachable before the run starts), the watermark does not advance, a failed
run is recorded, and once the resource is back a re-run converges to the training-set values at the
run end. Rows written before the failure may stay: they are correct, and newer-wins makes the
re-run idempotent.

Redis faults use a private ``redis-server`` on a free loopback port (no persistence, so a restart
loses every key); PostgreSQL faults terminate the engine's backend with ``pg_terminate_backend``
from another connection. Every wait is bounded, and a watchdog dumps the stacks and exits if a test
hangs anyway.
"""

from __future__ import annotations

import faulthandler
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from conftest import POSTGRES_URL, require_binary
from test_materialize import (
    T0,
    T1,
    T2,
    Project,
    assert_no_skew,
    event,
    history,
    make_project,
    run_rows,
    spend_sql,
    watermark,
)

from fsql.errors import EngineError, MaterializationError, OnlineStoreError

WATCHDOG_SECONDS = 240


@pytest.fixture(autouse=True)
def watchdog() -> Iterator[None]:
    faulthandler.dump_traceback_later(WATCHDOG_SECONDS, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """A redis-server of our own on 127.0.0.1, without persistence: a restart loses every key."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = require_binary("redis-server")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                client = redis.Redis(
                    host="127.0.0.1", port=self.port, socket_timeout=1, socket_connect_timeout=1
                )
                client.ping()
                client.close()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.02)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def keys(self) -> int:
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)
        try:
            return client.dbsize()
        finally:
            client.close()


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    yield server
    server.kill()


def redis_project(
    tmp_path: Path, server: PrivateRedis, overrides: dict[str, dict[str, Any]] | None = None
) -> Project:
    settings = {
        "registry": {"url": f"sqlite:///{tmp_path / 'registry.db'}"},
        "online": {"store": "redis", "url": server.url, "prefix": "faults"},
        **(overrides or {}),
    }
    return Project(tmp_path / "project", settings, store="redis", prefix="faults")


def after_batches(count: int, action: Callable[[], None]) -> Callable[[str, int], None]:
    """A progress callback that runs ``action`` in another thread once ``count`` batches were written,
    and waits (bounded) for it to finish before the run goes on."""
    seen = [0]

    def progress(_view: str, _rows: int) -> None:
        seen[0] += 1
        if seen[0] == count:
            thread = threading.Thread(target=action, daemon=True)
            thread.start()
            thread.join(timeout=30)
            assert not thread.is_alive(), "the fault injection hung"

    return progress


CUSTOMERS = 20_000
BATCH = 500


def test_redis_killed_mid_run_fails_cleanly_and_a_rerun_converges(
    tmp_path: Path, private_redis: PrivateRedis
) -> None:
    project = redis_project(tmp_path, private_redis)
    try:
        ids = list(range(1, CUSTOMERS + 1))
        project.write(history(CUSTOMERS, per_customer=1))
        service = project.service()
        project.build(service)

        began = time.monotonic()
        with pytest.raises(MaterializationError) as failed:
            service.materialize(end=T1, batch_size=BATCH, progress=after_batches(3, private_redis.kill))
        assert time.monotonic() - began < 60
        message = str(failed.value)
        assert f"materializing 'spend' failed after {3 * BATCH} rows" in message, message
        assert f"Redis at {private_redis.url} failed while writing spend" in message, message
        assert "the watermark did not advance" in message, message
        assert isinstance(failed.value.__cause__, OnlineStoreError)
        assert watermark(service) is None
        [run] = run_rows(service)
        assert (run.outcome, run.rows, run.interval_end) == ("failed", 3 * BATCH, T1)
        assert run.error and "Redis" in run.error

        # Redis comes back empty; the same service reconnects and the re-run converges
        private_redis.start()
        [rerun] = service.materialize(end=T1, batch_size=5_000)
        assert (rerun.outcome, rerun.start, rerun.rows) == ("success", None, CUSTOMERS)
        assert watermark(service) == T1
        assert private_redis.keys() == CUSTOMERS + 1  # the entities and the keyspace marker
        assert_no_skew(service, ids, T1)
    finally:
        project.close()


def test_redis_restarted_mid_run_is_not_a_success(tmp_path: Path, private_redis: PrivateRedis) -> None:
    """Redis restarts between two batches (the client reconnects transparently): the keys written
    before the restart are gone, so the run must not report success and advance the watermark."""
    project = redis_project(tmp_path, private_redis)
    try:
        ids = list(range(1, CUSTOMERS + 1))
        project.write(history(CUSTOMERS, per_customer=1))
        service = project.service()
        project.build(service)

        def restart() -> None:
            private_redis.kill()
            private_redis.start()

        with pytest.raises(MaterializationError) as failed:
            service.materialize(end=T1, batch_size=BATCH, progress=after_batches(3, restart))
        assert "restart" in str(failed.value), str(failed.value)
        assert watermark(service) is None
        assert run_rows(service)[0].outcome == "failed"

        [rerun] = service.materialize(end=T1, batch_size=5_000)
        assert (rerun.outcome, rerun.rows) == ("success", CUSTOMERS)
        assert_no_skew(service, ids, T1)
    finally:
        project.close()


def test_redis_killed_during_an_incremental_run_keeps_the_old_watermark(
    tmp_path: Path, private_redis: PrivateRedis
) -> None:
    """A failed incremental run leaves the previous watermark; a restarted (empty) Redis needs --full."""
    project = redis_project(tmp_path, private_redis)
    try:
        ids = list(range(1, CUSTOMERS + 1))
        rows = history(CUSTOMERS, per_customer=1)
        project.write(rows)
        service = project.service()
        project.build(service)
        service.materialize(end=T1, batch_size=5_000)
        assert watermark(service) == T1
        # every customer gets a newer row known in (T1, T2]
        project.append([event(c, T1 + timedelta(seconds=c % 1800), None, -float(c)) for c in ids])

        with pytest.raises(MaterializationError):
            service.materialize(end=T2, batch_size=BATCH, progress=after_batches(2, private_redis.kill))
        assert watermark(service) == T1
        assert [r.outcome for r in run_rows(service)[:2]] == ["failed", "success"]

        private_redis.start()  # empty: what the earlier run wrote is gone too
        [rerun] = service.materialize(full=True, end=T2, batch_size=5_000)
        assert (rerun.outcome, rerun.rows) == ("success", CUSTOMERS)
        assert watermark(service) == T2
        assert_no_skew(service, ids, T2)
    finally:
        project.close()


def test_redis_restart_between_runs_makes_the_next_incremental_run_full(
    tmp_path: Path, private_redis: PrivateRedis
) -> None:
    """Redis without persistence forgets everything on restart; the watermark alone would then leave
    every entity without a newer row missing. The keyspace marker turns the next run into a full one."""
    project = redis_project(tmp_path, private_redis)
    try:
        ids = list(range(1, 2_001))
        project.write(history(len(ids), per_customer=1))
        service = project.service()
        project.build(service)
        service.materialize(end=T1)
        private_redis.kill()
        private_redis.start()
        assert private_redis.keys() == 0
        [rerun] = service.materialize(end=T2)  # no new rows in (T1, T2]: incremental would write nothing
        assert rerun.start is None and rerun.rows == len(ids)
        assert watermark(service) == T2
        assert_no_skew(service, ids, T2)
        [again] = service.materialize(end=T2 + timedelta(seconds=1))
        assert again.start == T2 and again.rows == 0  # back to incremental
    finally:
        project.close()


def test_redis_down_before_the_run(tmp_path: Path) -> None:
    server = PrivateRedis()  # never started: nothing listens on the port
    project = redis_project(tmp_path, server)
    try:
        project.write(history(10))
        service = project.service()
        project.build(service)
        began = time.monotonic()
        with pytest.raises(OnlineStoreError, match=f"cannot reach Redis at {server.url}"):
            service.materialize(end=T1)
        assert time.monotonic() - began < 30
        assert watermark(service) is None
        assert run_rows(service) == []
    finally:
        project.close()


# --- PostgreSQL ------------------------------------------------------------------------------------

PADDED = spend_sql().replace("AS code_num", "AS code_num, REPEAT('x', 1000) AS pad")


def terminate(pid: int) -> Callable[[], None]:
    def action() -> None:
        with psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=10) as con:
            killed = con.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone()
            assert killed == (True,)

    return action


def backend_pid(service: Any) -> int:
    return int(service.engine.arrow("SELECT pg_backend_pid() AS pid").column("pid")[0].as_py())


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_postgres_connection_dropped_mid_run(
    request: pytest.FixtureRequest, tmp_path: Path, store: str
) -> None:
    """The engine's backend is terminated after the first batch: a clean error, state unchanged."""
    project = make_project(request, tmp_path, f"postgres-{store}")
    try:
        customers = 30_000  # with 1 kB per row the result streams in several chunks of ~16 MB
        ids = list(range(1, customers + 1))
        project.write_view(PADDED)
        project.write(history(customers, per_customer=1))
        service = project.service()
        project.build(service)
        service.materialize(end=T0 - timedelta(hours=12), batch_size=5_000)
        before = watermark(service)
        assert before == T0 - timedelta(hours=12)
        runs_before = len(run_rows(service))

        began = time.monotonic()
        with pytest.raises((MaterializationError, EngineError)) as failed:
            service.materialize(
                end=T1, batch_size=1_000, progress=after_batches(1, terminate(backend_pid(service)))
            )
        assert time.monotonic() - began < 60
        error = failed.value
        assert isinstance(error, MaterializationError), f"{type(error).__name__}: {error}"
        assert "materializing 'spend' failed" in str(error) and "PostgreSQL" in str(error), str(error)
        assert isinstance(error.__cause__, EngineError)
        assert watermark(service) == before
        runs = run_rows(service)
        assert len(runs) == runs_before + 1
        assert runs[0].outcome == "failed" and runs[0].rows is not None and 0 < runs[0].rows < customers
        service.close()

        # a new connection: the re-run resumes from the unchanged watermark and converges
        service = project.service()
        [rerun] = service.materialize(end=T1, batch_size=5_000)
        assert (rerun.outcome, rerun.start) == ("success", before)
        assert watermark(service) == T1
        assert_no_skew(service, ids, T1)
    finally:
        project.close()


def test_postgres_unreachable(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    project = make_project(request, tmp_path, "duckdb-sqlite")
    try:
        project.write(history(10))
        service = project.service()
        project.build(service)
        # the same registry and project, but the warehouse is a PostgreSQL nobody listens to
        project.overrides = {
            **project.overrides,
            "warehouse": {
                "engine": "postgres",
                "url": f"postgresql://postgres@127.0.0.1:{free_port()}/test",
                "schema": "x",
            },
        }
        down = project.service()
        began = time.monotonic()
        with pytest.raises(EngineError, match="cannot connect to PostgreSQL"):
            down.materialize(end=T1)
        assert time.monotonic() - began < 30
        assert watermark(service) is None
        assert run_rows(service) == []
    finally:
        project.close()
