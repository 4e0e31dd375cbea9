"""Routes of the catalog page. Each handler reads the registry through the Store and renders a template."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from fsql.errors import FsqlError, NotFoundError
from fsql.registry.diff import pretty
from fsql.server.catalog.graphics import NodeKey, histogram, lineage_graph
from fsql.store import Store

TEMPLATES = Path(__file__).with_name("templates")


def _env() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["ago"] = _ago
    env.filters["when"] = lambda v: v.strftime("%Y-%m-%d %H:%M UTC") if v else "never"
    env.filters["duration"] = _duration
    env.filters["num"] = _num
    env.filters["pct"] = lambda v: "–" if v is None else f"{v:.1%}"
    env.globals["url"] = url
    env.globals["pretty_sql"] = pretty
    return env


def url(kind: str, name: str, *rest: str) -> str:
    prefix = {"view": "views", "feature_view": "views", "training_set": "sets", "model": "models"}[kind]
    return "/" + "/".join([prefix, quote(name, safe=""), *rest])


def _ago(value: datetime | None, now: datetime | None = None) -> str:
    if value is None:
        return "never"
    seconds = int(((now or datetime.now(UTC)) - value).total_seconds())
    if seconds < 0:
        return "in the future"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'' if n == 1 else 's'} ago"
    return "just now"


def _duration(value: timedelta | None) -> str:
    if value is None:
        return "none"
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _num(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e6 else f"{value:.3e}"
    return str(value)


def _link(key: NodeKey) -> str | None:
    kind, name, _ = key
    return url(kind, name) if kind in ("view", "training_set", "model") else None


def _feature_graph_edges(lineages: list[Any]) -> list[tuple[NodeKey, NodeKey]]:
    """Edges for the picture: columns for sources and views; a training set or model is one box."""

    def node(kind: str, name: str, column: str | None) -> NodeKey:
        return (kind, name, column if kind in ("source", "view") else None)

    pairs: list[tuple[NodeKey, NodeKey]] = []
    for lineage in lineages:
        for e in (*lineage.upstream, *lineage.downstream):
            pairs.append((node(e.upstream_kind, e.upstream_name, e.upstream_column),
                          node(e.downstream_kind, e.downstream_name, e.downstream_column)))
    return pairs


def catalog_app(store: Store) -> Starlette:
    """The catalog as an ASGI app over ``store`` (read-only)."""
    env = _env()

    def page(template: str, status: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("project", store.config.name)
        context.setdefault("query", "")
        return HTMLResponse(env.get_template(template).render(**context), status_code=status)

    def index(request: Request) -> Response:
        return page("index.html", views=store.views(), sets=store.training_set_records(), models=store.models())

    def search(request: Request) -> Response:
        q = request.query_params.get("q", "")
        filters = {k: request.query_params.get(k) or None for k in ("owner", "tag", "entity")}
        hits = store.search_ranked(q, **filters)
        return page("search.html", query=q, filters=filters, hits=hits)

    def view(request: Request) -> Response:
        name = request.path_params["name"]
        record = store.describe(name)
        if not hasattr(record, "entity"):
            raise NotFoundError(f"no feature view named '{name}'")
        revisions = store.revisions(name)
        stored = store.stored_stats(name)
        scope = max(stored, key=lambda s: s.computed_at).scope if stored else None
        stats = {s.feature: s for s in stored if s.scope == scope}
        lineages = [store.feature_lineage(f"{name}.{f.name}") for f in record.features]
        focus = [("view", name, f.name) for f in record.features]
        graph = lineage_graph(_feature_graph_edges(lineages), focus, _link)
        return page("view.html", view=record, revisions=list(reversed(revisions)), stats=stats,
                    stats_scope=scope, histograms={f: histogram(s.stats) for f, s in stats.items()},
                    graph=graph, runs=store.runs(name, limit=10), now=datetime.now(UTC))

    def training_set(request: Request) -> Response:
        name = request.path_params["name"]
        record = store.describe(name)
        if hasattr(record, "entity"):
            raise NotFoundError(f"no training set named '{name}'")
        lineage = store.lineage(name)
        pairs: list[tuple[NodeKey, NodeKey]] = [
            (("view", e.upstream_name, e.upstream_column), ("training_set", name, None))
            for e in lineage.upstream if e.upstream_kind == "view" and e.upstream_column]
        pairs += [(("training_set", name, None), ("model", e.downstream_name, None))
                  for e in lineage.downstream if e.downstream_kind == "model"]
        graph = lineage_graph(pairs, [("training_set", name, None)], _link)
        models = [m for m in store.models() if m.training_set == name]
        return page("set.html", ts=record, revisions=list(reversed(store.revisions(name))), graph=graph,
                    models=models)

    def model(request: Request) -> Response:
        name = request.path_params["name"]
        found = next((m for m in store.models() if m.name == name), None)
        if found is None:
            raise NotFoundError(f"no model named '{name}'")
        ts = store.describe(found.training_set)
        return page("model.html", model=found, ts=ts)

    def diff(request: Request) -> Response:
        name = request.path_params["name"]
        result = store.diff(name, request.query_params.get("old"), request.query_params.get("new"))
        back = url("view" if result.kind == "view" else "training_set", name)
        return page("diff.html", diff=result, back=back)

    async def error(request: Request, exc: Exception) -> Response:
        status = exc.status if isinstance(exc, FsqlError) else 404
        message = str(exc) if isinstance(exc, FsqlError) else "page not found"
        return HTMLResponse(env.get_template("error.html").render(project=store.config.name, query="", status=status,
                                                                  message=message), status_code=status)

    routes = [
        Route("/", index),
        Route("/search", search),
        Route("/views/{name}", view),
        Route("/views/{name}/diff", diff),
        Route("/sets/{name}", training_set),
        Route("/sets/{name}/diff", diff),
        Route("/models/{name}", model),
    ]
    return Starlette(routes=routes, exception_handlers={FsqlError: error, 404: error})
