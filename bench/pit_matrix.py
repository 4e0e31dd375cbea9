"""The PIT benchmark matrix: fsql's whole ``Store.training_set`` call against the best hand-written
query for each workload shape, on DuckDB and PostgreSQL. Run through ``python -m bench.pit --matrix``
(``--quick`` for a subset in about two minutes; ``--anchor`` for the Feast-shaped anchor alone).

Each dataset is one fsql project: a Parquet source of events (customer_id, event_ts, loaded_at, three
features with NULLs) and three feature views over it that differ only in TTL (narrow 3 days, wide 30
days, none) against a 90-day history. The matrix varies spine rows, events per entity (the history
has about the same number of rows throughout, so 1,000 events per entity means few entities), the
share of tied event times (half of them exact duplicate rows), and the PIT mode.

Hand-written competitors, all on the relation fsql reads (DuckDB: the generated view; PostgreSQL: the
persisted ``__history`` table with fsql's covering index):

- ``range``: join on key and ``event_ts`` in the TTL window, ``QUALIFY row_number() OVER (PARTITION BY
  spine row ORDER BY <tie order>) = 1`` (PostgreSQL: the same with a ROW_NUMBER subquery), left join
  back to the spine in spine order;
- ``asof`` (DuckDB, event-time mode): ``ASOF LEFT JOIN`` in spine order, TTL checked on the match;
  it picks an arbitrary row among tied event times, so it only competes where it returns fsql's rows;
- ``lateral`` (PostgreSQL): ``LEFT JOIN LATERAL (... ORDER BY <tie order> LIMIT 1)`` over the index.

Every competitor's result is compared with fsql's before anything is timed; one that differs is
shown as ``differs`` and never counts as the best. A range join whose output would exceed
``RANGE_LIMIT`` rows (``QUICK_RANGE_LIMIT`` with ``--quick``; deep histories without a TTL) is not run. fsql runs inside ``Store.session()``
(the warehouse held open, as in a notebook loop); the hand-written queries also register the spine
and return a polars frame. Times are the best of ``--repeat`` interleaved runs.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

SPAN_DAYS = 90
TTLS: dict[str, int | None] = {"narrow": 3, "wide": 30, "none": None}  # days
FEATURES = ("f_amount", "f_count", "f_code")
RANGE_LIMIT = 30_000_000
QUICK_RANGE_LIMIT = 2_000_000
_US_DAY = 86_400 * 1_000_000
_START_US = 1_704_067_200 * 1_000_000  # 2024-01-01 UTC
TS = pa.timestamp("us", tz="UTC")


# --- data --------------------------------------------------------------------------------------


def events(total: int, per_entity: int, tie_share: float, seed: int = 11) -> pa.Table:
    """``total`` events of ``total // per_entity`` customers over 90 days; ``tie_share`` of the rows
    repeat the previous event time of their customer (half of those are exact duplicate rows)."""
    rng = np.random.default_rng(seed)
    entities = max(1, total // per_entity)
    ids = np.repeat(np.arange(1, entities + 1, dtype=np.int64), per_entity)
    n = len(ids)
    ts = _START_US + rng.integers(0, SPAN_DAYS * _US_DAY, n)
    ts -= ts % 1_000_000
    order = np.lexsort((ts, ids))
    ids, ts = ids[order], ts[order]
    # distinct times per customer (at least a second apart), so that "ties 0%" has none by chance
    position = np.arange(n) - np.searchsorted(ids, ids)
    lifted = pl.DataFrame({"id": ids, "u": ts - position * 1_000_000})
    ts = lifted.select(pl.col("u").cum_max().over("id"))["u"].to_numpy() + position * 1_000_000
    amount = np.round(rng.lognormal(3.0, 0.8, n), 2)
    count = rng.poisson(3.0, n).astype(np.int64)
    code = rng.integers(0, 50, n).astype(np.int64)
    if tie_share > 0:
        same = np.zeros(n, dtype=bool)
        same[1:] = (ids[1:] == ids[:-1]) & (rng.random(n - 1) < tie_share)
        prev = np.flatnonzero(same)
        ts[prev] = ts[prev - 1]  # runs of ties chain through consecutive copies
        dup = prev[rng.random(len(prev)) < 0.5]
        for column in (amount, count, code):
            column[dup] = column[dup - 1]
    delay = (np.exp(rng.normal(7.0, 1.0, n)) * 1_000_000).astype(np.int64)
    late = rng.random(n) < 0.02
    delay = np.where(late, rng.integers(1, 7, n) * _US_DAY, delay)
    loaded = ts + delay
    if tie_share > 0:
        loaded[dup] = loaded[dup - 1]
    return pa.table({
        "customer_id": pa.array(ids),
        "event_ts": pa.array(ts, pa.int64()).view(TS),
        "loaded_at": pa.array(loaded, pa.int64()).view(TS),
        "f_amount": pa.array(amount, mask=rng.random(n) < 0.05),
        "f_count": pa.array(count, mask=rng.random(n) < 0.02),
        "f_code": pa.array(code),
    })


def spine(rows: int, entities: int, seed: int = 5) -> pl.DataFrame:
    """Spine rows at times in the last two thirds of the history; 1% of the customers are unknown."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, entities + 1, rows)
    ids = np.where(rng.random(rows) < 0.01, entities + 1 + rng.integers(0, 1000, rows), ids)
    t = _START_US + rng.integers(SPAN_DAYS * _US_DAY // 3, SPAN_DAYS * _US_DAY, rows)
    return pl.from_arrow(pa.table({
        "customer_id": pa.array(ids.astype(np.int64)),
        "label_ts": pa.array(t, pa.int64()).view(TS),
        "label": pa.array((rng.random(rows) < 0.2).astype(np.int64)),
    }))  # type: ignore[return-value]


def write_project(root: Path, table: pa.Table) -> None:
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "features").mkdir(exist_ok=True)
    pq.write_table(table, root / "data" / "events.parquet")
    (root / "fsql.toml").write_text(
        '[project]\nname = "pitbench"\ndialect = "duckdb"\n\n'
        '[warehouse]\nengine = "duckdb"\npath = ".fsql/warehouse.duckdb"\nschema = "fsql"\n\n'
        '[online]\nstore = "sqlite"\npath = ".fsql/online.db"\n\n'
        '[registry]\nurl = "sqlite:///.fsql/registry.db"\n\n'
        '[entities.customer]\nkeys = ["customer_id"]\n\n'
        '[sources.events]\npath = "data/events.parquet"\n'
    )
    for name, days in TTLS.items():
        ttl = f"-- @ttl {days}d\n" if days else ""
        (root / "features" / f"ev_{name}.sql").write_text(
            f"-- @feature_view ev_{name}\n-- @entity customer\n-- @timestamp event_ts\n-- @created loaded_at\n{ttl}"
            f"SELECT customer_id, event_ts, loaded_at, {', '.join(FEATURES)}\nFROM events\n"
        )


