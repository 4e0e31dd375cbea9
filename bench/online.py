"""End-to-end online benchmark: ``fsql materialize`` and ``Store.online`` against raw clients.

    python -m bench.online [--scale 1.0] [--redis-url redis://127.0.0.1:6379/0] [--reads 2000]
    python -m bench.online --cluster [--scale 0.2] [--cluster-url redis://h1:p1,redis://h2:p2]

Builds a tiny fsql project over the generated orders of ``bench.data`` (at scale 1: 2M orders of
100k customers, 10 numeric features with NULLs) in a temporary directory, DuckDB warehouse, and in
one run measures, on loopback only:

- **materialize rows/s**: ``Store.materialize(full=True)`` into Redis (the warehouse query for the
  latest row per customer, Arrow batches, encoding, newer-wins Lua upserts) vs raw pipelined redis-py
  ``HSET`` of the same latest rows (a hash per customer, a field per feature, NULLs left out), starting
  from the same Arrow table (its conversion to Python values is timed; the latest-row query is not, it
  is reported separately). Target ratio >= 0.7.
- **online read latency** p50/p99 for 1 and 100 entities: ``Store.online`` (registry definitions,
  key casting, one MGET, decoding, freshness status, a polars DataFrame) vs raw ``HMGET`` of the 10
  fields (100 entities: one pipeline of 100 ``HMGET``). Target p99 ratio <= 1.5.
- **bytes per entity**: ``MEMORY USAGE`` over a sample of keys, fsql vs the raw hash, with keys of
  the same length.
- the same for the SQLite online store vs a typed table with plain ``INSERT OR REPLACE`` / ``SELECT``
  (bytes per entity from ``dbstat``).

``--cluster`` measures the same against a Redis Cluster (``[online] cluster = true``) instead of one
node: a private cluster of three masters that the benchmark starts on spare loopback ports
(``redis-server`` and ``redis-cli`` on PATH) and stops at the end, or the one at ``--cluster-url``. The
raw baselines are the same commands through redis-py's ``RedisCluster``: its pipelines group the
commands by master and send them to every master at once, as fsql's do. Same targets as on one node.

Read latencies are measured call by call, fsql and raw interleaved, so that load from other processes
hits both sides alike. ``Store.online`` reuses the registry definitions for up to 2 s (the
first call of a run reads them), so a steady stream of reads costs one store round trip each.

Every trial writes into a fresh key prefix / file; all keys under the benchmark's own random prefix
and the temporary directory are deleted at the end. Figures are the best (write) or the pooled
percentiles (reads) of a few trials.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import socket
import sqlite3
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import redis
from redis.cluster import RedisCluster

from bench.data import END, FEATURE_NAMES, FEATURES, generate

VIEW = "customer_orders"
WRITE_TRIALS = 3
PIPELINE = 1000  # raw baseline: commands per pipelined round trip

CONFIG = """
[project]
name = "bench_online"
dialect = "duckdb"

[warehouse]
engine = "duckdb"
path = "warehouse.duckdb"
schema = "fsql"

[online]
store = "sqlite"
path = "online.db"

[registry]
url = "sqlite:///registry.db"

[entities.customer]
keys = ["customer_id"]

