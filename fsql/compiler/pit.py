"""The canonical point-in-time (PIT) plan.

This module is pure: definitions in, sqlglot trees out. It implements DESIGN.md section 3. For each
spine row (keys, t) and each feature view:

1. candidates: view rows whose every key column equals the spine's and ``event_ts <= t``
   (NULL ``event_ts`` never qualifies);
2. with a TTL, also ``event_ts >= t - ttl`` (exact duration: the interval is spelled in hours or
   seconds, never days, so it does not depend on the session time zone);
3. known-at mode (the default), for a view with a created column: ``created <= t OR created IS NULL``;
4. the winner is the first row in the **tie order** below;
5. no candidate: NULL features, the spine row is kept; a NULL in the winning row stays NULL;
6. every spine row appears exactly once, in spine order, spine columns first and unchanged.

The tie order (rule 4), one function used by every plan and by ``latest_per_entity``:

    event_ts DESC, created DESC NULLS LAST, v1 DESC NULLS LAST, v2 DESC NULLS LAST, ...

where v1, v2, ... are the view's value columns (``PitView.value_columns``: every feature column of
the view in declared order, not only the selected ones, so a training set and ``<view>__latest``
always pick the same row). Values compare with NULL lowest, NaN above +Infinity, strings in byte
(UTF-8 code point) order: PostgreSQL gets ``COLLATE "C"``, BigQuery an ``IS_NAN`` key (see
``fsql.compiler.dialects.value_sort_keys``). Rows equal on all of these are exact duplicates as far
as the output can tell, so which one is picked cannot change a result. One caveat: -0.0 and 0.0
compare equal on every engine, so either may be returned.

Plans (chosen per view from ``fsql.compiler.dialects`` capability flags and, for the range plan, the
view's measured shape; overridable with ``plan=``). Each finds the winning event_ts first, then the row(s) at it:

* ``asof`` (DuckDB, Snowflake): a native ASOF join on a narrow (keys, match time) relation gives
  the winning event_ts; an equi-join on (keys, event_ts) fetches the rows at that instant and the
  rest of the tie order picks one. The native join picks arbitrarily among equal timestamps, which
  is why only the *time* is taken from it (ties are removed after it, not before: deduplicating the
  whole history first costs a window over every row, 3 s at 2M rows). In known-at mode the match
  time is the row's eligible-at time ``GREATEST(event_ts, COALESCE(created, event_ts))`` and the
  relation carries the running ``MAX(event_ts)`` in eligible-at order: at any t, the greatest
  event_ts among rows known at t. An older known row therefore wins over a newer one not yet
  known, and a row whose created is later than t never wins. The TTL is checked on the winning
  event_ts after the join (DuckDB allows one inequality): it is the greatest candidate event_ts,
  so if it is too old, every candidate is. On DuckDB the spine rows themselves flow through the
  joins (``asof_carry_spine``) and the tie-break window runs only where a spine row has several
  rows at its winning time (``split_ties``: DuckDB's window operator costs ~0.2 s per 100k one-row
  partitions). Where no two rows of the view share (keys, event_ts) (``PitView.unique_times``, which
  the caller must have verified for the rows as they are now) and the match is on event time, the
  matched row is the winner: the ASOF join carries its values and there is no fetch or tie check.
* ``timeline`` (BigQuery, Spark, Trino, unindexed PostgreSQL): the winning event_ts comes from a
  running MAX over a UNION ALL of view rows (at their match time) and spine probe points, view rows
  first at equal times (``<=`` counts); then the same equi-join fetch. One sort of history + spine,
  robust to deep histories; no IGNORE NULLS carry-forward, so a NULL in the winning row stays NULL.
  On Spark (``row_max_timeline``) the window carries the winning row itself, as a running MAX of a
  struct of the tie-order columns (Spark compares structs field by field in exactly the rule-4
  order), and the spine rows ride through it (``_timeline_carry``): one shuffle and sort per group
  of views sharing spine keys instead of the probes, the fetch join, the ROW_NUMBER and the join back.
* ``lateral`` (PostgreSQL, history persisted with ``offline_index`` and ``indexed=True``):
  ``LEFT JOIN LATERAL (... WHERE <rules 1-3> ORDER BY <tie order> LIMIT 1)``: one backward index
  range scan per spine row that reads a single index tuple, because the index key is the tie
  order itself (see ``offline_index``). The event_ts key is spelled in the dialect's default NULL
  placement (``DESC`` = NULLS FIRST on PostgreSQL, what a backward scan of an ascending index
  yields; NULL event_ts never qualifies so the order is the same): sqlglot would otherwise pin
  ``DESC NULLS LAST``, which the index cannot serve.
* ``range``: range join on keys and the candidate rules (the TTL window; without a TTL, no lower
  bound) plus ROW_NUMBER per probe point in the tie order: its cost grows with the rows a window
  holds, so it is chosen per view only when the view's measured shape says the window (or, without a
  TTL, the entity's history) holds few (``auto_plan``); there it beats the ASOF plan's fixed costs
  (the fetch join and the tie check). Where windows were measured deeper (``PitView.deep_windows``)
  and the engine has the tie split, each probe first keeps its rows at the latest event_ts (a MAX per
  probe, no sort), and only probes left with several rows are ranked.

Why these, measured by bench/pit.py at scale 1 (100k spine rows; "shallow" = 2M events of 100k
customers, "deep" = 100k events of 100 customers), best of 3, PostgreSQL 15 with default settings:

    PostgreSQL            shallow   deep     DuckDB 2.0 (event-time)   shallow   deep
    hand LATERAL + index   0.70 s   0.73 s   hand ASOF LEFT JOIN        0.42 s   0.12 s
    fsql lateral + index   0.74 s   0.72 s   hand ASOF + spine order    0.44 s   0.17 s
    fsql timeline          3.9 s    1.3 s    fsql asof                  0.30 s   0.22 s
    fsql range join        3.2 s    > 30 s   fsql asof, known-at        0.52 s   0.27 s
    fsql lateral, no index > 30 s   > 30 s
    fsql timeline, no ix   5.6 s    0.78 s

LATERAL with the index is the PostgreSQL plan when the history is indexed; without an index it is
a scan per spine row, and the range join explodes with history depth, so the unindexed default is
the timeline plan. On DuckDB the ASOF plan beats the hand-written join on shallow histories (the
ASOF sorts only two narrow columns) and costs 1.3x the order-preserving hand-written join on deep
ones (the fetch join and tie check are fixed costs per spine row).

Spine order and identity. The spine is numbered once with ``ROW_NUMBER() OVER ()``: the engine's
scan order of the spine relation, which DuckDB and PostgreSQL keep for a table or a simple query
but SQL does not promise; the SDK passes an explicit ``ordinal`` for DataFrame spines, and the
output is ordered by it. Engines with ``WITH ... AS MATERIALIZED`` key each view's features by
that row number; the others compute features per distinct probe point (spine keys, t) and join
them back on (keys, t), since a row number is not stable across two evaluations of the spine.
Either way spine duplicates and equal (keys, t) rows each keep their own output row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlglot import exp

from fsql.compiler.dialects import (
    Capabilities,
    PitPlan,
    capabilities,
    is_text_type,
    natural_order,
    value_sort_keys,
)
from fsql.compiler.names import Namer
from fsql.definitions import KNOWN_AT, FeatureView, PitMode, ViewShape
from fsql.errors import CompileError


@dataclass(frozen=True)
class PitView:
    """One feature view as the PIT plan sees it."""

    name: str  # the view's name, used in messages
    relation: exp.Expression  # a table (or subquery) holding the view's full history
    keys: tuple[str, ...]  # entity key columns of the view
    timestamp: str  # event timestamp column of the view
    created: str | None  # known-at column, or None
    ttl: timedelta | None
    # (column in the view, output column name in the training set)
    features: tuple[tuple[str, str], ...]
    # spine columns matched to `keys`, position by position; defaults to the same names
    spine_keys: tuple[str, ...] | None = None
    # every value (feature) column of the view in declared order, with its SQL type when known
    # (DuckDB spelling, e.g. VARCHAR, DOUBLE): the tie-break order of rule 4 and the columns of
    # `offline_index`. Pass all of them, not only the selected features, so that a training set and
    # `<view>__latest` pick the same row among tied rows. Types let string and NaN ordering be plain
    # SQL and let the PostgreSQL index serve the whole order; an unknown type gets an equivalent
    # but slower guard key on PostgreSQL. Default: the selected features, types unknown.
    value_columns: tuple[tuple[str, str | None], ...] = ()
    # the relation is a table on which `offline_index(...)` was created: engines that benefit
    # (PostgreSQL) then use the LATERAL index plan; without it they keep a plan that needs no index
    indexed: bool = False
    # the event timestamp has no time zone (naive = UTC wall time): "now" must be the UTC wall time too
    naive_time: bool = False
    # no two rows of the relation share (keys, event_ts), verified for the rows as they are now (see
    # ``Context.unique_times``): the ASOF plan may then take the winner's values from the ASOF join itself
    unique_times: bool = False
    # a spine row's window holds several rows on average, as measured (``deep_windows``): the range
    # plan then keeps each probe's latest rows before it ranks
    deep_windows: bool = False


@dataclass
class _PlanContext:
    """What every step of one compiled PIT query shares: the dialect's capabilities, the PIT mode,
    the collision-free namer and the CTEs collected so far (in dependency order)."""

    caps: Capabilities
    mode: PitMode
    names: Namer
    ctes: list[exp.CTE]


# --- public API --------------------------------------------------------------------------------


def pit_view_of(
    view: FeatureView,
    relation: exp.Expression,
    *,
    features: Sequence[tuple[str, str]] | None = None,
    indexed: bool = False,
) -> PitView:
    """The PIT compiler's view of a registered feature view read from ``relation``."""
    return PitView(
        name=view.name,
        relation=relation,
        keys=view.entity_keys,
        timestamp=view.timestamp,
        # the derived known time, not @created: a window value is known only when its whole frame is
        created=KNOWN_AT if view.column(KNOWN_AT) is not None else view.created,
        ttl=view.ttl,
        features=tuple(features if features is not None else [(f, f) for f in view.feature_names]),
        value_columns=tuple((c.name, c.dtype) for c in view.features),
        indexed=indexed,
        naive_time=(view.column(view.timestamp) is not None and view.column(view.timestamp).dtype == "TIMESTAMP"),
    )


