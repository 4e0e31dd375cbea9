"""Materialization: the only writer of the online store.

Per view, the latest row per entity among rows that became eligible since the view version's watermark
is computed inside the engine, streamed as Arrow batches and upserted newer-wins. A failed run moves no
watermark; re-running converges.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
from sqlglot import exp

from fsql.compiler import pit
from fsql.compiler.rewrites import generate
from fsql.compiler.stats import stats_relation
from fsql.config import Config
from fsql.definitions import KNOWN_AT, FeatureView, arrow_type, as_utc
from fsql.engines.stats import feature_stats
from fsql.errors import (
    FsqlError,
    MaterializationError,
    NotFoundError,
    OnlineStoreError,
    RequestError,
    did_you_mean,
)
from fsql.online import CREATED, EVENT_TS, GenerationNotBuilding, OnlineStore, OnlineTable
from fsql.online.base import online_table_of
from fsql.service.context import Context, online_reopenable, open_online

RowProgress = Callable[[str, int], None]
# How far a run's end may lie ahead of this machine's clock (another machine's clock may run ahead).
CLOCK_SKEW = timedelta(minutes=5)


@dataclass
class RunResult:
    view: str
    version: str
    start: datetime | None
    end: datetime
    rows: int
    seconds: float
    outcome: str

    def to_dict(self) -> dict[str, Any]:
        return {"view": self.view, "version": self.version, "start": self.start, "end": self.end,
                "rows": self.rows, "seconds": round(self.seconds, 3), "outcome": self.outcome}


def materialize(
    ctx: Context,
    names: Sequence[str] | None = None,
    *,
    full: bool = False,
    start: datetime | None = None,
    end: datetime | None = None,
    progress: RowProgress | None = None,
    batch_size: int = 50_000,
) -> list[RunResult]:
    """Upsert the latest row per entity of each view into the online store, newer-wins.

    Incremental by default: only rows that became eligible (event time reached and, with
    ``@created``, known) since the view version's watermark. ``full`` recomputes from the start;
    ``start``/``end`` backfill a window (newer stored values are never overwritten).
    """
    views = ctx.definitions().require_built().views
    # Runs left 'running' by a process that died (kill -9, a crash) are failed now, not forever.
    ctx.registry.fail_interrupted_runs()
    selected = list(names) if names else list(views)
    for name in selected:
        if name not in views:
            raise NotFoundError(f"no feature view named '{name}'", hint=did_you_mean(name, views) or "run `fsql ls`")
    now = datetime.now(UTC)
    run_end = as_utc(end) if end else now
    if run_end > now + CLOCK_SKEW:
        # A watermark in the future would skip every row that arrives until then.
        raise RequestError(f"--end {run_end.isoformat()} is in the future",
                           hint="materialize up to now (the default) or a past time")
    run_start = as_utc(start) if start else None
    return [_materialize_view(ctx, views[name], full=full, start=run_start, end=run_end, progress=progress,
                              batch_size=batch_size)
            for name in selected]


def _materialize_view(ctx: Context, view: FeatureView, *, full: bool, start: datetime | None, end: datetime,
                      progress: RowProgress | None, batch_size: int) -> RunResult:
    registry, engine, store = ctx.registry, ctx.engine, ctx.online_store
    table = online_table_of(view)
    watermark = registry.watermark(view.name, view.version)
    window_start = start if start is not None else (None if full else watermark)
    if start is None and window_start is not None and not store.has_marker(table):
        # The store lost this version's data since the last run (Redis restarted without
        # persistence, a deleted file): an incremental run would leave holes, so recompute all.
        window_start = None
    if window_start is not None and window_start >= end:
        return RunResult(view.name, view.version, window_start, end, 0, 0.0, "skipped")
    # A backfill of an old window must not move the watermark past rows it never looked at.
    advances = start is None or (watermark is not None and start <= watermark)
    run_id = registry.start_run(view.name, view.version, window_start, end)
    began = time.perf_counter()
    try:
        # Training sets on an engine with a persisted history read it: refresh it with the same
        # data this run serves online, so offline and online agree.
        ctx.refresh_history(view, full=full)
    except FsqlError as e:
        registry.finish_run(run_id, rows=0, outcome="failed", error=str(e))
        raise MaterializationError(f"refreshing the history of '{view.name}' failed: {e}", cause=e) from e
    except BaseException as e:
        registry.finish_run(run_id, rows=0, outcome="failed", error=failure_reason(e))
        raise
    rows = 0
    # A recompute (--full, or a store that lost this version's data) writes a fresh generation that
    # readers switch to atomically: entities whose rows vanished stop being served, and a correction
    # that ranks lower than the value it replaces still replaces it.
    recompute = start is None and window_start is None
    generation: str | None = None
    outcome = "success"
    try:
        # Redis without persistence loses every key when it restarts, and the client reconnects
        # transparently: a run that spans a restart must fail, not advance the watermark.
        instance = store.instance_id()
        schema = _online_schema(view, table)
        if recompute:
            generation = store.begin_generation(table, as_of=end)
        sql, params = _latest_sql(ctx, view, window_start, end)
        if engine.writes_from_workers and online_reopenable(ctx.config):
            # A distributed engine upserts each partition from its executors: the driver never
            # holds the rows, only the count each partition wrote.
            rows = engine.write_partitions(sql, params, _PartitionWriter(ctx.config, view, table, schema,
                                                                         batch_size, generation))
            if progress:
                progress(view.name, rows)
        else:
            for batch in engine.batches(sql, params, batch_size=batch_size):
                batch = _online_batch(batch, view, schema)
                store.write_batch(table, batch, generation=generation)
                rows += batch.num_rows
                if progress:
                    progress(view.name, batch.num_rows)
        # The completion marker first, then the server's identity: a restart between the last write
        # and the marker must fail the run, not leave a marker over lost rows.
        restarted = False
        if generation is not None:
            committed = store.commit_generation(table, generation, instance=instance)
            restarted = committed == "restarted"
            if committed == "superseded":
                outcome, advances = "superseded", False
        elif advances:
            restarted = not store.set_marker(table, instance=instance, as_of=end)
        if restarted or store.instance_id() != instance:
            with suppress(FsqlError):
                store.clear_marker(table)
            raise _restarted()
    except GenerationNotBuilding as lost:
        if store.instance_id() != instance:
            error = _restarted()
            registry.finish_run(run_id, rows=rows, outcome="failed", error=str(error))
            raise MaterializationError(f"materializing '{view.name}' failed after {rows} rows: {error}",
                                       cause=error, hint="the watermark did not advance; run `fsql materialize` again"
                                       ) from lost
        # a newer full run committed first: what it serves is as new as this run's rows, or newer
        outcome, advances = "superseded", False
    except FsqlError as e:
        _abort(store, table, generation)
        registry.finish_run(run_id, rows=rows, outcome="failed", error=str(e))
        raise MaterializationError(
            f"materializing '{view.name}' failed after {rows} rows: {e}",
            cause=e,
            hint="the watermark did not advance; fix the cause and run `fsql materialize` again",
        ) from e
    except BaseException as e:
        _abort(store, table, generation)
        registry.finish_run(run_id, rows=rows, outcome="failed", error=failure_reason(e))
        raise
    duration = time.perf_counter() - began
    # A full recompute describes exactly `end`: its watermark replaces a later one (a run with an --end
    # in the future must not block new data forever).
    registry.finish_run(run_id, rows=rows, outcome="success", watermark=end if advances else None,
                        replace_watermark=recompute and full and advances)
    if advances:
        # Statistics of what is now served, stored for the catalog so its page never queries the warehouse.
        # A run that found no row newer than the watermark serves what the last run served (the TTL
        # is not applied): its numbers hold, only the time they describe moves.
        served = registry.stats(view.name, view.version, "latest") if rows == 0 and window_start is not None else []
        if served:
            stats = {r.feature: r.stats for r in served}
        else:
            table = ctx.rows_table(view)
            relation = stats_relation(ctx.pit_view(view, relation=table), table, "latest", end, dialect=engine.dialect)
            stats = feature_stats(engine, relation, view)
        registry.save_stats(view.name, view.version, "latest", end, stats)
        if not served:
            # New rows change the history's shape, from which training sets choose the view's PIT plan.
            ctx.measure_shape(view)
    return RunResult(view.name, view.version, window_start, end, rows, duration, outcome)


def failure_reason(error: BaseException) -> str:
    """The one line a failed run records for an exception fsql did not raise on purpose."""
    if isinstance(error, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    if isinstance(error, SystemExit):
        return "interrupted: the process was asked to exit"
    first = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def _restarted() -> OnlineStoreError:
    return OnlineStoreError(
        "the online store's server restarted or failed over during the run, so rows written before may be lost",
        hint="if it lost data written by earlier runs too, run `fsql materialize --full`",
    )


def _abort(store: OnlineStore, table: OnlineTable, generation: str | None) -> None:
    """Free a generation this run was building (best effort: the next commit frees it anyway)."""
    if generation is not None:
        with suppress(Exception):
            store.abort_generation(table, generation)


@dataclass(frozen=True)
class _PartitionWriter:
    """Upserts one partition's rows into the online store, in a worker process (pickled there)."""

    config: Config
    view: FeatureView
    table: OnlineTable
    schema: pa.Schema
    batch_size: int
    generation: str | None = None

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> int:
        store = open_online(self.config)
        rows = 0
        try:
            for batch in batches:
                for offset in range(0, batch.num_rows, self.batch_size):
                    part = _online_batch(batch.slice(offset, self.batch_size), self.view, self.schema)
                    store.write_batch(self.table, part, generation=self.generation)
                    rows += part.num_rows
        finally:
            store.close()
        return rows