# --- hand-written queries ----------------------------------------------------------------------


def _order(o: str, dialect: str) -> str:
    nulls = " NULLS LAST"
    return ", ".join([f"{o}.event_ts DESC", f"{o}.loaded_at DESC{nulls}", *(f"{o}.{f} DESC{nulls}" for f in FEATURES)])


def _window(ttl_days: int | None, mode: str, o: str, t: str, dialect: str) -> str:
    cond = f"{o}.event_ts <= {t}"
    if ttl_days is not None:
        cond += f" AND {o}.event_ts >= {t} - INTERVAL '{ttl_days * 24} hours'"
    if mode == "known-at":
        cond += f" AND ({o}.loaded_at <= {t} OR {o}.loaded_at IS NULL)"
    return cond


def hand_range(relation: str, spine_table: str, ttl_days: int | None, mode: str, dialect: str) -> str:
    feats = ", ".join(f"o.{f}" for f in FEATURES)
    cond = _window(ttl_days, mode, "o", "s.label_ts", dialect)
    rank = f"row_number() OVER (PARTITION BY s.rn ORDER BY {_order('o', dialect)})"
    numbered = f"s AS (SELECT *, row_number() OVER () AS rn FROM {spine_table})"
    if dialect == "duckdb":
        m = f"m AS (SELECT s.rn, {feats} FROM s JOIN {relation} o ON o.customer_id = s.customer_id AND {cond} QUALIFY {rank} = 1)"
    else:
        m = (f"m AS (SELECT * FROM (SELECT s.rn, {feats}, {rank} AS k FROM s JOIN {relation} o "
             f"ON o.customer_id = s.customer_id AND {cond}) z WHERE k = 1)")
    cols = ", ".join(f"m.{f}" for f in FEATURES)
    return (f"WITH {numbered}, {m} SELECT s.customer_id, s.label_ts, s.label, {cols} "
            "FROM s LEFT JOIN m ON m.rn = s.rn ORDER BY s.rn")