# The range plan joins every candidate row in the TTL window to its spine row and ranks them: its cost
# grows with the rows a window holds, the ASOF plan's does not. bench/pit.py --matrix on DuckDB (10k
# spine rows, 200k events): with about one row per window the range plan takes 0.02 s against the ASOF
# plan's 0.05 s (its fixed costs: the fetch join and the tie check), at 10 rows they are even, and at
# 33 rows the ASOF plan is 4x faster. A skewed history (few entities with many rows) explodes the
# range join, hence the tail bound as well.
RANGE_MAX_WINDOW_MEAN = 8.0
RANGE_MAX_WINDOW_P99 = 64.0
# ...and the rows it joins against the history the ASOF plan sorts. Where the ASOF plan takes the winner
# straight from the join (a view without ties: ``PitView.unique_times``), at 100k spine rows with ~3 rows
# per window over a 500k-row history (share 0.66) it was 1.4x faster, at 10k (0.07) 2x slower; on the
# Feast-shaped anchor (0.33: 50k spine rows, ~6.7 rows per window, 1M rows) 1.1-1.2x faster.
RANGE_MAX_JOIN_SHARE = 0.25
# Where it also fetches the rows at the winning time and breaks ties (a view with ties), the range join
# was 1.2x faster at share 0.66 (bench/pit.py --matrix --scale 0.5, 30% ties).
RANGE_MAX_JOIN_SHARE_TIES = 1.0
# In known-at mode the ASOF plan also computes a running MAX over the history (the eligibility order),
# the range join only one more condition: at share 0.66 the range join was 1.3-1.5x faster, also with
# deeper windows: ~33 rows per window at share 0.66 1.3x faster, at share 1.65 1.5x slower. With the
# spine's size known, the share bounds the work and the window may hold up to this many rows.
RANGE_MAX_JOIN_SHARE_KNOWN_AT = 1.0
RANGE_MAX_WINDOW_MEAN_KNOWN_AT = 48.0
# Without a TTL the range join takes the entity's whole history before t, which the shape bounds by the
# rows per entity (the spine's times see part of it: about two thirds in the matrix, whose spines cover
# the later two thirds of the history). bench/pit.py --matrix --quick on DuckDB, 200k events: at 10 rows
# per entity and 10k spine rows (share 0.5) the range plan was 1.2x faster than the ASOF plan in
# event-time mode and 2.2x in known-at, at 100k spine rows (share 5) 2.5x and 1.9x slower; at one row
# per entity and 100k spine rows (share 0.5) 2x and 2.9x faster. The p99 bound is the TTL case's. A
# history that grows deeper is measured again by the materialization that loads it.
RANGE_MAX_HISTORY_MEAN = 12.0
RANGE_MAX_JOIN_SHARE_NO_TTL = 0.5
# With an index (PostgreSQL LATERAL) each spine row costs one random index probe, the range join one scan
# of the history: at 10k spine rows against 500k history rows LATERAL was 3x faster, at 100k the range
# join 1.2-1.4x faster (bench/pit.py --matrix --scale 0.5). Below this spine share LATERAL is kept.
RANGE_MIN_SPINE_SHARE_INDEXED = 0.1
# Above that share the LATERAL probes (~3.5 us each) and the range join both grow with the spine; in
# event-time matching the range join won with up to ~1 row per window, at any share (1M spine rows over
# 1M history rows: 1.7-2.1x faster), and lost at ~3.3 (100k over 500k: 1.3x slower). In known-at mode the
# LATERAL scan also skips rows not yet known, and the join-share limit of the ASOF plan applies instead.
RANGE_MAX_WINDOW_MEAN_INDEXED = 2.0


# Rows per window from which the range plan first keeps each probe's rows at its latest event time (a
# MAX per probe, no sort) and ranks only probes left with several: on the bench/pit.py anchor (~6.7 rows,
# 12 tie-order columns) 10% faster than ranking every joined row; at ~1-3 rows 5-20% slower (--matrix).
DEEP_WINDOW_ROWS = 5.0


def window_rows(view: PitView, shape: ViewShape | None) -> float | None:
    """The mean rows a spine row's window holds, from the measured shape: the rows per entity within
    the TTL (spread evenly over the history's span), or without a TTL all of them (an upper bound)."""
    if shape is None or shape.rows == 0:
        return None
    if view.ttl is None:
        return shape.events_mean
    return shape.events_mean * _ttl_share(view, shape)


def _ttl_share(view: PitView, shape: ViewShape) -> float:
    assert view.ttl is not None
    return 1.0 if shape.span_seconds <= 0 else min(1.0, view.ttl.total_seconds() / shape.span_seconds)


def deep_windows(view: PitView, shape: ViewShape | None) -> bool:
    rows = window_rows(view, shape)
    return rows is not None and rows >= DEEP_WINDOW_ROWS


def plan_available(plan: str, dialect: str) -> bool:
    """Whether ``dialect`` can run ``plan`` (ASOF and LATERAL need engine support)."""
    caps = capabilities(dialect)
    return not (plan == "asof" and caps.asof is None) and not (plan == "lateral" and not caps.lateral)


def auto_plan(
    view: PitView,
    shape: ViewShape | None,
    dialect: str,
    spine_rows: int | None = None,
    mode: PitMode = "known-at",
    *,
    tie_free: bool = False,
) -> tuple[PitPlan | None, str]:
    """The plan for ``view`` chosen from its measured shape, with the reason (for ``fsql compile``).

    None keeps the dialect's default (``capabilities(dialect).pit_plan[_indexed]``), and so does a view
    not measured yet. The range plan is chosen only when the rows a spine row can match are few, on
    average and at the 99th percentile: for a view with a TTL the rows its window holds per entity
    (rows are assumed spread evenly over the history's span), for a view without one the entity's whole
    history (an upper bound of the rows before t; its own, lower, mean limit). The range join's cost
    grows with those rows, the default plans' does not; materialize measures again as rows arrive, so a
    history that grows deep goes back to the default. With ``spine_rows`` known (a DataFrame spine), the
    rows the range join produces (spine rows x window) must also stay small against the history the
    ASOF plan sorts; on an indexed history (LATERAL: one index probe per spine row) the spine must also
    be large enough that one scan of the history beats the probes. ``tie_free``: the default plan would
    take the winner straight from the ASOF join (no fetch, no tie check), which leaves the range join
    less room."""
    caps = capabilities(dialect)
    default = caps.pit_plan_indexed if view.indexed else caps.pit_plan
    if shape is None or shape.rows == 0:
        return None, f"{default}: no statistics yet (run `fsql build` or `fsql materialize`)"
    known_at = mode == "known-at" and view.created is not None
    window_limit = RANGE_MAX_WINDOW_MEAN_KNOWN_AT if known_at and spine_rows is not None else RANGE_MAX_WINDOW_MEAN
    if view.ttl is None:
        # the window is the entity's whole history before t: at most all of it
        mean, p99 = shape.events_mean, shape.events_p99
        numbers = f"no TTL, ~{mean:.1f} rows per entity, p99 ~{p99:.0f}"
        if mean > RANGE_MAX_HISTORY_MEAN or p99 > RANGE_MAX_WINDOW_P99:
            return None, f"{default}: {numbers}"
    else:
        share = _ttl_share(view, shape)
        mean, p99 = shape.events_mean * share, shape.events_p99 * share
        numbers = f"~{mean:.1f} rows per entity in the TTL window, p99 ~{p99:.0f}"
        if mean > window_limit or p99 > RANGE_MAX_WINDOW_P99:
            return None, f"{default}: {numbers}"
    if default == "lateral" and (spine_rows is None or spine_rows < RANGE_MIN_SPINE_SHARE_INDEXED * shape.rows):
        # one index probe per spine row reads one row: cheaper than scanning the history for few rows
        return None, f"{default}: the history's index serves one row per spine row"
    if spine_rows is not None:
        joined = spine_rows * mean / shape.rows
        numbers += f", {spine_rows:,} spine rows join ~{joined:.2f}x the history"
        if known_at:
            limit = RANGE_MAX_JOIN_SHARE_KNOWN_AT
        elif default == "lateral":
            # the probes' cost grows with the spine as the range join's does: what decides is how many
            # rows each spine row joins
            if mean > RANGE_MAX_WINDOW_MEAN_INDEXED:
                return None, f"{default}: {numbers}"
            limit = float("inf")
        elif view.ttl is None:
            limit = RANGE_MAX_JOIN_SHARE_NO_TTL
        else:
            limit = RANGE_MAX_JOIN_SHARE if tie_free or default != "asof" else RANGE_MAX_JOIN_SHARE_TIES
        if joined > limit:
            return None, f"{default}: {numbers}"
    return "range", f"range: {numbers}"