def _online_schema(view: FeatureView, table: OnlineTable) -> pa.Schema:
    def key_type(column: str) -> pa.DataType:
        found = view.column(column)
        return arrow_type(found.dtype) if found else pa.string()

    return pa.schema(
        [pa.field(k, key_type(k)) for k in view.entity_keys]
        + [pa.field(EVENT_TS, pa.timestamp("us", tz="UTC")), pa.field(CREATED, pa.timestamp("us", tz="UTC"))]
        + [pa.field(f, t) for f, t in zip(table.features, table.feature_types, strict=True)]
    )


def _latest_sql(ctx: Context, view: FeatureView, start: datetime | None, end: datetime) -> tuple[str, list[Any]]:
    """Latest row per entity among rows that became eligible in (start, end], as parameters."""
    dialect = ctx.engine.dialect
    ts = exp.column(view.timestamp, quoted=True)
    eligible = pit.eligible_time(ctx.pit_view(view))
    params: list[Any] = []

    def param(value: datetime) -> exp.Expression:
        params.append(value)
        return exp.cast(exp.Parameter(this=exp.Literal.number(len(params))), exp.DataType.build("timestamptz"))

    condition: exp.Expression = exp.LTE(this=eligible.copy(), expression=param(end))
    if start is not None:
        condition = exp.and_(exp.GT(this=eligible.copy(), expression=param(start)), condition)
    # Only rows at their entity's greatest event time can win (the tie order starts with event_ts):
    # dropping the others first spares the full tie-order sort most rows (3-4x faster on DuckDB).
    best = exp.to_identifier("__fsql_best_ts", quoted=True)
    window = (
        exp.select("*").from_(ctx.rows_table(view)).where(condition)
        .select(exp.alias_(exp.Window(this=exp.Max(this=ts.copy()),
                                      partition_by=[exp.column(k, quoted=True) for k in view.entity_keys]), best))
    )
    relation = exp.Subquery(
        this=exp.select("*").from_(window.subquery("__fsql_eligible"))
        .where(exp.EQ(this=ts.copy(), expression=exp.column(best.copy()))),
        alias=exp.TableAlias(this=exp.to_identifier("__fsql_window")),
    )
    query = pit.latest_per_entity(ctx.pit_view(view, relation=relation), dialect=dialect,
                                  as_of=param(end), apply_ttl=False)
    return generate(query, dialect), params


def _online_batch(batch: pa.RecordBatch, view: FeatureView, schema: pa.Schema) -> pa.RecordBatch:
    """The engine's latest rows renamed and cast to what the online store expects. The stored
    "created" is the view's known time, the same column the offline tie order uses."""
    pit_created = KNOWN_AT if view.column(KNOWN_AT) is not None else view.created
    arrays = []
    for field_ in schema:
        source = {EVENT_TS: view.timestamp, CREATED: pit_created}.get(field_.name, field_.name)
        if source is None:
            arrays.append(pa.nulls(batch.num_rows, field_.type))
            continue
        column = batch.column(batch.schema.get_field_index(source))
        if pa.types.is_timestamp(field_.type) and pa.types.is_timestamp(column.type) and column.type.tz is None \
                and field_.type.tz is not None:
            column = column.cast(pa.timestamp("us")).cast(field_.type)  # naive timestamps are UTC
        elif pa.types.is_date(column.type) and pa.types.is_timestamp(field_.type):
            column = column.cast(pa.timestamp("us")).cast(field_.type)
        arrays.append(column.cast(field_.type) if column.type != field_.type else column)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
