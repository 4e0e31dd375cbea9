"""Per-dialect capability flags for the compiler.

Dialect differences are data here, not ``if dialect == ...`` branches scattered through the compiler:
the PIT plan, the latest-per-entity plan and the rewrites read these flags and nothing else. Adding
an engine means adding one row to ``_CAPABILITIES`` (and golden fixtures for it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import sqlglot
from sqlglot import exp

from fsql.config import SUPPORTED_DIALECTS
from fsql.errors import CompileError, did_you_mean

# How the PIT join finds the winning row of each spine row (see fsql.compiler.pit):
#   "asof"     native ASOF join on the match time, then an equi-join fetches the winning row;
#   "lateral"  LEFT JOIN LATERAL (... ORDER BY <rule 4> LIMIT 1): one index probe per spine row;
#   "timeline" running MAX over a UNION ALL timeline of view and spine rows, then the equi-join fetch;
#   "range"    range join on keys and event_ts <= t, then ROW_NUMBER per spine row.
PitPlan = Literal["asof", "lateral", "timeline", "range"]
AsofSyntax = Literal["on", "match_condition"]


@dataclass(frozen=True)
class Capabilities:
    """What one SQL dialect can do, as far as the compiler cares."""

    name: str
    # native ASOF join: "on" = DuckDB `ASOF JOIN v ON k = k AND t >= ts`,
    # "match_condition" = Snowflake `ASOF JOIN v MATCH_CONDITION (t >= ts) ON k = k`
    asof: AsofSyntax | None = None
    # LEFT JOIN LATERAL with a correlated ORDER BY ... LIMIT 1 runs as one top-1 probe per outer row
    lateral: bool = False
    qualify: bool = False
    distinct_on: bool = False
    # collation that makes string comparison byte (= code point for UTF-8) order, when the default
    # collation is locale-dependent (PostgreSQL); None when strings already compare by code point
    byte_collation: str | None = None
    # NaN sorts below every number (BigQuery); elsewhere NaN sorts above +Infinity
    nan_sorts_first: bool = False
    # CREATE INDEX ... INCLUDE (...) for covering indexes
    index_include: bool = False
    # the engine benefits from an index on (keys, event_ts) for the persisted history
    indexes: bool = False
    # WITH x AS MATERIALIZED (...): the spine is numbered once and features are keyed by that number
    # (cheaper than keying them by distinct (keys, t) and joining back on those)
    materialized_cte: bool = False
    # the window operator is slow on many one-row partitions (DuckDB: ~0.2 s per 100k probes), so the
    # tie-break window only runs on probes with more than one row at the winning time
    split_ties: bool = False
    # the ASOF plan passes the spine rows themselves through the joins (see pit._asof_carry) instead
    # of probing distinct points and joining back: faster on DuckDB, needs materialized_cte
    asof_carry_spine: bool = False
    # a function numbering rows in scan order, for dialects whose ROW_NUMBER() needs an ORDER BY
    # (Spark): the spine's row number only orders the output, so any increasing id will do
    scan_order_id: str | None = None
    # the timeline plan carries each view's winning row in the window itself, as a running MAX of a
    # struct of the tie-order columns, and passes the spine rows through it (pit._timeline_carry).
    # Needs struct comparison in the rule-4 order: field by field, NULL lowest, NaN above +Infinity,
    # strings in byte order (so neither byte_collation nor nan_sorts_first)
    row_max_timeline: bool = False
    # plan for an unindexed history, and for a history persisted as a table with `offline_index`
    pit_plan: PitPlan = "timeline"
    pit_plan_indexed: PitPlan = "timeline"


_CAPABILITIES: dict[str, Capabilities] = {
    c.name: c
    for c in (
        # DuckDB: native ASOF is a sort-merge over both sides, the fastest plan (bench/pit.py).
        Capabilities(
            name="duckdb",
            asof="on",
            lateral=True,
            qualify=True,
            distinct_on=True,
            materialized_cte=True,
            split_ties=True,
            asof_carry_spine=True,
            pit_plan="asof",
            pit_plan_indexed="asof",
        ),
        # PostgreSQL: with the covering index from `offline_index`, one LATERAL top-1 index probe per
        # spine row beats sorting the whole history; without an index, LATERAL is a scan per spine row,
        # so the timeline plan (one sort) is the safe default. Figures in fsql/compiler/pit.py.
        Capabilities(
            name="postgres",
            lateral=True,
            distinct_on=True,
            byte_collation="C",
            materialized_cte=True,
            index_include=True,
            indexes=True,
            pit_plan="timeline",
            pit_plan_indexed="lateral",
        ),
        Capabilities(name="redshift"),
        Capabilities(
            name="snowflake",
            asof="match_condition",
            qualify=True,
            pit_plan="asof",
            pit_plan_indexed="asof",
        ),
        Capabilities(name="bigquery", qualify=True, nan_sorts_first=True),
        Capabilities(name="databricks", qualify=True),
        # Spark: no ASOF, no LATERAL; the timeline plan carries the winning row in its window: one
        # shuffle and sort of history + spine per group of views sharing spine keys (bench/pit.py
        # --engine spark).
        Capabilities(name="spark", scan_order_id="MONOTONICALLY_INCREASING_ID", row_max_timeline=True),
        Capabilities(name="trino"),
        Capabilities(name="presto"),
        Capabilities(name="athena"),
    )
}

if set(_CAPABILITIES) != set(SUPPORTED_DIALECTS):  # pragma: no cover - a programming error
    raise ImportError("fsql.config.SUPPORTED_DIALECTS and the compiler's capability rows disagree")


def capabilities(dialect: str) -> Capabilities:
    """The capability flags of a dialect, or CompileError naming the supported ones."""
    caps = _CAPABILITIES.get(dialect.lower())
    if caps is None:
        hint = did_you_mean(dialect.lower(), SUPPORTED_DIALECTS) or (
            f"supported dialects: {', '.join(SUPPORTED_DIALECTS)}"
        )
        raise CompileError(f"dialect '{dialect}' is not supported by the fsql compiler", hint=hint)
    return caps


# --- column types ------------------------------------------------------------------------------
# Types arrive in DuckDB spelling (fsql.definitions.Column.dtype) but any common spelling works.

_TEXT = re.compile(r"^\s*(VARCHAR|TEXT|STRING|CHAR|CHARACTER|BPCHAR|NVARCHAR|NCHAR)\b", re.I)
_FLOAT = re.compile(r"^\s*(DOUBLE|FLOAT|FLOAT4|FLOAT8|FLOAT64|REAL)\b", re.I)


def is_text_type(dtype: str | None) -> bool | None:
    """True/False for a known type, None when the type is unknown."""
    if dtype is None:
        return None
    return bool(_TEXT.match(dtype))


def is_float_type(dtype: str | None) -> bool | None:
    """True/False for a known type, None when the type is unknown."""
    if dtype is None:
        return None
    return bool(_FLOAT.match(dtype))


# --- sort keys ---------------------------------------------------------------------------------


def value_sort_keys(value: exp.Expression, dtype: str | None, caps: Capabilities) -> list[exp.Ordered]:
    """Sort keys ordering ``value`` greatest first, identically on every engine.

    The documented order (rule 4 tie-break): NULL lowest, NaN above +Infinity, strings by byte
    (UTF-8 code point) order. Engines disagree on the last two, so each difference is a flag:
    PostgreSQL compares text by the database's locale collation (pinned to "C" here), and BigQuery
    sorts NaN below every number (so floats get an ``IS_NAN`` key first).
    """
    keys: list[exp.Ordered] = []
    text = is_text_type(dtype)
    if caps.byte_collation is not None:
        if text:
            value = exp.Collate(this=value, expression=exp.to_identifier(caps.byte_collation, quoted=True))
        elif text is None:
            # Unknown type: COLLATE would fail on a non-text column, so add a byte-order key that is
            # NULL unless the value is text; then the plain value orders everything else.
            keys.append(_desc(_pg_text_key(value, caps.byte_collation)))
    if caps.nan_sorts_first and is_float_type(dtype):
        keys.append(_desc(exp.func("IS_NAN", value.copy())))
    keys.append(_desc(value))
    return keys


def natural_order(value: exp.Expression, caps: Capabilities, *, desc: bool = False) -> exp.Ordered:
    """Sort ``value`` with the dialect's default NULL placement, for values that are never NULL.

    Spelling no NULLS FIRST/LAST keeps the SQL short, keeps a PostgreSQL index usable (a backward
    scan of an ascending index yields ``DESC NULLS FIRST``, PostgreSQL's default for DESC), and
    avoids clauses some engines reject inside window functions (BigQuery).
    """
    ordering = sqlglot.Dialect.get_or_raise(caps.name).NULL_ORDERING
    if ordering == "nulls_are_small":
        nulls_first = not desc
    elif ordering == "nulls_are_large":
        nulls_first = desc
    else:
        nulls_first = False
    return exp.Ordered(this=value, desc=desc or None, nulls_first=nulls_first)


def _pg_text_key(value: exp.Expression, collation: str) -> exp.Expression:
    text_types = ("text", "character varying", "character", "name")
    regtype = exp.DataType.build("regtype", dialect="postgres")
    is_text = exp.In(
        this=exp.Anonymous(this="pg_typeof", expressions=[value.copy()]),
        expressions=[exp.cast(exp.Literal.string(t), regtype.copy()) for t in text_types],
    )
    as_text = exp.Collate(
        this=exp.cast(value.copy(), exp.DataType.build("text")),
        expression=exp.to_identifier(collation, quoted=True),
    )
    return exp.Case(ifs=[exp.If(this=is_text, true=as_text)])


def _desc(value: exp.Expression) -> exp.Ordered:
    """``value DESC NULLS LAST``: greatest first, NULL lowest (sqlglot spells NULLS LAST where needed)."""
    return exp.Ordered(this=value, desc=True, nulls_first=False)
