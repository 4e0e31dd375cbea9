"""The public SDK: ``fsql.Store``, a thin facade over ``fsql.service``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from fsql.definitions import FeatureView, PitMode, TrainingSet
from fsql.service import BuildResult, Change, Service


class Store:
    """A feature repository: ``Store(".")`` reads ``fsql.toml``; keyword sections override it.

    >>> store = fsql.Store(".", online={"store": "redis", "url": "redis://127.0.0.1:6379/0"})
    """

    def __init__(self, root: str | Path = ".", **sections: Mapping[str, Any]) -> None:
        self._service = Service.open(root, {k: dict(v) for k, v in sections.items()})

    @property
    def service(self) -> Service:
        return self._service

    @property
    def config(self):  # noqa: ANN201 - the typed Config
        return self._service.config

    def build(self, *, allow_breaking: bool = False) -> BuildResult:
        return self._service.build(allow_breaking=allow_breaking)

    def plan(self) -> list[Change]:
        return self._service.plan()

    def compile(self, name: str, dialect: str = "duckdb", *, mode: PitMode = "known-at") -> str:
        return self._service.compile(name, dialect, mode=mode)

    def training_set(
        self,
        name: str | None = None,
        *,
        spine: Any = None,
        features: Sequence[str] | None = None,
        timestamp: str | None = None,
        pit_mode: PitMode | None = None,
    ) -> pl.DataFrame:
        table = self._service.training_set(name, features=features, spine=spine, timestamp=timestamp, mode=pit_mode)
        return pl.from_arrow(table)  # type: ignore[return-value]

    def materialize(self, views: Sequence[str] | None = None, **options: Any) -> Any:
        return self._service.materialize(views, **options)

    def online(self, features: Sequence[str] | str, entities: Mapping[str, Sequence[Any]], **options: Any) -> pl.DataFrame:
        return self._service.online(features, entities, **options)

    def query(self, sql: str) -> pl.DataFrame:
        return pl.from_arrow(self._service.query(sql))  # type: ignore[return-value]

    def feature_views(self) -> list[FeatureView]:
        return list(self._service.definitions()[0].values())

    def training_sets(self) -> list[TrainingSet]:
        return list(self._service.definitions()[1].values())

    def close(self) -> None:
        self._service.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