def eligible_time(view: PitView, alias: str | None = None, mode: PitMode = "known-at") -> exp.Expression:
    """When a row becomes a candidate (ignoring the TTL): its event time, or in known-at mode the
    later of its event time and its created time (NULL created = known since the event).

    The one definition of eligibility: the PIT plans match on it and materialization windows select
    rows by it, so a row is served online exactly when a training set at that time could see it."""
    ts = exp.column(view.timestamp, alias, quoted=True)
    if view.created is None or mode == "event-time":
        return ts
    # CASE rather than GREATEST: engines disagree on GREATEST with a NULL argument
    created = exp.column(view.created, alias, quoted=True)
    later = exp.GT(this=created, expression=ts)
    return exp.Case(ifs=[exp.If(this=later, true=created.copy())], default=ts.copy())



def compile_pit(
    spine: exp.Expression,
    spine_columns: Sequence[str],
    spine_timestamp: str,
    views: Sequence[PitView],
    *,
    dialect: str,
    mode: PitMode = "known-at",
    ordinal: str | None = None,
    plan: PitPlan | Mapping[str, PitPlan] | None = None,
    unique_ordinal: bool = False,
) -> exp.Query:
    """The training-set query: spine columns first (unchanged, in spine order), then features.

    ``spine`` is a table or a query returning ``spine_columns``; ``ordinal`` names a spine column
    holding the row order (not output; ties between equal ordinals keep one row each, in no
    particular order); without it the order is ``ROW_NUMBER() OVER ()`` over the spine, i.e. its
    scan order. ``unique_ordinal``: no two spine rows share an ordinal (the SDK numbers a DataFrame's
    rows), so it identifies each row and no row number is computed. Features come out under the
    output names of ``PitView.features``, view by view.
    ``plan`` overrides the dialect's plan choice (one plan, or a plan per view name); tests and the
    benchmark use it to run every plan on every engine that can. Raises ``CompileError`` for names
    that do not line up (missing spine keys, output names colliding with spine columns, ...).
    """
    caps = capabilities(dialect)
    _check_mode(mode)
    spine_columns = list(spine_columns)
    _check_spine(spine_columns, spine_timestamp, ordinal)
    for view in views:
        _check_view(view)
    _check_outputs(spine_columns, views)

    taken = {*spine_columns, *(out for v in views for _, out in v.features)}
    for v in views:
        taken.update([*v.keys, v.timestamp, *([v.created] if v.created else []), *_value_names(v)])
    names = Namer(taken)

    chosen = [_choose_plan(view, caps, plan) for view in views]
    carried = [c == "asof" and caps.asof_carry_spine and caps.materialized_cte for c in chosen]
    # timeline views whose winning row rides the spine rows through the window (row_max_timeline)
    riding = [c == "timeline" and caps.row_max_timeline and not caps.materialized_cte for c in chosen]
    probed = [c != "lateral" and not k and not r for c, k, r in zip(chosen, carried, riding, strict=True)]

    ctes: list[exp.CTE] = []
    pc = _PlanContext(caps, mode, names, ctes)
    s, row_id = names("s"), names("ord")
    source = _cte_or_table(spine, names("spine"), ctes)
    if ordinal is not None and unique_ordinal:
        identity: exp.Expression = exp.column(ordinal, "sp", quoted=True)
    elif caps.scan_order_id:
        identity = exp.Anonymous(this=caps.scan_order_id)
    else:
        identity = exp.Window(this=exp.RowNumber())
    numbered = exp.select(
        *(exp.column(c, "sp", quoted=True) for c in spine_columns),
        exp.alias_(identity, row_id, quoted=True, copy=False),
        copy=False,
    ).from_(_aliased(source, "sp"), copy=False)
    if caps.materialized_cte:
        # numbered once (materialized when read more than once): features are keyed by the number
        rows = names("rows")
        readers = 1 + len({tuple(v.spine_keys or v.keys) for v, p in zip(views, probed, strict=True) if p})
        ctes.append(_cte(rows, numbered, materialized=readers > 1))
        probe_source: exp.Expression = _table(rows)
        relation, columns = rows, [*spine_columns, row_id]
        for view, carry in zip(views, carried, strict=True):
            if carry:
                hist = _cte_or_table(view.relation, names("v"), ctes)
                relation = _asof_carry(
                    view, hist, relation, columns, row_id, view.spine_keys or view.keys, spine_timestamp,
                    pc,
                )  # fmt: skip
                columns = [*columns, *(out for _, out in view.features)]
        final_from = _aliased(_table(relation), s)
    elif any(riding):
        # the spine rows flow through one timeline per spine-key group; nothing joins back to them,
        # so the scan-order id is evaluated once even without MATERIALIZED
        probe_source = source
        if ordinal is None:
            ctes.append(_cte(names("rows"), numbered))
            relation: exp.Expression = _table(ctes[-1].alias)
            columns = [*spine_columns, row_id]
        else:
            relation, columns = source, list(spine_columns)
        groups: dict[tuple[str, ...], list[int]] = {}
        for i, view in enumerate(views):
            if riding[i]:
                groups.setdefault(tuple(view.spine_keys or view.keys), []).append(i)
        for group_keys, members in groups.items():
            group = [views[i] for i in members]
            hists = [_cte_or_table(views[i].relation, names(f"v{i}"), ctes) for i in members]
            carry_cte = _timeline_carry(group, hists, relation, columns, group_keys, spine_timestamp, pc)
            relation = _table(carry_cte)
            columns = [*columns, *(out for v in group for _, out in v.features)]
        final_from = _aliased(relation, s)
    elif ordinal is None:
        final_from = numbered.subquery(exp.to_identifier(s, quoted=True), copy=False)
        probe_source = source
    else:
        final_from = _aliased(source, s)
        probe_source = source
    # a unique ordinal is also the row id: ordering by the join key lets an engine merge-join in order
    order_col = row_id if ordinal is None or (unique_ordinal and caps.materialized_cte) else ordinal

    out_cols: list[exp.Expression] = [
        exp.alias_(exp.column(c, s, quoted=True), c, quoted=True, copy=False)
        for c in spine_columns
        if c != ordinal
    ]
    joins: list[exp.Join] = []
    probes: dict[tuple[str, ...], _Probe] = {}

    for i, view in enumerate(views):
        spine_keys = list(view.spine_keys or view.keys)
        if carried[i] or riding[i]:
            out_cols += [
                exp.alias_(exp.column(out, s, quoted=True), out, quoted=True, copy=False)
                for _, out in view.features
            ]
            continue
        hist = _cte_or_table(view.relation, names(f"v{i}"), ctes)
        if chosen[i] == "lateral":
            alias = names(f"l{i}")
            joins.append(_lateral_join(view, hist, alias, s, spine_keys, spine_timestamp, pc))
            out_cols += [
                exp.alias_(exp.column(out, alias, quoted=True), out, quoted=True, copy=False)
                for _, out in view.features
            ]
            continue

        if tuple(spine_keys) not in probes:
            probe = _Probe(
                name=names(f"p{len(probes)}"),
                keys=[names.fixed(f"k{j}") for j in range(len(spine_keys))],
                t=names.fixed("t"),
                row_id=row_id if caps.materialized_cte else None,
                spine_keys=spine_keys,
                spine_t=spine_timestamp,
            )
            probes[tuple(spine_keys)] = probe
            ctes.append(_cte(probe.name, _probe_points(probe, probe_source)))
        probe = probes[tuple(spine_keys)]

        f = names(f"f{i}")
        if chosen[i] == "range":
            _range_fetch(view, hist, probe, f, pc)
        else:
            m = names(f"m{i}")
            if chosen[i] == "asof":
                ctes.append(_cte(m, _asof_match(view, hist, probe, pc)))
            else:
                ctes.append(_cte(m, _timeline_match(view, hist, probe, pc)))
            _fetch(view, hist, probe, m, f, pc)
        on = [
            exp.EQ(this=exp.column(c, f, quoted=True), expression=exp.column(sc, s, quoted=True))
            for c, sc in zip(probe.ids, probe.spine_ids, strict=True)
        ]
        joins.append(exp.Join(this=_table(f), side="LEFT", on=exp.and_(*on, copy=False)))
        out_cols += [
            exp.alias_(exp.column(out, f, quoted=True), out, quoted=True, copy=False)
            for _, out in view.features
        ]

    if any(riding) and not joins:
        # Spark's ORDER BY samples its input to pick range bounds, which reruns the whole window
        # stage unless that input is a shuffle's output: redistributing the (spine-sized) result by
        # the ordinal first costs less than a second sort of history + spine
        last = next(c for c in ctes if c.alias == final_from.name)
        distribute = exp.Distribute(expressions=[exp.column(order_col, quoted=True)])
        last.this.set("distribute", distribute)
    query = exp.Select(expressions=out_cols).from_(final_from, copy=False)
    for join in joins:
        query = query.join(join, copy=False)
    query = query.order_by(natural_order(exp.column(order_col, s, quoted=True), caps), copy=False)
    return _with(query, ctes)