def hand_asof(relation: str, spine_table: str, ttl_days: int | None) -> str:
    fresh = "TRUE" if ttl_days is None else f"o.event_ts >= s.label_ts - INTERVAL '{ttl_days * 24} hours'"
    cols = ", ".join(f"CASE WHEN {fresh} THEN o.{f} END AS {f}" for f in FEATURES)
    return (f"WITH s AS (SELECT *, row_number() OVER () AS rn FROM {spine_table}) "
            f"SELECT s.customer_id, s.label_ts, s.label, {cols} FROM s ASOF LEFT JOIN {relation} o "
            "ON s.customer_id = o.customer_id AND s.label_ts >= o.event_ts ORDER BY s.rn")


def hand_lateral(relation: str, spine_table: str, ttl_days: int | None, mode: str) -> str:
    cond = _window(ttl_days, mode, "o", "s.label_ts", "postgres")
    feats = ", ".join(f"o.{f}" for f in FEATURES)
    cols = ", ".join(f"l.{f}" for f in FEATURES)
    return (f"WITH s AS (SELECT *, row_number() OVER () AS rn FROM {spine_table}) "
            f"SELECT s.customer_id, s.label_ts, s.label, {cols} FROM s LEFT JOIN LATERAL (SELECT {feats} "
            f"FROM {relation} o WHERE o.customer_id = s.customer_id AND {cond} "
            f"ORDER BY {_order('o', 'postgres')} LIMIT 1) l ON TRUE ORDER BY s.rn")


# --- engines -----------------------------------------------------------------------------------


class DuckHand:
    """Hand-written queries on a second connection to the warehouse file (the same database instance)."""

    def __init__(self, path: Path) -> None:
        import duckdb

        from fsql.engines.duckdb import ROOT_VARIABLE

        self.con = duckdb.connect(str(path), read_only=True)
        self.con.execute("SET TimeZone = 'UTC'")
        # the views read their source relative to the project folder, which each connection names
        self.con.execute(f"SET VARIABLE {ROOT_VARIABLE} = ?", [str(path.parent.parent)])

    def relation(self, view: str) -> str:
        return f'fsql."{view}"'

    def run(self, sql: str, frame: pl.DataFrame) -> pl.DataFrame:
        self.con.register("hand_spine", frame.to_arrow())
        try:
            return pl.from_arrow(self.con.sql(sql).to_arrow_table())  # type: ignore[return-value]
        finally:
            self.con.unregister("hand_spine")

    def close(self) -> None:
        self.con.close()


class PgHand:
    """Hand-written queries through ADBC, the driver fsql uses: spine loaded the same way, Arrow out."""

    def __init__(self, url: str, schema: str) -> None:
        import adbc_driver_postgresql.dbapi as adbc

        self.con = adbc.connect(url)
        self.con.adbc_connection.set_options(**{"adbc.connection.autocommit": "true"})
        self.schema = schema
        with self.con.cursor() as cur:
            cur.execute("SET TIME ZONE 'UTC'")

    def relation(self, view: str) -> str:
        return f'"{self.schema}"."{view}__history"'

    def run(self, sql: str, frame: pl.DataFrame) -> pl.DataFrame:
        with self.con.cursor() as cur:
            cur.adbc_ingest("hand_spine", frame.to_arrow(), mode="replace", temporary=True)
            cur.execute(sql)
            table = cur.fetch_arrow_table()
            cur.execute("DROP TABLE IF EXISTS hand_spine")
        return pl.from_arrow(table)  # type: ignore[return-value]

    def close(self) -> None:
        self.con.close()


# --- the matrix --------------------------------------------------------------------------------


@dataclass
class Cell:
    engine: str
    spine_rows: int
    per_entity: int
    ttl: str
    ties: float
    mode: str
    plan: str = ""  # what fsql chose (from its compile comment)
    fsql: float | None = None
    hands: dict[str, float | str] | None = None

    def best_hand(self) -> tuple[str, float] | None:
        timed = [(k, v) for k, v in (self.hands or {}).items() if isinstance(v, float) and not k.startswith("fsql")]
        return min(timed, key=lambda kv: kv[1]) if timed else None


