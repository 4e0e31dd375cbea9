"""Store-level faults: the completion marker never outlives the data it vouches for.

- A Redis restart between a run's last write and its marker (issue 9.6): with the marker written
  first and the server identity checked with it, the restart is detected and no marker survives.
- A store that lost its data, then a run that crashed mid-way (issue 14.1): no marker, so the next
  run recomputes everything instead of trusting the watermark.
- A crash or restart in the middle of a generation build leaves the served generation intact.

Processes are really killed (SIGKILL) and a private redis-server really restarted, at exact points.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from redis_server import RedisServer

from fsql.errors import OnlineStoreError
from fsql.online import CREATED, EVENT_TS, GenerationNotBuilding, OnlineTable
from fsql.online.redis import RedisOnlineStore
from fsql.online.sqlite import SqliteOnlineStore

ROOT = Path(__file__).resolve().parents[1]
TS = pa.timestamp("us", tz="UTC")
T0 = datetime(2024, 1, 1, tzinfo=UTC)
TABLE = OnlineTable("spend", "0123456789ab", ("id",), ("x",), (pa.float64(),))
N = 200


def batch(ids: range, x: float) -> pa.RecordBatch:
    n = len(ids)
    return pa.record_batch(
        {
            "id": pa.array(list(ids), pa.int64()),
            EVENT_TS: pa.array([T0] * n, TS),
            CREATED: pa.nulls(n, TS),
            "x": pa.array([x] * n, pa.float64()),
        }
    )


def served(store: Any, ids: range) -> int:
    return sum(r is not None for r in store.read([(TABLE, [(i,) for i in ids])])[0])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


# --- Redis: restart between the last write and the marker (9.6) ------------------------------------------


def test_restart_between_last_write_and_marker_is_detected(server: RedisServer) -> None:
    store = RedisOnlineStore(server.url, socket_timeout=5)
    try:
        instance = store.instance_id()
        assert store.write_batch(TABLE, batch(range(N), 1.0)) == N
        server.restart()  # every row is gone; the client reconnects transparently
        # The marker is written first, and only if the server is still the run's instance.
        assert store.set_marker(TABLE, instance=instance) is False
        assert store.instance_id() != instance  # the run fails and keeps its old watermark
        assert not store.has_marker(TABLE)
        assert served(store, range(N)) == 0
    finally:
        store.close()


def test_marker_first_then_verify_catches_the_same_restart_without_the_atomic_check(server: RedisServer) -> None:
    """A store whose marker cannot check the instance: write the marker, then compare instance ids,
    and clear the marker on a mismatch. The restart lands between the last write and the marker."""
    store = RedisOnlineStore(server.url, socket_timeout=5)
    try:
        instance = store.instance_id()
        store.write_batch(TABLE, batch(range(N), 1.0))
        server.restart()
        assert store.set_marker(TABLE)  # lands on the new, empty server
        assert store.has_marker(TABLE)  # what the old order (check, then marker) would have left
        assert store.instance_id() != instance
        store.clear_marker(TABLE)
        assert not store.has_marker(TABLE)
    finally:
        store.close()


def test_restart_after_the_marker_loses_marker_and_data_together(server: RedisServer) -> None:
    store = RedisOnlineStore(server.url, socket_timeout=5)
    try:
        instance = store.instance_id()
        store.write_batch(TABLE, batch(range(N), 1.0))
        assert store.set_marker(TABLE, instance=instance)
        server.restart()
        assert store.instance_id() != instance  # the verify after the marker fails the run
        assert not store.has_marker(TABLE)  # and the next run recomputes everything
    finally:
        store.close()


def test_restart_during_a_generation_build_never_switches(server: RedisServer) -> None:
    store = RedisOnlineStore(server.url, socket_timeout=5)
    try:
        instance = store.instance_id()
        generation = store.begin_generation(TABLE)
        store.write_batch(TABLE, batch(range(N), 1.0), generation=generation)
        server.restart()
        assert store.commit_generation(TABLE, generation, instance=instance) == "restarted"
        with pytest.raises(GenerationNotBuilding, match="lost when the store restarted"):
            store.commit_generation(TABLE, generation)
        with pytest.raises(OnlineStoreError, match="is not being built"):
            store.write_batch(TABLE, batch(range(N), 1.0), generation=generation)
        assert not store.has_marker(TABLE)
        # the full re-run converges
        instance = store.instance_id()
        generation = store.begin_generation(TABLE)
        store.write_batch(TABLE, batch(range(N), 1.0), generation=generation)
        assert store.commit_generation(TABLE, generation, instance=instance) == "committed"
        assert store.has_marker(TABLE) and served(store, range(N)) == N
    finally:
        store.close()


def test_redis_data_loss_then_a_crashed_run_leaves_no_marker(server: RedisServer) -> None:
    store = RedisOnlineStore(server.url, socket_timeout=5)
    try:
        store.write_batch(TABLE, batch(range(N), 1.0))
        assert store.set_marker(TABLE, instance=store.instance_id())
        server.restart()
        store.write_batch(TABLE, batch(range(N // 4), 2.0))  # the next run dies after one batch
        assert not store.has_marker(TABLE)
    finally:
        store.close()


# --- SQLite: data loss, then a crashed run (14.1) --------------------------------------------------------

_CRASHING_RUN = """
import os, signal, sys
sys.path.insert(0, sys.argv[3])
import test_online_faults as t
from fsql.online.sqlite import SqliteOnlineStore
store = SqliteOnlineStore(sys.argv[1])
if sys.argv[2] == "full":
    generation = store.begin_generation(t.TABLE)
    store.write_batch(t.TABLE, t.batch(range(t.N // 4), 2.0), generation=generation)
else:
    store.write_batch(t.TABLE, t.batch(range(t.N // 4), 2.0))
os.kill(os.getpid(), signal.SIGKILL)  # dies before its marker or commit
"""


def crash_a_run(path: Path, mode: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    proc = subprocess.run(
        [sys.executable, "-c", _CRASHING_RUN, str(path), mode, str(ROOT / "tests")],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]


def test_sqlite_data_loss_then_a_crashed_run_leaves_no_marker(tmp_path: Path) -> None:
    path = tmp_path / "online.db"
    store = SqliteOnlineStore(path)
    store.write_batch(TABLE, batch(range(N), 1.0))
    assert store.set_marker(TABLE)
    store.close()
    for suffix in ("", "-wal", "-shm"):  # the store lost its data
        Path(f"{path}{suffix}").unlink(missing_ok=True)

    crash_a_run(path, "incremental")
    store = SqliteOnlineStore(path)
    try:
        assert served(store, range(N)) == N // 4  # the crashed run wrote a quarter, then died
        assert not store.has_marker(TABLE)  # so the next run must recompute everything
        store.write_batch(TABLE, batch(range(N), 1.0))
        assert store.set_marker(TABLE)
        assert store.has_marker(TABLE) and served(store, range(N)) == N
    finally:
        store.close()


def test_sqlite_crash_during_a_generation_build_keeps_serving_the_old_one(tmp_path: Path) -> None:
    path = tmp_path / "online.db"
    store = SqliteOnlineStore(path)
    try:
        store.write_batch(TABLE, batch(range(N), 1.0))
        store.set_marker(TABLE)
        crash_a_run(path, "full")
        rows = store.read([(TABLE, [(i,) for i in range(N)])])[0]
        assert all(r is not None and r.values == (1.0,) for r in rows)
        assert store.has_marker(TABLE)
        # the next full run supersedes the crashed build and frees it
        generation = store.begin_generation(TABLE)
        store.write_batch(TABLE, batch(range(N // 2), 3.0), generation=generation)
        assert store.commit_generation(TABLE, generation) == "committed"
        assert served(store, range(N)) == N // 2
        with sqlite3.connect(path) as con:
            tables = sorted(name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
        assert len(tables) == 2 and tables[0] == "fsql:spend:0123456789ab"
        assert tables[1].startswith("fsql:spend:0123456789ab%done")  # the marker, no leftover build
    finally:
        store.close()