def latest_per_entity(
    view: PitView,
    *,
    dialect: str,
    mode: PitMode = "known-at",
    as_of: exp.Expression | None = None,
    apply_ttl: bool = True,
) -> exp.Query:
    """One row per entity: the row the PIT join would pick for a spine row (keys, as_of).

    Columns: the view's keys, event timestamp and created column (view names), then the features
    under their output names. Entities with a NULL key are left out (a NULL key never matches).
    ``as_of`` None means CURRENT_TIMESTAMP. ``apply_ttl=False`` skips rule 2 (materialization
    checks freshness at read time).
    """
    caps = capabilities(dialect)
    _check_mode(mode)
    _check_view(view)
    out_names = [*view.keys, view.timestamp, *([view.created] if view.created else [])]
    feature_outs = [out for _, out in view.features]
    _check_unique(out_names + feature_outs, f"latest row of view '{view.name}'")

    taken = {*out_names, *feature_outs, *_value_names(view)}
    names = Namer(taken)
    ctes: list[exp.CTE] = []
    hist = _cte_or_table(view.relation, names("v"), ctes)
    h = names("h")
    t = as_of.copy() if as_of is not None else _now(view)

    cond = [_not_null(exp.column(k, h, quoted=True)) for k in view.keys]
    cond += _candidate(view, h, t, mode, apply_ttl=apply_ttl)
    cols: list[exp.Expression] = [exp.column(c, h, quoted=True) for c in out_names]
    cols += [
        exp.alias_(exp.column(c, h, quoted=True), out, quoted=True, copy=False) for c, out in view.features
    ]
    partition = [exp.column(k, h, quoted=True) for k in view.keys]
    order = _tie_order(view, _qualified(h), caps, with_timestamp=True)

    base = (
        exp.select(*cols, copy=False)
        .from_(_aliased(hist, h), copy=False)
        .where(exp.and_(*cond, copy=False), copy=False)
    )
    if caps.qualify:
        query = base.qualify(
            exp.EQ(this=_row_number(partition, order), expression=exp.Literal.number(1)), copy=False
        )
    elif caps.distinct_on:
        query = base.distinct(*partition, copy=False).order_by(
            *(natural_order(c.copy(), caps) for c in partition), *order, copy=False
        )
        query.set("distinct", exp.Distinct(on=exp.Tuple(expressions=partition)))
    else:
        rn = names("rn")
        inner = base.select(
            exp.alias_(_row_number(partition, order), rn, quoted=True, copy=False), copy=False
        )
        x = names("x")
        query = (
            exp.select(*(exp.column(c, x, quoted=True) for c in [*out_names, *feature_outs]), copy=False)
            .from_(inner.subquery(exp.to_identifier(x, quoted=True), copy=False), copy=False)
            .where(exp.EQ(this=exp.column(rn, x, quoted=True), expression=exp.Literal.number(1)), copy=False)
        )
    return _with(query, ctes)


def offline_index(view: PitView, table: exp.Table, dialect: str) -> exp.Expression | None:
    """The CREATE INDEX that makes the indexed PIT plan fast for a history persisted as ``table``.

    On PostgreSQL the key is the whole tie order, as far as it can be an index key:
    ``(keys..., event_ts, created NULLS FIRST, v1 NULLS FIRST, ...)`` and the other columns in
    INCLUDE. The LATERAL probe is an equality on the keys and a range on event_ts, scanned
    backward from t; a backward scan of ``x ASC NULLS FIRST`` yields ``x DESC NULLS LAST``, which is
    the tie order, so the probe reads one index tuple and sorts nothing. Measured at 100k spine rows
    and 2M events: 0.56-0.67 s, the same as a hand-written ``ORDER BY event_ts DESC LIMIT 1``,
    against 0.76-0.84 s with an index on (keys, event_ts) only, where every probe runs an
    Incremental Sort. Value columns join the key while their type is known and fixed-width: text
    would make a long value fail the insert (a btree entry holds ~2.7 kB), and an unknown type
    cannot be ordered without the guard key of ``value_sort_keys``. Those and the rest go to
    INCLUDE, so the probe stays an index-only scan (after VACUUM); the tie order then falls back
    to an Incremental Sort of the rows sharing the key prefix.

    None for dialects that do not benefit from indexes (columnar engines). After creating it,
    build the PitView with ``indexed=True``.
    """
    caps = capabilities(dialect)
    _check_view(view)
    if not caps.indexes:
        return None
    if not isinstance(table, exp.Table):
        raise CompileError(
            f"offline_index for view '{view.name}' needs a table, got {type(table).__name__}",
            hint="persist the view's history as a table first",
        )
    key = [
        exp.Ordered(this=exp.column(c, quoted=True), nulls_first=False) for c in [*view.keys, view.timestamp]
    ]
    used = {*view.keys, view.timestamp}
    types = dict(_value_columns(view))
    order = [c for c in _tie_columns(view, with_timestamp=False) if c not in used]
    open_prefix = True
    rest: list[str] = []
    for name in order:
        dtype = types.get(name)
        keyable = name == view.created or (is_text_type(dtype) is False and dtype is not None)
        if open_prefix and keyable:
            key.append(exp.Ordered(this=exp.column(name, quoted=True), nulls_first=True))
        else:
            open_prefix = False
            rest.append(name)
        used.add(name)
    rest += [c for c in _value_names(view) if c not in used]
    # PostgreSQL allows 32 columns per index, INCLUDE ones counted: beyond that the probe reads the heap
    room = max(_MAX_INDEX_COLUMNS - len(key), 0)
    include = [exp.to_identifier(c, quoted=True) for c in dict.fromkeys(rest)][:room]
    if not caps.index_include:
        key += [exp.Ordered(this=exp.column(i.name, quoted=True), nulls_first=False) for i in include]
        include = []
    params = exp.IndexParameters(columns=key, include=include or None)
    return exp.Create(
        this=exp.Index(
            this=exp.to_identifier(_index_name(table.name), quoted=True), table=table.copy(), params=params
        ),
        kind="INDEX",
        exists=True,
    )


_MAX_INDEX_COLUMNS = 32


# --- plans -------------------------------------------------------------------------------------


@dataclass
class _Probe:
    """The spine's probe points for views joined on the same spine keys.

    With ``row_id`` (engines with MATERIALIZED CTEs) one probe per spine row, identified by the row
    number of the materialized spine. Otherwise one per distinct (keys, t), identified by them: the
    spine may then be evaluated more than once, and a row number would not be stable across
    evaluations, while its own values are.
    """

    name: str
    keys: list[str]  # generated key column names
    t: str  # generated time column name
    row_id: str | None
    spine_keys: list[str]
    spine_t: str

    @property
    def ids(self) -> list[str]:
        return [self.row_id] if self.row_id else [*self.keys, self.t]

    @property
    def spine_ids(self) -> list[str]:
        return [self.row_id] if self.row_id else [*self.spine_keys, self.spine_t]

    @property
    def columns(self) -> list[str]:
        return [*([self.row_id] if self.row_id else []), *self.keys, self.t]


def _choose_plan(view: PitView, caps: Capabilities, plan: PitPlan | Mapping[str, PitPlan] | None) -> PitPlan:
    chosen: PitPlan | None
    chosen = plan.get(view.name) if isinstance(plan, Mapping) else plan
    if chosen is None:
        chosen = caps.pit_plan_indexed if view.indexed else caps.pit_plan
    if chosen == "asof" and caps.asof is None:
        raise CompileError(f"dialect '{caps.name}' has no ASOF join", hint="use plan 'timeline'")
    if chosen == "lateral" and not caps.lateral:
        raise CompileError(f"dialect '{caps.name}' has no LATERAL top-1 join", hint="use plan 'timeline'")
    if chosen not in ("asof", "lateral", "timeline", "range"):
        raise CompileError(f"unknown PIT plan '{chosen}'", hint="use asof, lateral, timeline or range")
    return chosen


def _probe_points(probe: _Probe, source: exp.Expression) -> exp.Select:
    """Probe points without NULLs: a NULL key or t has no candidate (rules 1 and 5)."""
    sp = "sp"
    cols: list[exp.Expression] = []
    if probe.row_id:
        cols.append(exp.column(probe.row_id, sp, quoted=True))
    cols += [
        exp.alias_(exp.column(k, sp, quoted=True), kn, quoted=True, copy=False)
        for k, kn in zip(probe.spine_keys, probe.keys, strict=True)
    ]
    cols.append(exp.alias_(exp.column(probe.spine_t, sp, quoted=True), probe.t, quoted=True, copy=False))
    cond = [_not_null(exp.column(c, sp, quoted=True)) for c in [*probe.spine_keys, probe.spine_t]]
    query = exp.select(*cols, copy=False).from_(_aliased(source, sp), copy=False)
    if not probe.row_id:
        query = query.distinct(copy=False)
    return query.where(exp.and_(*cond, copy=False), copy=False)


