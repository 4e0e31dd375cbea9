"""Generations: a full recompute replaces a version's keyspace atomically, on Redis and SQLite.

Readers see the old generation until the commit and the new one after it, never a mix and never a
half-written one; entities the recompute did not write are gone; lower-ranked corrections win over
what was served; incremental writes during a build reach it; aborted and superseded generations
are freed and refuse writes; the completion marker only follows a completed run.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import redis
from conftest import REDIS_URL
from redis_server import RedisServer

from fsql.errors import OnlineStoreError
from fsql.online import CREATED, EVENT_TS, GenerationNotBuilding, OnlineTable
from fsql.online.redis import RedisOnlineStore
from fsql.online.redis_cluster import RedisClusterOnlineStore
from fsql.online.sqlite import SqliteOnlineStore

TS = pa.timestamp("us", tz="UTC")
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def make_table(ttl: timedelta | None = None) -> OnlineTable:
    return OnlineTable("spend", uuid.uuid4().hex[:12], ("id",), ("x",), (pa.float64(),), ttl=ttl)


def batch(ids: range | list[int], x: float, ev: datetime = T0) -> pa.RecordBatch:
    n = len(ids)
    return pa.record_batch(
        {
            "id": pa.array(list(ids), pa.int64()),
            EVENT_TS: pa.array([ev] * n, TS),
            CREATED: pa.nulls(n, TS),
            "x": pa.array([x] * n, pa.float64()),
        }
    )


def values(store: Any, table: OnlineTable, ids: range | list[int]) -> list[float | None]:
    rows = store.read([(table, [(i,) for i in ids])])[0]
    return [None if r is None else r.values[0] for r in rows]


@pytest.fixture(params=["redis", "redis-cluster", "sqlite"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def stores(kind: str, redis_prefix: str, tmp_path: Path, request: pytest.FixtureRequest):
    """A factory of stores of `kind` on one namespace (several = several connections)."""
    opened: list[Any] = []
    cluster_url = request.getfixturevalue("redis_cluster").url if kind == "redis-cluster" else None

    def open_store() -> Any:
        if kind == "redis":
            store: Any = RedisOnlineStore(REDIS_URL, prefix=redis_prefix)
        elif kind == "redis-cluster":
            store = RedisClusterOnlineStore(cluster_url, prefix=redis_prefix)
        else:
            store = SqliteOnlineStore(tmp_path / "online.db", prefix=redis_prefix)
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        store.close()


@pytest.fixture
def store(stores):
    return stores()


def stored_names(store: Any, table: OnlineTable) -> list[str]:
    """Every Redis key / SQLite table of the version, sorted."""
    if isinstance(store, RedisClusterOnlineStore):
        pattern = f"{store.prefix}:{table.view}:{{{table.version}.*"
        return sorted(k.decode() for k in store.client.scan_iter(match=pattern, count=1000))
    base = f"{store.prefix}:{table.view}:{table.version}"
    if isinstance(store, RedisOnlineStore):
        client = redis.Redis.from_url(REDIS_URL)
        try:
            return sorted(k.decode() for k in client.scan_iter(match=base + "*", count=1000))
        finally:
            client.close()
    con = sqlite3.connect(store.path)
    try:
        rows = con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").fetchall()
    finally:
        con.close()
    return [name for (name,) in rows if name.startswith(base)]


def test_full_swap_serves_exactly_the_new_generation(store) -> None:
    table = make_table()
    store.write_batch(table, batch(range(10), 5.0, T0 + timedelta(days=1)))
    assert store.set_marker(table)
    before = stored_names(store, table)

    generation = store.begin_generation(table)
    # The recompute finds older rows for 0..4 (the newer ones were deleted or corrected at the source)
    # and nothing for 5..9: newer-wins would keep 5.0 everywhere.
    assert store.write_batch(table, batch(range(5), 1.0), generation=generation) == 5
    assert store.write_batch(table, batch(range(5), 1.0), generation=generation) == 0  # idempotent
    assert values(store, table, range(10)) == [5.0] * 10  # not visible before the commit
    assert store.has_marker(table)

    assert store.commit_generation(table, generation) == "committed"
    assert values(store, table, range(10)) == [1.0] * 5 + [None] * 5
    assert store.has_marker(table)
    # the old generation is freed: as many keys / tables as before, for half the entities
    after = stored_names(store, table)
    if isinstance(store, RedisOnlineStore):
        assert len(before) == 11 and len(after) == 6
    elif isinstance(store, RedisClusterOnlineStore):  # a state key per bucket
        assert len(before) == 10 + store.buckets and len(after) == 5 + store.buckets
    else:
        assert len(before) == len(after) == 2  # the data table and the marker table


def test_incremental_writes_reach_the_generation_being_built(store) -> None:
    table = make_table()
    store.write_batch(table, batch(range(4), 1.0))
    generation = store.begin_generation(table)
    store.write_batch(table, batch(range(3), 1.0), generation=generation)
    # an incremental run beside the recompute: entity 3 gets a newer value, and a new entity 9 appears
    assert store.write_batch(table, batch([3, 9], 7.0, T0 + timedelta(hours=1))) == 2
    assert values(store, table, [0, 3, 9]) == [1.0, 7.0, 7.0]
    assert store.commit_generation(table, generation) == "committed"
    assert values(store, table, [0, 1, 2, 3, 9]) == [1.0, 1.0, 1.0, 7.0, 7.0]
    # after the switch, incremental writes go to the new active generation
    assert store.write_batch(table, batch([0], 8.0, T0 + timedelta(hours=2))) == 1
    assert values(store, table, [0]) == [8.0]


def test_aborted_and_superseded_generations_are_freed_and_refuse_writes(store) -> None:
    table = make_table()
    store.write_batch(table, batch(range(3), 1.0))
    store.set_marker(table)
    baseline = stored_names(store, table)

    aborted = store.begin_generation(table)
    store.write_batch(table, batch(range(3), 2.0), generation=aborted)
    store.abort_generation(table, aborted)
    store.abort_generation(table, aborted)  # twice is fine
    assert stored_names(store, table) == baseline
    assert values(store, table, range(3)) == [1.0] * 3
    with pytest.raises(OnlineStoreError, match="is not being built"):
        store.write_batch(table, batch(range(3), 2.0), generation=aborted)
    with pytest.raises(OnlineStoreError, match="is not being built"):
        store.commit_generation(table, aborted)

    older, newer, newest = (store.begin_generation(table) for _ in range(3))
    assert len({older, newer, newest}) == 3
    for g, x in ((older, 3.0), (newer, 4.0), (newest, 5.0)):
        store.write_batch(table, batch(range(3), x), generation=g)
    assert store.commit_generation(table, newer) == "committed"
    assert values(store, table, range(3)) == [4.0] * 3
    # `older` began before `newer`: its recompute is stale, so it was freed with the old generation
    with pytest.raises(GenerationNotBuilding, match="superseded"):
        store.write_batch(table, batch(range(3), 3.0), generation=older)
    with pytest.raises(OnlineStoreError, match="is not being built"):
        store.commit_generation(table, older)
    # `newest` began later and is still being built
    assert store.commit_generation(table, newest) == "committed"
    assert values(store, table, range(3)) == [5.0] * 3
    if isinstance(store, RedisOnlineStore):
        assert len(stored_names(store, table)) == 4  # three entities and the state
    elif isinstance(store, RedisClusterOnlineStore):
        assert len(stored_names(store, table)) == 3 + store.buckets


def test_served_values_never_go_back_in_time(store) -> None:
    """Generations carry the instant they are as of: a recompute as of an earlier time than what is
    served (a late or concurrent `--full --end` in the past) never replaces it."""
    table = make_table()
    t1, t2, t3 = (T0 + timedelta(days=d) for d in (1, 2, 3))
    early, late = store.begin_generation(table, as_of=t1), store.begin_generation(table, as_of=t2)
    store.write_batch(table, batch(range(3), 1.0), generation=early)
    store.write_batch(table, batch(range(3), 2.0), generation=late)
    assert store.commit_generation(table, late) == "committed"
    # `early` began first and is as of an earlier time: freed by the commit of `late`
    with pytest.raises(GenerationNotBuilding):
        store.commit_generation(table, early)
    # begun after the commit, but as of an earlier time: refused and freed, nothing changes
    stale = store.begin_generation(table, as_of=t1)
    store.write_batch(table, batch(range(3), 1.0), generation=stale)
    assert store.commit_generation(table, stale) == "superseded"
    assert values(store, table, range(3)) == [2.0] * 3
    with pytest.raises(GenerationNotBuilding):
        store.write_batch(table, batch(range(3), 1.0), generation=stale)
    # an incremental run up to t3 merged into the active generation: it now counts as of t3
    store.write_batch(table, batch([0], 3.0, T0 + timedelta(hours=1)))
    assert store.set_marker(table, as_of=t3)
    between = store.begin_generation(table, as_of=t2 + timedelta(hours=1))
    store.write_batch(table, batch(range(3), 9.0), generation=between)
    assert store.commit_generation(table, between) == "superseded"
    assert values(store, table, range(3)) == [3.0, 2.0, 2.0]
    # as of the same instant as what is served: a recompute of the same state may replace it
    same = store.begin_generation(table, as_of=t3)
    store.write_batch(table, batch(range(2), 4.0), generation=same)
    assert store.commit_generation(table, same) == "committed"
    assert values(store, table, range(3)) == [4.0, 4.0, None]
    assert store.has_marker(table)


def test_marker_follows_completed_runs_only(store) -> None:
    table = make_table()
    assert not store.has_marker(table)
    store.write_batch(table, batch(range(3), 1.0))
    assert not store.has_marker(table)  # a write never creates the marker
    generation = store.begin_generation(table)
    assert not store.has_marker(table)
    store.abort_generation(table, generation)
    assert not store.has_marker(table)
    assert store.set_marker(table, instance=store.instance_id())
    assert store.has_marker(table)
    store.clear_marker(table)
    assert not store.has_marker(table)
    assert values(store, table, range(3)) == [1.0] * 3  # clearing the marker keeps the data
    generation = store.begin_generation(table)
    assert store.commit_generation(table, generation, instance=store.instance_id()) == "committed"
    assert store.has_marker(table)
    store.drop(table)
    assert not store.has_marker(table)
    assert stored_names(store, table) == []


def test_redis_refuses_a_marker_for_another_instance(redis_prefix: str) -> None:
    store = RedisOnlineStore(REDIS_URL, prefix=redis_prefix)
    try:
        table = make_table()
        generation = store.begin_generation(table)
        store.write_batch(table, batch(range(3), 2.0), generation=generation)
        assert not store.set_marker(table, instance="0" * 40)
        assert store.commit_generation(table, generation, instance="0" * 40) == "restarted"
        assert not store.has_marker(table)
        assert values(store, table, range(3)) == [None] * 3  # nothing switched
        assert store.commit_generation(table, generation, instance=store.instance_id()) == "committed"
        assert values(store, table, range(3)) == [2.0] * 3
    finally:
        store.close()


def test_redis_reads_the_marker_of_older_versions(redis_prefix: str) -> None:
    store = RedisOnlineStore(REDIS_URL, prefix=redis_prefix)
    client = redis.Redis.from_url(REDIS_URL)
    try:
        table = make_table()
        store.write_batch(table, batch(range(2), 1.0))
        client.set(f"{redis_prefix}:spend:{table.version}", b"1")  # what older versions wrote
        assert store.has_marker(table)
        assert values(store, table, range(2)) == [1.0, 1.0]
        generation = store.begin_generation(table)
        store.write_batch(table, batch([1], 2.0), generation=generation)
        assert store.commit_generation(table, generation) == "committed"
        assert values(store, table, range(2)) == [None, 2.0]
    finally:
        client.close()
        store.close()


def test_redis_generation_keys_get_the_ttl(redis_prefix: str) -> None:
    store = RedisOnlineStore(REDIS_URL, prefix=redis_prefix)
    client = redis.Redis.from_url(REDIS_URL)
    try:
        table = make_table(ttl=timedelta(seconds=100))
        generation = store.begin_generation(table)
        store.write_batch(table, batch([1], 1.0), generation=generation)
        assert store.commit_generation(table, generation) == "committed"
        [key] = [k for k in client.scan_iter(match=f"{redis_prefix}:spend:{table.version}:*")]
        assert key.decode().endswith(f":%{generation}:1")
        assert 95 <= client.ttl(key) <= 100
        assert client.ttl(f"{redis_prefix}:spend:{table.version}") == -1  # the state never expires
    finally:
        client.close()
        store.close()


def test_readers_never_see_a_mix_of_generations(stores) -> None:
    """Full recomputes in a loop, each with its own value for every entity, while another connection
    reads all entities at once: every read is one generation, complete."""
    writer, reader = stores(), stores()
    table = make_table()
    ids = list(range(300))
    generation = writer.begin_generation(table)
    writer.write_batch(table, batch(ids, 0.0), generation=generation)
    assert writer.commit_generation(table, generation) == "committed"
    done = threading.Event()
    seen: list[float] = []
    errors: list[BaseException] = []

    def read() -> None:
        try:
            while not done.is_set():
                got = values(reader, table, ids)
                assert len(set(got)) == 1 and got[0] is not None, sorted(set(got), key=str)
                seen.append(got[0])
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=read)
    thread.start()
    try:
        for round_ in range(1, 16):
            generation = writer.begin_generation(table)
            # an older event time each round: newer-wins alone would never let these through
            older = T0 - timedelta(days=round_)
            for part in range(0, len(ids), 50):  # several batches: a half-written generation exists
                writer.write_batch(table, batch(ids[part : part + 50], float(round_), older), generation=generation)
            assert writer.commit_generation(table, generation) == "committed"
    finally:
        done.set()
        thread.join(timeout=30)
    assert not errors, errors[0]
    assert seen == sorted(seen) and seen[-1] >= 1.0
    assert values(reader, table, ids) == [15.0] * len(ids)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


def test_redis_read_of_one_entity_is_one_round_trip(server: RedisServer) -> None:
    """Counted by the server itself (a private one, so no other client's commands are counted)."""
    store, other = RedisOnlineStore(server.url), RedisOnlineStore(server.url)
    table = make_table()
    try:
        store.write_batch(table, batch([1, 2], 1.0))
        before = server.command_calls()
        assert values(store, table, [1]) == [1.0]
        assert values(store, table, [1]) == [1.0]
        assert delta(before, server.command_calls()) == {"mget": 2}
        # another client switches generations: one more MGET on the next read only
        generation = other.begin_generation(table)
        other.write_batch(table, batch([1], 2.0), generation=generation)
        assert other.commit_generation(table, generation) == "committed"
        before = server.command_calls()
        assert values(store, table, [1, 2]) == [2.0, None]
        assert values(store, table, [1, 2]) == [2.0, None]
        assert delta(before, server.command_calls()) == {"mget": 3}
    finally:
        store.close()
        other.close()


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {name: n - before.get(name, 0) for name, n in after.items() if n != before.get(name, 0)}