def best_of(runs: dict[str, Callable[[], Any]], repeat: int) -> dict[str, float]:
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeat):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def _session(store: Any) -> Any:
    """``Store.session()``; nothing on an fsql that predates it (to measure "before" figures)."""
    import contextlib

    return store.session() if hasattr(store, "session") else contextlib.nullcontext()


def _auto_choice(store: Any, view: str, engine: str, spine_rows: int, mode: str) -> str:
    """The plan fsql's "auto" picks for ``view`` (what ``fsql compile`` prints for a training set)."""
    try:
        from fsql.compiler.pit import auto_plan
    except ImportError:
        return "-"

    ctx = store._ctx  # the bench looks inside: the choice is what it measures
    definitions = ctx.definitions()
    definition = definitions.views[view]
    if hasattr(ctx, "unique_times"):
        from fsql.definitions import FeatureRef

        choice = ctx.plan_choices([FeatureRef(view, f) for f in FEATURES], ["customer_id", "label_ts", "label"],
                                  definitions.views, dialect=engine, mode=mode, shapes=definitions.shapes,
                                  spine_rows=spine_rows)[view]
        # "+u": no two rows share (key, event time), so the ASOF plan skips its tie check
        return (choice.plan or "default") + ("+u" if choice.unique_times else "")
    plan, _ = auto_plan(ctx.pit_view(definition, history=True), definitions.shapes.get(view), engine,
                        spine_rows, mode)  # type: ignore[arg-type]
    return plan or "default"