def _match_time(view: PitView, h: str, mode: PitMode) -> exp.Expression:
    return eligible_time(view, h, mode)


def _asof_join(
    view: PitView,
    hist: exp.Expression,
    left: str,
    left_keys: Sequence[str],
    left_t: str,
    key_names: list[str],
    pc: _PlanContext,
    *,
    outer: bool,
    values: Sequence[tuple[str, str]] = (),
) -> tuple[exp.Join, exp.Column]:
    """The native ASOF join from relation ``left`` to the view's match times, and the column
    holding the winning event_ts (NULL when there is no candidate, for an outer join). ``values``:
    (view column, alias) pairs the matched row also carries, in event-time matching only (where the
    matched row is the winner, when no other row shares its time)."""
    caps, mode, names = pc.caps, pc.mode, pc.names
    h, a = names("h"), names("a")
    best = names.fixed("best")
    match = names.fixed("match")
    keys = [
        exp.alias_(exp.column(k, h, quoted=True), kn, quoted=True, copy=False)
        for k, kn in zip(view.keys, key_names, strict=True)
    ]
    ts = exp.column(view.timestamp, h, quoted=True)
    inner = (
        exp.select(*keys, copy=False)
        .from_(_aliased(hist, h), copy=False)
        .where(_not_null(ts.copy()), copy=False)
    )
    if view.created is None or mode == "event-time":
        # ASOF picks any row among equal event times: only the time is taken from it
        matcher = inner.select(exp.alias_(ts.copy(), match, quoted=True, copy=False), copy=False)
        matcher = matcher.select(
            *(exp.alias_(exp.column(c, h, quoted=True), alias, quoted=True, copy=False) for c, alias in values),
            copy=False,
        )
        best_from = match
    else:
        if values:
            raise CompileError("an ASOF join carries the matched row's values only when it matches on event time")
        # running MAX(event_ts) in eligible-at order: the greatest event_ts known at each instant.
        # RANGE frame so rows with equal eligible-at times share one value (ASOF may pick any).
        x = names("x")
        inner = inner.select(
            exp.alias_(_match_time(view, h, mode), match, quoted=True, copy=False),
            exp.alias_(ts.copy(), best, quoted=True, copy=False),
            copy=False,
        )
        frame = exp.WindowSpec(kind="RANGE", start="UNBOUNDED", start_side="PRECEDING", end="CURRENT ROW")
        running = exp.Window(
            this=exp.Max(this=exp.column(best, x, quoted=True)),
            partition_by=[exp.column(kn, x, quoted=True) for kn in key_names],
            order=exp.Order(expressions=[natural_order(exp.column(match, x, quoted=True), caps)]),
            spec=frame,
        )
        matcher = exp.select(
            *(exp.column(kn, x, quoted=True) for kn in key_names),
            exp.column(match, x, quoted=True),
            exp.alias_(running, best, quoted=True, copy=False),
            copy=False,
        ).from_(inner.subquery(exp.to_identifier(x, quoted=True), copy=False), copy=False)
        best_from = best

    equal = [
        exp.EQ(this=exp.column(lk, left, quoted=True), expression=exp.column(kn, a, quoted=True))
        for lk, kn in zip(left_keys, key_names, strict=True)
    ]
    reached = exp.GTE(
        this=exp.column(left_t, left, quoted=True), expression=exp.column(match, a, quoted=True)
    )
    right = matcher.subquery(exp.to_identifier(a, quoted=True), copy=False)
    side = "LEFT" if outer else None
    if caps.asof == "match_condition":
        join = exp.Join(
            this=right, method="ASOF", side=side, match_condition=reached, on=exp.and_(*equal, copy=False)
        )
    else:
        join = exp.Join(this=right, method="ASOF", side=side, on=exp.and_(*equal, reached, copy=False))
    return join, exp.column(best_from, a, quoted=True)


def _asof_match(
    view: PitView,
    hist: exp.Expression,
    probe: _Probe,
    pc: _PlanContext,
) -> exp.Select:
    """(probe columns, winning event_ts) for probe points with a candidate, via native ASOF."""
    names = pc.names
    p = probe.name
    join, best = _asof_join(view, hist, p, probe.keys, probe.t, probe.keys, pc, outer=False)
    return (
        exp.select(
            *(exp.column(c, p, quoted=True) for c in probe.columns),
            exp.alias_(best, names.fixed("best"), quoted=True, copy=False),
            copy=False,
        )
        .from_(_table(p), copy=False)
        .join(join, copy=False)
    )


def _asof_carry(
    view: PitView,
    hist: exp.Expression,
    prev: str,
    prev_columns: list[str],
    row_id: str,
    spine_keys: Sequence[str],
    spine_timestamp: str,
    pc: _PlanContext,
) -> str:
    """Add one view's features to relation ``prev`` (spine columns, row id, earlier features).

    The DuckDB shape of the ASOF plan (``asof_carry_spine``): the spine rows themselves flow
    through ASOF LEFT JOIN (winning event_ts), LEFT JOIN on (keys, event_ts) (features, TTL and
    known-at checks in ON so spine rows are kept), and the split tie-break; no probe relation and
    no join back. Measured 15-30% faster than the probe shape on deep histories (bench/pit.py).
    Returns the name of the CTE holding ``prev_columns`` + this view's outputs.
    """
    mode, names, ctes = pc.mode, pc.names, pc.ctes
    m, h = names("m"), names("h")
    best = names.fixed("best")
    key_names = [names.fixed(f"k{j}") for j in range(len(view.keys))]
    if view.unique_times and (view.created is None or mode == "event-time"):
        return _asof_carry_unique(view, hist, prev, prev_columns, spine_keys, spine_timestamp, key_names, pc)
    join, best_col = _asof_join(
        view, hist, prev, spine_keys, spine_timestamp, key_names, pc, outer=True
    )
    matched = (
        exp.select(
            *(exp.column(c, prev, quoted=True) for c in prev_columns),
            exp.alias_(best_col, best, quoted=True, copy=False),
            copy=False,
        )
        .from_(_table(prev), copy=False)
        .join(join, copy=False)
    )
    ctes.append(_cte(m, matched))
    t = exp.column(spine_timestamp, m, quoted=True)
    on = [
        exp.EQ(this=exp.column(k, h, quoted=True), expression=exp.column(sk, m, quoted=True))
        for k, sk in zip(view.keys, spine_keys, strict=True)
    ]
    on.append(
        exp.EQ(this=exp.column(view.timestamp, h, quoted=True), expression=exp.column(best, m, quoted=True))
    )
    if view.ttl is not None:
        on.append(
            exp.GTE(
                this=exp.column(best, m, quoted=True),
                expression=exp.Sub(this=t.copy(), expression=_interval(view.ttl)),
            )
        )
    if view.created is not None and mode == "known-at":
        on.append(_known(view, h, t))
    query = exp.select(*(exp.column(c, m, quoted=True) for c in prev_columns), copy=False)
    query = query.from_(_table(m), copy=False).join(
        _aliased(hist, h), on=exp.and_(*on, copy=False), join_type="LEFT", copy=False
    )
    out = names("r")
    _first_per(view, query, h, [row_id], out, pc, with_timestamp=False, carry=prev_columns)
    return out


def _asof_carry_unique(
    view: PitView,
    hist: exp.Expression,
    prev: str,
    prev_columns: list[str],
    spine_keys: Sequence[str],
    spine_timestamp: str,
    key_names: list[str],
    pc: _PlanContext,
) -> str:
    """``_asof_carry`` where no two rows share (keys, event_ts) and the match is on event time: the
    row the ASOF join matches is the winner, so it carries the values itself (no fetch join, no tie
    check: the plan of a hand-written ASOF join). The TTL is checked on its time, as in the fetch."""
    values = [(c, pc.names.fixed(f"v{j}")) for j, (c, _) in enumerate(view.features)]
    join, best_col = _asof_join(view, hist, prev, spine_keys, spine_timestamp, key_names, pc, outer=True,
                                values=values)
    a = best_col.table
    fresh = None
    if view.ttl is not None:
        t = exp.column(spine_timestamp, prev, quoted=True)
        fresh = exp.GTE(this=best_col, expression=exp.Sub(this=t, expression=_interval(view.ttl)))
    outputs = []
    for (_, out), (_, alias) in zip(view.features, values, strict=True):
        value: exp.Expression = exp.column(alias, a, quoted=True)
        if fresh is not None:
            value = exp.Case(ifs=[exp.If(this=fresh.copy(), true=value)])
        outputs.append(exp.alias_(value, out, quoted=True, copy=False))
    query = (
        exp.select(*(exp.column(c, prev, quoted=True) for c in prev_columns), *outputs, copy=False)
        .from_(_table(prev), copy=False)
        .join(join, copy=False)
    )
    out = pc.names("r")
    pc.ctes.append(_cte(out, query))
    return out


