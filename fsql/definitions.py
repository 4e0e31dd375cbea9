"""Frozen definitions: what a project declares, independent of any engine or store.

These objects are produced by ``fsql.parsing`` and consumed by everything else. They hold no
connections and do no I/O. ``fingerprint()`` is the content hash that decides what a build changed and
names versions (registry rows, online keyspaces, materialization state).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

import pyarrow as pa

from fsql.errors import FsqlError, NotFoundError, RequestError, did_you_mean

PitMode = Literal["known-at", "event-time"]
# The column every generated view carries: when all the input rows behind a view row were known
# (derived by fsql.compiler.known_time). Rule 3, eligibility for materialization and the tie order's
# "created" step use it, not the @created column, which only names a source's load time.
KNOWN_AT = "__known_at"
PIT_MODES: tuple[PitMode, ...] = ("known-at", "event-time")
# How a training set joins each view (fsql.compiler.pit): "auto" chooses per view from its statistics
PlanChoice = Literal["auto", "asof", "range", "timeline", "lateral"]
PIT_PLAN_CHOICES: tuple[PlanChoice, ...] = ("auto", "asof", "range", "timeline", "lateral")


@dataclass(frozen=True)
class Entity:
    name: str
    keys: tuple[str, ...]
    description: str | None = None


@dataclass(frozen=True)
class Source:
    """A raw relation: a file or glob DuckDB scans, or a table in the warehouse."""

    name: str
    path: str | None = None
    table: str | None = None
    format: str | None = None  # "parquet" | "csv", inferred from the path when not given
    description: str | None = None


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str  # SQL type in DuckDB spelling, e.g. BIGINT, DOUBLE, TIMESTAMP, VARCHAR
    description: str | None = None


@dataclass(frozen=True)
class FeatureView:
    name: str
    path: str  # project-relative path of the .sql file
    line: int  # line of the `@feature_view` annotation
    entity: str
    entity_keys: tuple[str, ...]
    timestamp: str
    query: str  # the rendered SELECT (Jinja applied, header removed), in `dialect`
    dialect: str
    columns: tuple[Column, ...] = ()
    created: str | None = None
    ttl: timedelta | None = None
    owner: str | None = None
    tags: tuple[str, ...] = ()
    description: str | None = None
    depends_on: tuple[str, ...] = ()  # names of sources and views the query reads
    fingerprint: str = ""
    # `-- @pit_plan`: the PIT join plan training sets use for this view ("auto": chosen from its shape)
    pit_plan: str | None = None

    @property
    def features(self) -> tuple[Column, ...]:
        reserved = {*self.entity_keys, self.timestamp, self.created, KNOWN_AT}
        return tuple(c for c in self.columns if c.name not in reserved)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.features)

    @property
    def version(self) -> str:
        return self.fingerprint[:12]

    def column(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.name == name), None)


@dataclass(frozen=True)
class ViewShape:
    """The shape of a view's history, measured in the engine at build and materialize: what the PIT
    plan choice needs (``fsql.compiler.pit.auto_plan``). Rows with a NULL key or event time are left out."""

    rows: int
    entities: int  # distinct entity keys
    events_mean: float  # rows per entity
    events_p99: float
    span_seconds: float  # latest minus earliest event time
    tie_share: float  # share of rows beyond the first at their (keys, event time)
    # what the rows were a function of when measured (``Context.inputs_stamp``): while it is unchanged,
    # a tie share of 0 still holds; None for a view that reads a live table or calls a volatile function
    inputs: str | None = None


@dataclass(frozen=True)
class FeatureRef:
    view: str
    feature: str  # a feature name, or "*" before expansion

    def __str__(self) -> str:
        return f"{self.view}.{self.feature}"


@dataclass(frozen=True)
class TrainingSet:
    name: str
    path: str
    line: int
    timestamp: str  # spine timestamp column
    features: tuple[FeatureRef, ...]  # expanded: no "*"
    query: str  # the spine SELECT, rendered, in `dialect`
    dialect: str
    owner: str | None = None
    tags: tuple[str, ...] = ()
    description: str | None = None
    depends_on: tuple[str, ...] = ()
    spine_columns: tuple[Column, ...] = ()
    fingerprint: str = ""

    @property
    def version(self) -> str:
        return self.fingerprint[:12]


@dataclass(frozen=True)
class RequestField:
    """A value a model takes from each prediction request (or, in batch, from a spine column)."""

    name: str
    dtype: str  # one of config.REQUEST_TYPES


@dataclass(frozen=True)
class Model:
    name: str
    training_set: str
    path: str | None = None
    entry_point: str | None = None
    kind: str = "python"
    # The training-set columns the model takes, in the order it takes them, fixed at build time so
    # online and batch scoring feed it identically.
    inputs: tuple[str, ...] = ()
    digest: str | None = None  # content hash of the model file: a retrained file is a new version
    max_batch: int = 64
    max_wait_ms: float = 2.0
    request_fields: tuple[RequestField, ...] = ()

    @property
    def feature_inputs(self) -> tuple[str, ...]:
        """The inputs read from the training set's features (the others come with the request)."""
        names = {f.name for f in self.request_fields}
        return tuple(n for n in self.inputs if n not in names)


