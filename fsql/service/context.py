"""The configuration plus the resources a use case needs, opened lazily.

This is the only module that knows which concrete engine, online store and registry to open: the use
cases (build, offline, materialize, online, predict) ask the context and never import each other.
Read-only commands open nothing they do not use: `fsql ls` never opens the warehouse, an online read
never opens it either.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlglot import exp, parse_one
from sqlglot.errors import SqlglotError

from fsql.compiler import pit
from fsql.compiler.dialects import PitPlan, capabilities
from fsql.compiler.known_time import derive_known_time, known_inputs
from fsql.compiler.views import resolve_names, to_dialect, volatile_calls
from fsql.config import Config, RedisOnline, load_config
from fsql.definitions import (
    KNOWN_AT,
    FeatureRef,
    FeatureView,
    PitMode,
    PlanChoice,
    TrainingSet,
    ViewShape,
    output_names,
)
from fsql.engines import Engine, HistoryInputs, HistoryRefresh, history_name, open_engine, view_table
from fsql.engines.base import files_signature, source_files
from fsql.engines.stats import view_shape
from fsql.errors import NotBuiltError, RequestError
from fsql.online import OnlineStore, open_online_store
from fsql.parsing.project import ParsedFile
from fsql.registry import Registry, RegistryCache
from fsql.sample import ensure_fresh

RelationFor = Callable[[str], exp.Expression]


@dataclass(frozen=True)
class ViewPlan:
    """The PIT plan chosen for one view of a training set (None: the dialect's default) and why;
    ``unique_times``: its rows are known to have no two at the same (keys, event time), which lets
    the ASOF plan skip its tie check (see ``Context.unique_times``)."""

    plan: PitPlan | None
    why: str
    unique_times: bool = False
    deep_windows: bool = False  # see ``pit.deep_windows``


@dataclass(frozen=True)
class Definitions:
    """The registered definitions (the manifest) as the last successful build left them."""

    views: dict[str, FeatureView]
    training_sets: dict[str, TrainingSet]
    shapes: dict[str, ViewShape] = field(default_factory=dict)  # measured shape of each view's history

    def require_built(self) -> Definitions:
        if not self.views:
            raise NotBuiltError("the registry holds no feature views", hint="run `fsql build` first")
        return self


_COMPILED_ENTRIES = 64


def _load_definitions(registry: Registry) -> Definitions:
    snapshot = registry.snapshot()
    return Definitions(dict(snapshot.view_definitions), dict(snapshot.training_set_definitions),
                       registry.view_shapes())


def open_online(config: Config) -> OnlineStore:
    """The online store of ``config``; also how an engine's workers reopen it in their own process."""
    cfg = config.online
    if isinstance(cfg, RedisOnline):
        return open_online_store("redis", url=cfg.url, prefix=cfg.prefix, cluster=cfg.cluster)
    path = cfg.path if cfg.path == ":memory:" else str(config.resolve(cfg.path))
    return open_online_store("sqlite", path=path, prefix=config.name)


def online_reopenable(config: Config) -> bool:
    """Whether another process can open the same online store (an in-memory SQLite store cannot)."""
    return isinstance(config.online, RedisOnline) or config.online.path != ":memory:"


class Context:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._engine: Engine | None = None
        self._registry: Registry | None = None
        self._online: OnlineStore | None = None
        self._definitions: RegistryCache[Definitions] | None = None
        # compiled training-set SQL per request shape, valid for one Definitions object (see ``compiled``)
        self._compiled: tuple[Definitions | None, OrderedDict[Hashable, str]] = (None, OrderedDict())
        # what each view's rows are a function of, per views mapping (parsing a view's SQL costs milliseconds)
        self._inputs: tuple[Mapping[str, FeatureView] | None, dict[str, HistoryInputs | None]] = (None, {})
        self._engine_writes = False
        self._call_writes: bool | None = None  # inside a call (``warehouse``): whether it writes
        self.spines_in_use: set[str] = set()  # names of DataFrame spines registered with the engine now

    @classmethod
    def open(cls, root: str | Path = ".", overrides: dict[str, dict[str, Any]] | None = None) -> Context:
        return cls(load_config(root, overrides))

    # Resources ---------------------------------------------------------------------------------------
    @property
    def engine(self) -> Engine:
        """The warehouse, opened on first use: for writing unless a call said it only reads
        (see ``warehouse``)."""
        if self._engine is None:
            write = self._call_writes is not False
            self._engine = self._open_engine(read_only=not write)
            self._engine_writes = write
        return self._engine

    def _open_engine(self, *, read_only: bool) -> Engine:
        # A sample project's data is generated on first use, ending today, so the example's values
        # are fresh whenever a newcomer runs it; a user's own data folder is never touched.
        ensure_fresh(self.config.root)
        # Feature SQL may read only the declared sources: the engine refuses every other file.
        return open_engine(self.config.warehouse, self.config.root, read_only=read_only,
                           sources=list(self.config.sources.values()))

    @contextmanager
    def warehouse(self, *, write: bool) -> Iterator[None]:
        """Scope one call. The warehouse opens when the call first needs it (a build refused while
        parsing never touches it); a DuckDB file is held only until the call ends, and read-only
        when the call only reads, so a notebook's Store and a terminal's `fsql` work side by side."""
        if self._call_writes is not None:
            if write and not self._call_writes:
                raise RequestError("this call writes the warehouse, which a read-only session holds open",
                                   hint="run it outside the `with store.session():` block")
            yield  # a call inside a call (or inside a session)
            return
        if self._engine is not None and write and not self._engine_writes:
            self.close_engine()  # a read-only connection left open cannot serve a writer
        self._call_writes = write
        try:
            yield
        finally:
            self._call_writes = None
            if self.config.warehouse.locks_file:
                self.close_engine()

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = Registry.open(self.config.registry.url, base_dir=self.config.root)
        return self._registry

    @property
    def online_store(self) -> OnlineStore:
        if self._online is None:
            self._online = open_online(self.config)
        return self._online

    def close_engine(self) -> None:
        """Release the warehouse (a DuckDB file is locked while open) without closing the rest."""
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def close(self) -> None:
        self.close_engine()
        self._definitions = None
        if self._online is not None:
            self._online.close()
        if self._registry is not None:
            self._registry.close()
        self._registry = self._online = None

    # Definitions as registered -----------------------------------------------------------------------
    def definitions(self, max_age: float = 0.0, *, validate: bool = False) -> Definitions:
        """The registered definitions; ``max_age`` (seconds) lets a hot path reuse a recent read.

        Reading the registry costs milliseconds, ten times a Redis round trip. A registry write by this
        process (a build through any Store) invalidates the cache at once; a build by another process
        becomes visible within ``max_age`` seconds, or at once with ``validate`` (one small version
        query instead of the full read; see ``fsql.registry.RegistryCache``). The same Definitions
        object is returned while nothing changed, so what is cached per object stays valid.
        """
        if self._definitions is None:
            self._definitions = RegistryCache(self.registry, _load_definitions)
        return self._definitions.get(max_age, validate=validate)

    def invalidate(self) -> None:
        if self._definitions is not None:
            self._definitions.invalidate()

    def compiled(self, definitions: Definitions, key: Hashable, compile: Callable[[], str]) -> str:
        """``compile()``, remembered per ``key`` while ``definitions`` is the current registry read:
        generating a training set's SQL costs more than a small set's whole query."""
        owner, cache = self._compiled
        if owner is not definitions:
            cache = OrderedDict()
            self._compiled = (definitions, cache)
        sql = cache.get(key)
        if sql is None:
            sql = cache[key] = compile()
            if len(cache) > _COMPILED_ENTRIES:
                cache.popitem(last=False)
        else:
            cache.move_to_end(key)
        return sql

    # How names resolve on the warehouse ---------------------------------------------------------------
    @property
    def engine_dialect(self) -> str:
        return self.config.warehouse.engine

    def relation_for(self, dialect: str) -> RelationFor:
        """How a source or view name is read on an engine of ``dialect``."""
        schema = self.config.warehouse.schema

        def relation(name: str) -> exp.Expression:
            source = self.config.sources.get(name)
            if source is None:
                return view_table(schema, name)
            if dialect == self.engine_dialect:
                return self.engine.source_relation(source)
            return exp.to_table(source.table, dialect=dialect) if source.table else exp.table_(name, quoted=False)

        return relation

    def compile_body(self, parsed: ParsedFile, dialect: str, *, views: Mapping[str, ParsedFile] | None = None,
                     pretty: bool = False) -> str:
        """A file's query for ``dialect``; a feature view's gains its derived known time
        (``views``: the project's parsed views, whose timestamps upstream known times fall back to)."""
        query = parsed.query
        if parsed.kind == "feature_view":
            upstream = {n: views[n].timestamp for n in parsed.references if views and n in views}
            inputs = known_inputs(query, dialect=parsed.dialect, timestamp=parsed.timestamp, created=parsed.created,
                                  sources=set(self.config.sources), views=upstream, path=parsed.path,
                                  line=parsed.annotation_line("created"))
            query = derive_known_time(query, dialect=parsed.dialect, inputs=inputs, column=KNOWN_AT,
                                      created=parsed.created, path=parsed.path, file_line=parsed.file_line)
        names = set(self.config.sources) | set(parsed.references)
        resolved = resolve_names(query, names, self.relation_for(dialect))
        return to_dialect(resolved, parsed.dialect, dialect, pretty=pretty, path=parsed.path, line=parsed.line,
                          file_line=parsed.file_line)

    def pit_view(
        self,
        view: FeatureView,
        features: list[tuple[str, str]] | None = None,
        *,
        relation: exp.Expression | None = None,
        history: bool = False,
    ) -> pit.PitView:
        """The PIT compiler's view of ``view``: the live generated view by default, or (``history``)
        the persisted indexed copy where the warehouse keeps one."""
        schema = self.config.warehouse.schema
        indexed = history and relation is None and self.persists_history
        if relation is None:
            relation = view_table(schema, history_name(view.name) if indexed else view.name)
        return pit.pit_view_of(view, relation, features=features, indexed=indexed)

    @property
    def persists_history(self) -> bool:
        # Read from the config so that compiling for PostgreSQL never has to connect to it.
        return self.config.warehouse.persists_history

    def pit_query(
        self,
        spine: exp.Expression,
        spine_columns: Sequence[str],
        timestamp: str,
        refs: Sequence[FeatureRef],
        views: Mapping[str, FeatureView],
        *,
        dialect: str,
        mode: PitMode,
        ordinal: str | None = None,
        plan: PlanChoice = "auto",
        shapes: Mapping[str, ViewShape] | None = None,
        choices: Mapping[str, ViewPlan] | None = None,
        unique_ordinal: bool = False,
    ) -> exp.Query:
        """The point-in-time join of ``refs`` onto ``spine``, reading each view's history, with the plan
        per view from ``plan_choices`` (``choices``: computed already). The choice and its reason per
        view are left in the query's ``meta["pit_plans"]`` for ``fsql compile``."""
        if choices is None:
            choices = self.plan_choices(refs, spine_columns, views, dialect=dialect, mode=mode, plan=plan,
                                        shapes=shapes)
        pit_views = [
            replace(pv, unique_times=choices[pv.name].unique_times, deep_windows=choices[pv.name].deep_windows)
            for pv in self._pit_views(refs, spine_columns, views)
        ]
        plans = {name: c.plan for name, c in choices.items() if c.plan is not None}
        query = pit.compile_pit(spine, list(spine_columns), timestamp, pit_views, dialect=dialect, mode=mode,
                                ordinal=ordinal, plan=plans, unique_ordinal=unique_ordinal)
        query.meta["pit_plans"] = {name: (c.plan or "default", c.why) for name, c in choices.items()}
        return query

    def plan_choices(
        self,
        refs: Sequence[FeatureRef],
        spine_columns: Sequence[str],
        views: Mapping[str, FeatureView],
        *,
        dialect: str,
        mode: PitMode = "known-at",
        plan: PlanChoice = "auto",
        shapes: Mapping[str, ViewShape] | None = None,
        spine_rows: int | None = None,
    ) -> dict[str, ViewPlan]:
        """The PIT plan per view (None: the dialect's default) and why: ``plan`` for every view, or with
        "auto" each view's ``@pit_plan``, else the choice from its measured shape (``shapes``) and the
        spine's size where known (see ``pit.auto_plan``)."""
        choices: dict[str, ViewPlan] = {}
        default = capabilities(dialect).pit_plan
        for pv in self._pit_views(refs, spine_columns, views):
            annotated = views[pv.name].pit_plan
            shape = (shapes or {}).get(pv.name)
            chosen: PitPlan | None
            tie_free: bool | None = None  # asked only where the ASOF plan may run (it stats files)
            if plan != "auto":
                chosen, why = plan, f"{plan}: requested for this call"
            elif annotated and annotated != "auto" and pit.plan_available(annotated, dialect):
                chosen, why = annotated, f"{annotated}: @pit_plan of the view"  # type: ignore[assignment]
            else:
                # a view's file is compiled for every engine: a plan one of them lacks falls back to auto
                tie_free = self.unique_times(views[pv.name], views, shape, dialect, mode)
                chosen, why = pit.auto_plan(pv, shape, dialect, spine_rows, mode, tie_free=tie_free)
                if annotated and annotated != "auto":
                    why += f" (@pit_plan {annotated} is not available on {dialect})"
            unique = (chosen or default) == "asof" and (
                tie_free if tie_free is not None else self.unique_times(views[pv.name], views, shape, dialect, mode)
            )
            if unique:
                why += "; no two rows share (keys, event time) and its inputs are unchanged since measured: no tie check"
            choices[pv.name] = ViewPlan(chosen, why, unique, pit.deep_windows(pv, shape))
        return choices

    def unique_times(self, view: FeatureView, views: Mapping[str, FeatureView], shape: ViewShape | None,
                     dialect: str, mode: PitMode) -> bool:
        """Whether the ASOF plan (where the dialect runs it with the spine carried through) may take
        ``view``'s winning row from the ASOF join itself: it matches on event time there (event-time
        mode, or no created column), and the view's rows, when last measured, had no two at the same
        (keys, event time) and are the same rows now: their inputs (view versions and the size, time
        and inode of every file below) are unchanged. A view that reads a live table or calls a
        volatile function is never known to be unchanged."""
        caps = capabilities(dialect)
        if shape is None or shape.inputs is None or shape.rows == 0 or shape.tie_share > 0:
            return False
        if caps.asof is None or not caps.asof_carry_spine or not caps.materialized_cte:
            return False
        if mode != "event-time" and view.created is not None:
            return False
        return self.inputs_stamp(view, views) == shape.inputs

    def inputs_stamp(self, view: FeatureView, views: Mapping[str, FeatureView]) -> str | None:
        """A token that changes whenever ``view``'s rows can: the versions of the views it reads
        (itself included) and the files of the sources below them. None when something else can change
        them (a live table, a volatile function: see ``history_inputs``) or a file is missing."""
        owner, known = self._inputs
        if owner is not views:
            known = {}
            self._inputs = (views, known)
        if view.name not in known:
            known[view.name] = self.history_inputs(view, views)
        inputs = known[view.name]
        if inputs is None:
            return None
        parts = [f"{name}@{views[name].version}" for name in inputs.views]
        for name in inputs.sources:
            files = source_files(self.config.root, self.config.sources[name])
            if not files:
                return None
            parts.append(f"{name}:{files_signature(files)}")
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]

    def _pit_views(self, refs: Sequence[FeatureRef], spine_columns: Sequence[str],
                   views: Mapping[str, FeatureView]) -> list[pit.PitView]:
        outputs = output_names(refs, spine_columns)
        by_view: dict[str, list[tuple[str, str]]] = {}
        for ref in refs:
            by_view.setdefault(ref.view, []).append((ref.feature, outputs[ref]))
        return [self.pit_view(views[name], features, history=True) for name, features in by_view.items()]

    def measure_shape(self, view: FeatureView) -> ViewShape:
        """Measure and store the shape of ``view``'s history (one GROUP BY per entity), from which
        training sets choose its PIT plan (see ``pit.auto_plan``)."""
        relation = self.pit_view(view, history=True).relation
        # stamped before measuring: a file written meanwhile makes the stamp stale, never the shape
        views = self.definitions().views
        inputs = self.inputs_stamp(view, views) if view.name in views else None
        shape = replace(view_shape(self.engine, relation, view), inputs=inputs)
        self.registry.save_view_shape(view.name, view.version, shape)
        return shape

    def refresh_history(self, view: FeatureView, *, recreate: bool = False, full: bool = False,
                        views: Mapping[str, FeatureView] | None = None) -> HistoryRefresh | None:
        """Bring the persisted history of ``view`` (where the warehouse keeps one) up to date with its
        index: anew with ``recreate``, every row rewritten with ``full``, else only what changed.
        ``views``: the definitions its upstream views are looked up in (default: the registered ones)."""
        if not self.persists_history:
            return None
        engine = self.engine
        table = view_table(self.config.warehouse.schema, history_name(view.name))
        inputs = self.history_inputs(view, views if views is not None else self.definitions().views)
        return engine.refresh_history(view.name, pit.offline_index(self.pit_view(view), table, engine.dialect),
                                      recreate=recreate, full=full, inputs=inputs)

    def history_inputs(self, view: FeatureView, views: Mapping[str, FeatureView]) -> HistoryInputs | None:
        """The views and file sources ``view`` reads, transitively, when nothing else decides its rows:
        None if it reads a live table (a source declared with ``table``), an unknown relation or a
        view that calls a volatile function, whose rows can change without a build."""
        seen: set[str] = set()
        sources: set[str] = set()
        pending = [view]
        while pending:
            current = pending.pop()
            if current.name in seen:
                continue
            seen.add(current.name)
            try:
                if volatile_calls(parse_one(current.query, read=current.dialect)):
                    return None
            except SqlglotError:
                return None
            for name in current.depends_on:
                source = self.config.sources.get(name)
                if source is not None:
                    if source.table or not source.path:
                        return None
                    sources.add(name)
                elif name in views:
                    pending.append(views[name])
                else:
                    return None
        return HistoryInputs(views=tuple(sorted(seen)), sources=tuple(sorted(sources)))

    def rows_table(self, view: FeatureView) -> exp.Table:
        """Where the rows of ``view`` are read fastest: its indexed history where the warehouse keeps
        one (a materialization refreshes it first), else the view itself."""
        schema = self.config.warehouse.schema
        return view_table(schema, history_name(view.name) if self.persists_history else view.name)
