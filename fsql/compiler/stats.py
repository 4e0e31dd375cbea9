"""The rows statistics describe, as a relation: a view's history as known at a time, or the latest row
per entity at a time (what materialization serves online)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from sqlglot import exp

from fsql.compiler import pit

StatsScope = Literal["history", "latest"]
ALIAS = "__fsql_rows"


def timestamp_literal(at: datetime) -> exp.Expression:
    """An aware datetime as a timestamptz literal (the value is a datetime, never user text)."""
    return exp.cast(exp.Literal.string(at.isoformat()), exp.DataType.build("timestamptz"))


def stats_relation(view: pit.PitView, table: exp.Expression, scope: StatsScope, at: datetime, *,
                   dialect: str) -> exp.Expression:
    """``history``: every row of ``table`` (the view) eligible by ``at``; ``latest``: the row per entity
    a read at ``at`` would see, TTL not applied (as materialization writes it)."""
    stamp = timestamp_literal(at)
    if scope == "history":
        eligible = pit.eligible_time(view)
        query: exp.Query = exp.select("*").from_(table.copy()).where(exp.LTE(this=eligible, expression=stamp))
    else:
        query = pit.latest_per_entity(view, dialect=dialect, as_of=stamp, apply_ttl=False)
    return query.subquery(ALIAS)