def _timeline_match(
    view: PitView,
    hist: exp.Expression,
    probe: _Probe,
    pc: _PlanContext,
) -> exp.Select:
    """(probe columns, winning event_ts) via a running MAX over a UNION ALL timeline.

    View rows enter at their match time carrying their event_ts, probe points at t carrying NULL;
    at equal times view rows sort first (kind 0) because ``event_ts <= t`` includes equality. The
    running MAX at a probe point is the greatest event_ts among rows known by t: the winner's time.
    """
    caps, mode, names = pc.caps, pc.mode, pc.names
    h, x, y, p = names("h"), names("x"), names("y"), probe.name
    best, kind = names.fixed("best"), names.fixed("kind")
    ts = exp.column(view.timestamp, h, quoted=True)
    pad = [exp.alias_(exp.Null(), probe.row_id, quoted=True, copy=False)] if probe.row_id else []
    view_rows = (
        exp.select(
            *pad,
            *(
                exp.alias_(exp.column(k, h, quoted=True), kn, quoted=True, copy=False)
                for k, kn in zip(view.keys, probe.keys, strict=True)
            ),
            exp.alias_(_match_time(view, h, mode), probe.t, quoted=True, copy=False),
            exp.alias_(exp.Literal.number(0), kind, quoted=True, copy=False),
            exp.alias_(ts.copy(), best, quoted=True, copy=False),
            copy=False,
        )
        .from_(_aliased(hist, h), copy=False)
        .where(_not_null(ts.copy()), copy=False)
    )
    probe_rows = exp.select(
        *(exp.column(c, p, quoted=True) for c in probe.columns),
        exp.alias_(exp.Literal.number(1), kind, quoted=True, copy=False),
        exp.alias_(exp.Null(), best, quoted=True, copy=False),
        copy=False,
    ).from_(_table(p), copy=False)
    timeline = exp.union(view_rows, probe_rows, distinct=False, copy=False)
    frame = exp.WindowSpec(kind="ROWS", start="UNBOUNDED", start_side="PRECEDING", end="CURRENT ROW")
    running = exp.Window(
        this=exp.Max(this=exp.column(best, x, quoted=True)),
        partition_by=[exp.column(kn, x, quoted=True) for kn in probe.keys],
        order=exp.Order(
            expressions=[
                natural_order(exp.column(probe.t, x, quoted=True), caps),
                natural_order(exp.column(kind, x, quoted=True), caps),
            ]
        ),
        spec=frame,
    )
    scanned = exp.select(
        *(exp.column(c, x, quoted=True) for c in [*probe.columns, kind]),
        exp.alias_(running, best, quoted=True, copy=False),
        copy=False,
    ).from_(timeline.subquery(exp.to_identifier(x, quoted=True), copy=False), copy=False)
    return (
        exp.select(*(exp.column(c, y, quoted=True) for c in [*probe.columns, best]), copy=False)
        .from_(scanned.subquery(exp.to_identifier(y, quoted=True), copy=False), copy=False)
        .where(
            exp.and_(
                exp.EQ(this=exp.column(kind, y, quoted=True), expression=exp.Literal.number(1)),
                _not_null(exp.column(best, y, quoted=True)),
                copy=False,
            ),
            copy=False,
        )
    )


def _timeline_carry(
    views: Sequence[PitView],
    hists: Sequence[exp.Expression],
    prev_relation: exp.Expression,
    prev_columns: list[str],
    spine_keys: Sequence[str],
    spine_timestamp: str,
    pc: _PlanContext,
) -> str:
    """Add the features of ``views`` (all joined on ``spine_keys``) to relation ``prev_relation``.

    The Spark shape of the timeline plan (``row_max_timeline``): the spine rows themselves and the
    view rows, at their match time, share one timeline per key; each view's winning row is a running
    MAX of a struct whose fields are the tie-order columns (``_tie_columns``), so at a spine row it is the
    first candidate in the tie order. No distinct probes, no fetch join, no ROW_NUMBER, no join back:
    one shuffle and sort of history + spine instead of five (bench/pit.py --engine spark).
    Eligibility is the timeline position: a view row precedes a spine row at t exactly when its match
    time (event time, or in known-at mode the later of event and created time) is <= t. The TTL is
    checked on the winner's event time, the greatest among candidates (see ``_fetch``).
    Returns the name of the CTE holding ``prev_columns`` + the views' outputs.
    """
    caps, mode, names, ctes = pc.caps, pc.mode, pc.names, pc.ctes
    prev, x, y = names("sp"), names("x"), names("y")
    kind, t = names.fixed("kind"), names.fixed("t")
    key_names = [names.fixed(f"k{j}") for j in range(len(spine_keys))]
    bests = [names(f"b{i}") for i in range(len(views))]
    # the struct's fields: the tie order, then selected features outside it (a key column), which
    # cannot change the order (rows equal on the tie columns are alike there: same key and time)
    carried = [
        list(dict.fromkeys([*_tie_columns(v, with_timestamp=True), *(c for c, _ in v.features)]))
        for v in views
    ]
    fields = [[f"c{j}" for j in range(len(cols))] for cols in carried]

    spine_rows = exp.select(
        *(exp.column(c, prev, quoted=True) for c in prev_columns),
        *(
            exp.alias_(exp.column(sk, prev, quoted=True), kn, quoted=True, copy=False)
            for sk, kn in zip(spine_keys, key_names, strict=True)
        ),
        exp.alias_(exp.column(spine_timestamp, prev, quoted=True), t, quoted=True, copy=False),
        exp.alias_(exp.Literal.number(1), kind, quoted=True, copy=False),
        *(exp.alias_(exp.Null(), b, quoted=True, copy=False) for b in bests),
        copy=False,
    ).from_(_aliased(prev_relation, prev), copy=False)
    timeline: exp.Query = spine_rows
    for i, (view, hist) in enumerate(zip(views, hists, strict=True)):
        h = names("h")
        struct = exp.Struct(
            expressions=[
                exp.PropertyEQ(this=exp.to_identifier(f), expression=exp.column(c, h, quoted=True))
                for f, c in zip(fields[i], carried[i], strict=True)
            ]
        )
        cols: list[exp.Expression] = [
            exp.alias_(exp.Null(), c, quoted=True, copy=False) for c in prev_columns
        ]
        cols += [
            exp.alias_(exp.column(k, h, quoted=True), kn, quoted=True, copy=False)
            for k, kn in zip(view.keys, key_names, strict=True)
        ]
        cols += [
            exp.alias_(_match_time(view, h, mode), t, quoted=True, copy=False),
            exp.alias_(exp.Literal.number(0), kind, quoted=True, copy=False),
        ]
        cols += [exp.alias_(struct if j == i else exp.Null(), b, quoted=True) for j, b in enumerate(bests)]
        # a NULL key never matches: keeping such rows out keeps them out of spine rows' NULL-key partitions
        present = [_not_null(exp.column(c, h, quoted=True)) for c in [view.timestamp, *view.keys]]
        rows = (
            exp.select(*cols, copy=False)
            .from_(_aliased(hist, h), copy=False)
            .where(exp.and_(*present, copy=False), copy=False)
        )
        timeline = exp.union(timeline, rows, distinct=False, copy=False)

    frame = exp.WindowSpec(kind="ROWS", start="UNBOUNDED", start_side="PRECEDING", end="CURRENT ROW")
    # view rows first at equal times: event_ts <= t counts equality; a NULL t sorts before every
    # view row (they never have one), so its spine row finds no candidate
    order = exp.Order(
        expressions=[
            natural_order(exp.column(t, x, quoted=True), caps),
            natural_order(exp.column(kind, x, quoted=True), caps),
        ]
    )
    running = [
        exp.alias_(
            exp.Window(
                this=exp.Max(this=exp.column(b, x, quoted=True)),
                partition_by=[exp.column(kn, x, quoted=True) for kn in key_names],
                order=order.copy(),
                spec=frame.copy(),
            ),
            b,
            quoted=True,
            copy=False,
        )
        for b in bests
    ]
    scanned = exp.select(
        *(exp.column(c, x, quoted=True) for c in [*prev_columns, t, kind]),
        *running,
        copy=False,
    ).from_(timeline.subquery(exp.to_identifier(x, quoted=True), copy=False), copy=False)

    outs: list[exp.Expression] = [exp.column(c, y, quoted=True) for c in prev_columns]
    for i, view in enumerate(views):
        field_of = dict(zip(carried[i], fields[i], strict=True))

        def field(column: str, best: str = bests[i], field_of: dict[str, str] = field_of) -> exp.Dot:
            name = exp.to_identifier(field_of[column], quoted=True)
            return exp.Dot(this=exp.column(best, y, quoted=True), expression=name)

        ok: exp.Expression | None = None
        if view.ttl is not None:
            ok = exp.GTE(
                this=field(view.timestamp),
                expression=exp.Sub(this=exp.column(t, y, quoted=True), expression=_interval(view.ttl)),
            )
        for c, out in view.features:
            value: exp.Expression = field(c)
            if ok is not None:
                value = exp.Case(ifs=[exp.If(this=ok.copy(), true=value)])
            outs.append(exp.alias_(value, out, quoted=True, copy=False))
    query = (
        exp.select(*outs, copy=False)
        .from_(scanned.subquery(exp.to_identifier(y, quoted=True), copy=False), copy=False)
        .where(exp.EQ(this=exp.column(kind, y, quoted=True), expression=exp.Literal.number(1)), copy=False)
    )
    out = names("r")
    ctes.append(_cte(out, query))
    return out


