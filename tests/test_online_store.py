"""Online stores (Redis and SQLite) against one contract: newer-wins, idempotent, exact values, versioned.

Runs on real Redis (``FSQL_TEST_REDIS_URL``) and a temporary SQLite file; each test has its own key
prefix / file. The fault tests start a private ``redis-server`` on a free loopback port.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import redis
from conftest import REDIS_URL, unique_name
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fsql.errors import OnlineStoreError
from fsql.online import CREATED, EVENT_TS, OnlineRow, OnlineTable, open_online_store
from fsql.online.encoding import (
    HEADER_SIZE,
    decode_header,
    encode_headers,
    encode_keys,
    encode_times,
    key_text,
)
from fsql.online.redis import RedisOnlineStore
from fsql.online.redis_cluster import RedisClusterOnlineStore
from fsql.online.sqlite import SqliteOnlineStore

ROOT = Path(__file__).resolve().parents[1]
TS = pa.timestamp("us", tz="UTC")
T0 = datetime(2024, 1, 1, tzinfo=UTC)
I64_MIN, I64_MAX = -(2**63), 2**63 - 1

FEATURES = ("i", "f", "s", "b", "d", "ts")
TYPES = (pa.int64(), pa.float64(), pa.string(), pa.bool_(), pa.date32(), TS)


def make_table(
    version: str | None = None, *, keys=("id", "name"), ttl: timedelta | None = None
) -> OnlineTable:
    return OnlineTable(
        view="orders",
        version=version or uuid.uuid4().hex[:12],
        entity_keys=keys,
        features=FEATURES,
        feature_types=TYPES,
        ttl=ttl,
    )


def make_batch(table: OnlineTable, rows: list[dict[str, Any]]) -> pa.RecordBatch:
    """rows: dicts with the key columns, 'ev', 'cr' (datetimes or None) and 'values' (a tuple)."""
    key_types = {"id": pa.int64(), "name": pa.string()}
    columns: dict[str, pa.Array] = {
        k: pa.array([r[k] for r in rows], key_types[k]) for k in table.entity_keys
    }
    columns[EVENT_TS] = pa.array([r["ev"] for r in rows], TS)
    columns[CREATED] = pa.array([r["cr"] for r in rows], TS)
    for i, (name, t) in enumerate(zip(table.features, table.feature_types, strict=True)):
        columns[name] = pa.array([r["values"][i] for r in rows], t)
    return pa.record_batch(columns)


def value_rank(value: Any) -> tuple:
    """Offline rule 4 for one value: NULL lowest, NaN above +Infinity, strings by UTF-8 bytes."""
    if value is None:
        return (0,)
    if isinstance(value, float):
        return (1, 1) if math.isnan(value) else (1, 0, value)
    if isinstance(value, str):
        return (1, value.encode())
    return (1, value)


def rank(ev: datetime, cr: datetime | None, values: tuple = ()) -> tuple:
    """The whole tie order: event_ts, created (NULL lowest), then each value in feature order."""
    return (ev, (0,) if cr is None else (1, cr), *map(value_rank, values))


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def same_row(got: OnlineRow | None, want: tuple | None) -> bool:
    if want is None or got is None:
        return got is None and want is None
    ev, cr, values = want
    return (
        got.event_ts == ev
        and got.created == cr
        and got.event_ts.utcoffset() == timedelta(0)
        and len(got.values) == len(values)
        and all(same(a, b) for a, b in zip(got.values, values, strict=True))
    )


@pytest.fixture(params=["redis", "redis-cluster", "sqlite"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store_factory(kind: str, redis_prefix: str, tmp_path: Path, request: pytest.FixtureRequest):
    """Opens stores of `kind` sharing one namespace (several instances = several connections)."""
    opened = []
    cluster_url = request.getfixturevalue("redis_cluster").url if kind == "redis-cluster" else None

    def factory(**kwargs: Any):
        if kind == "redis":
            store = RedisOnlineStore(REDIS_URL, prefix=redis_prefix, **kwargs)
        elif kind == "redis-cluster":
            store = RedisClusterOnlineStore(cluster_url, prefix=redis_prefix, **kwargs)
        else:
            store = SqliteOnlineStore(tmp_path / "online.db", prefix=redis_prefix, **kwargs)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


@pytest.fixture
def store(store_factory):
    return store_factory()


# --- the property: content equals a brute-force newer-wins reference ----------------------------------

ids = st.sampled_from([I64_MIN, -1, 0, 1, I64_MAX])
names = st.sampled_from(["", "a", "a:b", "%3A", "ü"])
# Few distinct instants so ties on event_ts and created are frequent.
instants = st.integers(0, 2).map(lambda s: T0 + timedelta(microseconds=s))
# Few distinct values per feature so that whole rows tie on (event_ts, created) and on leading values,
# and the later features decide: NaN, NULL, -0.0 against 0.0, int64 limits, strings that differ only
# after an embedded NUL or in a non-ASCII byte.
feature_values = (
    st.sampled_from([None, I64_MIN, I64_MIN + 1, -1, 0, I64_MAX - 1, I64_MAX]),
    st.sampled_from([None, math.nan, -math.inf, -1.5, -0.0, 0.0, math.inf, 1e308]),
    st.sampled_from([None, "", "\x00", "a", "a\x00", "a\x00b", "z", "é", "ü:%", "\U0001f600"]),
    st.sampled_from([None, True, False]),
    st.sampled_from([None, date(1970, 1, 1), date(1969, 12, 31), date(2100, 1, 1)]),
    st.sampled_from([None, datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), T0]),
)
values_st = st.tuples(*feature_values)


@st.composite
def history_st(draw: st.DrawFn) -> list[list[dict]]:
    """Batches of rows whose values mostly repeat one base row, so that the tie order goes deep."""
    base = draw(values_st)
    keys = draw(st.lists(st.tuples(ids, names), min_size=1, max_size=4, unique=True))

    def values() -> tuple:
        return tuple(
            draw(strategy) if draw(st.integers(0, 2)) == 0 else value
            for strategy, value in zip(feature_values, base, strict=True)
        )

    def row() -> dict:
        key = draw(st.sampled_from(keys))
        return {
            "id": key[0],
            "name": key[1],
            "ev": draw(instants),
            "cr": draw(st.one_of(st.none(), instants)),
            "values": values(),
        }

    batches = []
    for _ in range(draw(st.integers(1, 5))):
        rows = {}
        for _ in range(draw(st.integers(1, 8))):
            r = row()
            rows.setdefault((r["id"], r["name"]), r)
        batches.append(list(rows.values()))
    return batches


ALL_KEYS = [(i, n) for i in [I64_MIN, -1, 0, 1, I64_MAX] for n in ["", "a", "a:b", "%3A", "ü"]]


def reference(batches: list[list[dict]]) -> tuple[dict[tuple, tuple], list[int]]:
    """The expected store content and per-batch write counts, by brute force."""
    state: dict[tuple, tuple] = {}
    counts = []
    for batch in batches:
        n = 0
        for r in batch:
            key = (r["id"], r["name"])
            old = state.get(key)
            if old is None or rank(r["ev"], r["cr"], r["values"]) > rank(*old):
                state[key] = (r["ev"], r["cr"], r["values"])
                n += 1
        counts.append(n)
    return state, counts


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(history=history_st())
def test_newer_wins_matches_reference(store, history: list[list[dict]]) -> None:
    # Two tables: the same batches in order and reversed. Fresh versions per example keep examples apart.
    forward, backward = make_table(), make_table()
    want_fwd, counts_fwd = reference(history)
    want_bwd, counts_bwd = reference(history[::-1])

    assert [store.write_batch(forward, make_batch(forward, b)) for b in history] == counts_fwd
    assert [store.write_batch(backward, make_batch(backward, b)) for b in history[::-1]] == counts_bwd

    def check() -> None:
        got_fwd, got_bwd = store.read([(forward, ALL_KEYS), (backward, ALL_KEYS)])
        for key, got_f, got_b in zip(ALL_KEYS, got_fwd, got_bwd, strict=True):
            assert same_row(got_f, want_fwd.get(key)), (key, got_f, want_fwd.get(key))
            assert same_row(got_b, want_bwd.get(key)), (key, got_b, want_bwd.get(key))

    check()
    # Idempotent: re-writing every batch (in either order) changes nothing.
    assert sum(store.write_batch(forward, make_batch(forward, b)) for b in history[::-1]) == 0
    assert sum(store.write_batch(backward, make_batch(backward, b)) for b in history) == 0
    check()


# --- encoding properties (no store) -------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.one_of(st.none(), st.integers(I64_MIN, I64_MAX)), st.one_of(st.none(), st.text())),
        min_size=1,
        max_size=20,
    )
)
def test_vectorised_keys_match_python_keys(rows: list[tuple]) -> None:
    table = make_table(keys=("id", "name"))
    batch = pa.record_batch({"id": pa.array([r[0] for r in rows], pa.int64()), "name": [r[1] for r in rows]})
    texts = encode_keys(table, batch)
    assert texts == [key_text(r) for r in rows]
    # Injective: distinct non-NULL keys never share a text.
    distinct = {r for r in rows if None not in r}
    assert len({key_text(r) for r in distinct}) == len(distinct)


def test_key_text_accepts_equivalent_python_values() -> None:
    import numpy as np

    assert key_text((np.int64(42),)) == key_text((42,)) == "42"
    assert key_text((datetime(2024, 1, 1, 1, tzinfo=UTC),)) == key_text(
        (datetime(2024, 1, 1, 2, tzinfo=__import__("datetime").timezone(timedelta(hours=1))),)
    )
    assert key_text((True,)) == "true"
    assert key_text((1, None)) is None


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.integers(I64_MIN, I64_MAX), st.one_of(st.none(), st.integers(I64_MIN, I64_MAX))),
        min_size=2,
        max_size=10,
    )
)
def test_header_byte_order_is_newer_wins_order(rows: list[tuple[int, int | None]]) -> None:
    batch = pa.record_batch(
        {
            EVENT_TS: pa.array([r[0] for r in rows], pa.int64()).cast(TS),
            CREATED: pa.array([r[1] for r in rows], pa.int64()).cast(TS),
        }
    )
    headers = encode_headers(*encode_times(batch))
    assert all(len(h) == HEADER_SIZE for h in headers)

    def key(r: tuple[int, int | None]) -> tuple:
        return (r[0], (0,) if r[1] is None else (1, r[1]))

    for a, ha in zip(rows, headers, strict=True):
        for b, hb in zip(rows, headers, strict=True):
            assert (ha < hb) == (key(a) < key(b))
            assert (ha == hb) == (key(a) == key(b))
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    for (ev, cr), h in zip(rows, headers, strict=True):
        if all(v is None or -(6 * 10**16) < v < 2 * 10**17 for v in (ev, cr)):  # within datetime's range
            assert decode_header(h) == (
                epoch + timedelta(microseconds=ev),
                None if cr is None else epoch + timedelta(microseconds=cr),
            )


# --- types, NULL keys, versions ------------------------------------------------------------------------


def test_value_types_round_trip(store) -> None:
    types = {
        "i8": pa.int8(),
        "u64": pa.uint64(),
        "f32": pa.float32(),
        "dec": pa.decimal128(12, 3),
        "bin": pa.binary(),
        "ts_ns": pa.timestamp("ns", tz="UTC"),
        "ts_naive": pa.timestamp("ms"),
        "d64": pa.date64(),
        "dur": pa.duration("us"),
        "emb": pa.list_(pa.float64()),
        "big": pa.large_string(),
    }
    table = OnlineTable("typed", "v1", ("id",), tuple(types), tuple(types.values()))
    row = {
        "i8": -128,
        "u64": 2**64 - 1,
        "f32": 1.5,
        "dec": Decimal("-12345.678"),
        "bin": b"\x00\xff",
        "ts_ns": datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
        "ts_naive": datetime(2024, 5, 6, 7, 8, 9, 123000),
        "d64": date(2024, 2, 29),
        "dur": timedelta(days=2, microseconds=7),
        "emb": [0.5, math.nan, -1.0],
        "big": "ü" * 3,
    }
    columns = {
        "id": pa.array([7, 8], pa.int64()),
        EVENT_TS: pa.array([T0, T0], TS),
        CREATED: pa.array([None, None], TS),
    }
    for name, t in types.items():
        columns[name] = pa.array([row[name], None], t)
    assert store.write_batch(table, pa.record_batch(columns)) == 2
    got, missing = store.read([(table, [(7,), (8,)]), (table, [(9,)])])
    assert missing == [None]
    values = dict(zip(types, got[0].values, strict=True))
    emb = values.pop("emb")
    assert emb[0] == 0.5 and math.isnan(emb[1]) and emb[2] == -1.0
    assert values == {k: v for k, v in row.items() if k != "emb"}
    assert values["ts_ns"].tzinfo is not None and values["ts_naive"].tzinfo is None
    assert got[1].values == (None,) * len(types)


def test_null_keys_are_skipped_and_never_match(store) -> None:
    table = make_table()
    rows = [
        {"id": None, "name": "a", "ev": T0, "cr": None, "values": (1, 1.0, "", True, None, None)},
        {"id": 1, "name": None, "ev": T0, "cr": None, "values": (2, 2.0, "", True, None, None)},
        {"id": 1, "name": "a", "ev": T0, "cr": None, "values": (3, 3.0, "", True, None, None)},
    ]
    assert store.write_batch(table, make_batch(table, rows)) == 1
    got = store.read([(table, [(None, "a"), (1, None), (1, "a")])])[0]
    assert got[0] is None and got[1] is None and got[2].values[0] == 3


def test_versions_are_namespaced_and_drop_removes_one(store) -> None:
    v1, v2 = make_table("aaaaaaaaaaaa"), make_table("bbbbbbbbbbbb")
    row = {"id": 1, "name": "x", "ev": T0, "cr": None}
    store.write_batch(v1, make_batch(v1, [{**row, "values": (1, None, None, None, None, None)}]))
    store.write_batch(v2, make_batch(v2, [{**row, "values": (2, None, None, None, None, None)}]))
    only_v1 = make_table("cccccccccccc")
    got = store.read([(v1, [(1, "x")]), (v2, [(1, "x")]), (only_v1, [(1, "x")])])
    assert [r[0] and r[0].values[0] for r in got] == [1, 2, None]
    store.drop(v1)
    got = store.read([(v1, [(1, "x")]), (v2, [(1, "x")])])
    assert got[0] == [None] and got[1][0].values[0] == 2
    store.drop(v1)  # dropping twice (or a version never written) is fine


@pytest.mark.parametrize("kind", ["redis", "redis-cluster"])
def test_a_flushed_script_cache_is_reloaded_and_the_write_lands(store) -> None:
    """A Redis restarted without persistence, or SCRIPT FLUSH, forgets the upsert script: the store
    loads it again (on every master of a cluster) and re-sends the calls, so no row is lost."""
    table = make_table()
    rows = [{"id": i, "name": "k", "ev": T0, "cr": None, "values": (i,) + (None,) * 5} for i in range(50)]
    assert store.write_batch(table, make_batch(table, rows)) == 50
    store.client.script_flush()
    newer = [{**r, "ev": T0 + timedelta(seconds=1), "values": (r["id"] + 100,) + (None,) * 5} for r in rows]
    assert store.write_batch(table, make_batch(table, newer)) == 50
    got = store.read([(table, [(i, "k") for i in range(50)])])[0]
    assert [r.values[0] for r in got] == [i + 100 for i in range(50)]


def test_empty_batch_and_empty_read(store) -> None:
    table = make_table()
    assert store.write_batch(table, make_batch(table, [])) == 0
    assert store.read([]) == []
    assert store.read([(table, [])]) == [[]]


def test_bad_batches_raise_clear_errors(store) -> None:
    table = make_table()
    good = make_batch(table, [{"id": 1, "name": "a", "ev": T0, "cr": None, "values": (1,) + (None,) * 5}])
    with pytest.raises(OnlineStoreError, match="no column 'f'"):
        store.write_batch(table, good.drop_columns(["f"]))
    null_ev = good.set_column(good.schema.get_field_index(EVENT_TS), EVENT_TS, pa.array([None], TS))
    with pytest.raises(OnlineStoreError, match="NULL __fsql_event_ts"):
        store.write_batch(table, null_ev)
    struct_table = OnlineTable("s", "v", ("id",), ("x",), (pa.struct([("a", pa.int64())]),))
    with pytest.raises(OnlineStoreError, match="cannot hold"):
        store.write_batch(struct_table, good)


# --- concurrency ---------------------------------------------------------------------------------------

N_KEYS = 200
N_VERSIONS = 12


def version_batch(table: OnlineTable, version: int) -> pa.RecordBatch:
    """Every key at `version`: event_ts grows with the version, created ties broken on odd versions."""
    ev = T0 + timedelta(seconds=version // 2)
    cr = None if version % 2 == 0 else ev
    rows = [
        {
            "id": k,
            "name": "k",
            "ev": ev,
            "cr": cr,
            "values": (version, float(version), str(version), None, None, None),
        }
        for k in range(N_KEYS)
    ]
    return make_batch(table, rows)


def assert_all_at_max(store, table: OnlineTable) -> None:
    got = store.read([(table, [(k, "k") for k in range(N_KEYS)])])[0]
    assert all(r is not None and r.values[0] == N_VERSIONS - 1 for r in got), [
        r and r.values[0] for r in got if r is None or r.values[0] != N_VERSIONS - 1
    ][:5]


def test_concurrent_writers_never_regress(store_factory) -> None:
    table = make_table()
    # Both writers send their versions newest-first, each on its own connection, so older rows keep
    # arriving after newer ones of the same keys; a last-writer-wins store would end on version 0 or 1.
    plans = [list(range(N_VERSIONS - 2, -1, -2)), list(range(N_VERSIONS - 1, -1, -2))]
    batches = [[version_batch(table, v) for v in plan] for plan in plans]
    stores = [store_factory(), store_factory(), store_factory()]
    errors: list[BaseException] = []
    seen: list[int] = []
    done = threading.Event()
    barrier = threading.Barrier(3)

    def write(s, bs) -> None:
        try:
            barrier.wait(timeout=5)
            for _ in range(3):
                for b in bs:
                    s.write_batch(table, b)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    def watch(s) -> None:
        # A reader during the writes: the value of a key may only go up.
        try:
            barrier.wait(timeout=5)
            while not done.is_set():
                row = s.read([(table, [(N_KEYS - 1, "k")])])[0][0]
                if row is not None:
                    seen.append(row.values[0])
        except BaseException as exc:
            errors.append(exc)

    writers = [threading.Thread(target=write, args=(s, bs)) for s, bs in zip(stores, batches, strict=False)]
    reader = threading.Thread(target=watch, args=(stores[2],))
    for t in [*writers, reader]:
        t.start()
    for t in writers:
        t.join(timeout=30)
    done.set()
    reader.join(timeout=5)
    assert not errors, errors
    assert not any(t.is_alive() for t in [*writers, reader])
    assert seen == sorted(seen)
    assert_all_at_max(stores[0], table)


_WRITER = """
import sys
from datetime import timedelta
import test_online_store as t
from fsql.online.sqlite import SqliteOnlineStore
path, prefix, version, parity = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
table = t.make_table(version)
store = SqliteOnlineStore(path, prefix=prefix)
for v in list(range(t.N_VERSIONS - 2 + parity, -1, -2)) * 3:  # newest first: old rows arrive last
    store.write_batch(table, t.version_batch(table, v))
