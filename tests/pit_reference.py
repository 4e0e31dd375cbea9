"""A deliberately simple brute-force reference for the PIT rules (DESIGN.md section 3).

Loops over Python values, no SQL, no cleverness: every compiled plan is checked against this.

Timestamps are ``datetime`` objects; naive ones are UTC (the sessions run in UTC), aware ones are
compared as instants. The tie order (rule 4) is the one documented in ``fsql.compiler.pit``:
event_ts, then created (NULL lowest), then each value column in order, all greatest first, with
NULL lowest, NaN above every number and strings in code point order (Python's ``str`` order).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

Row = dict[str, Any]


@dataclass
class RefView:
    rows: list[Row]
    keys: tuple[str, ...]
    timestamp: str
    created: str | None
    ttl: timedelta | None
    features: tuple[tuple[str, str], ...]  # (view column, output name)
    spine_keys: tuple[str, ...] | None = None
    value_columns: tuple[str, ...] = field(default=())  # tie-break columns, default: feature columns


def instant(value: datetime | None) -> datetime | None:
    """A comparable instant: naive timestamps are UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def value_rank(value: Any) -> tuple:
    """Greater tuple = earlier in the tie order. NULL lowest, NaN above every number."""
    if value is None:
        return (0,)
    if isinstance(value, float) and math.isnan(value):
        return (2,)
    if isinstance(value, datetime):
        return (1, instant(value))
    return (1, value)


def tie_rank(view: RefView, row: Row) -> tuple:
    rank = [instant(row[view.timestamp])]
    if view.created is not None:
        rank.append(value_rank(instant(row[view.created])))
    columns = list(view.value_columns) or [c for c, _ in view.features]
    for col, _ in view.features:
        if col not in columns:
            columns.append(col)
    skip = {*view.keys, view.timestamp, view.created}
    for col in columns:
        if col not in skip:
            rank.append(value_rank(row[col]))
    return tuple(rank)


def keys_equal(a: Sequence[Any], b: Sequence[Any]) -> bool:
    """SQL equality of every key: NULL never equals anything."""
    return all(x is not None and y is not None and x == y for x, y in zip(a, b, strict=True))


def is_candidate(
    view: RefView, row: Row, keys: Sequence[Any], t: datetime | None, mode: str, apply_ttl: bool = True
) -> bool:
    if t is None:
        return False
    t = instant(t)
    ts = instant(row[view.timestamp])
    if ts is None:  # rule 1: NULL event_ts never qualifies
        return False
    if not keys_equal([row[k] for k in view.keys], keys):
        return False
    if not ts <= t:
        return False
    if apply_ttl and view.ttl is not None and not ts >= t - view.ttl:  # rule 2
        return False
    if view.created is not None and mode == "known-at":  # rule 3
        created = instant(row[view.created])
        if created is not None and not created <= t:
            return False
    return True


def winner(
    view: RefView, keys: Sequence[Any], t: datetime | None, mode: str, apply_ttl: bool = True
) -> Row | None:
    best: Row | None = None
    for row in view.rows:
        if not is_candidate(view, row, keys, t, mode, apply_ttl):
            continue
        if best is None or tie_rank(view, row) > tie_rank(view, best):
            best = row
    return best


def pit_join(
    spine: list[Row],
    spine_columns: Sequence[str],
    spine_timestamp: str,
    views: Sequence[RefView],
    mode: str = "known-at",
    ordinal: str | None = None,
) -> list[tuple]:
    """The expected training set: one tuple per spine row, in spine order."""
    rows = list(spine)
    if ordinal is not None:
        rows.sort(key=lambda r: r[ordinal])
    out = []
    for srow in rows:
        values = [srow[c] for c in spine_columns if c != ordinal]
        for view in views:
            keys = [srow[k] for k in (view.spine_keys or view.keys)]
            best = winner(view, keys, srow[spine_timestamp], mode)
            for col, _ in view.features:
                values.append(None if best is None else best[col])
        out.append(tuple(values))
    return out


def latest(
    view: RefView, as_of: datetime, mode: str = "known-at", apply_ttl: bool = True
) -> dict[tuple, Row]:
    """Entity keys -> winning row at ``as_of``, for every entity with a candidate."""
    result: dict[tuple, Row] = {}
    entities = {tuple(r[k] for k in view.keys) for r in view.rows}
    for keys in entities:
        if any(k is None for k in keys):
            continue
        best = winner(view, keys, as_of, mode, apply_ttl)
        if best is not None:
            result[keys] = best
    return result