def _fetch(
    view: PitView,
    hist: exp.Expression,
    probe: _Probe,
    m: str,
    f: str,
    pc: _PlanContext,
) -> None:
    """CTE ``f``: features per probe point. The rows at the winning (keys, event_ts) that are still
    candidates at t, first in the tie order. The winning time passed the TTL iff every candidate
    at it does, so the TTL is checked on it."""
    mode, names = pc.mode, pc.names
    h = names("h")
    best = names.fixed("best")
    t = exp.column(probe.t, m, quoted=True)
    on = [
        exp.EQ(this=exp.column(k, h, quoted=True), expression=exp.column(kn, m, quoted=True))
        for k, kn in zip(view.keys, probe.keys, strict=True)
    ]
    on.append(
        exp.EQ(this=exp.column(view.timestamp, h, quoted=True), expression=exp.column(best, m, quoted=True))
    )
    cond: list[exp.Expression] = []
    if view.ttl is not None:
        cond.append(
            exp.GTE(
                this=exp.column(best, m, quoted=True),
                expression=exp.Sub(this=t.copy(), expression=_interval(view.ttl)),
            )
        )
    if view.created is not None and mode == "known-at":
        cond.append(_known(view, h, t))
    query = exp.select(*(exp.column(c, m, quoted=True) for c in probe.ids), copy=False)
    query = query.from_(_table(m), copy=False).join(
        _aliased(hist, h), on=exp.and_(*on, copy=False), copy=False
    )
    if cond:
        query = query.where(exp.and_(*cond, copy=False), copy=False)
    _first_per(view, query, h, probe.ids, f, pc, with_timestamp=False)


def _range_fetch(
    view: PitView,
    hist: exp.Expression,
    probe: _Probe,
    f: str,
    pc: _PlanContext,
) -> None:
    """CTE ``f``: features per probe point by a range join on keys and event_ts <= t."""
    mode, names = pc.mode, pc.names
    h, p = names("h"), probe.name
    t = exp.column(probe.t, p, quoted=True)
    on = [
        exp.EQ(this=exp.column(k, h, quoted=True), expression=exp.column(kn, p, quoted=True))
        for k, kn in zip(view.keys, probe.keys, strict=True)
    ]
    on += _candidate(view, h, t, mode, apply_ttl=True)
    query = exp.select(*(exp.column(c, p, quoted=True) for c in probe.ids), copy=False)
    query = query.from_(_table(p), copy=False).join(
        _aliased(hist, h), on=exp.and_(*on, copy=False), copy=False
    )
    caps = pc.caps
    if view.deep_windows and caps.split_ties and caps.materialized_cte and caps.qualify and len(probe.ids) == 1:
        # Where windows hold several rows, keeping the rows at each probe's latest event_ts needs no
        # sort (a MAX per partition) and leaves one row for most probes: the tie order then ranks only
        # the probes with several (split). See DEEP_WINDOW_ROWS.
        ts = exp.column(view.timestamp, h, quoted=True)
        latest = exp.Window(this=exp.Max(this=ts.copy()), partition_by=[exp.column(probe.ids[0], p, quoted=True)])
        query = query.qualify(exp.EQ(this=ts, expression=latest), copy=False)
        _first_per(view, query, h, probe.ids, f, pc, with_timestamp=False, split=True)
        return
    _first_per(view, query, h, probe.ids, f, pc, with_timestamp=True, split=False)


def _lateral_join(
    view: PitView,
    hist: exp.Expression,
    alias: str,
    s: str,
    spine_keys: Sequence[str],
    spine_timestamp: str,
    pc: _PlanContext,
) -> exp.Join:
    """LEFT JOIN LATERAL (SELECT features ... WHERE <candidate> ORDER BY <tie order> LIMIT 1)."""
    caps, mode, names = pc.caps, pc.mode, pc.names
    h = names("h")
    t = exp.column(spine_timestamp, s, quoted=True)
    cond = [
        exp.EQ(this=exp.column(k, h, quoted=True), expression=exp.column(sk, s, quoted=True))
        for k, sk in zip(view.keys, spine_keys, strict=True)
    ]
    cond += _candidate(view, h, t, mode, apply_ttl=True)
    order = _tie_order(view, _qualified(h), caps, with_timestamp=True)
    sub = (
        exp.select(
            *(
                exp.alias_(exp.column(c, h, quoted=True), out, quoted=True, copy=False)
                for c, out in view.features
            ),
            copy=False,
        )
        .from_(_aliased(hist, h), copy=False)
        .where(exp.and_(*cond, copy=False), copy=False)
        .order_by(*order, copy=False)
        .limit(1, copy=False)
    )
    lateral = exp.Lateral(
        this=sub.subquery(copy=False), alias=exp.TableAlias(this=exp.to_identifier(alias, quoted=True))
    )
    return exp.Join(this=lateral, side="LEFT", on=exp.true())


def _first_per(
    view: PitView,
    query: exp.Select,
    h: str,
    ids: list[str],
    f: str,
    pc: _PlanContext,
    *,
    with_timestamp: bool,
    carry: list[str] | None = None,
    split: bool = True,
) -> None:
    """CTE ``f`` (carried columns, features): the first row per probe in the tie order.

    ``query`` selects the ``carry`` columns (default: the probe ``ids``) and reads the view as
    ``h``. Three spellings of the same thing: QUALIFY where available, a ROW_NUMBER subquery
    otherwise, and on engines whose window operator is slow on many one-row partitions
    (``split_ties``) the window only runs on probes that have more than one row.
    """
    caps, names, ctes = pc.caps, pc.names, pc.ctes
    carry = list(carry or ids)
    outs = [out for _, out in view.features]
    features = [
        exp.alias_(exp.column(c, h, quoted=True), out, quoted=True, copy=False) for c, out in view.features
    ]
    if split and caps.split_ties and caps.materialized_cte and len(ids) == 1:
        # carry the tie columns under generated names (a feature's output name may equal another
        # view column's name), then rank only where a probe has several rows
        order_cols = _tie_columns(view, with_timestamp)
        selected: dict[str, str] = {}
        for c, out in view.features:
            selected.setdefault(c, out)
        extra = [c for c in order_cols if c not in selected]
        carried = {**selected, **{c: names.fixed(f"c{i}") for i, c in enumerate(extra)}}
        j, d = names("j"), names("d")
        rows = query.select(
            *features,
            *(exp.alias_(exp.column(c, h, quoted=True), carried[c], quoted=True, copy=False) for c in extra),
            copy=False,
        )
        ctes.append(_cte(j, rows, materialized=True))
        (id_col,) = ids
        dupes = (
            exp.select(exp.column(id_col, j, quoted=True), copy=False)
            .from_(_table(j), copy=False)
            .group_by(exp.column(id_col, j, quoted=True), copy=False)
            .having(exp.GT(this=exp.Count(this=exp.Star()), expression=exp.Literal.number(1)), copy=False)
        )
        ctes.append(_cte(d, dupes))
        in_d = exp.In(
            this=exp.column(id_col, j, quoted=True),
            query=exp.select(exp.column(id_col, d, quoted=True), copy=False)
            .from_(_table(d), copy=False)
            .subquery(copy=False),
        )
        plain = (
            exp.select(*(exp.column(c, j, quoted=True) for c in [*carry, *outs]), copy=False)
            .from_(_table(j), copy=False)
            .where(exp.Not(this=in_d.copy()), copy=False)
        )
        tied = (
            exp.select(*(exp.column(c, j, quoted=True) for c in [*carry, *outs]), copy=False)
            .from_(_table(j), copy=False)
            .where(in_d, copy=False)
        )
        order = _tie_order(view, lambda c: exp.column(carried[c], j, quoted=True), caps, with_timestamp)
        tied = _keep_first(tied, [exp.column(id_col, j, quoted=True)], order, [*carry, *outs], pc)
        ctes.append(_cte(f, exp.union(plain, tied, distinct=False, copy=False)))
        return
    partition = [e.copy() for e in query.expressions if e.alias_or_name in ids]  # the probe ids
    query = query.select(*features, copy=False)
    order = _tie_order(view, _qualified(h), caps, with_timestamp)
    ctes.append(_cte(f, _keep_first(query, partition, order, [*carry, *outs], pc)))


def _keep_first(
    query: exp.Select,
    partition: list[exp.Expression],
    order: list[exp.Ordered],
    out: list[str],
    pc: _PlanContext,
) -> exp.Select:
    """Keep the first row per partition in ``order``: QUALIFY where available, else a subquery."""
    caps, names = pc.caps, pc.names
    if not order:
        # no created and no value columns: rows of a partition are indistinguishable
        order = [exp.Ordered(this=exp.Literal.number(1))]
    if caps.qualify:
        return query.qualify(
            exp.EQ(this=_row_number(partition, order), expression=exp.Literal.number(1)), copy=False
        )
    rn, z = names.fixed("rn"), names("z")
    inner = query.select(exp.alias_(_row_number(partition, order), rn, quoted=True, copy=False), copy=False)
    return (
        exp.select(*(exp.column(c, z, quoted=True) for c in out), copy=False)
        .from_(inner.subquery(exp.to_identifier(z, quoted=True), copy=False), copy=False)
        .where(exp.EQ(this=exp.column(rn, z, quoted=True), expression=exp.Literal.number(1)), copy=False)
    )


