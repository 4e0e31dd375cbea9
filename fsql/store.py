"""The public SDK: ``fsql.Store``, one typed method per use case, each delegating to ``fsql.service``."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from fsql.config import Config
from fsql.definitions import FeatureView, Model, PitMode, PlanChoice, TrainingSet, output_names, parse_ref
from fsql.errors import NotFoundError, RegistryError, RequestError, did_you_mean
from fsql.registry import (
    LineageGraph,
    ObjectKind,
    RunRecord,
    SearchHit,
    TrainingSetRecord,
    ViewRecord,
    ViewVersion,
)
from fsql.registry.catalog import FeatureLineage, RankedHit, Revision, StatsRecord, VersionDiff, version_diff
from fsql.service import build as build_service
from fsql.service import check as check_service
from fsql.service import materialize as materialize_service
from fsql.service import offline
from fsql.service import predict as predict_service
from fsql.service import stats as stats_service
from fsql.service.build import BuildResult
from fsql.service.check import CheckResult
from fsql.service.context import Context
from fsql.service.materialize import RunResult
from fsql.service.offline import WrittenSet
from fsql.service.online import FeatureReader
from fsql.service.predict import SkewReport
from fsql.service.stats import StatsScope


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
    def build(self, *, allow_breaking: bool = False, progress: Callable[[str], None] | None = None,
              skip_models: bool = False) -> BuildResult:
        """Validate every feature file, register it, create the generated views (atomic).
        ``skip_models`` registers no models (to train a first one, whose file does not exist yet)."""
        with self._ctx.warehouse(write=True):
            result = build_service.build(self._ctx, allow_breaking=allow_breaking, progress=progress,
                                         skip_models=skip_models)
        if self._reader is not None:
            self._reader.invalidate()
        return result

    def plan(self) -> BuildResult:
        """What `build` would change (the build, rolled back)."""
        with self._ctx.warehouse(write=True):
            return build_service.plan(self._ctx)

    @contextmanager
    def session(self) -> Iterator[Store]:
        """Hold the warehouse open (read-only) across the calls in this block, e.g. a loop of training
        sets: opening and closing a DuckDB file costs tens of milliseconds per call. Meanwhile no other
        process can write a DuckDB warehouse file (`fsql build` is refused until the block ends), and a
        call that writes is refused inside it."""
        with self._ctx.warehouse(write=False):
            yield self

    # Offline -----------------------------------------------------------------------------------------
    def compile(self, name: str, dialect: str = "duckdb", *, mode: PitMode = "known-at",
                plan: PlanChoice | None = None) -> str:
        """The exact SQL of a view or training set in ``dialect`` (a training set's starts with a comment
        naming the PIT plan of each view and why it was chosen)."""
        with self._ctx.warehouse(write=False):
            return offline.compile_sql(self._ctx, name, dialect, mode=mode, plan=plan)

    def training_set(
        self,
        name: str | None = None,
        *,
        spine: Any = None,
        features: Sequence[str] | None = None,
        timestamp: str | None = None,
        pit_mode: PitMode | None = None,
        plan: PlanChoice | None = None,
    ) -> pl.DataFrame:
        """A point-in-time training set. ``plan`` forces one PIT join plan for every view ("asof",
        "range", ...); the default "auto" takes each view's ``@pit_plan`` or chooses from its statistics."""
        with self._ctx.warehouse(write=False):
            table = offline.training_set(self._ctx, name, features=features, spine=spine, timestamp=timestamp,
                                         mode=pit_mode, plan=plan)
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
        plan: PlanChoice | None = None,
    ) -> WrittenSet:
        """Write a training set to ``output``: a directory of Parquet files written by the engine
        (bounded memory here), or one ``.parquet`` file computed in memory; other suffixes are refused."""
        path = Path(output)
        if path.suffix.lower() == ".parquet":
            frame = self.training_set(name, spine=spine, features=features, timestamp=timestamp, pit_mode=pit_mode,
                                      plan=plan)
            path.parent.mkdir(parents=True, exist_ok=True)
            frame.write_parquet(path)
            return WrittenSet(path, frame.height, 1)
        if path.suffix:
            raise RequestError(f"cannot write a training set to '{path}': unknown file type '{path.suffix}'",
                               hint="name a directory (Parquet files written by the engine) or a .parquet file")
        with self._ctx.warehouse(write=False):
            return offline.write_training_set(self._ctx, path, name, features=features, spine=spine,
                                              timestamp=timestamp, mode=pit_mode, plan=plan)

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

    def lineage(self, name: str, *, kind: ObjectKind | None = None, transitive: bool = False) -> LineageGraph:
        """Edges of a view, training set, source or model (``kind`` picks one when names are shared,
        like the example's ``churn`` set and model)."""
        return self._ctx.registry.lineage(name, kind=kind, transitive=transitive)

    def search(self, text: str) -> list[SearchHit]:
        return self._ctx.registry.search(text)

    def runs(self, view: str, *, limit: int = 20) -> list[RunRecord]:
        """The view's latest materialization runs, newest first; runs whose process on this machine
        died are marked failed first, so none shows 'running' forever."""
        self._fail_interrupted_runs()
        return self._ctx.registry.runs(view, limit=limit)

    def _fail_interrupted_runs(self) -> None:
        # Best effort: a listing must still work for a role that may only read the registry.
        with suppress(RegistryError):
            self._ctx.registry.fail_interrupted_runs()

    def history(self, view: str) -> list[ViewVersion]:
        return self._ctx.registry.view_history(view)

    # Models ------------------------------------------------------------------------------------------
    def predict(self, model: str, *, spine: Any = None) -> pl.DataFrame:
        """The model's training set computed point-in-time for ``spine`` (default: the set's own spine),
        with a ``prediction`` column: the batch twin of `/v1/models/{name}/predict`."""
        definition, _ = predict_service.registered_model(self._ctx, model)
        loaded = predict_service.load(self._ctx, definition)
        with self._ctx.warehouse(write=False):
            table = offline.training_set(self._ctx, definition.training_set, spine=spine)
        return pl.from_arrow(predict_service.score_table(definition, loaded, table))  # type: ignore[return-value]

    def skew(self, model: str, *, since: datetime | None = None, examples: int = 5) -> SkewReport:
        """Served features (the server's log) against the training set recomputed point-in-time at each
        logged request's time and entity; 0 differences on a healthy project."""
        definition, training_set = predict_service.registered_model(self._ctx, model)
        log = predict_service.read_log(self.config.root, model, since)
        views = self._ctx.definitions().views
        keys = list(dict.fromkeys(k for ref in training_set.features for k in views[ref.view].entity_keys))
        spine = predict_service.skew_spine(log, training_set, keys)
        with self._ctx.warehouse(write=False):
            recomputed = pl.from_arrow(offline.training_set(self._ctx, training_set.name, spine=spine))
        by_ref = predict_service.set_columns(training_set)
        again = output_names(training_set.features, spine.columns)
        columns = {by_ref[str(ref)]: again[ref] for ref in training_set.features}
        return predict_service.compare(definition, log, recomputed, keys, columns,  # type: ignore[arg-type]
                                       examples=examples)
    # Catalog: history and diffs, feature lineage, ranked search, statistics, rules ---------------------
    def revisions(self, name: str) -> list[Revision]:
        """Every revision of a view or training set (metadata-only edits too), oldest first."""
        self._fail_interrupted_runs()  # the revisions list their runs
        return self._ctx.registry.history(name)

    def diff(self, name: str, old: str | None = None, new: str | None = None) -> VersionDiff:
        """Two revisions compared (default: the last two): SQL diff and per-column verdicts."""
        return version_diff(self._ctx.registry.history(name), old, new)

    def feature_lineage(self, ref: str) -> FeatureLineage:
        """``view.feature`` traced up to source columns and down to training sets and models."""
        parsed = parse_ref(ref)
        return self._ctx.registry.feature_lineage(parsed.view, parsed.feature)

    def search_ranked(self, text: str, *, owner: str | None = None, tag: str | None = None,
                      entity: str | None = None) -> list[RankedHit]:
        return self._ctx.registry.search_ranked(text, owner=owner, tag=tag, entity=entity)

    def compute_stats(self, view: str, *, at: datetime | None = None, scope: StatsScope = "history"
                      ) -> list[StatsRecord]:
        """Compute statistics in the engine and store them in the registry."""
        with self._ctx.warehouse(write=False):
            return stats_service.compute_stats(self._ctx, view, at=at, scope=scope)

    def stored_stats(self, view: str, *, version: str | None = None, scope: StatsScope | None = None
                     ) -> list[StatsRecord]:
        """Statistics as stored (never queries the warehouse)."""
        return self._ctx.registry.stats(view, version, scope)

    def models(self) -> list[Model]:
        """Registered models (from ``[models]`` in fsql.toml), each bound to a training set."""
        return sorted(self._ctx.registry.snapshot().model_definitions.values(), key=lambda m: m.name)

    def model(self, name: str) -> Model:
        """One registered model: its kind, training set, input order and request fields."""
        models = self._ctx.registry.snapshot().model_definitions
        if name not in models:
            raise NotFoundError(f"no model named '{name}'",
                                hint=did_you_mean(name, models) or "declare it under [models] in fsql.toml")
        return models[name]

    def check(self) -> CheckResult:
        """Parse and validate every feature file and apply the [governance] rules; touches no database."""
        return check_service.check(self._ctx)

    # Lifecycle ---------------------------------------------------------------------------------------
    def close(self) -> None:
        self._ctx.close()
        self._reader = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
