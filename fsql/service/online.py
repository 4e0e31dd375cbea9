"""Online reads: a `FeatureReader` holds a serving plan (registered definitions, key layouts, types,
which versions were ever materialized) and the online store, and answers one read with values and a
status per value. It never opens the warehouse, so a long-lived server cannot lock a DuckDB file that
`fsql build` needs.

Statuses: ``present``; ``stale`` (older than the view's TTL, value NULL); ``missing`` (no row for the
entity); ``not_materialized`` (this view version was never materialized: run `fsql materialize`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import polars as pl
import pyarrow as pa

from fsql.definitions import (
    FeatureRef,
    FeatureView,
    TrainingSet,
    arrow_type,
    as_utc,
    expand_refs,
    output_names,
    parse_ref,
)
from fsql.errors import NotFoundError, RequestError, did_you_mean
from fsql.online import OnlineStore, OnlineTable
from fsql.online.base import online_table_of
from fsql.registry import DEFAULT_MAX_AGE, Registry, RegistryCache

PRESENT, MISSING, STALE, NOT_MATERIALIZED = "present", "missing", "stale", "not_materialized"
STATUS_SUFFIX = "__status"
_INTEGER = re.compile(r"^-?[0-9]+$", re.ASCII)
_INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class _ViewRead:
    """How to read one view for a request shape: its table, keys, and where each feature goes."""

    view: FeatureView
    table: OnlineTable
    keys: tuple[str, ...]
    key_types: tuple[str, ...]
    features: tuple[tuple[int, str, pl.DataType], ...]  # (position in the table's row, output name, type)


@dataclass(frozen=True)
class ReadLayout:
    """A request shape (what it names, which entity key columns it gives) resolved against a plan."""

    reads: tuple[_ViewRead, ...]
    key_dtypes: dict[str, pl.DataType]


_LAYOUTS = 1024  # request shapes remembered per plan; a new plan starts afresh


@dataclass(frozen=True)
class ServingPlan:
    """Everything a read needs, loaded from the registry once: never queried on the request path."""

    views: dict[str, FeatureView]
    training_sets: dict[str, TrainingSet]
    materialized: frozenset[tuple[str, str]]  # (view, version) pairs with at least one successful run
    tables: dict[str, OnlineTable] = field(default_factory=dict)
    dtypes: dict[tuple[str, str], pl.DataType] = field(default_factory=dict)  # (view, column) -> polars type
    # Resolved request shapes: a server sees the same few again and again, and resolving one (refs,
    # output names, key layouts) cost more than the rest of a one-entity read.
    _layouts: dict[tuple[Any, ...], ReadLayout] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def load(cls, registry: Registry) -> ServingPlan:
        snapshot = registry.snapshot()
        views = dict(snapshot.view_definitions)
        materialized = frozenset((r.name, r.version) for r in registry.list_views() if r.last_materialized_at)
        tables = {name: online_table_of(view) for name, view in views.items()}
        dtypes = {(name, c.name): _polars_type(c.dtype) for name, view in views.items() for c in view.columns}
        return cls(views, dict(snapshot.training_set_definitions), materialized, tables, dtypes)

    def refs(self, features: Sequence[str] | str) -> list[FeatureRef]:
        """What a request names: a training set, a view (all its features), or ``view.feature`` refs."""
        if isinstance(features, str):
            if features in self.training_sets:
                return list(self.training_sets[features].features)
            if features in self.views:
                return expand_refs([FeatureRef(features, "*")], self.views)
            if "." not in features:
                known = [*self.views, *self.training_sets]
                raise NotFoundError(f"no feature view or training set named '{features}'",
                                    hint=did_you_mean(features, known) or "run `fsql ls`")
            features = [features]
        if not features:
            raise RequestError("no features requested", hint="name a view, a training set or view.feature refs")
        return expand_refs([parse_ref(f) for f in features], self.views)

    def layout(self, features: Sequence[str] | str, keys: Sequence[str]) -> ReadLayout:
        """The resolved layout of a read of ``features`` given entity key columns ``keys`` (cached)."""
        named = features if isinstance(features, str) else tuple(features)
        cacheable = isinstance(named, str) or all(isinstance(f, str) for f in named)
        cache_key = (named, tuple(keys))
        if cacheable and (found := self._layouts.get(cache_key)) is not None:
            return found
        refs = self.refs(features)
        outputs = output_names(refs, list(keys))
        by_view: dict[str, list[FeatureRef]] = {}
        for ref in refs:
            by_view.setdefault(ref.view, []).append(ref)
        key_dtypes: dict[str, pl.DataType] = {}
        reads = []
        for name, view_refs in by_view.items():
            view = self.views[name]
            missing = [k for k in view.entity_keys if k not in keys]
            if missing:
                raise RequestError(f"feature view '{name}' needs entity key(s) {', '.join(missing)}",
                                   hint=f"give a value for each of its keys: {', '.join(view.entity_keys)}")
            for key in view.entity_keys:
                key_dtypes[key] = self.dtypes[(name, key)]
            table = self.tables[name]
            reads.append(_ViewRead(
                view, table, tuple(view.entity_keys),
                tuple(view.column(k).dtype for k in view.entity_keys),  # type: ignore[union-attr]
                tuple((table.features.index(r.feature), outputs[r], self.dtypes[(r.view, r.feature)])
                      for r in view_refs)))
        layout = ReadLayout(tuple(reads), key_dtypes)
        if cacheable:
            if len(self._layouts) >= _LAYOUTS:
                self._layouts.clear()
            self._layouts[cache_key] = layout
        return layout


@dataclass
class OnlineResult:
    """Values and statuses per entity, in request order, with the registered column types."""

    columns: dict[str, list[Any]]
    dtypes: dict[str, pl.DataType]
    count: int

    def to_dicts(self) -> list[dict[str, Any]]:
        return [{k: v[i] for k, v in self.columns.items()} for i in range(self.count)]

    def to_polars(self) -> pl.DataFrame:
        schema = {name: self.dtypes.get(name, pl.String) for name in self.columns}
        if self.count <= 16:
            # Row orientation builds a small frame several times faster than one Series per column,
            # which dominates a single-entity read (bench/online.py).
            rows = list(zip(*self.columns.values(), strict=True))
            return pl.DataFrame(rows, schema=schema, orient="row", strict=False)
        return pl.DataFrame(self.columns, schema=schema, strict=False)


class FeatureReader:
    """Online values for entities, as the offline PIT join would give them for "now"."""

    def __init__(self, registry: Registry, store: OnlineStore, *, max_age: float = DEFAULT_MAX_AGE) -> None:
        self.registry = registry
        self.store = store
        # How stale the serving plan may be (seconds): a build elsewhere is seen within this time.
        self._plan = RegistryCache(registry, ServingPlan.load, max_age=max_age)

    @property
    def max_age(self) -> float:
        return self._plan.max_age

    def plan(self) -> ServingPlan:
        plan = self._plan.get()
        if not plan.views:
            self._plan.invalidate()  # read again next time: a build may come at any moment
            raise NotFoundError("the registry holds no feature views", hint="run `fsql build` first")
        return plan

    def invalidate(self) -> None:
        self._plan.invalidate()

    def reload(self) -> ServingPlan:
        """Load the plan now and serve from it. A server calls this off the request path (at start, on
        SIGHUP, when the registry version moves); a read in flight keeps the plan it started with."""
        return self._plan.reload()

    def read(
        self,
        features: Sequence[str] | str,
        entities: Mapping[str, Sequence[Any]],
        *,
        now: datetime | None = None,
    ) -> OnlineResult:
        plan = self.plan()
        columns = {k: list(v) for k, v in entities.items()}
        lengths = {len(v) for v in columns.values()}
        if len(lengths) > 1:
            raise RequestError("entity key columns have different lengths",
                               hint="give one value per entity for every key column")
        count = lengths.pop() if lengths else 0
        layout = plan.layout(features, list(columns))
        dtypes: dict[str, pl.DataType] = dict(layout.key_dtypes)
        requests = []
        for read in layout.reads:
            for key, key_type in zip(read.keys, read.key_types, strict=True):
                columns[key] = [_key_value(v, key_type, key) for v in columns[key]]
            if len(read.keys) == 1:
                keys = [(v,) for v in columns[read.keys[0]]]
            else:
                keys = list(zip(*(columns[k] for k in read.keys), strict=True))
            requests.append((read.table, keys))
        results = self.store.read(requests)
        now = as_utc(now) if now else datetime.now(UTC)
        data: dict[str, list[Any]] = dict(columns)
        for read, rows in zip(layout.reads, results, strict=True):
            view = read.view
            stale_before = now - view.ttl if view.ttl else None
            absent = MISSING if (view.name, view.version) in plan.materialized else NOT_MATERIALIZED
            for index, out, dtype in read.features:
                values, statuses = [], []
                for row in rows:
                    if row is None:
                        values.append(None)
                        statuses.append(absent)
                    elif stale_before is not None and row.event_ts < stale_before:
                        values.append(None)
                        statuses.append(STALE)
                    else:
                        values.append(row.values[index])
                        statuses.append(PRESENT)
                data[out] = values
                data[f"{out}{STATUS_SUFFIX}"] = statuses
                dtypes[out] = dtype
        return OnlineResult(data, dtypes, count)


def entity_key(value: Any, dtype: str, name: str) -> Any:
    """A request's entity key value checked against the key's recorded type (see ``_key_value``); a
    server checks each request alone before batching it with others."""
    return _key_value(value, dtype, name)


def _key_value(value: Any, dtype: str, name: str) -> Any:
    """An entity key value from a request, accepted only when it is exactly a value of the key's type.

    Requests from a CLI arrive as text, so an integer key also takes a plain ASCII integer string;
    nothing else is coerced (42.7, "4_2" or "٤٢" must not read entity 42)."""
    if value is None:
        return None  # a NULL key never matches (PIT rule 1): the entity is reported missing
    upper = dtype.upper()

    def bad(why: str) -> RequestError:
        return RequestError(f"entity key {name}={value!r} is not a valid {dtype}: {why}",
                            hint=f"pass {name} as a {dtype.lower()} value")

    if "INT" in upper:
        if isinstance(value, bool):
            raise bad("a boolean is not an integer")
        if isinstance(value, str) and _INTEGER.match(value.strip()):
            value = int(value.strip())
        if not isinstance(value, int):
            raise bad("only whole numbers are accepted")
        if not _INT64[0] <= value <= _INT64[1]:
            raise bad("out of the 64-bit integer range")
        return value
    if upper == "VARCHAR":
        if not isinstance(value, str):
            raise bad("only strings are accepted")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise bad("not valid Unicode text") from None
        return value
    if upper == "DATE" and isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            raise bad("expected an ISO date such as 2026-01-31") from None
    return value


def _polars_type(dtype: str) -> pl.DataType:
    """The polars type of a recorded column type, so results keep their types even when every
    value is NULL."""
    return pl.from_arrow(pa.array([], type=arrow_type(dtype))).dtype  # type: ignore[union-attr]
