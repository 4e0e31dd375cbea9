"""The HTTP server: Starlette routes over a serving state loaded from the registry.

A ``Serving`` (online reader with its plan, models bound to their training sets, one micro-batcher per
model) is loaded at start, off the request path, and replaced whole when the registry version moves or on
SIGHUP; a request keeps the state it started with, so a reload drops nothing. No route opens the
warehouse, queries the registry or parses SQL.

``/`` is left free: ``create_app(root_app=...)`` (or ``mount_root``) mounts an ASGI app there, such as
the catalog page.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import logging
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import polars as pl
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp

from fsql.config import REQUEST_TYPES, Config
from fsql.definitions import Model, output_names
from fsql.errors import (
    FsqlError,
    NotBuiltError,
    NotFoundError,
    OnlineStoreError,
    RequestError,
    UnavailableError,
    did_you_mean,
)
from fsql.models import LoadedModel, load_model, request_values
from fsql.registry import model_fingerprint
from fsql.server.auth import ApiKeys
from fsql.server.batching import MicroBatcher
from fsql.server.errors import JSON, BodyTooLargeError, error_response, fsql_error, http_error, unexpected
from fsql.server.logs import FeatureLog
from fsql.server.metrics import Metrics
from fsql.server.openapi import SPEC
from fsql.service.context import Context
from fsql.service.online import STATUS_SUFFIX, FeatureReader, OnlineResult, ServingPlan, entity_key
from fsql.service.predict import FEATURES_LOG, LOG_DIR, PREDICTION, SERVED_AT, set_columns

log = logging.getLogger("fsql.server")
_POLARS_TYPES = {"float": pl.Float64(), "integer": pl.Int64(), "string": pl.String(), "boolean": pl.Boolean()}
Handler = Callable[[Request], Awaitable[Response]]


@dataclass
class Entities:
    columns: dict[str, list[Any]]
    count: int
    fields: dict[str, list[Any]] = field(default_factory=dict)  # a model's request-time fields


@dataclass
class Binding:
    """A model ready to serve: what to read, in which order to feed it, how to batch it."""

    model: Model
    loaded: LoadedModel
    refs: list[str]  # view.feature, the training set's features
    online: dict[str, str]  # model input (training-set column) -> online result column
    keys: dict[str, str]  # entity key -> recorded type
    reader: FeatureReader  # with the plan of the state this binding belongs to
    version: str  # the registered model's version, as `fsql ls` shows it
    batcher: MicroBatcher[Entities, dict[str, Any]] | None = None


@dataclass
class Serving:
    version: str
    reader: FeatureReader
    plan: ServingPlan
    models: dict[str, Binding]
    loaded_at: float


class FsqlServer:
    """The process-wide state behind the routes."""

    def __init__(self, root: str | Path = ".", overrides: dict[str, dict[str, Any]] | None = None, *,
                 batching: bool = True, log_features: bool | None = None,
                 log_feature_requests: bool | None = None, freeze_gc: bool = False) -> None:
        self.ctx = Context.open(root, overrides)
        self.settings = self.ctx.config.server
        self.batching = batching
        self.log_features = self.settings.log_features if log_features is None else log_features
        self.log_feature_requests = (self.settings.log_feature_requests if log_feature_requests is None
                                     else log_feature_requests)
        self.metrics = Metrics()
        self.freeze_gc = freeze_gc
        self.keys = ApiKeys(self.settings.api_key_env)
        self.serving: Serving | None = None
        self.feature_log: FeatureLog | None = None
        self._poller: asyncio.Task[None] | None = None
        self._reload_lock = asyncio.Lock()
        self._load_error: str | None = None

    @property
    def config(self) -> Config:
        return self.ctx.config

    # Loading -----------------------------------------------------------------------------------------
    def _load(self, version: str) -> Serving:
        """A complete serving state (runs in a thread: registry reads, model files)."""
        reader = FeatureReader(self.ctx.registry, self.ctx.online_store, max_age=float("inf"))
        plan = reader.reload()
        if not plan.views:
            raise NotBuiltError("the registry holds no feature views", hint="run `fsql build`")
        models = {}
        for name, model in self.ctx.registry.snapshot().model_definitions.items():
            training_set = plan.training_sets.get(model.training_set)
            if training_set is None or not model.inputs:
                continue
            by_ref = set_columns(training_set)
            keys = {k: plan.views[ref.view].column(k).dtype  # type: ignore[union-attr]
                    for ref in training_set.features for k in plan.views[ref.view].entity_keys}
            # The reader names columns by the same rule as the training set, with the keys as the spine.
            online_names = output_names(plan.refs(model.training_set), list(keys))
            models[name] = Binding(model, load_model(model, self.config.root), [str(r) for r in training_set.features],
                                   {by_ref[str(r)]: online_names[r] for r in training_set.features}, keys, reader,
                                   model_fingerprint(model)[:12])
        return Serving(version, reader, plan, models, time.time())

    async def reload(self, *, force: bool = False) -> bool:
        """Load a new state if the registry changed (or ``force``); True when a new state is in place."""
        async with self._reload_lock:
            try:
                version = await asyncio.to_thread(self.ctx.registry.version)
                if not force and self.serving is not None and self.serving.version == version:
                    return False
                serving = await asyncio.to_thread(self._load, version)
            except FsqlError as e:
                self._load_error = str(e)
                if self.serving is None:
                    log.warning("no serving plan loaded: %s", e)
                else:
                    log.warning("keeping the current serving plan: %s", e)
                return False
            for binding in serving.models.values():
                binding.batcher = self._batcher(binding)
            old, self.serving, self._load_error = self.serving, serving, None
            self.metrics.reloads.inc()
            if self.freeze_gc:
                self._freeze_gc()
            self.metrics.plan_version.set(1)
            if old is not None:
                for binding in old.models.values():
                    if binding.batcher is not None:
                        asyncio.get_running_loop().create_task(binding.batcher.close())
            return True

    def _freeze_gc(self) -> None:
        """Move what is loaded (modules, the serving plan, models) out of the cyclic collector's reach.

        A server process holds a few hundred thousand long-lived objects; a full collection walks all
        of them and took 100-250 ms here, which set the p99 latency. Frozen, a full collection only
        walks what requests allocate. The old plan's cycles are collected first, once per reload.
        """
        gc.unfreeze()
        gc.collect()
        gc.freeze()

    def _batcher(self, binding: Binding) -> MicroBatcher[Entities, dict[str, Any]] | None:
        if not self.batching:
            return None
        histogram = self.metrics.batch_size.labels(binding.model.name)
        return MicroBatcher(lambda items: self._score(binding, items), max_batch=binding.model.max_batch,
                            max_wait_ms=binding.model.max_wait_ms, on_batch=histogram.observe)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reload_poll_s)
            try:
                await self.reload()
            except FsqlError as e:  # the registry is briefly unreachable: keep serving, try again
                log.warning("registry version poll failed: %s", e)

    async def start(self) -> None:
        self.feature_log = FeatureLog(self.config.root / LOG_DIR, capacity=self.settings.log_queue,
                                      schema=self._log_schema,
                                      on_drop=lambda m, n: self.metrics.log_dropped.labels(m).inc(n),
                                      on_write=lambda m, n: self.metrics.log_written.labels(m).inc(n)) \
            if self.log_features or self.log_feature_requests else None
        await self.reload(force=True)
        self._poller = asyncio.get_running_loop().create_task(self._poll())
        if threading.current_thread() is threading.main_thread():
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                asyncio.get_running_loop().add_signal_handler(
                    signal.SIGHUP, lambda: asyncio.get_running_loop().create_task(self.reload(force=True)))

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        if self.serving is not None:
            for binding in self.serving.models.values():
                if binding.batcher is not None:
                    await binding.batcher.close()
        if self.feature_log is not None:
            await asyncio.to_thread(self.feature_log.close)
        self.ctx.close()

    def current(self) -> Serving:
        if self.serving is None:
            raise UnavailableError("no serving plan is loaded" + (f": {self._load_error}" if self._load_error else ""),
                                   hint="run `fsql build` (the server picks it up by itself)")
        return self.serving

    # Scoring -----------------------------------------------------------------------------------------
    def _score(self, binding: Binding, items: list[Entities]) -> list[dict[str, Any]]:
        """One online read and one model call for every request of a batch."""
        merged: dict[str, list[Any]] = {k: [] for k in binding.keys}
        sent: dict[str, list[Any]] = {f.name: [] for f in binding.model.request_fields}
        for item in items:
            for key in binding.keys:
                merged[key].extend(item.columns[key])
            for name in sent:
                sent[name].extend(item.fields[name])
        now = datetime.now(UTC)
        try:
            result = binding.reader.read(binding.refs, merged, now=now)
        except OnlineStoreError:
            self.metrics.online_errors.inc()
            raise
        inputs = binding.model.feature_inputs
        values = {name: result.columns[binding.online[name]] for name in inputs}
        statuses = {name: result.columns[binding.online[name] + STATUS_SUFFIX] for name in inputs}
        began = time.perf_counter()
        predictions = binding.loaded.predict(binding.model.inputs, {**values, **sent}) if result.count else []
        self.metrics.model_latency.labels(binding.model.name).observe(time.perf_counter() - began)
        if self.feature_log is not None and self.log_features and result.count:
            row = {SERVED_AT: [now] * result.count, **merged, **sent, **values,
                   **{f"{n}{STATUS_SUFFIX}": s for n, s in statuses.items()}, PREDICTION: predictions}
            self.feature_log.offer(binding.model.name, row, result.count)
        out, start = [], 0
        for item in items:
            end = start + item.count
            answer = {"predictions": predictions[start:end],
                      "features": {n: v[start:end] for n, v in values.items()},
                      "statuses": {n: s[start:end] for n, s in statuses.items()}}
            if sent:
                answer["request_fields"] = item.fields
            out.append(answer)
            start = end
        return out

    def log_read(self, result: OnlineResult, now: datetime) -> None:
        """Log what a /v1/features request served (its rows carry their own types: requests differ)."""
        assert self.feature_log is not None
        schema: dict[str, pl.DataType] = {SERVED_AT: pl.Datetime("us", "UTC")}
        for name in result.columns:
            schema[name] = result.dtypes.get(name) or pl.String()
        self.feature_log.offer(FEATURES_LOG, {SERVED_AT: [now] * result.count, **result.columns}, result.count,
                               schema)

    def _log_schema(self, model: str) -> Mapping[str, pl.DataType]:
        serving = self.serving
        if serving is None or model not in serving.models:
            return {}
        binding = serving.models[model]
        plan = serving.plan
        schema: dict[str, pl.DataType] = {SERVED_AT: pl.Datetime("us", "UTC"), PREDICTION: pl.Float64()}
        for ref in binding.refs:
            view, feature = ref.split(".", 1)
            for key in plan.views[view].entity_keys:
                schema[key] = plan.dtypes[(view, key)]
        by_ref = {v: k for k, v in set_columns(plan.training_sets[binding.model.training_set]).items()}
        for request_field in binding.model.request_fields:
            schema[request_field.name] = _POLARS_TYPES[REQUEST_TYPES[request_field.dtype]]
        for name in binding.model.feature_inputs:
            view, feature = by_ref[name].split(".", 1)
            schema[name] = plan.dtypes[(view, feature)]
            schema[f"{name}{STATUS_SUFFIX}"] = pl.String()
        return schema


# Requests ----------------------------------------------------------------------------------------------


async def _body(request: Request, limit: int) -> dict[str, Any]:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise BodyTooLargeError(f"request body of {int(length):,} bytes is over the {limit:,}-byte limit",
                                hint="send fewer entities per request")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLargeError(f"request body is over the {limit:,}-byte limit", hint="send fewer entities per request")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise RequestError(f"malformed JSON body: {e}", hint='send a JSON object such as {"entities": {...}}') from None
    if not isinstance(data, dict):
        raise RequestError("the request body must be a JSON object", hint='e.g. {"entities": {"customer_id": [1]}}')
    return data


def _entities(data: dict[str, Any], limit: int, keys: Mapping[str, str] | None = None) -> Entities:
    """The request's entities, as one list per key; with ``keys`` (a model's), each value is checked."""
    raw = data.get("entities")
    if not isinstance(raw, dict) or not raw:
        raise RequestError("missing 'entities'", hint='give {"entities": {"customer_id": [1, 2]}}')
    columns = {}
    for key, values in raw.items():
        columns[key] = values if isinstance(values, list) else [values]
    counts = {len(v) for v in columns.values()}
    if len(counts) > 1:
        raise RequestError("entity key lists have different lengths", hint="give one value per entity for every key")
    count = counts.pop()
    if count > limit:
        raise RequestError(f"{count:,} entities in one request; the limit is {limit:,}",
                           hint="split the request, or raise [server] max_entities")
    if keys is not None:
        missing = [k for k in keys if k not in columns]
        if missing:
            raise RequestError(f"missing entity key(s) {', '.join(missing)}",
                               hint=f"this model needs {', '.join(keys)}")
        columns = {k: [entity_key(v, dtype, k) for v in columns[k]] for k, dtype in keys.items()}
    return Entities(columns, count)


def _request_fields(data: dict[str, Any], model: Model, count: int) -> dict[str, list[Any]]:
    """A model's request-time fields from ``request_fields``: one value per entity, of the declared type."""
    raw = data.get("request_fields")
    if not model.request_fields:
        if raw:
            raise RequestError(f"model '{model.name}' takes no request fields",
                               hint="send only 'entities', or declare request_fields under [models] in fsql.toml")
        return {}
    names = ", ".join(f"{f.name} ({f.dtype})" for f in model.request_fields)
    if not isinstance(raw, dict):
        raise RequestError(f"model '{model.name}' needs 'request_fields': {names}",
                           hint=f'e.g. {{"entities": {{...}}, "request_fields": {{"{model.request_fields[0].name}": [...]}}}}')
    fields = {}
    for declared in model.request_fields:
        if declared.name not in raw:
            raise RequestError(f"missing request field '{declared.name}' ({declared.dtype})",
                               hint=f"model '{model.name}' needs {names}")
        values = raw[declared.name] if isinstance(raw[declared.name], list) else [raw[declared.name]]
        if len(values) != count:
            raise RequestError(f"request field '{declared.name}' has {len(values)} value(s) for {count} entities",
                               hint="give one value per entity")
        fields[declared.name] = request_values(declared, values)
    unknown = [n for n in raw if n not in fields]
    if unknown:
        raise RequestError(f"unknown request field '{unknown[0]}'", hint=did_you_mean(unknown[0], fields)
                           or f"model '{model.name}' takes {names}")
    return fields