def same_value(a: Any, b: Any) -> bool:
    """Exact equality for result checks: NaN equals NaN, NULL equals NULL only, instants compare."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, datetime) and isinstance(b, datetime):
        return instant(a) == instant(b)
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if (
        isinstance(a, float) != isinstance(b, float)
        and isinstance(a, int | float)
        and isinstance(b, int | float)
    ):
        return False  # an int64 must come back as an int, exactly
    return a == b


# --- loading reference data into the engines (test support, not part of the reference) ---------

# column types in DuckDB spelling -> PostgreSQL. Text columns get a locale (ICU) collation on
# PostgreSQL, as production databases have, so that a missing COLLATE "C" pin shows up as a failure.
PG_TYPES = {
    "BIGINT": "bigint",
    "INTEGER": "integer",
    "DOUBLE": "double precision",
    "VARCHAR": 'text COLLATE "und-x-icu"',
    "TIMESTAMP": "timestamp",
    "TIMESTAMPTZ": "timestamptz",
    "BOOLEAN": "boolean",
}


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def load_duckdb(
    con: Any, table: str, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]]
) -> None:
    """Create and fill a DuckDB table through Arrow (NULL and NaN stay distinct, int64 exact)."""
    import pyarrow as pa

    arrow_types = {
        "BIGINT": pa.int64(),
        "INTEGER": pa.int32(),
        "DOUBLE": pa.float64(),
        "VARCHAR": pa.string(),
        "TIMESTAMP": pa.timestamp("us"),
        "TIMESTAMPTZ": pa.timestamp("us", tz="UTC"),
        "BOOLEAN": pa.bool_(),
    }
    arrays = {}
    for j, (name, dtype) in enumerate(columns):
        values = [r[j] for r in rows]
        if dtype == "TIMESTAMP":
            values = [None if v is None else instant(v).replace(tzinfo=None) for v in values]
        arrays[name] = pa.array(values, type=arrow_types[dtype], from_pandas=False)
    data = pa.table(arrays) if columns else pa.table({})
    cols = ", ".join(f"{quote(n)}::{t} AS {quote(n)}" for n, t in columns)
    con.register("__fsql_load", data)
    try:
        con.execute(f"CREATE OR REPLACE TABLE {quote(table)} AS SELECT {cols} FROM __fsql_load")
    finally:
        con.unregister("__fsql_load")


def load_postgres(
    con: Any, table: str, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]]
) -> None:
    """Create and fill a PostgreSQL table with COPY (in the connection's search_path schema)."""
    cols = ", ".join(f"{quote(n)} {PG_TYPES[t]}" for n, t in columns)
    con.execute(f"DROP TABLE IF EXISTS {quote(table)}")
    con.execute(f"CREATE TABLE {quote(table)} ({cols})")
    names = ", ".join(quote(n) for n, _ in columns)
    with con.cursor() as cur, cur.copy(f"COPY {quote(table)} ({names}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row([_pg_value(v, t) for v, (_, t) in zip(row, columns, strict=True)])


def _pg_value(value: Any, dtype: str) -> Any:
    if value is None:
        return None
    if dtype == "TIMESTAMP":
        return instant(value).replace(tzinfo=None)
    if dtype == "TIMESTAMPTZ":
        return instant(value)
    return value


def rows_mismatch(expected: Sequence[Sequence[Any]], actual: Sequence[Sequence[Any]]) -> str | None:
    """None when equal row by row (order included), else a short description of the first difference."""
    if len(expected) != len(actual):
        return f"expected {len(expected)} rows, got {len(actual)}"
    for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
        if len(e) != len(a) or not all(same_value(x, y) for x, y in zip(e, a, strict=True)):
            return f"row {i}: expected {tuple(e)!r}, got {tuple(a)!r}"
    return None


# --- derived known time (DESIGN.md section 3, rule 3 for derived rows) ---------------------------
#
# A derived row is known when every input row behind it is known. Each helper below evaluates one
# relational step over plain Python rows, carrying the known time in the row under KNOWN; the tests
# compose them to mirror a view's SQL. No SQL, no cleverness.

KNOWN = "__known"


def latest_instant(*values: datetime | None) -> datetime | None:
    """The greatest non-NULL instant, NULL when there is none."""
    present = [instant(v) for v in values if v is not None]
    return max(present) if present else None


def known_scan(rows: Sequence[Row], known_at: str | None, event_ts: str | None) -> list[Row]:
    """A source or upstream view: each row is known at its load column, else at its event time."""
    out = []
    for row in rows:
        value = row.get(known_at) if known_at else None
        if value is None and event_ts:
            value = row.get(event_ts)
        out.append({**row, KNOWN: instant(value)})
    return out


def null_last(value: Any) -> tuple:
    """Sort key for ascending order with NULL last (the default of DuckDB and PostgreSQL)."""
    return (1, 0) if value is None else (0, value)


@dataclass(frozen=True)
class RefFrame:
    """A window frame. ``kind`` ROWS: offsets are row counts; RANGE: offsets are added to the single
    order value. Negative = PRECEDING, positive = FOLLOWING, 0 = CURRENT ROW, None = UNBOUNDED."""

    kind: str
    start: Any
    end: Any


def frame_members(part: Sequence[Row], i: int, order: Sequence[str], frame: RefFrame | None) -> list[Row]:
    """The rows of sorted partition ``part`` in the frame of its row ``i`` (None: the whole partition)."""
    if frame is None:
        return list(part)
    if frame.kind == "ROWS":
        lo = 0 if frame.start is None else max(0, i + frame.start)
        hi = len(part) - 1 if frame.end is None else min(len(part) - 1, i + frame.end)
        return list(part[lo : hi + 1])
    # RANGE: CURRENT ROW bounds take the current row's peers (equal on every order column);
    # offsets are added to the single order value
    here = tuple(null_last(part[i][c]) for c in order)
    members = []
    for row in part:
        value = tuple(null_last(row[c]) for c in order)
        if frame.start is None:
            after_start = True
        elif frame.start == 0:
            after_start = value >= here
        else:
            after_start = row[order[0]] >= part[i][order[0]] + frame.start
        if frame.end is None:
            before_end = True
        elif frame.end == 0:
            before_end = value <= here
        else:
            before_end = row[order[0]] <= part[i][order[0]] + frame.end
        if after_start and before_end:
            members.append(row)
    return members


@dataclass(frozen=True)
class RefWindow:
    """One window function: its order, frame, and ``value(frame_rows, sorted_partition, index)``."""

    name: str
    order: tuple[str, ...]
    frame: RefFrame | None
    value: Any


def known_window(rows: Sequence[Row], partition: Sequence[str], windows: Sequence[RefWindow]) -> list[Row]:
    """Each row with its window values; known at the latest of itself and every frame it reads."""
    groups: dict[tuple, list[int]] = {}
    for index, row in enumerate(rows):
        groups.setdefault(tuple(row[c] for c in partition), []).append(index)
    out = [{**row} for row in rows]
    for members in groups.values():
        for window in windows:
            part = sorted(members, key=lambda j: tuple(null_last(rows[j][c]) for c in window.order))
            sorted_rows = [rows[j] for j in part]
            for i, j in enumerate(part):
                frame = frame_members(sorted_rows, i, window.order, window.frame)
                out[j][window.name] = window.value(frame, sorted_rows, i)
                out[j][KNOWN] = latest_instant(out[j][KNOWN], *(m[KNOWN] for m in frame))
    return out


def known_group(rows: Sequence[Row], keys: Sequence[str], values: dict[str, Any]) -> list[Row]:
    """GROUP BY ``keys``: ``values`` maps an output name to ``f(group_rows)``; known at the group's latest."""
    groups: dict[tuple, list[Row]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    out = []
    for key, members in groups.items():
        new = dict(zip(keys, key, strict=True))
        new.update({name: f(members) for name, f in values.items()})
        new[KNOWN] = latest_instant(*(m[KNOWN] for m in members))
        out.append(new)
    return out


def known_join(
    left: Sequence[Row], right: Sequence[Row], on: Any, *, outer: bool, right_prefix: str,
    right_columns: Sequence[str],
) -> list[Row]:
    """[LEFT] JOIN on ``on(l, r)``; right columns renamed ``right_prefix + name``; a matched pair is
    known at the later of its two rows, an unmatched left row at its own time."""
    out = []
    for lrow in left:
        matched = [r for r in right if on(lrow, r)]
        for rrow in matched:
            new = {**lrow, **{right_prefix + k: v for k, v in rrow.items() if k != KNOWN}}
            new[KNOWN] = latest_instant(lrow[KNOWN], rrow[KNOWN])
            out.append(new)
        if outer and not matched:
            new = {**lrow, **{right_prefix + k: None for k in right_columns}}
            out.append(new)
    return out


def known_asof_left(
    left: Sequence[Row], right: Sequence[Row], keys: Sequence[tuple[str, str]], times: tuple[str, str],
    right_prefix: str, right_columns: Sequence[str],
) -> list[Row]:
    """ASOF LEFT JOIN: the right row with the latest time at or before the left time (right rows
    unique per key and time here); known at the later of the pair."""
    out = []
    lt, rt = times
    for lrow in left:
        candidates = [
            r for r in right
            if keys_equal([lrow[a] for a, _ in keys], [r[b] for _, b in keys])
            and lrow[lt] is not None and r[rt] is not None and instant(r[rt]) <= instant(lrow[lt])
        ]
        best = max(candidates, key=lambda r: instant(r[rt])) if candidates else None
        new = {**lrow, **{right_prefix + k: (None if best is None else best[k]) for k in right_columns}}
        new[KNOWN] = latest_instant(lrow[KNOWN], None if best is None else best[KNOWN])
        out.append(new)
    return out
