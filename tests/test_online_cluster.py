"""The Redis Cluster online store beyond the shared contract (which ``test_online_store``,
``test_online_generations`` and ``test_no_skew`` run against a cluster too): ``fsql materialize`` and
``fsql get`` give the same values as on one node, reads are one MGET per bucket, and a master
restarted or killed in the middle of a run fails the run, after which the next run converges.

Every cluster here is three private redis-server masters on free loopback ports (``redis_server``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REDIS_URL, unique_name
from redis_server import RedisClusterServers, RedisServer, redis_cluster
from typer.testing import CliRunner

from fsql.cli import app
from fsql.config import RedisOnline, load_config
from fsql.errors import ConfigError, FsqlError, OnlineStoreError
from fsql.online import CREATED, EVENT_TS, OnlineTable
from fsql.online.redis_cluster import RedisClusterOnlineStore, bucket_of
from tests.service_adapter import Service

TS = pa.timestamp("us", tz="UTC")
T0 = datetime(2025, 1, 1, tzinfo=UTC)
END = T0 + timedelta(days=2)

CONFIG = """
[project]
name = "clustered"
dialect = "duckdb"

[warehouse]
engine = "duckdb"
path = ".fsql/warehouse.duckdb"
schema = "fsql"

[online]
store = "redis"
url = "{url}"
prefix = "{prefix}"
{cluster}

[entities.customer]
keys = ["k"]