def create_app(root: str | Path = ".", overrides: dict[str, dict[str, Any]] | None = None, *,
               batching: bool = True, log_features: bool | None = None, log_feature_requests: bool | None = None,
               root_app: ASGIApp | None = None, freeze_gc: bool = False) -> Starlette:
    """The server as an ASGI app. ``freeze_gc`` (for a process that only serves, like `fsql serve`'s
    workers) freezes the garbage collector's view of the loaded state after each plan load."""
    server = FsqlServer(root, overrides, batching=batching, log_features=log_features,
                        log_feature_requests=log_feature_requests, freeze_gc=freeze_gc)
    settings, metrics = server.settings, server.metrics

    def endpoint(route: str, handler: Handler, *, auth: bool = True) -> Handler:
        latency = metrics.latency.labels(route)
        counts: dict[int, Any] = {}

        async def wrapped(request: Request) -> Response:
            began = time.perf_counter()
            try:
                if auth:
                    server.keys.check(request)
                response = await handler(request)
            except FsqlError as e:
                response = error_response(e)
            except Exception as e:  # noqa: BLE001 - a bug answers one line, never a traceback
                response = await unexpected(request, e)
            counter = counts.get(response.status_code)
            if counter is None:
                counter = counts[response.status_code] = metrics.requests.labels(route, str(response.status_code))
            counter.inc()
            latency.observe(time.perf_counter() - began)
            return response

        return wrapped

    async def features(request: Request) -> Response:
        data = await _body(request, settings.max_body_bytes)
        serving = server.current()
        wanted = data.get("training_set") if "training_set" in data else data.get("features")
        if wanted is None:
            raise RequestError("name 'features' or a 'training_set'",
                               hint='e.g. {"features": ["customer_spend.spend_30d"], "entities": {...}}')
        if not (isinstance(wanted, str) or (isinstance(wanted, list) and all(isinstance(f, str) for f in wanted))):
            raise RequestError("'features' must be a list of view.feature names (or 'training_set' a name)")
        if "training_set" in data and wanted not in serving.plan.training_sets:
            raise NotFoundError(f"no training set named '{wanted}'", hint="GET /v1/models lists what is served")
        entities = _entities(data, settings.max_entities)
        now = datetime.now(UTC)
        try:
            result = serving.reader.read(wanted, entities.columns, now=now)
        except OnlineStoreError:
            metrics.online_errors.inc()
            raise
        if server.log_feature_requests and server.feature_log is not None and result.count:
            server.log_read(result, now)
        return JSON({"count": result.count, "columns": result.columns})

    async def predict(request: Request) -> Response:
        name = request.path_params["name"]
        data = await _body(request, settings.max_body_bytes)
        # No await from here to submit: a reload closes the old state's batchers, so the binding is
        # taken after the body is read, when nothing can swap it before the request joins a batch.
        serving = server.current()
        binding = serving.models.get(name)
        if binding is None:
            raise NotFoundError(f"no model named '{name}'", hint=did_you_mean(name, serving.models)
                                or f"served models: {', '.join(serving.models) or 'none'}")
        entities = _entities(data, settings.max_entities, binding.keys)
        entities.fields = _request_fields(data, binding.model, entities.count)
        if binding.batcher is not None:
            result = await binding.batcher.submit(entities)
        else:
            result = server._score(binding, [entities])[0]
        return JSON({"model": name, "version": binding.version,
                     **entities.columns, **result})

    async def models(_request: Request) -> Response:
        serving = server.current()
        return JSON({"models": [{"name": b.model.name, "version": b.version, "training_set": b.model.training_set,
                                 "inputs": list(b.model.inputs), "keys": list(b.keys), "kind": b.model.kind,
                                 "request_fields": {f.name: f.dtype for f in b.model.request_fields},
                                 "max_batch": b.model.max_batch, "max_wait_ms": b.model.max_wait_ms}
                                for b in serving.models.values()]})

    async def healthz(_request: Request) -> Response:
        return JSON({"status": "ok"})

    async def readyz(_request: Request) -> Response:
        serving = server.current()  # holds at least one view: an empty registry is not served
        table = next(iter(serving.plan.tables.values()))
        await asyncio.to_thread(server.ctx.online_store.has_marker, table)  # reaches the store or raises
        plan = hashlib.sha256(serving.version.encode()).hexdigest()[:12]
        return JSON({"status": "ready", "plan": plan, "models": list(serving.models)})

    async def metrics_route(_request: Request) -> Response:
        return Response(metrics.export(), media_type="text/plain; version=0.0.4")

    async def openapi(_request: Request) -> Response:
        return JSON(SPEC)

    routes: list[Any] = [
        Route("/v1/features", endpoint("/v1/features", features), methods=["POST"]),
        Route("/v1/models/{name}/predict", endpoint("/v1/models/predict", predict), methods=["POST"]),
        Route("/v1/models", endpoint("/v1/models", models), methods=["GET"]),
        Route("/healthz", endpoint("/healthz", healthz, auth=False), methods=["GET"]),
        Route("/readyz", endpoint("/readyz", readyz, auth=False), methods=["GET"]),
        Route("/metrics", endpoint("/metrics", metrics_route, auth=False), methods=["GET"]),
        Route("/openapi.json", endpoint("/openapi.json", openapi, auth=False), methods=["GET"]),
    ]

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> Any:
        await server.start()
        try:
            yield
        finally:
            await server.stop()

    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: http_error, FsqlError: fsql_error, Exception: unexpected})
    app.state.fsql = server
    if root_app is not None:
        mount_root(app, root_app)
    return app


def mount_root(app: Starlette, root_app: ASGIApp) -> None:
    """Serve ``root_app`` (the catalog page) at ``/``; the API routes keep precedence."""
    app.router.routes.append(Mount("/", app=root_app))
