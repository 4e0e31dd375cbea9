"""`fsql stats`: per-feature statistics of a view computed in the engine and stored in the registry
with the view version and the time they describe, so the catalog page never queries the warehouse."""

from __future__ import annotations

from datetime import UTC, datetime

from fsql.compiler.stats import StatsScope, stats_relation
from fsql.definitions import as_utc
from fsql.engines import view_table
from fsql.engines.stats import feature_stats
from fsql.errors import NotFoundError, RequestError, did_you_mean
from fsql.registry import StatsRecord
from fsql.service.context import Context

__all__ = ["StatsScope", "compute_stats"]


def compute_stats(ctx: Context, name: str, *, at: datetime | None = None, scope: StatsScope = "history"
                  ) -> list[StatsRecord]:
    """Compute, store and return the statistics of view ``name`` as of ``at`` (default now)."""
    if scope not in ("history", "latest"):
        raise RequestError(f"unknown statistics scope '{scope}'", hint="use 'history' or 'latest'")
    views = ctx.definitions().require_built().views
    view = views.get(name)
    if view is None:
        raise NotFoundError(f"no feature view named '{name}'", hint=did_you_mean(name, views) or "run `fsql ls`")
    when = as_utc(at) if at else datetime.now(UTC)
    engine = ctx.engine
    relation = stats_relation(ctx.pit_view(view), view_table(ctx.config.warehouse.schema, view.name), scope, when,
                              dialect=engine.dialect)
    ctx.registry.save_stats(view.name, view.version, scope, when, feature_stats(engine, relation, view))
    return ctx.registry.stats(view.name, view.version, scope)
