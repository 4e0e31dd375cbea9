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

from fsql.definitions import Column, FeatureView, ViewShape
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
        out[column.name] = stats
    histograms = _histograms(engine, source, [(c, out[c.name]["min"], out[c.name]["max"]) for c in columns
                                              if out[c.name]["numeric"]], bins)
    for column in columns:
        if out[column.name]["numeric"]:
            out[column.name]["histogram"] = histograms.get(column.name)
    return out


def _histograms(engine: Engine, source: exp.Expression, ranges: Sequence[tuple[Column, Any, Any]], bins: int
                ) -> dict[str, dict[str, Any] | None]:
    """Counts in ``bins`` equal-width bins over [low, high] per column (the maximum falls in the last bin).

    One query for every column: the relation is often a point-in-time view of a whole history, so
    evaluating it once per feature made statistics the bulk of a materialization. Each row is paired
    with the index of every binned column, and the pair's bucket is grouped."""
    out: dict[str, dict[str, Any] | None] = {}
    binned: list[tuple[int, Column, float, float]] = []
    for column, low, high in ranges:
        if low is None or high is None:
            out[column.name] = None
        elif high == low:
            out[column.name] = {"edges": [low, high], "counts": None}
        else:
            binned.append((len(binned), column, float(low), float(high)))
    if not binned:
        return out
    index = exp.column("i", "__fsql_f")
    buckets, inside = exp.Case(this=index.copy()), exp.Case(this=index.copy())
    for i, column, low, high in binned:
        value = _number(exp.column(column.name, "__fsql_r", quoted=True), column.dtype)
        offset = exp.Div(this=exp.paren(exp.Sub(this=value.copy(), expression=exp.Literal.number(repr(low)))),
                         expression=exp.Literal.number(repr((high - low) / bins)))
        buckets = buckets.when(exp.Literal.number(i), exp.Least(
            this=exp.cast(exp.Floor(this=offset), exp.DataType.build("int")),
            expressions=[exp.Literal.number(bins - 1)]))
        inside = inside.when(exp.Literal.number(i), exp.and_(
            exp.GTE(this=value.copy(), expression=exp.Literal.number(repr(low))),
            exp.LTE(this=value.copy(), expression=exp.Literal.number(repr(high)))))
    indices = exp.values([(exp.Literal.number(i),) for i, *_ in binned], alias="__fsql_f", columns=["i"])
    rows = source.copy()
    rows.set("alias", exp.TableAlias(this=exp.to_identifier("__fsql_r")))
    query = (exp.select(exp.alias_(index.copy(), "i"), exp.alias_(buckets, "b"),
                        exp.alias_(exp.Count(this=exp.Star()), "n"))
             .from_(rows).join(indices, join_type="cross").where(inside)
             .group_by(exp.column("i"), exp.column("b")))
    counts = {i: [0] * bins for i, *_ in binned}
    for r in engine.arrow(query.sql(dialect=engine.dialect)).to_pylist():
        counts[int(r["i"])][min(max(int(r["b"]), 0), bins - 1)] += int(r["n"])
    for i, column, low, high in binned:
        width = (high - low) / bins
        out[column.name] = {"edges": [low + width * k for k in range(bins)] + [high], "counts": counts[i]}
    return out


def _percentile(value: exp.Expression, q: float, dialect: str) -> exp.Expression:
    """The exact, interpolated percentile. Spark's PERCENTILE_CONT takes one argument (sqlglot writes
    two) and its WITHIN GROUP form becomes PERCENTILE_APPROX, so Spark gets its exact PERCENTILE."""
    if dialect == "spark":
        return exp.Anonymous(this="PERCENTILE", expressions=[value.copy(), exp.Literal.number(q)])
    return exp.PercentileCont(this=value.copy(), expression=exp.Literal.number(q))


def view_shape(engine: Engine, relation: exp.Expression, view: FeatureView) -> ViewShape:
    """The shape of the history in ``relation`` (a view's rows): one GROUP BY per entity, then one row.

    What the PIT plan choice reads: how many rows a TTL window holds per entity, on average and at
    the tail. Rows with a NULL key or event time never join a spine, so they are left out."""
    keys = [exp.column(k, quoted=True) for k in view.entity_keys]
    ts = exp.column(view.timestamp, quoted=True)
    present = exp.and_(*(exp.Not(this=exp.Is(this=c.copy(), expression=exp.Null())) for c in [*keys, ts]))
    per_entity = (
        exp.select(
            exp.alias_(exp.Count(this=exp.Star()), "n"),
            exp.alias_(exp.Count(this=exp.Distinct(expressions=[ts.copy()])), "d"),
            exp.alias_(exp.Min(this=ts.copy()), "lo"),
            exp.alias_(exp.Max(this=ts.copy()), "hi"),
        )
        .from_(relation.copy())
        .where(present)
        .group_by(*keys)
    )
    n = exp.column("n", "__fsql_e")
    query = exp.select(
        exp.alias_(exp.Sum(this=n.copy()), "rows"),
        exp.alias_(exp.Count(this=exp.Star()), "entities"),
        exp.alias_(exp.Avg(this=_number(n.copy(), "BIGINT")), "mean"),
        exp.alias_(_percentile(_number(n.copy(), "BIGINT"), 0.99, engine.dialect), "p99"),
        exp.alias_(exp.Sum(this=exp.column("d", "__fsql_e")), "distinct_times"),
        exp.alias_(exp.Min(this=exp.column("lo", "__fsql_e")), "lo"),
        exp.alias_(exp.Max(this=exp.column("hi", "__fsql_e")), "hi"),
    ).from_(per_entity.subquery("__fsql_e"))
    row = engine.arrow(query.sql(dialect=engine.dialect)).to_pylist()[0]
    rows = int(row["rows"] or 0)
    span = (row["hi"] - row["lo"]).total_seconds() if row["lo"] is not None and row["hi"] is not None else 0.0
    return ViewShape(
        rows=rows,
        entities=int(row["entities"] or 0),
        events_mean=float(row["mean"] or 0.0),
        events_p99=float(row["p99"] or 0.0),
        span_seconds=float(span),
        tie_share=1 - int(row["distinct_times"] or 0) / rows if rows else 0.0,
    )
