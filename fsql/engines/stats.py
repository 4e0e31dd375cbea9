"""Per-feature statistics computed inside the engine: one aggregate query for the counts, moments and
percentiles of every feature, one small GROUP BY per numeric feature for its fixed-bin histogram.

Nothing but the aggregates leaves the warehouse, so statistics of a billion-row history cost two scans
of it, never a transfer. Distinct counts are approximate where the engine has a sketch (DuckDB's
HyperLogLog) and exact elsewhere; ``distinct_exact`` says which.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlglot import exp

from fsql.definitions import Column, FeatureView
from fsql.engines.base import Engine

HISTOGRAM_BINS = 20
NUMERIC_PREFIXES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
                    "UBIGINT", "FLOAT", "DOUBLE", "REAL", "DECIMAL", "NUMERIC", "BOOLEAN")
APPROX_DISTINCT_DIALECTS = ("duckdb",)
PERCENTILES = (("p1", 0.01), ("p50", 0.5), ("p99", 0.99))


def is_numeric(dtype: str) -> bool:
    return dtype.upper().startswith(NUMERIC_PREFIXES)


def _number(expr: exp.Expression, dtype: str) -> exp.Expression:
    # Booleans average to the share of true; decimals and integers become doubles so that moments
    # and percentiles need no per-type handling.
    if dtype.upper() == "BOOLEAN":
        expr = exp.cast(expr, exp.DataType.build("int"))
    return exp.cast(expr, exp.DataType.build("double"))


def _json(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def feature_stats(
    engine: Engine,
    relation: exp.Expression,
    view: FeatureView,
    *,
    features: Sequence[Column] | None = None,
    bins: int = HISTOGRAM_BINS,
) -> dict[str, dict[str, Any]]:
    """Statistics per feature of the rows of ``relation`` (a table or a subquery with an alias)."""
    dialect = engine.dialect
    columns = list(features if features is not None else view.features)
    source = relation.copy()
    keys = [exp.column(k, quoted=True) for k in view.entity_keys]
    entities = exp.select(exp.alias_(exp.Count(this=exp.Star()), "n")).from_(
        exp.select(*keys).distinct().from_(source.copy()).subquery("__fsql_keys"))
    selects: list[exp.Expression] = [exp.alias_(exp.Count(this=exp.Star()), "rows"),
                                     exp.alias_(entities.subquery(), "entities")]
    approx = dialect in APPROX_DISTINCT_DIALECTS
    for i, column in enumerate(columns):
        col = exp.column(column.name, quoted=True)
        selects.append(exp.alias_(exp.Count(this=col.copy()), f"c{i}_count"))
        distinct = (exp.ApproxDistinct(this=col.copy()) if approx
                    else exp.Count(this=exp.Distinct(expressions=[col.copy()])))
        selects.append(exp.alias_(distinct, f"c{i}_distinct"))
        if is_numeric(column.dtype):
            value = _number(col.copy(), column.dtype)
            selects += [
                exp.alias_(exp.Min(this=value.copy()), f"c{i}_min"),
                exp.alias_(exp.Max(this=value.copy()), f"c{i}_max"),
                exp.alias_(exp.Avg(this=value.copy()), f"c{i}_mean"),
                exp.alias_(exp.StddevSamp(this=value.copy()), f"c{i}_std"),
            ]
            selects += [exp.alias_(_percentile(value, q, dialect), f"c{i}_{label}") for label, q in PERCENTILES]
        else:
            selects += [exp.alias_(exp.Min(this=col.copy()), f"c{i}_min"),
                        exp.alias_(exp.Max(this=col.copy()), f"c{i}_max")]
    row = engine.arrow(exp.select(*selects).from_(source.copy()).sql(dialect=dialect)).to_pylist()[0]
    rows = int(row["rows"] or 0)
    out: dict[str, dict[str, Any]] = {}
    for i, column in enumerate(columns):
        count = int(row[f"c{i}_count"] or 0)
        stats: dict[str, Any] = {
            "dtype": column.dtype,
            "numeric": is_numeric(column.dtype),
            "rows": rows,
            "entities": int(row["entities"] or 0),
            "non_null": count,
            "null_rate": (rows - count) / rows if rows else None,
            "distinct": int(row[f"c{i}_distinct"] or 0),
            "distinct_exact": not approx,
            "min": _json(row[f"c{i}_min"]),
            "max": _json(row[f"c{i}_max"]),
        }
        if stats["numeric"]:
            stats.update({k: _json(row[f"c{i}_{k}"]) for k in ("mean", "std", "p1", "p50", "p99")})
            stats["histogram"] = _histogram(engine, source, column, stats["min"], stats["max"], bins)
        out[column.name] = stats
    return out


def _histogram(engine: Engine, source: exp.Expression, column: Column, low: float | None, high: float | None,
               bins: int) -> dict[str, Any] | None:
    """Counts in ``bins`` equal-width bins over [low, high]; the maximum falls in the last bin."""
    if low is None or high is None:
        return None
    value = _number(exp.column(column.name, quoted=True), column.dtype)
    if high == low:
        return {"edges": [low, high], "counts": None}
    width = (high - low) / bins
    offset = exp.Div(this=exp.paren(exp.Sub(this=value.copy(), expression=exp.Literal.number(repr(low)))),
                     expression=exp.Literal.number(repr(width)))
    bucket = exp.Least(this=exp.cast(exp.Floor(this=offset), exp.DataType.build("int")),
                       expressions=[exp.Literal.number(bins - 1)])
    finite = exp.and_(exp.GTE(this=value.copy(), expression=exp.Literal.number(repr(low))),
                      exp.LTE(this=value.copy(), expression=exp.Literal.number(repr(high))))
    query = (exp.select(exp.alias_(bucket, "b"), exp.alias_(exp.Count(this=exp.Star()), "n"))
             .from_(source.copy()).where(finite).group_by(exp.column("b")))
    counts = [0] * bins
    for r in engine.arrow(query.sql(dialect=engine.dialect)).to_pylist():
        counts[min(max(int(r["b"]), 0), bins - 1)] += int(r["n"])
    return {"edges": [low + width * i for i in range(bins)] + [high], "counts": counts}


def _percentile(value: exp.Expression, q: float, dialect: str) -> exp.Expression:
    """The exact, interpolated percentile. Spark's PERCENTILE_CONT takes one argument (sqlglot writes
    two) and its WITHIN GROUP form becomes PERCENTILE_APPROX, so Spark gets its exact PERCENTILE."""
    if dialect == "spark":
        return exp.Anonymous(this="PERCENTILE", expressions=[value.copy(), exp.Literal.number(q)])
    return exp.PercentileCont(this=value.copy(), expression=exp.Literal.number(q))