[sources.orders]
path = "orders.parquet"
"""

FEATURE_FILE = f"""\
-- @feature_view {VIEW}
-- @entity customer
-- @timestamp event_ts
-- @created loaded_at
-- The latest order of each customer, with its 10 features.
SELECT customer_id, event_ts, loaded_at, {", ".join(FEATURE_NAMES)}
FROM orders
"""


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    began = time.perf_counter()
    result = fn()
    return time.perf_counter() - began, result


def paired_latencies(
    fsql: Callable[[int], Any], raw: Callable[[int], Any], count: int
) -> tuple[list[float], list[float]]:
    """Seconds per call of ``fsql(i)`` and ``raw(i)``, interleaved call by call so that noise from
    other processes on the machine hits both sides alike; after a short warm-up."""
    for i in range(min(50, count)):
        fsql(i)
        raw(i)
    gc.collect()
    a: list[float] = []
    b: list[float] = []
    clock = time.perf_counter
    for i in range(count):
        began = clock()
        fsql(i)
        middle = clock()
        raw(i)
        a.append(middle - began)
        b.append(clock() - middle)
    return a, b


class Report:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str, str]] = []

    def add(self, what: str, fsql: str, raw: str, ratio: float | None, target: str = "") -> None:
        verdict = ""
        if ratio is not None and target:
            op, bound = target[:2], float(target[2:])
            ok = ratio >= bound if op == ">=" else ratio <= bound
            verdict = f"{target} {'ok' if ok else 'MISSED'}"
        self.rows.append((what, fsql, raw, f"{ratio:.2f}" if ratio is not None else "", verdict))

    def section(self, title: str) -> None:
        self.rows.append((f"-- {title}", "", "", "", ""))

    def print(self) -> None:
        header = ("measure", "fsql", "raw", "ratio", "target")
        widths = [max(len(r[i]) for r in [header, *self.rows]) for i in range(5)]
        line = "  ".join(f"{{:<{w}}}" for w in widths)
        print(line.format(*header))
        print(line.format(*("-" * w for w in widths)))
        for row in self.rows:
            print(line.format(*row))


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms"


def rate(rows: int, seconds: float) -> str:
    return f"{rows / seconds:,.0f} rows/s"


# --- the project -----------------------------------------------------------------------------------


def make_project(root: Path, scale: float) -> tuple[pa.Table, int]:
    (root / "features").mkdir(parents=True)
    (root / "fsql.toml").write_text(CONFIG)
    (root / "features" / f"{VIEW}.sql").write_text(FEATURE_FILE)
    orders = generate(scale).orders
    pq.write_table(orders, root / "orders.parquet")
    return orders, int(pa.compute.max(orders.column("customer_id")).as_py())


def open_service(root: Path, online: dict[str, Any]) -> Any:
    from fsql import Store

    return Store(root, online=online)


def latest_rows(root: Path, end: datetime) -> tuple[float, pa.Table]:
    """The rows materialize writes, from the same query; best of a few timings (the warehouse part
    of a run)."""
    from fsql.service.context import Context
    from fsql.service.materialize import _latest_sql

    ctx = Context.open(root)
    try:
        view = ctx.definitions().views[VIEW]
        sql, params = _latest_sql(ctx, view, None, end)
        timings = [timed(lambda: ctx.engine.arrow(sql, params)) for _ in range(WRITE_TRIALS)]
    finally:
        ctx.close()
    return min(t for t, _ in timings), timings[-1][1]


def store_writes(root: Path, online: dict[str, Any], prefix: str, latest: pa.Table, end: datetime) -> float:
    """Best seconds of the online store's part of a full run alone (begin a generation, write the
    latest rows in materialize's batches, commit), without the run's other steps (the latest-row
    query, the statistics of what is served for the catalog)."""
    from fsql.online.base import online_table_of
    from fsql.service.context import Context
    from fsql.service.materialize import _online_batch, _online_schema

    best = float("inf")
    for trial in range(WRITE_TRIALS):
        ctx = Context.open(root, {"online": {**online, "prefix": f"{prefix}:store{trial}"}})
        try:
            view = ctx.definitions().views[VIEW]
            table = online_table_of(view)
            schema = _online_schema(view, table)
            store = ctx.online_store

            def run(store: Any = store, table: Any = table, view: Any = view, schema: pa.Schema = schema) -> None:
                generation = store.begin_generation(table, as_of=end)
                for batch in latest.to_batches(max_chunksize=50_000):
                    store.write_batch(table, _online_batch(batch, view, schema), generation=generation)
                assert store.commit_generation(table, generation) == "committed"

            best = min(best, timed(run)[0])
        finally:
            ctx.close()
    return best


def compare_reads(
    report: Report,
    label: str,
    fsql: Callable[[int], Any],
    raw: Callable[[int], Any],
    count: int,
    *,
    target: bool = True,
) -> None:
    a, b = paired_latencies(fsql, raw, count)
    report.add(f"{label} p50", ms(pct(a, 0.5)), ms(pct(b, 0.5)), pct(a, 0.5) / pct(b, 0.5))
    report.add(
        f"{label} p99",
        ms(pct(a, 0.99)),
        ms(pct(b, 0.99)),
        pct(a, 0.99) / pct(b, 0.99),
        "<=1.5" if target else "",
    )


# --- Redis -----------------------------------------------------------------------------------------


class PrivateCluster:
    """Three redis-server masters in cluster mode, without persistence, on spare loopback ports."""

    def __init__(self, work: Path, masters: int = 3) -> None:
        self.work = work
        self.ports: list[int] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        for i in range(masters):
            port = 65535
            while port + 10000 > 65535:  # the cluster bus listens on port + 10000
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    port = s.getsockname()[1]
            directory = work / f"node{i}"
            directory.mkdir(parents=True)
            self.ports.append(port)
            self.processes.append(subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(directory), "--cluster-enabled", "yes", "--loglevel", "warning"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port in self.ports:
            self._wait(lambda p=port: redis.Redis(port=p, socket_timeout=1).ping())
        subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        for port in self.ports:
            self._wait(lambda p=port: b"cluster_state:ok" in redis.Redis(port=p).execute_command("CLUSTER", "INFO"))
        self.url = ",".join(f"redis://127.0.0.1:{p}" for p in self.ports)

    @staticmethod
    def _wait(ready: Callable[[], Any]) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                if ready():
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the private Redis Cluster did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        for process in self.processes:
            process.kill()
            process.wait(timeout=10)


def raw_hset(client: redis.Redis | RedisCluster, ns: str, latest: pa.Table) -> None:
    ids = latest.column("customer_id").to_pylist()
    columns = [latest.column(name).to_pylist() for name in FEATURE_NAMES]
    pipe = client.pipeline(transaction=False)
    pending = 0
    for i, cid in enumerate(ids):
        mapping = {
            name: values[i]
            for name, values in zip(FEATURE_NAMES, columns, strict=True)
            if values[i] is not None
        }
        pipe.hset(f"{ns}{cid}", mapping=mapping)
        pending += 1
        if pending == PIPELINE:
            pipe.execute()
            pending = 0
    if pending:
        pipe.execute()


def delete_prefix(client: redis.Redis | RedisCluster, prefix: str) -> None:
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"{prefix}*", count=5000):
        batch.append(key)
        if len(batch) >= 5000:
            client.unlink(*batch)
            batch.clear()
    if batch:
        client.unlink(*batch)


def memory_per_key(client: redis.Redis | RedisCluster, keys: list[str]) -> float:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    sizes = [s for s in pipe.execute() if s is not None]
    return statistics.fmean(sizes) if sizes else float("nan")


def bench_redis(root: Path, url: str, prefix: str, customers: int, reads: int, report: Report,
                cluster: bool = False) -> None:
    if cluster:
        from fsql.online.redis_cluster import seed_urls

        client: redis.Redis | RedisCluster = RedisCluster.from_url(seed_urls(url)[0])
        report.section("Redis Cluster (3 masters)")
    else:
        client = redis.Redis.from_url(url)
        report.section("Redis")
    end = END + timedelta(days=30)  # every order is known by then
    best = float("inf")
    rows = 0
    service = None
    for trial in range(WRITE_TRIALS):
        if service is not None:
            service.close()
        service = open_service(root, {"store": "redis", "url": url, "prefix": f"{prefix}:fsql{trial}",
                                      "cluster": cluster})
        seconds, results = timed(lambda s=service: s.materialize([VIEW], full=True, end=end))
        rows = results[0].rows
        best = min(best, seconds)
    assert service is not None
    query_seconds, latest = latest_rows(root, end)
    assert latest.num_rows == rows, (latest.num_rows, rows)

    version = service.definition(VIEW).version
    fsql_ns = f"{prefix}:fsql{WRITE_TRIALS - 1}:{VIEW}:{version}:"
    if cluster:  # the keys carry their bucket's hash tag, {version.b}
        fsql_ns = f"{prefix}:fsql{WRITE_TRIALS - 1}:{VIEW}:{{{version}.10}}:"
    raw_ns = f"{prefix}:rawh0:{'r' * (len(fsql_ns) - len(prefix) - 8)}:"  # same key length as fsql's
    assert len(raw_ns) == len(fsql_ns)
    raw_best = float("inf")
    for trial in range(WRITE_TRIALS):
        ns = raw_ns.replace(":rawh0:", f":rawh{trial}:")
        raw_best = min(raw_best, timed(lambda ns=ns: raw_hset(client, ns, latest))[0])
    raw_ns = raw_ns.replace(":rawh0:", f":rawh{WRITE_TRIALS - 1}:")
    write_only = max(best - query_seconds, 1e-9)
    report.add("materialize (full run)", rate(rows, best), rate(rows, raw_best), raw_best / best, ">=0.7")
    report.add("  of which latest-row query", f"{query_seconds:.2f} s", "-", None)
    report.add("  write part only", rate(rows, write_only), rate(rows, raw_best), raw_best / write_only)
    online = {"store": "redis", "url": url, "cluster": cluster}
    store_seconds = store_writes(root, online, prefix, latest, end)
    report.add("  online store writes only", rate(rows, store_seconds), rate(rows, raw_best), raw_best / store_seconds)

    reads_100 = max(20, reads // 10)

    def one(i: int) -> int:
        return 1 + (i * 7919) % customers

    def ids(i: int) -> list[int]:
        return [1 + (i * 100 + j) * 7919 % customers for j in range(100)]

    def raw_hundred(i: int) -> Any:
        pipe = client.pipeline(transaction=False)
        for cid in ids(i):
            pipe.hmget(f"{raw_ns}{cid}", FEATURE_NAMES)
        return pipe.execute()

    def raw_one(i: int) -> Any:
        return client.hmget(f"{raw_ns}{one(i)}", FEATURE_NAMES)

    compare_reads(
        report,
        "online 1 entity",
        lambda i: service.online(VIEW, {"customer_id": [one(i)]}, now=end),
        raw_one,
        reads,
    )
    compare_reads(
        report,
        "online 100 entities",
        lambda i: service.online(VIEW, {"customer_id": ids(i)}, now=end),
        raw_hundred,
        reads_100,
    )
    compare_reads(
        report,
        "  1, as_dicts",
        lambda i: service.online_dicts(VIEW, {"customer_id": [one(i)]}, now=end),
        raw_one,
        reads,
        target=False,
    )
    compare_reads(
        report,
        "  100, as_dicts",
        lambda i: service.online_dicts(VIEW, {"customer_id": ids(i)}, now=end),
        raw_hundred,
        reads_100,
        target=False,
    )

    sample = [1 + (i * 7919) % customers for i in range(min(2000, customers))]
    # fsql's keys as stored (a full run writes a generation, whose keys carry its name), from a SCAN
    fsql_keys = []
    for key in client.scan_iter(match=f"{prefix}:fsql{WRITE_TRIALS - 1}:*", count=1000):
        if key.rsplit(b":", 1)[1].isdigit():  # an entity key, not a state key
            fsql_keys.append(key)
        if len(fsql_keys) >= len(sample):
            break
    fsql_bytes = memory_per_key(client, fsql_keys)
    raw_bytes = memory_per_key(client, [f"{raw_ns}{c}" for c in sample])
    report.add(
        "bytes per entity (MEMORY USAGE)", f"{fsql_bytes:.0f} B", f"{raw_bytes:.0f} B", fsql_bytes / raw_bytes
    )
    service.close()
    client.close()


# --- SQLite ----------------------------------------------------------------------------------------

_SQL_TYPES = {"double": "REAL", "int64": "INTEGER"}


def raw_sqlite_write(path: Path, latest: pa.Table) -> None:
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("PRAGMA synchronous = NORMAL")
    columns = ", ".join(f"{name} {_SQL_TYPES[str(t)]}" for name, t, _ in FEATURES)
    con.execute(
        f"CREATE TABLE IF NOT EXISTS latest (k INTEGER PRIMARY KEY, event_ts INTEGER NOT NULL, {columns})"
    )
    names = ["customer_id", "event_ts", *FEATURE_NAMES]
    data = [
        latest.column(n).cast(pa.int64()).to_pylist() if n == "event_ts" else latest.column(n).to_pylist()
        for n in names
    ]
    marks = ", ".join("?" * len(names))
    con.execute("BEGIN IMMEDIATE")
    con.executemany(f"INSERT OR REPLACE INTO latest VALUES ({marks})", zip(*data, strict=True))
    con.execute("COMMIT")
    con.close()


def table_bytes(path: Path, table: str) -> int | None:
    con = sqlite3.connect(path)
    try:
        return con.execute("SELECT SUM(pgsize) FROM dbstat WHERE name = ?", [table]).fetchone()[0]
    except sqlite3.Error:
        return None
    finally:
        con.close()


def bench_sqlite(root: Path, work: Path, customers: int, reads: int, report: Report) -> None:
    report.section("SQLite")
    end = END + timedelta(days=30)
    best = float("inf")
    rows = 0
    service = None
    path = work
    for trial in range(WRITE_TRIALS):
        if service is not None:
            service.close()
        path = work / f"online{trial}.db"
        service = open_service(root, {"store": "sqlite", "path": str(path)})
        seconds, results = timed(lambda s=service: s.materialize([VIEW], full=True, end=end))
        rows = results[0].rows
        best = min(best, seconds)
    assert service is not None
    query_seconds, latest = latest_rows(root, end)
    raw_best = float("inf")
    raw_path = work / "raw0.db"
    for trial in range(WRITE_TRIALS):
        raw_path = work / f"raw{trial}.db"
        raw_best = min(raw_best, timed(lambda p=raw_path: raw_sqlite_write(p, latest))[0])
    write_only = max(best - query_seconds, 1e-9)
    report.add("materialize (full run)", rate(rows, best), rate(rows, raw_best), raw_best / best, ">=0.7")
    report.add("  of which latest-row query", f"{query_seconds:.2f} s", "-", None)
    report.add("  write part only", rate(rows, write_only), rate(rows, raw_best), raw_best / write_only)

    con = sqlite3.connect(raw_path, check_same_thread=False)
    select = f"SELECT {', '.join(FEATURE_NAMES)} FROM latest WHERE k = ?"
    select_many = f"SELECT k, {', '.join(FEATURE_NAMES)} FROM latest WHERE k IN ({', '.join('?' * 100)})"
    reads_100 = max(20, reads // 10)

    def one(i: int) -> int:
        return 1 + (i * 7919) % customers

    def ids(i: int) -> list[int]:
        return [1 + (i * 100 + j) * 7919 % customers for j in range(100)]

    def raw_one(i: int) -> Any:
        return con.execute(select, [one(i)]).fetchall()

    def raw_hundred(i: int) -> Any:
        return con.execute(select_many, ids(i)).fetchall()

    compare_reads(
        report,
        "online 1 entity",
        lambda i: service.online(VIEW, {"customer_id": [one(i)]}, now=end),
        raw_one,
        reads,
    )
    compare_reads(
        report,
        "online 100 entities",
        lambda i: service.online(VIEW, {"customer_id": ids(i)}, now=end),
        raw_hundred,
        reads_100,
    )
    con.close()
    view = service.definitions()[0][VIEW]
    fsql_bytes = table_bytes(path, f"bench_online:{VIEW}:{view.version}")
    raw_bytes = table_bytes(raw_path, "latest")
    if fsql_bytes and raw_bytes:
        report.add(
            "bytes per entity (dbstat)",
            f"{fsql_bytes / rows:.0f} B",
            f"{raw_bytes / rows:.0f} B",
            fsql_bytes / raw_bytes,
        )
    service.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = 100k customers, 2M orders")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--reads", type=int, default=2000, help="online reads of 1 entity (100-entity reads: a tenth)"
    )
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument("--cluster", action="store_true",
                        help="a Redis Cluster instead of one node (a private one of three masters, unless --cluster-url)")
    parser.add_argument("--cluster-url", help="seed nodes of an existing Redis Cluster, comma-separated")
    args = parser.parse_args()

    began = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="fsql_bench_online_"))
    prefix = f"fsqlbench_{uuid.uuid4().hex[:10]}"
    private = None
    if args.cluster and not args.cluster_url:
        private = PrivateCluster(work / "cluster")
    url = args.cluster_url or (private.url if private else args.redis_url)
    client: redis.Redis | RedisCluster
    if args.cluster or args.cluster_url:
        from fsql.online.redis_cluster import seed_urls

        client = RedisCluster.from_url(seed_urls(url)[0])
    else:
        client = redis.Redis.from_url(url)
    report = Report()
    try:
        root = work / "project"
        orders, customers = make_project(root, args.scale)
        setup = open_service(root, {})
        setup.build()
        setup.close()
        print(
            f"data: {orders.num_rows:,} orders of {customers:,} customers, {len(FEATURE_NAMES)} features "
            f"(generated and built in {time.perf_counter() - began:.1f}s)"
        )
        bench_redis(root, url, prefix, customers, args.reads, report, cluster=bool(args.cluster or args.cluster_url))
        if not args.skip_sqlite:
            bench_sqlite(root, work, customers, args.reads, report)
    finally:
        if private is None:
            delete_prefix(client, prefix)
        client.close()
        if private is not None:
            private.stop()
        shutil.rmtree(work, ignore_errors=True)
    report.print()
    print(f"total {time.perf_counter() - began:.1f}s")


if __name__ == "__main__":
    main()