store.close()
"""


def test_sqlite_two_processes_writing_at_once(tmp_path: Path) -> None:
    path, prefix, version = str(tmp_path / "shared.db"), unique_name("p"), "procs0000000"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, path, prefix, version, str(parity)], env=env)
        for parity in (0, 1)
    ]
    try:
        assert [p.wait(timeout=60) for p in procs] == [0, 0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    store = SqliteOnlineStore(path, prefix=prefix)
    try:
        assert_all_at_max(store, make_table(version))
    finally:
        store.close()


# --- TTL -----------------------------------------------------------------------------------------------


def test_redis_ttl_set_and_refreshed_even_when_row_kept(redis_prefix: str) -> None:
    store = RedisOnlineStore(REDIS_URL, prefix=redis_prefix)
    client = redis.Redis.from_url(REDIS_URL)
    try:
        table = make_table(ttl=timedelta(seconds=100))
        newer = {"id": 1, "name": "a", "ev": T0 + timedelta(days=1), "cr": None, "values": (2,) + (None,) * 5}
        older = {"id": 1, "name": "a", "ev": T0, "cr": None, "values": (1,) + (None,) * 5}
        assert store.write_batch(table, make_batch(table, [newer])) == 1
        key = f"{redis_prefix}:orders:{table.version}:1:a"
        assert 95 <= client.ttl(key) <= 100
        client.expire(key, 10)  # as if 90 s had passed
        assert store.write_batch(table, make_batch(table, [older])) == 0
        assert 95 <= client.ttl(key) <= 100
        assert store.read([(table, [(1, "a")])])[0][0].values[0] == 2

        no_ttl = make_table()
        store.write_batch(no_ttl, make_batch(no_ttl, [older]))
        assert client.ttl(f"{redis_prefix}:orders:{no_ttl.version}:1:a") == -1
    finally:
        store.close()
        client.close()


def test_redis_value_is_compact(redis_prefix: str) -> None:
    store = RedisOnlineStore(REDIS_URL, prefix=redis_prefix)
    client = redis.Redis.from_url(REDIS_URL)
    try:
        table = make_table("v")
        row = {"id": 1, "name": "a", "ev": T0, "cr": T0, "values": (5, 0.25, "", True, None, None)}
        store.write_batch(table, make_batch(table, [row]))
        raw = client.get(f"{redis_prefix}:orders:v:1:a")
        # 17-byte header + msgpack array of 6 values, no feature names.
        assert len(raw) == HEADER_SIZE + 1 + 1 + 9 + 1 + 1 + 1 + 1
        assert b"orders" not in raw and b"f" not in raw[HEADER_SIZE:]
    finally:
        store.close()
        client.close()


# --- failures ------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[dict]:
    """A private redis-server on a free loopback port; `start()` / `kill()` it at will."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not on PATH")
    port = free_port()
    state: dict[str, Any] = {"port": port, "url": f"redis://127.0.0.1:{port}/0", "proc": None}

    def start() -> None:
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--daemonize", "no", "--dir", str(tmp_path), "--loglevel", "warning"]
        state["proc"] = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("private redis-server did not start")

    def kill() -> None:
        proc = state["proc"]
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)

    state["start"], state["kill"] = start, kill
    try:
        yield state
    finally:
        kill()


