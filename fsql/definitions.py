"""Frozen definitions: what a project declares, independent of any engine or store.

These objects are produced by ``fsql.parsing`` and consumed by everything else. They hold no
connections and do no I/O. ``fingerprint()`` is the content hash that decides what a build changed and
names versions (registry rows, online keyspaces, materialization state).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

PitMode = Literal["known-at", "event-time"]


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

    @property
    def features(self) -> tuple[Column, ...]:
        reserved = {*self.entity_keys, self.timestamp, self.created}
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
class Model:
    name: str
    training_set: str
    path: str | None = None
    entry_point: str | None = None
    kind: str = "python"


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

