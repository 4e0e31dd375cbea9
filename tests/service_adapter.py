"""White-box access for tests that drive the use cases directly and inspect what they touch
(registry, engine, online store). Product code goes through `fsql.Store`; tests of materialization
and faults also need the resources behind it, which this adapter exposes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from fsql.definitions import FeatureView, TrainingSet
from fsql.online import OnlineTable
from fsql.online.base import online_table_of
from fsql.service import build as build_service
from fsql.service import materialize as materialize_service
from fsql.service import offline
from fsql.service.context import Context
from fsql.service.materialize import _latest_sql
from fsql.service.online import FeatureReader


class Service:
    """The use cases over one Context, with the shapes the tests were written against."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._reader: FeatureReader | None = None

    @classmethod
    def open(cls, root: str | Path = ".", overrides: dict[str, dict[str, Any]] | None = None) -> Service:
        return cls(Context.open(root, overrides))

    @property
    def config(self) -> Any:
        return self.ctx.config

    @property
    def engine(self) -> Any:
        return self.ctx.engine

    @property
    def registry(self) -> Any:
        return self.ctx.registry

    @property
    def online_store(self) -> Any:
        return self.ctx.online_store

    def build(self, **options: Any) -> Any:
        result = build_service.build(self.ctx, **options)
        if self._reader is not None:
            self._reader.invalidate()
        return result

    def plan(self) -> Any:
        return build_service.plan(self.ctx).changes

    def definitions(self, max_age: float = 0.0) -> tuple[dict[str, FeatureView], dict[str, TrainingSet]]:
        found = self.ctx.definitions(max_age)
        return found.views, found.training_sets

    def materialize(self, names: Sequence[str] | None = None, **options: Any) -> Any:
        return materialize_service.materialize(self.ctx, names, **options)

    def online(self, features: Sequence[str] | str, entities: Mapping[str, Sequence[Any]], *,
               now: datetime | None = None, as_dicts: bool = False) -> Any:
        if self._reader is None:
            self._reader = FeatureReader(self.ctx.registry, self.ctx.online_store)
        result = self._reader.read(features, entities, now=now)
        return result.to_dicts() if as_dicts else result.to_polars()

    def online_table(self, view: FeatureView) -> OnlineTable:
        return online_table_of(view)

    def training_set(self, name: str | None = None, **options: Any) -> pa.Table:
        return offline.training_set(self.ctx, name, **options)

    def query(self, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
        return offline.query(self.ctx, sql, params)

    def compile(self, name: str, dialect: str, **options: Any) -> str:
        return offline.compile_sql(self.ctx, name, dialect, **options)

    def _latest_sql(self, view: FeatureView, start: datetime | None, end: datetime) -> tuple[str, list[Any]]:
        return _latest_sql(self.ctx, view, start, end)

    def close(self) -> None:
        self.ctx.close()
