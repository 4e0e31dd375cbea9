"""Online-store benchmark: fsql's Redis and SQLite stores against raw baselines measured in the same run.

    python -m bench.online_store [--scale 1.0] [--url redis://127.0.0.1:6379/0]

Builds the latest row per customer from ``bench.data`` (100k entities x 10 features at scale 1) and
measures, on loopback only:

- write rows/s: fsql ``write_batch`` (newer-wins Lua, one EVALSHA per chunk of keys) vs raw pipelined
  redis-py ``HSET`` of the same rows (a field per feature, NULL fields left out), both starting from the
  same Arrow batches; target ratio >= 0.7. Also the idempotent re-write and the keys-per-EVALSHA sweep
  that chose the default.
- read latency p50/p99 for 1 and 100 entities: ``store.read`` (one MGET, decoded to typed Python values)
  vs raw ``HMGET`` (100 entities: one pipeline of 100 HMGETs; raw bytes, not decoded); target p99 <= 1.5x.
- bytes per entity (``MEMORY USAGE`` over a sample of keys, same key length) for fsql vs the raw hash.
- a full recompute into a fresh generation: write rows/s, the commit (switch + freeing the old
  generation), read latency and bytes per entity on the generation's (longer) keys.
- SQLite: the same write/read figures, next to a plain ``INSERT OR REPLACE`` into a typed table.

Everything it creates lives under its own random key prefix / temporary directory, deleted at the end.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import redis

from bench.data import FEATURE_NAMES, FEATURES, generate, latest_per_entity
from fsql.online.base import CREATED, EVENT_TS, OnlineTable
from fsql.online.redis import RedisOnlineStore
from fsql.online.sqlite import SqliteOnlineStore

BATCH_ROWS = 10_000  # materialize streams Arrow batches; this is a typical size
TRIALS = 3


def build_batches(scale: float) -> tuple[pa.Table, list[pa.RecordBatch]]:
    latest = latest_per_entity(generate(scale).orders)
    table = pa.table(
        {
            "customer_id": latest.column("customer_id"),
            EVENT_TS: latest.column("event_ts"),
            CREATED: latest.column("loaded_at"),
            **{name: latest.column(name) for name in FEATURE_NAMES},
        }
    )
    return table, table.combine_chunks().to_batches(max_chunksize=BATCH_ROWS)


def online_table(version: str) -> OnlineTable:
    return OnlineTable(
        view="orders",
        version=version,
        entity_keys=("customer_id",),
        features=FEATURE_NAMES,
        feature_types=tuple(t for _, t, _ in FEATURES),
    )


def timed(fn: Callable[[], object]) -> float:
    gc.collect()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- raw Redis baseline --------------------------------------------------------------------------------


def raw_hset(client: redis.Redis, ns: str, batches: list[pa.RecordBatch], chunk: int = 1000) -> None:
    """The hand-written baseline: pipelined HSET, one field per feature, NULLs left out."""
    for batch in batches:
        keys = [f"{ns}{cid}" for cid in batch.column("customer_id").to_pylist()]
        columns = [batch.column(name).to_pylist() for name in FEATURE_NAMES]
        pipe = client.pipeline(transaction=False)
        for i, (key, row) in enumerate(zip(keys, zip(*columns, strict=True), strict=True), 1):
            flat = [x for f, v in zip(FEATURE_NAMES, row, strict=True) if v is not None for x in (f, v)]
            pipe.execute_command("HSET", key, *flat)
            if i % chunk == 0:
                pipe.execute()
        pipe.execute()


def delete_prefix(client: redis.Redis, pattern: str) -> None:
    batch = []
    for key in client.scan_iter(match=pattern, count=5000):
        batch.append(key)
        if len(batch) >= 5000:
            client.unlink(*batch)
            batch.clear()
    if batch:
        client.unlink(*batch)


def memory_per_key(client: redis.Redis, keys: list[str]) -> float:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    return statistics.fmean(pipe.execute())


# --- runs ----------------------------------------------------------------------------------------------


def bench_redis(url: str, rows: pa.Table, batches: list[pa.RecordBatch], report: list) -> None:
    prefix = f"fsqlbench_{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(url)
    store = RedisOnlineStore(url, prefix=prefix)
    n = rows.num_rows
    ids = rows.column("customer_id").to_pylist()
    raw_ns = lambda trial: f"{prefix}:hashes:{trial:012d}:"  # noqa: E731  same key length as fsql's
    try:
        fsql_s, raw_s = [], []
        for trial in range(TRIALS):
            table = online_table(f"{trial:012d}")
            fsql_s.append(timed(lambda t=table: [store.write_batch(t, b) for b in batches]))
            raw_s.append(timed(lambda t=trial: raw_hset(client, raw_ns(t), batches)))
            if trial < TRIALS - 1:  # keep the last trial's keys for reads and memory
                store.drop(table)
                delete_prefix(client, raw_ns(trial) + "*")
        table = online_table(f"{TRIALS - 1:012d}")
        rewrite_s = min(timed(lambda: [store.write_batch(table, b) for b in batches]) for _ in range(2))
        fsql_w, raw_w = n / min(fsql_s), n / min(raw_s)
        report.append(("Redis write rows/s", fsql_w, raw_w, fsql_w / raw_w, ">= 0.7"))
        report.append(
            ("Redis re-write (all kept) rows/s", n / rewrite_s, raw_w, raw_w and n / rewrite_s / raw_w, "")
        )

        # Reads, interleaved with the baseline so both see the same machine noise.
        rng = random.Random(0)
        fields = list(FEATURE_NAMES)
        last_ns = raw_ns(TRIALS - 1)
        for size, iterations in ((1, 3000), (100, 1000)):
            fsql_lat, raw_lat = [], []
            for _ in range(iterations):
                sample = rng.sample(ids, size)
                keys = [(cid,) for cid in sample]
                start = time.perf_counter()
                got = store.read([(table, keys)])
                fsql_lat.append(time.perf_counter() - start)
                start = time.perf_counter()
                if size == 1:
                    client.hmget(f"{last_ns}{sample[0]}", fields)
                else:
                    pipe = client.pipeline(transaction=False)
                    for cid in sample:
                        pipe.hmget(f"{last_ns}{cid}", fields)
                    pipe.execute()
                raw_lat.append(time.perf_counter() - start)
                assert all(r is not None for r in got[0])
            for q, name in ((0.5, "p50"), (0.99, "p99")):
                f, r = pct(fsql_lat, q) * 1e6, pct(raw_lat, q) * 1e6
                report.append(
                    (f"Redis read {size} entity {name} µs", f, r, f / r, "<= 1.5" if name == "p99" else "")
                )

        sample_ids = random.Random(1).sample(ids, min(2000, n))
        fsql_keys = [f"{prefix}:orders:{table.version}:{cid}" for cid in sample_ids]
        raw_keys = [f"{last_ns}{cid}" for cid in sample_ids]
        assert len(fsql_keys[0]) == len(raw_keys[0])
        fsql_b, raw_b = memory_per_key(client, fsql_keys), memory_per_key(client, raw_keys)
        report.append(("Redis bytes/entity (MEMORY USAGE)", fsql_b, raw_b, fsql_b / raw_b, "lower"))
        value_b = statistics.fmean(client.strlen(k) for k in fsql_keys[:500])
        report.append(("  fsql value bytes (header+msgpack)", value_b, None, None, ""))

        # A full recompute: every row into a fresh generation, then the switch (which frees the old
        # generation's keys), then reads of the new generation's keys, which are longer by "%g1:".
        generation = store.begin_generation(table)
        swap_s = timed(lambda: [store.write_batch(table, b, generation=generation) for b in batches])
        commit_s = timed(lambda: store.commit_generation(table, generation))
        report.append(("Redis full swap: write rows/s", n / swap_s, raw_w, n / swap_s / raw_w, ""))
        report.append(("Redis full swap: commit + free ms", commit_s * 1e3, None, None, ""))
        store.read([(table, [(ids[0],)])])  # the first read after the switch learns the generation
        swap_lat = []
        for _ in range(3000):
            key = [(rng.choice(ids),)]
            start = time.perf_counter()
            store.read([(table, key)])
            swap_lat.append(time.perf_counter() - start)
        for q, name in ((0.5, "p50"), (0.99, "p99")):
            report.append((f"Redis read 1 entity {name} µs, generation", pct(swap_lat, q) * 1e6, None, None, ""))
        gen_keys = [f"{prefix}:orders:{table.version}:%{generation}:{cid}" for cid in sample_ids]
        report.append(("Redis bytes/entity, generation keys", memory_per_key(client, gen_keys), raw_b, None, ""))

        # Keys per EVALSHA: one call per key vs chunks (the default is the chunked path).
        sweep = []
        for per_call, per_pipe in ((1, 1000), (50, 40), (250, 20), (1000, 5)):
            probe = RedisOnlineStore(url, prefix=prefix, keys_per_call=per_call, calls_per_pipeline=per_pipe)
            t = online_table(f"sweep{per_call:07d}")
            seconds = timed(lambda p=probe, t=t: [p.write_batch(t, b) for b in batches])
            probe.drop(t)
            probe.close()
            sweep.append((per_call, n / seconds))
        for per_call, rate in sweep:
            report.append((f"  keys per EVALSHA = {per_call}", rate, raw_w, rate / raw_w, ""))
    finally:
        store.close()
        delete_prefix(client, f"{prefix}:*")
        client.close()


def bench_sqlite(rows: pa.Table, batches: list[pa.RecordBatch], report: list) -> None:
    n = rows.num_rows
    ids = rows.column("customer_id").to_pylist()
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteOnlineStore(Path(tmp) / "online.db", prefix="bench")
        raw = sqlite3.connect(Path(tmp) / "raw.db", isolation_level=None)
        raw.execute("PRAGMA journal_mode = WAL")
        raw.execute("PRAGMA synchronous = NORMAL")
        cols = ", ".join(f"{c} {'REAL' if t == pa.float64() else 'INTEGER'}" for c, t, _ in FEATURES)
        placeholders = ", ".join("?" * (len(FEATURE_NAMES) + 1))

        def raw_write(name: str) -> None:
            raw.execute(f"CREATE TABLE {name} (customer_id INTEGER PRIMARY KEY, {cols})")
            for batch in batches:
                columns = [batch.column(c).to_pylist() for c in ("customer_id", *FEATURE_NAMES)]
                raw.execute("BEGIN")
                raw.executemany(
                    f"INSERT OR REPLACE INTO {name} VALUES ({placeholders})", zip(*columns, strict=True)
                )
                raw.execute("COMMIT")

        try:
            fsql_s, raw_s = [], []
            for trial in range(TRIALS):
                table = online_table(f"{trial:012d}")
                fsql_s.append(timed(lambda t=table: [store.write_batch(t, b) for b in batches]))
                raw_s.append(timed(lambda t=trial: raw_write(f"raw{t}")))
            table = online_table(f"{TRIALS - 1:012d}")
            fsql_w, raw_w = n / min(fsql_s), n / min(raw_s)
            report.append(("SQLite write rows/s", fsql_w, raw_w, fsql_w / raw_w, ""))
            rewrite_s = timed(lambda: [store.write_batch(table, b) for b in batches])
            report.append(
                ("SQLite re-write (all kept) rows/s", n / rewrite_s, raw_w, n / rewrite_s / raw_w, "")
            )
            rng = random.Random(0)
            last = f"raw{TRIALS - 1}"
            for size, iterations in ((1, 3000), (100, 1000)):
                fsql_lat, raw_lat = [], []
                for _ in range(iterations):
                    sample = rng.sample(ids, size)
                    start = time.perf_counter()
                    got = store.read([(table, [(cid,) for cid in sample])])
                    fsql_lat.append(time.perf_counter() - start)
                    start = time.perf_counter()
                    raw.execute(
                        f"SELECT * FROM {last} WHERE customer_id IN ({','.join('?' * size)})", sample
                    ).fetchall()
                    raw_lat.append(time.perf_counter() - start)
                    assert all(r is not None for r in got[0])
                for q, name in ((0.5, "p50"), (0.99, "p99")):
                    f, r = pct(fsql_lat, q) * 1e6, pct(raw_lat, q) * 1e6
                    report.append((f"SQLite read {size} entity {name} µs", f, r, f / r, ""))
        finally:
            store.close()
            raw.close()


def print_report(report: list, header: str) -> None:
    print(header)
    print(f"{'metric':<38} {'fsql':>14} {'baseline':>14} {'ratio':>8}  target")
    print("-" * 86)
    for name, fsql, base, ratio, target in report:
        base_s = "" if base is None else f"{base:>14,.0f}"
        ratio_s = "" if ratio is None else f"{ratio:>8.2f}"
        print(f"{name:<38} {fsql:>14,.0f} {base_s:>14} {ratio_s:>8}  {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--url", default=os.environ.get("FSQL_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--skip-sqlite", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    rows, batches = build_batches(args.scale)
    report: list = []
    bench_redis(args.url, rows, batches, report)
    if not args.skip_sqlite:
        bench_sqlite(rows, batches, report)
    print_report(
        report,
        f"fsql online store benchmark: {rows.num_rows:,} entities x {len(FEATURE_NAMES)} features "
        f"(scale {args.scale}), best of {TRIALS} write trials, baselines "
        "raw HSET/HMGET and plain SQLite, same run",
    )
    print(f"\ntotal {time.perf_counter() - started:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
