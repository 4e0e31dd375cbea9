"""The public SDK: ``fsql.Store``, one typed method per use case, each delegating to ``fsql.service``."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from fsql.config import Config
from fsql.definitions import FeatureView, PitMode, TrainingSet
from fsql.errors import NotFoundError, RequestError, did_you_mean
from fsql.registry import LineageGraph, RunRecord, SearchHit, TrainingSetRecord, ViewRecord, ViewVersion
from fsql.service import build as build_service
from fsql.service import materialize as materialize_service
from fsql.service import offline
from fsql.service.build import BuildResult
from fsql.service.context import Context
from fsql.service.materialize import RunResult
from fsql.service.offline import WrittenSet
from fsql.service.online import FeatureReader


class Store:
    """A feature repository: ``Store(".")`` reads ``fsql.toml``; keyword sections override it.

    >>> store = fsql.Store(".", online={"store": "redis", "url": "redis://127.0.0.1:6379/0"})
    """

    def __init__(self, root: str | Path = ".", **sections: Mapping[str, Any]) -> None:
        self._ctx = Context.open(root, {k: dict(v) for k, v in sections.items()})
        self._reader: FeatureReader | None = None

    @property
    def config(self) -> Config:
        return self._ctx.config

    # Build -------------------------------------------------------------------------------------------
    def build(self, *, allow_breaking: bool = False, progress: Callable[[str], None] | None = None) -> BuildResult:
        """Validate every feature file, register it, create the generated views (atomic)."""
        with self._ctx.warehouse(write=True):
            result = build_service.build(self._ctx, allow_breaking=allow_breaking, progress=progress)
        if self._reader is not None:
            self._reader.invalidate()
        return result

    def plan(self) -> BuildResult:
        """What `build` would change (the build, rolled back)."""
        with self._ctx.warehouse(write=True):
            return build_service.plan(self._ctx)

    # Offline -----------------------------------------------------------------------------------------
    def compile(self, name: str, dialect: str = "duckdb", *, mode: PitMode = "known-at") -> str:
        """The exact SQL of a view or training set in ``dialect``."""
        with self._ctx.warehouse(write=False):
            return offline.compile_sql(self._ctx, name, dialect, mode=mode)

    def training_set(
        self,
        name: str | None = None,
        *,
        spine: Any = None,
        features: Sequence[str] | None = None,
        timestamp: str | None = None,
        pit_mode: PitMode | None = None,
    ) -> pl.DataFrame:
        with self._ctx.warehouse(write=False):
            table = offline.training_set(self._ctx, name, features=features, spine=spine, timestamp=timestamp,
                                         mode=pit_mode)
        return pl.from_arrow(table)  # type: ignore[return-value]

    # Training sets larger than memory ------------------------------------------------------------------
    def write_training_set(
        self,
        output: str | Path,
        name: str | None = None,
        *,
        spine: Any = None,
        features: Sequence[str] | None = None,
        timestamp: str | None = None,
        pit_mode: PitMode | None = None,
    ) -> WrittenSet:
        """Write a training set to ``output``: a directory of Parquet files written by the engine
        (bounded memory here), or one ``.parquet`` file computed in memory; other suffixes are refused."""
        path = Path(output)
        if path.suffix.lower() == ".parquet":
            frame = self.training_set(name, spine=spine, features=features, timestamp=timestamp, pit_mode=pit_mode)
            path.parent.mkdir(parents=True, exist_ok=True)
            frame.write_parquet(path)
            return WrittenSet(path, frame.height, 1)
        if path.suffix:
            raise RequestError(f"cannot write a training set to '{path}': unknown file type '{path.suffix}'",
                               hint="name a directory (Parquet files written by the engine) or a .parquet file")
        with self._ctx.warehouse(write=False):
            return offline.write_training_set(self._ctx, path, name, features=features, spine=spine,
                                              timestamp=timestamp, mode=pit_mode)

    def query(self, sql: str, params: Sequence[Any] | None = None) -> pl.DataFrame:
        """Plain SQL over the generated views (unqualified names resolve to the warehouse schema)."""
        with self._ctx.warehouse(write=False):
            return pl.from_arrow(offline.query(self._ctx, sql, params))  # type: ignore[return-value]

    # Online ------------------------------------------------------------------------------------------
    def materialize(
        self,
        views: Sequence[str] | None = None,
        *,
        full: bool = False,
        start: datetime | None = None,
        end: datetime | None = None,
        progress: Callable[[str, int], None] | None = None,
    ) -> list[RunResult]:
        with self._ctx.warehouse(write=False):
            return materialize_service.materialize(self._ctx, views, full=full, start=start, end=end,
                                                   progress=progress)

    def reader(self) -> FeatureReader:
        """The online reader (registry snapshot + online store; never the warehouse)."""
        if self._reader is None:
            self._reader = FeatureReader(self._ctx.registry, self._ctx.online_store)
        return self._reader

    def online(self, features: Sequence[str] | str, entities: Mapping[str, Sequence[Any]], *,
               now: datetime | None = None) -> pl.DataFrame:
        """Online values with a ``<feature>__status`` column each: present, missing, stale, not_materialized."""
        return self.reader().read(features, entities, now=now).to_polars()

    def online_dicts(self, features: Sequence[str] | str, entities: Mapping[str, Sequence[Any]], *,
                     now: datetime | None = None) -> list[dict[str, Any]]:
        """``online`` as one dict per entity (no DataFrame), for scripts and servers."""
        return self.reader().read(features, entities, now=now).to_dicts()

    # Catalog -----------------------------------------------------------------------------------------
    def feature_views(self) -> list[FeatureView]:
        return list(self._ctx.definitions().views.values())

    def training_sets(self) -> list[TrainingSet]:
        return list(self._ctx.definitions().training_sets.values())

    def views(self) -> list[ViewRecord]:
        """Registered views with freshness (last materialization, watermark)."""
        return self._ctx.registry.list_views()

    def training_set_records(self) -> list[TrainingSetRecord]:
        return self._ctx.registry.list_training_sets()

    def describe(self, name: str) -> ViewRecord | TrainingSetRecord:
        views = {v.name: v for v in self._ctx.registry.list_views()}
        if name in views:
            return views[name]
        sets = {s.name: s for s in self._ctx.registry.list_training_sets()}
        if name in sets:
            return sets[name]
        raise NotFoundError(f"no feature view or training set named '{name}'",
                            hint=did_you_mean(name, [*views, *sets]) or "run `fsql ls`")

    def definition(self, name: str) -> FeatureView | TrainingSet:
        definitions = self._ctx.definitions()
        found = definitions.views.get(name) or definitions.training_sets.get(name)
        if found is None:
            raise NotFoundError(f"no feature view or training set named '{name}'",
                                hint=did_you_mean(name, [*definitions.views, *definitions.training_sets])
                                or "run `fsql ls`")
        return found

    def lineage(self, name: str, *, transitive: bool = False) -> LineageGraph:
        return self._ctx.registry.lineage(name, transitive=transitive)

    def search(self, text: str) -> list[SearchHit]:
        return self._ctx.registry.search(text)

    def runs(self, view: str, *, limit: int = 20) -> list[RunRecord]:
        return self._ctx.registry.runs(view, limit=limit)

    def history(self, view: str) -> list[ViewVersion]:
        return self._ctx.registry.view_history(view)

    # Lifecycle ---------------------------------------------------------------------------------------
    def close(self) -> None:
        self._ctx.close()
        self._reader = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