def run_dataset(engine: str, root: Path, per_entity: int, ties: float, total: int, spines: list[int],
                modes: list[str], ttls: list[str], repeat: int, pg_url: str | None,
                plans: list[str], range_limit: int) -> list[Cell]:
    import fsql

    sections: dict[str, dict[str, Any]] = {}
    schema = None
    if engine == "postgres":
        schema = f"fsql_pitm_{uuid.uuid4().hex[:8]}"
        sections = {"warehouse": {"engine": "postgres", "url": pg_url, "schema": schema},
                    "registry": {"url": "sqlite:///.fsql/registry-pg.db"}}
    cells: list[Cell] = []
    store = fsql.Store(root, **sections)
    try:
        store.build()
        hand: DuckHand | PgHand = (DuckHand(root / ".fsql" / "warehouse.duckdb") if engine == "duckdb"
                                   else PgHand(pg_url or "", schema or ""))
        entities = max(1, total // per_entity)
        try:
            with _session(store):
                for rows in spines:
                    frame = spine(rows, entities)
                    for ttl in ttls:
                        view = f"ev_{ttl}"
                        days = TTLS[ttl]
                        for mode in modes:
                            cells.append(_cell(store, hand, engine, frame, view, days, ttl, per_entity, ties, mode,
                                               repeat, plans, range_limit))
        finally:
            hand.close()
    finally:
        if schema is not None:
            import psycopg

            with psycopg.connect(pg_url or "", autocommit=True) as con:
                con.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        store.close()
    return cells


def _cell(store: Any, hand: DuckHand | PgHand, engine: str, frame: pl.DataFrame, view: str, days: int | None,
          ttl: str, per_entity: int, ties: float, mode: str, repeat: int, plans: list[str],
          range_limit: int) -> Cell:
    features = [f"{view}.{f}" for f in FEATURES]
    cell = Cell(engine, frame.height, per_entity, ttl, ties, mode, hands={})

    def fsql_run(plan: str | None = None) -> Callable[[], pl.DataFrame]:
        options = {"plan": plan} if plan else {}  # no option: also runs against an fsql without plans
        return lambda: store.training_set(features=features, spine=frame, timestamp="label_ts", pit_mode=mode,
                                          **options)

    want = fsql_run()()
    cell.plan = _auto_choice(store, view, engine, frame.height, mode)
    relation = hand.relation(view)
    queries: dict[str, str] = {}
    window = min(1.0, (days or SPAN_DAYS) / SPAN_DAYS)
    if frame.height * per_entity * window <= range_limit:
        queries["range"] = hand_range(relation, "hand_spine", days, mode, engine)
    if engine == "duckdb" and mode == "event-time":
        queries["asof"] = hand_asof(relation, "hand_spine", days)
    if engine == "postgres":
        queries["lateral"] = hand_lateral(relation, "hand_spine", days, mode)
    runs: dict[str, Callable[[], Any]] = {"fsql": fsql_run()}
    for plan in plans:
        if plan == "asof" and engine == "postgres":
            continue  # no native ASOF join
        if plan in ("lateral", "range") and per_entity * frame.height * window > range_limit:
            continue  # no index: a scan of the entity's history per spine row
        runs[f"fsql:{plan}"] = fsql_run(plan)
    for name, sql in queries.items():
        got = hand.run(sql, frame)
        if got.equals(want):
            runs[name] = lambda sql=sql: hand.run(sql, frame)
        else:
            cell.hands[name] = "differs"  # type: ignore[index]
    times = best_of(runs, repeat)
    cell.fsql = times.pop("fsql")
    cell.hands.update(times)  # type: ignore[union-attr]
    return cell


def print_cells(cells: list[Cell], plans: list[str]) -> None:
    head = (f"  {'engine':8s} {'spine':>7s} {'ev/ent':>6s} {'ttl':6s} {'ties':>4s} {'mode':10s} {'plan':12s} "
            f"{'fsql':>8s} {'best hand':>18s} {'ratio':>6s}  others")
    print(head)
    worst = 0.0
    for c in cells:
        best = c.best_hand()
        ratio = c.fsql / best[1] if best and c.fsql else None
        worst = max(worst, ratio or 0.0)
        others = "  ".join(
            f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
            for k, v in (c.hands or {}).items() if not best or k != best[0]
        )
        print(f"  {c.engine:8s} {c.spine_rows:>7,} {c.per_entity:>6,} {c.ttl:6s} {c.ties:>4.0%} {c.mode:10s} "
              f"{c.plan[:12]:12s} {c.fsql or 0:8.3f} "
              f"{(f'{best[0]} {best[1]:.3f}' if best else 'none'):>18s} {(f'{ratio:6.2f}' if ratio else '   n/a')}  {others}")
    print(f"  worst ratio {worst:.2f}")


def matrix(*, quick: bool, scale: float, repeat: int, pg_url: str | None, workdir: Path, plans: list[str],
           spines: list[int] | None = None, engines: list[str] | None = None, depths: list[int] | None = None,
           ties: list[float] | None = None) -> None:
    total = int((200_000 if quick else 1_000_000) * scale)
    spines = spines or ([10_000] if quick else [10_000, 100_000] + ([1_000_000] if scale >= 2 else []))
    ties = ties or ([0.0] if quick else [0.0, 0.3])
    modes = ["event-time", "known-at"]
    ttls = ["narrow", "none"] if quick else list(TTLS)
    engines = [e for e in engines or ["duckdb", "postgres"] if e == "duckdb" or pg_url]
    print(f"PIT matrix: {total:,} events per dataset, spines {spines}, best of {repeat}")
    for engine in engines:
        cells: list[Cell] = []
        for per_entity in depths or (1, 10, 1000):
            for tie in ties:
                root = workdir / f"{engine}-{per_entity}-{int(tie * 100)}"
                if root.exists():
                    shutil.rmtree(root)
                write_project(root, events(total, per_entity, tie))
                started = time.perf_counter()
                cells += run_dataset(engine, root, per_entity, tie, total, spines, modes, ttls, repeat, pg_url,
                                     plans, QUICK_RANGE_LIMIT if quick else RANGE_LIMIT)
                print(f"  ({engine}, {per_entity} events/entity, ties {tie:.0%}: {time.perf_counter() - started:.0f} s)")
        print()
        print_cells(cells, plans)


# --- the anchor --------------------------------------------------------------------------------


def anchor(*, scale: float, repeat: int, workdir: Path) -> None:
    """The Feast-shaped anchor on DuckDB: bench.data's shallow orders at half scale (1M events, 50k
    spine rows at --scale 1), 10 features, TTL 30 days, a created column, event-time mode; fsql's whole
    call (plain, and inside ``Store.session()``) vs the hand-written QUALIFY range join, and the share
    of the call spent outside the engine."""
    import fsql
    from bench.data import FEATURE_NAMES, generate
    from fsql.engines.duckdb import DuckDBEngine

    data = generate(0.5 * scale)
    root = workdir / "anchor"
    (root / "data").mkdir(parents=True)
    (root / "features").mkdir()
    pq.write_table(data.orders, root / "data" / "orders.parquet")
    (root / "fsql.toml").write_text(
        '[project]\nname = "anchor"\ndialect = "duckdb"\n\n'
        '[warehouse]\nengine = "duckdb"\npath = ".fsql/warehouse.duckdb"\nschema = "fsql"\n\n'
        '[online]\nstore = "sqlite"\npath = ".fsql/online.db"\n\n'
        '[registry]\nurl = "sqlite:///.fsql/registry.db"\n\n'
        '[entities.customer]\nkeys = ["customer_id"]\n\n[sources.orders]\npath = "data/orders.parquet"\n'
    )
    (root / "features" / "order_features.sql").write_text(
        "-- @feature_view order_features\n-- @entity customer\n-- @timestamp event_ts\n-- @created loaded_at\n"
        f"-- @ttl 30d\nSELECT customer_id, event_ts, loaded_at, {', '.join(FEATURE_NAMES)}\nFROM orders\n"
    )
    frame = pl.from_arrow(data.spine)
    features = [f"order_features.{f}" for f in FEATURE_NAMES]
    order = ", ".join(["o.event_ts DESC", "o.loaded_at DESC NULLS LAST", *(f"o.{f} DESC NULLS LAST" for f in FEATURE_NAMES)])
    cols = ", ".join(f"o.{f}" for f in FEATURE_NAMES)
    hand_sql = (
        "WITH s AS (SELECT *, row_number() OVER () AS rn FROM hand_spine), "
        f"m AS (SELECT s.rn, {cols} FROM s JOIN fsql.order_features o ON o.customer_id = s.customer_id "
        "AND o.event_ts BETWEEN s.label_ts - INTERVAL 30 DAY AND s.label_ts "
        f"QUALIFY row_number() OVER (PARTITION BY s.rn ORDER BY {order}) = 1) "
        f"SELECT s.customer_id, s.label_ts, s.label, {', '.join(f'm.{f}' for f in FEATURE_NAMES)} "
        "FROM s LEFT JOIN m ON m.rn = s.rn ORDER BY s.rn"
    )
    store = fsql.Store(root)
    store.build()
    engine_time = [0.0]
    arrow = DuckDBEngine.arrow

    def timed_arrow(self: DuckDBEngine, sql: str, params: Any = None) -> pa.Table:
        start = time.perf_counter()
        try:
            return arrow(self, sql, params)
        finally:
            engine_time[0] += time.perf_counter() - start

    def call(plan: str | None = None) -> pl.DataFrame:
        options = {"plan": plan} if plan else {}
        return store.training_set(features=features, spine=frame, timestamp="label_ts", pit_mode="event-time",
                                  **options)

    hand = DuckHand(root / ".fsql" / "warehouse.duckdb")
    try:
        want = call()
        assert hand.run(hand_sql, frame).equals(want), "the hand-written range join differs from fsql"
        plain = best_of({"fsql, plain call": call}, repeat)
        with _session(store):
            runs: dict[str, Callable[[], Any]] = {
                "hand range join (QUALIFY)": lambda: hand.run(hand_sql, frame),
                "fsql in a session": call,
            }
            if hasattr(store, "session"):
                runs.update({"fsql plan=asof": lambda: call("asof"), "fsql plan=range": lambda: call("range")})
            times = best_of(runs, repeat)
            DuckDBEngine.arrow = timed_arrow  # type: ignore[method-assign]
            outside = []
            try:
                for _ in range(repeat):
                    engine_time[0] = 0.0
                    start = time.perf_counter()
                    call()
                    outside.append(time.perf_counter() - start - engine_time[0])
            finally:
                DuckDBEngine.arrow = arrow  # type: ignore[method-assign]
    finally:
        hand.close()
        store.close()
    times.update(plain)
    base = times["hand range join (QUALIFY)"]
    print(f"anchor (DuckDB): {data.orders.num_rows:,} events, {frame.height:,} spine rows, TTL 30 days, event-time")
    for name, seconds in times.items():
        print(f"  {name:28s} {seconds:8.3f} s   ratio {seconds / base:5.2f}")
    print(f"  outside the engine (median of {repeat}): {sorted(outside)[len(outside) // 2] * 1000:.1f} ms per call")