def test_unreachable_redis_fails_at_open_with_a_hint() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(OnlineStoreError) as info:
        open_online_store("redis", url=url)
    text = str(info.value)
    assert f"cannot reach Redis at {url}" in text and "FSQL_REDIS_URL" in text


def test_unknown_kind_and_bad_sqlite_path(tmp_path: Path) -> None:
    with pytest.raises(OnlineStoreError, match="did you mean 'redis'"):
        open_online_store("redsi")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OnlineStoreError, match="cannot open the SQLite online store"):
        open_online_store("sqlite", path=str(blocker / "sub" / "online.db"))


def test_redis_killed_mid_write_raises_then_rewrite_converges(private_redis: dict) -> None:
    private_redis["start"]()
    # Small chunks: many round trips, so the kill lands in the middle of the batch.
    store = RedisOnlineStore(private_redis["url"], keys_per_call=100, calls_per_pipeline=2, socket_timeout=2)
    table = OnlineTable("big", "v1", ("id",), ("x",), (pa.int64(),))
    n = 200_000
    batch = pa.record_batch(
        {
            "id": pa.array(range(n), pa.int64()),
            EVENT_TS: pa.array([T0] * n, TS),
            CREATED: pa.nulls(n, TS),
            "x": pa.array(range(n), pa.int64()),
        }
    )
    watcher = redis.Redis.from_url(private_redis["url"], socket_timeout=1)

    def kill_after_first_chunks() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if watcher.dbsize() >= 1_000:
                    break
            except redis.RedisError:
                return
            time.sleep(0.005)
        private_redis["kill"]()

    killer = threading.Thread(target=kill_after_first_chunks)
    killer.start()
    try:
        started = time.monotonic()
        with pytest.raises(OnlineStoreError) as info:
            store.write_batch(table, batch)
        assert time.monotonic() - started < 15
        text = str(info.value)
        assert "failed while writing big (version v1)" in text and "re-run" in text
        killer.join(timeout=10)

        with pytest.raises(OnlineStoreError):
            store.read([(table, [(1,)])])

        private_redis["start"]()  # empty, with no script cache: the store must reload its script
        assert store.write_batch(table, batch) == n
        assert store.write_batch(table, batch) == 0
        sample = [0, 1, 99_999, n - 1]
        got = store.read([(table, [(k,) for k in sample])])[0]
        assert [r.values[0] for r in got] == sample
        assert redis.Redis.from_url(private_redis["url"]).dbsize() == n
    finally:
        killer.join(timeout=10)
        watcher.close()
        store.close()