# --- rule helpers ------------------------------------------------------------------------------


def _candidate(
    view: PitView, h: str, t: exp.Expression, mode: PitMode, *, apply_ttl: bool
) -> list[exp.Expression]:
    """Rules 1-3 except key equality: event_ts <= t [, >= t - ttl] [, known at t]."""
    ts = exp.column(view.timestamp, h, quoted=True)
    cond: list[exp.Expression] = [exp.LTE(this=ts, expression=t.copy())]
    if apply_ttl and view.ttl is not None:
        cond.append(
            exp.GTE(this=ts.copy(), expression=exp.Sub(this=t.copy(), expression=_interval(view.ttl)))
        )
    if view.created is not None and mode == "known-at":
        cond.append(_known(view, h, t))
    return cond


def _known(view: PitView, h: str, t: exp.Expression) -> exp.Expression:
    assert view.created is not None
    created = exp.column(view.created, h, quoted=True)
    return exp.paren(
        exp.or_(
            exp.LTE(this=created, expression=t.copy()),
            exp.Is(this=created.copy(), expression=exp.Null()),
            copy=False,
        )
    )


def _tie_order(
    view: PitView,
    column: Callable[[str], exp.Expression],
    caps: Capabilities,
    with_timestamp: bool,
) -> list[exp.Ordered]:
    """The rule-4 order (see the module docstring). The one definition every plan uses.

    ``column(name)`` gives the expression for a view column in the caller's scope.
    """
    order: list[exp.Ordered] = []
    for name in _tie_columns(view, with_timestamp):
        if name == view.timestamp:
            # never NULL among candidates, so the dialect's default NULL placement: on PostgreSQL
            # that is DESC NULLS FIRST, the order a backward scan of the (keys, event_ts) index yields
            order.append(natural_order(column(name), caps, desc=True))
        elif name == view.created:
            order.append(exp.Ordered(this=column(name), desc=True, nulls_first=False))  # NULL lowest
        else:
            order += value_sort_keys(column(name), dict(_value_columns(view)).get(name), caps)
    return order


def _tie_columns(view: PitView, with_timestamp: bool) -> list[str]:
    """The view columns of the tie order, in order."""
    cols = [view.timestamp] if with_timestamp else []
    if view.created is not None:
        cols.append(view.created)
    skip = {*view.keys, view.timestamp, view.created}
    cols += [name for name, _ in _value_columns(view) if name not in skip]
    return cols


def _qualified(alias: str) -> Callable[[str], exp.Expression]:
    return lambda name: exp.column(name, alias, quoted=True)


def _value_columns(view: PitView) -> list[tuple[str, str | None]]:
    cols = list(view.value_columns)
    seen = {c for c, _ in cols}
    for col, _ in view.features:
        if col not in seen:
            cols.append((col, None))
            seen.add(col)
    return cols


def _value_names(view: PitView) -> list[str]:
    return [c for c, _ in _value_columns(view)]


def _now(view: PitView) -> exp.Expression:
    """CURRENT_TIMESTAMP for the view's timestamps. Naive timestamps are UTC wall times: compared with
    CURRENT_TIMESTAMP they would be read in the session's time zone, so a `__latest` view queried from
    a console outside UTC would see recent rows as future ones."""
    if not view.naive_time:
        return exp.CurrentTimestamp()
    utc = exp.AtTimeZone(this=exp.CurrentTimestamp(), zone=exp.Literal.string("UTC"))
    return exp.cast(utc, exp.DataType.build("timestamp"))


def _interval(ttl: timedelta) -> exp.Interval:
    """An exact duration: hours or seconds (a day is not always 24 hours in a local time zone)."""
    micros = (ttl.days * 86_400 + ttl.seconds) * 1_000_000 + ttl.microseconds
    if micros % 3_600_000_000 == 0:
        value, unit = micros // 3_600_000_000, "HOUR"
    elif micros % 1_000_000 == 0:
        value, unit = micros // 1_000_000, "SECOND"
    else:
        value, unit = micros, "MICROSECOND"
    return exp.Interval(this=exp.Literal.string(str(value)), unit=exp.Var(this=unit))


def _row_number(partition: list[exp.Expression], order: list[exp.Ordered]) -> exp.Window:
    return exp.Window(
        this=exp.RowNumber(),
        partition_by=[p.copy() for p in partition],
        order=exp.Order(expressions=[o.copy() for o in order]),
    )


def _not_null(value: exp.Expression) -> exp.Expression:
    return exp.Not(this=exp.Is(this=value, expression=exp.Null()))


# --- validation --------------------------------------------------------------------------------


def _check_mode(mode: str) -> None:
    if mode not in ("known-at", "event-time"):
        raise CompileError(f"unknown PIT mode '{mode}'", hint="use 'known-at' or 'event-time'")


def _check_spine(columns: list[str], timestamp: str, ordinal: str | None) -> None:
    if not columns:
        raise CompileError("the spine has no columns", hint="select entity keys and a timestamp in the spine")
    _check_unique(columns, "spine")
    if timestamp not in columns:
        raise CompileError(
            f"spine timestamp '{timestamp}' is not a spine column",
            hint=f"spine columns: {', '.join(columns)}",
        )
    if ordinal is not None and ordinal not in columns:
        raise CompileError(f"spine ordinal '{ordinal}' is not a spine column", hint="add it to spine_columns")
    if ordinal is not None and ordinal == timestamp:
        raise CompileError("the spine ordinal cannot be the spine timestamp", hint="add a row-number column")


def _check_view(view: PitView) -> None:
    where = f"view '{view.name}'"
    if not view.keys:
        raise CompileError(f"{where} has no entity keys", hint="declare the entity's keys")
    spine_keys = view.spine_keys or view.keys
    if len(spine_keys) != len(view.keys):
        raise CompileError(
            f"{where} has {len(view.keys)} key(s) but {len(spine_keys)} spine key(s) were given",
            hint="match spine keys to view keys position by position",
        )
    if view.ttl is not None and view.ttl < timedelta(0):
        raise CompileError(f"{where} has a negative TTL ({view.ttl})", hint="use a positive duration")
    if not isinstance(view.relation, exp.Table | exp.Query | exp.Subquery):
        raise CompileError(
            f"{where}: the history must be a table or a query, got {type(view.relation).__name__}",
            hint="pass exp.to_table(...) or a parsed SELECT",
        )
    _check_unique(list(view.keys), f"keys of {where}")


def _check_outputs(spine_columns: list[str], views: Sequence[PitView]) -> None:
    outputs = [out for v in views for _, out in v.features]
    _check_unique(outputs, "training-set feature")
    spine = {c.lower(): c for c in spine_columns}
    for v in views:
        for key in v.spine_keys or v.keys:
            if key not in spine_columns:
                raise CompileError(
                    f"view '{v.name}' joins on spine column '{key}', which the spine does not have",
                    hint=f"spine columns: {', '.join(spine_columns)}",
                )
        for _, out in v.features:
            if out.lower() in spine:
                raise CompileError(
                    f"feature output '{out}' of view '{v.name}' collides with spine column '{spine[out.lower()]}'",
                    hint="rename the spine column or name the feature '<view>__<feature>'",
                )


def _check_unique(names: list[str], what: str) -> None:
    seen: dict[str, str] = {}
    for name in names:
        if name.lower() in seen:
            raise CompileError(
                f"duplicate {what} column '{name}'",
                hint="column names must be unique (case-insensitively: engines fold case differently)",
            )
        seen[name.lower()] = name


# --- tree helpers ------------------------------------------------------------------------------


def _cte_or_table(relation: exp.Expression, name: str, ctes: list[exp.CTE]) -> exp.Expression:
    """A table as is; a query becomes a CTE (referenced by name) so plans can read it twice."""
    if isinstance(relation, exp.Table):
        table = relation.copy()
        table.set("alias", None)
        return table
    if isinstance(relation, exp.Subquery):
        relation = relation.this
    if not isinstance(relation, exp.Query):
        raise CompileError(f"expected a table or a query, got {type(relation).__name__}")
    ctes.append(_cte(name, relation.copy()))
    return _table(name)


def _cte(name: str, query: exp.Expression, *, materialized: bool = False) -> exp.CTE:
    cte = exp.CTE(this=query, alias=exp.TableAlias(this=exp.to_identifier(name, quoted=True)))
    if materialized:
        cte.set("materialized", True)
    return cte


def _table(name: str) -> exp.Table:
    return exp.Table(this=exp.to_identifier(name, quoted=True))


def _aliased(table: exp.Expression, alias: str) -> exp.Expression:
    t = table.copy()
    t.set("alias", exp.TableAlias(this=exp.to_identifier(alias, quoted=True)))
    return t


def _with(query: exp.Select, ctes: list[exp.CTE]) -> exp.Select:
    if ctes:
        query.set("with_", exp.With(expressions=ctes))
    return query


def _index_name(table: str) -> str:
    """``<table>__fsql_pit``, shortened with a hash to PostgreSQL's 63-byte identifier limit."""
    import hashlib

    name = f"{table}__fsql_pit"
    if len(name.encode()) <= 63:
        return name
    digest = hashlib.sha256(table.encode()).hexdigest()[:8]
    return f"{table.encode()[:40].decode(errors='ignore')}_{digest}__fsql_pit"