@dataclass(frozen=True)
class Project:
    """Everything a project defines, validated and resolved."""

    name: str
    dialect: str
    entities: dict[str, Entity] = field(default_factory=dict)
    sources: dict[str, Source] = field(default_factory=dict)
    views: dict[str, FeatureView] = field(default_factory=dict)  # in dependency order
    training_sets: dict[str, TrainingSet] = field(default_factory=dict)
    models: dict[str, Model] = field(default_factory=dict)


def fingerprint(payload: object) -> str:
    """A stable content hash of a JSON-serialisable payload."""
    data = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(data.encode()).hexdigest()



def as_utc(value: datetime) -> datetime:
    """An aware UTC datetime; naive datetimes are taken as UTC (the documented rule)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def check_pit_mode(mode: str) -> PitMode:
    if mode not in PIT_MODES:
        raise RequestError(f"unknown PIT mode '{mode}'", hint="use 'known-at' or 'event-time'")
    return mode  # type: ignore[return-value]


def check_plan(plan: str | None) -> PlanChoice:
    """A training set's PIT plan request: "auto" (None) lets fsql choose per view from its statistics."""
    if plan is None:
        return "auto"
    if plan not in PIT_PLAN_CHOICES:
        raise RequestError(f"unknown PIT plan '{plan}'", hint=f"use one of {', '.join(PIT_PLAN_CHOICES)}")
    return plan  # type: ignore[return-value]


def parse_ref(text: str) -> FeatureRef:
    """``view.feature`` or ``view.*`` as a FeatureRef."""
    view, sep, feature = text.partition(".")
    if not sep or not view or not feature:
        raise RequestError(f"invalid feature reference '{text}'", hint="write view.feature or view.*")
    return FeatureRef(view, feature)


ErrorFactory = Callable[[str, "str | None"], FsqlError]


def _not_found(message: str, hint: str | None) -> FsqlError:
    return NotFoundError(message, hint=hint)


def expand_refs(
    refs: Sequence[FeatureRef], views: Mapping[str, FeatureView], fail: ErrorFactory = _not_found
) -> list[FeatureRef]:
    """References with ``view.*`` expanded, checked against ``views``, duplicates dropped in order.

    ``fail`` makes the error: a located file error when the references come from a training-set file,
    NotFoundError for a request."""
    expanded: list[FeatureRef] = []
    for ref in refs:
        view = views.get(ref.view)
        if view is None:
            raise fail(f"unknown feature view '{ref.view}'", did_you_mean(ref.view, views) or "run `fsql ls`")
        if ref.feature == "*":
            expanded.extend(FeatureRef(ref.view, f) for f in view.feature_names)
        elif ref.feature in view.feature_names:
            expanded.append(ref)
        else:
            raise fail(f"feature view '{ref.view}' has no feature '{ref.feature}'",
                       did_you_mean(ref.feature, view.feature_names) or f"its features are {', '.join(view.feature_names)}")
    return list(dict.fromkeys(expanded))


def output_names(refs: Sequence[FeatureRef], spine_columns: Sequence[str]) -> dict[FeatureRef, str]:
    """A feature keeps its own name unless another requested view or a spine column shares it;
    then it is named ``<view>__<feature>`` (the documented rule)."""
    counts: dict[str, int] = {}
    for ref in refs:
        counts[ref.feature] = counts.get(ref.feature, 0) + 1
    taken = set(spine_columns)
    return {ref: ref.feature if counts[ref.feature] == 1 and ref.feature not in taken else f"{ref.view}__{ref.feature}"
            for ref in refs}


def arrow_type(dtype: str) -> pa.DataType:
    """The Arrow type of a recorded column type (DuckDB spelling), the inverse of ``sql_type``."""
    upper = dtype.upper()
    if upper.startswith("DECIMAL"):
        inner = upper[upper.index("(") + 1 : upper.index(")")] if "(" in upper else "18,3"
        precision, scale = (int(x) for x in inner.split(","))
        return pa.decimal128(precision, scale)
    fixed = {
        "BOOLEAN": pa.bool_(),
        "TINYINT": pa.int8(),
        "SMALLINT": pa.int16(),
        "INTEGER": pa.int32(),
        "BIGINT": pa.int64(),
        "HUGEINT": pa.float64(),
        "UTINYINT": pa.uint8(),
        "USMALLINT": pa.uint16(),
        "UINTEGER": pa.uint32(),
        "UBIGINT": pa.uint64(),
        "FLOAT": pa.float32(),
        "DOUBLE": pa.float64(),
        "DATE": pa.date32(),
        "TIME": pa.time64("us"),
        "VARCHAR": pa.string(),
        "BLOB": pa.binary(),
        "TIMESTAMP": pa.timestamp("us"),
        "TIMESTAMP WITH TIME ZONE": pa.timestamp("us", tz="UTC"),
    }
    return fixed.get(upper, pa.string())