[sources.events]
path = "events.parquet"
"""

VIEW = """\
-- @feature_view spend
-- @entity customer
-- @timestamp event_ts
SELECT k, event_ts, x, s FROM events
"""


def write_project(root: Path, url: str, prefix: str, *, cluster: bool, entities: int) -> Path:
    (root / "features").mkdir(parents=True)
    text = CONFIG.format(url=url, prefix=prefix, cluster="cluster = true" if cluster else "")
    (root / "fsql.toml").write_text(text)
    (root / "features" / "spend.sql").write_text(VIEW)
    # Two rows per entity, the later one wins; x holds NaN and NULL, s has ':' and '%' in it.
    ks = [k for k in range(entities) for _ in range(2)]
    events = [T0 + timedelta(hours=k % 24 + 24 * r) for k in range(entities) for r in range(2)]
    xs = [None if k % 7 == 0 else float("nan") if k % 11 == 0 else k + r / 2 for k in range(entities) for r in range(2)]
    ss = [f"s:{k}%{r}" for k in range(entities) for r in range(2)]
    pq.write_table(pa.table({"k": pa.array(ks, pa.int64()), "event_ts": pa.array(events, TS),
                             "x": pa.array(xs, pa.float64()), "s": ss}), root / "events.parquet")
    return root


def cli(root: Path, *args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--project", str(root)])
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[RedisClusterServers]:
    """A cluster for one test, which may kill its masters."""
    yield from redis_cluster(tmp_path / "cluster")


def test_config_takes_cluster_flag(tmp_path: Path) -> None:
    root = write_project(tmp_path / "p", "redis://127.0.0.1:7000,127.0.0.1:7001", "x", cluster=True, entities=1)
    online = load_config(root).online
    assert isinstance(online, RedisOnline) and online.cluster
    (root / "fsql.toml").write_text((root / "fsql.toml").read_text().replace("cluster = true", 'cluster = "yes"'))
    with pytest.raises(ConfigError, match="cluster must be true or false"):
        load_config(root)


def test_unreachable_cluster_and_braces_in_prefix_fail_at_open(redis_cluster: RedisClusterServers) -> None:
    with pytest.raises(OnlineStoreError, match="cannot reach the Redis Cluster") as info:
        RedisClusterOnlineStore("redis://:s3cret@127.0.0.1:1,127.0.0.1:2", connect_timeout=1)
    assert "s3cret" not in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(OnlineStoreError, match="contains"):
        RedisClusterOnlineStore(redis_cluster.url, prefix="a{b}")


def test_materialize_and_get_match_one_node(redis_cluster: RedisClusterServers, redis_prefix: str,
                                            tmp_path: Path) -> None:
    """The done criterion: `fsql materialize` into the cluster, then `fsql get`, gives what one node gives."""
    one = write_project(tmp_path / "one", REDIS_URL, redis_prefix, cluster=False, entities=300)
    many = write_project(tmp_path / "many", redis_cluster.url, unique_name("c"), cluster=True, entities=300)
    end = END.isoformat()
    got = {}
    for name, root in (("one", one), ("many", many)):
        cli(root, "build")
        runs = json.loads(cli(root, "materialize", "--end", end, "--json"))
        assert [r["rows"] for r in runs] == [300]
        entities = [arg for k in [*range(0, 300, 3), 999] for arg in ("--entity", f"k={k}")]
        got[name] = json.loads(cli(root, "get", "spend", *entities, "--json"))
    assert got["many"] == got["one"]
    assert len(got["many"]) == 101 and got["many"][-1]["x__status"] == "missing"
    assert got["many"][1]["s"] == "s:3%1" and got["many"][0]["x"] is None
    # the rows are spread over every master
    sizes = [server.client().dbsize() for server in redis_cluster.servers]
    assert all(size > 0 for size in sizes), sizes


def test_read_is_one_mget_per_bucket_on_every_master_at_once(redis_cluster: RedisClusterServers,
                                                              redis_prefix: str) -> None:
    store = RedisClusterOnlineStore(redis_cluster.url, prefix=redis_prefix)
    table = OnlineTable("t", "v1", ("id",), ("x",), (pa.int64(),))
    try:
        n = 500
        store.write_batch(table, pa.record_batch({
            "id": pa.array(range(n), pa.int64()), EVENT_TS: pa.array([T0] * n, TS),
            CREATED: pa.nulls(n, TS), "x": pa.array(range(n), pa.int64()),
        }))
        store.read([(table, [(1,)])])  # the first read learns the bucket states
        for ids in ([7], list(range(100, 200))):
            before = [server.command_calls() for server in redis_cluster.servers]
            rows = store.read([(table, [(i,) for i in ids])])[0]
            assert [r.values[0] for r in rows] == ids
            after = [server.command_calls() for server in redis_cluster.servers]
            calls = [{k: v - b.get(k, 0) for k, v in a.items() if v != b.get(k, 0)} for b, a in zip(before, after, strict=True)]
            buckets = {bucket_of(str(i), store.buckets) for i in ids}
            assert sum(c.get("mget", 0) for c in calls) == len(buckets)
            assert all(set(c) <= {"mget"} for c in calls), calls
    finally:
        store.close()


def values(service: Service, entities: int) -> list[Any]:
    rows = service.online("spend", {"k": list(range(entities))}, now=END, as_dicts=True)
    return [(r["x"], r["s"], r["x__status"]) for r in rows]


def same(a: list[Any], b: list[Any]) -> bool:
    return len(a) == len(b) and all(
        x == y or (isinstance(x[0], float) and isinstance(y[0], float) and x[0] != x[0] and y[0] != y[0]
                   and x[1:] == y[1:])
        for x, y in zip(a, b, strict=True)
    )


@pytest.mark.parametrize("fault", ["restart", "kill"])
def test_master_lost_mid_run_fails_the_run_and_the_next_run_converges(
    own_cluster: RedisClusterServers, redis_prefix: str, tmp_path: Path, fault: str
) -> None:
    """A master restarted (it comes back empty, the run's writes succeed again) or killed (it stays
    down until after the run) after the first batch: the run fails with one typed line and keeps
    its watermark; the next run recomputes and serves what one node serves."""
    entities = 20_000
    reference_root = write_project(tmp_path / "one", REDIS_URL, redis_prefix, cluster=False, entities=entities)
    root = write_project(tmp_path / "many", own_cluster.url, "fsqlc", cluster=True, entities=entities)
    expected_service = Service.open(reference_root)
    service = Service.open(root)
    try:
        expected_service.build()
        expected_service.materialize(end=END - timedelta(days=1))
        expected_service.materialize(end=END)
        expected = values(expected_service, entities)

        service.build()
        first = service.materialize(end=END - timedelta(days=1))  # a completed run: the marker is set
        assert [r.outcome for r in first] == ["success"]
        victim = own_cluster.master_of_most_keys()
        lost = False

        def after_each_batch(view: str, rows: int) -> None:
            nonlocal lost
            if not lost:
                lost = True
                victim.kill()
                if fault == "restart":
                    victim.start()
                    own_cluster.wait_ok()

        began = time.monotonic()
        with pytest.raises(FsqlError) as info:
            service.materialize(end=END, batch_size=2_000, progress=after_each_batch)
        assert time.monotonic() - began < 60
        message = str(info.value)
        assert "\n" not in message and "materializing 'spend' failed" in message, message
        if fault == "restart":
            assert "restarted or failed over during the run" in message, message
        else:
            assert "Redis Cluster at" in message, message
        view = service.definitions()[0]["spend"]
        assert service.registry.watermark("spend", view.version) == END - timedelta(days=1)

        if fault == "kill":
            victim.start()
            own_cluster.wait_ok()
        again = service.materialize(end=END)
        assert [r.outcome for r in again] == ["success"]
        assert again[0].start is None  # the lost marker made it a recompute
        assert same(values(service, entities), expected)
        assert service.registry.watermark("spend", view.version) == END
    finally:
        service.close()
        expected_service.close()


def int_batch(ids: range, x: int) -> pa.RecordBatch:
    n = len(ids)
    return pa.record_batch({"id": pa.array(ids, pa.int64()), EVENT_TS: pa.array([T0] * n, TS),
                            CREATED: pa.nulls(n, TS), "x": pa.array([x] * n, pa.int64())})


def test_a_switch_interrupted_between_buckets_is_finished_by_the_next_change(
    redis_cluster: RedisClusterServers, redis_prefix: str
) -> None:
    """A committer that died after marking only some buckets: readers keep one generation (the old
    one, which every bucket still serves); the next state change completes the switch and frees the
    old generation; a bucket whose state is lost takes the marker away."""
    store = RedisClusterOnlineStore(redis_cluster.url, prefix=redis_prefix)
    reader = RedisClusterOnlineStore(redis_cluster.url, prefix=redis_prefix)
    table = OnlineTable("t", "v2", ("id",), ("x",), (pa.int64(),))
    ids = range(300)

    def read() -> list[int | None]:
        return [r and r.values[0] for r in reader.read([(table, [(i,) for i in ids])])[0]]

    try:
        old = store.begin_generation(table)
        store.write_batch(table, int_batch(ids, 1), generation=old)
        assert store.commit_generation(table, old) == "committed"
        new = store.begin_generation(table)
        store.write_batch(table, int_batch(ids, 2), generation=new)
        state_keys = [ns[:-1] for ns in store._layout(table)[0]]
        raw = store.client.get(state_keys[0]).decode()
        assert raw.endswith(f" {new}@0")
        for key in state_keys[: len(state_keys) // 2]:
            store.client.set(key, raw + "!")  # marked as being switched to, then the committer died
        assert read() == [1] * len(ids)
        assert reader.has_marker(table)

        store.abort_generation(table, store.begin_generation(table))  # any change repairs first
        assert read() == [2] * len(ids)
        assert not list(store.client.scan_iter(match=f"{redis_prefix}:t:*%{old}:*"))
        with pytest.raises(OnlineStoreError, match="is not being built"):
            store.write_batch(table, int_batch(ids, 3), generation=new)  # it is the active one now
        assert store.write_batch(table, int_batch(range(1), 0)) == 0  # ranks below what is served
        assert reader.has_marker(table)

        store.client.delete(state_keys[3])  # as if its master restarted without persistence
        assert not reader.has_marker(table)
    finally:
        store.drop(table)
        assert not list(store.client.scan_iter(match=f"{redis_prefix}:*"))
        store.close()
        reader.close()


@pytest.fixture
def replicated_cluster(tmp_path: Path) -> Iterator[RedisClusterServers]:
    """Three masters with a replica each, for one test."""
    yield from redis_cluster(tmp_path / "replicated", replicas=1)


def test_master_failed_over_mid_run_fails_the_run_and_the_next_run_converges(
    replicated_cluster: RedisClusterServers, redis_prefix: str, tmp_path: Path
) -> None:
    """A replica takes over from a master after the first batch: the writes go on to the new master,
    but the run fails (its rows could have missed the replica in an unplanned failover), keeps its
    watermark, and the next run catches up to what one node serves."""
    entities = 20_000
    reference_root = write_project(tmp_path / "one", REDIS_URL, redis_prefix, cluster=False, entities=entities)
    root = write_project(tmp_path / "many", replicated_cluster.url, "fsqlf", cluster=True, entities=entities)
    expected_service, service = Service.open(reference_root), Service.open(root)
    try:
        for s in (expected_service, service):
            s.build()
            assert [r.outcome for r in s.materialize(end=END - timedelta(days=1))] == ["success"]
        expected_service.materialize(end=END)
        expected = values(expected_service, entities)
        victim = replicated_cluster.master_of_most_keys()
        switched: list[RedisServer] = []

        def after_each_batch(view: str, rows: int) -> None:
            if not switched:
                switched.append(replicated_cluster.fail_over(victim))

        with pytest.raises(FsqlError) as info:
            service.materialize(end=END, batch_size=2_000, progress=after_each_batch)
        message = str(info.value)
        assert "\n" not in message and "failed over during the run" in message, message
        assert replicated_cluster.role(switched[0])[0] == "master"
        view = service.definitions()[0]["spend"]
        assert service.registry.watermark("spend", view.version) == END - timedelta(days=1)

        again = service.materialize(end=END)
        assert [r.outcome for r in again] == ["success"]
        assert same(values(service, entities), expected)
    finally:
        service.close()
        expected_service.close()
