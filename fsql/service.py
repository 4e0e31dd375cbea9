"""Orchestration: the only module that wires parsing, compiler, engines, online stores and registry.

Build is validate-everything-first, then one warehouse transaction nested in one registry transaction:
an error anywhere rolls both back, so a failed build changes nothing.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import sqlglot
from sqlglot import exp

from fsql.compiler import pit
from fsql.compiler.views import column_lineage, resolve_names, to_dialect
from fsql.config import SUPPORTED_DIALECTS, Config, load_config
from fsql.definitions import (
    Column,
    Entity,
    FeatureRef,
    FeatureView,
    PitMode,
    Project,
    Source,
    TrainingSet,
)
from fsql.engines import Engine, open_engine, view_table
from fsql.errors import (
    CompileError,
    FeatureFileError,
    FsqlError,
    MaterializationError,
    NotFoundError,
    OnlineStoreError,
    did_you_mean,
)
from fsql.parsing.project import ParsedFile, ParsedProject, parse_project

Progress = Callable[[str], None]
ORDINAL = "__fsql_row"
TIMESTAMP_TYPES = ("TIMESTAMP", "TIMESTAMP WITH TIME ZONE", "DATE", "TIMESTAMP_NS", "TIMESTAMP_MS", "TIMESTAMP_S")


@dataclass
class Change:
    kind: str  # "feature_view" | "training_set"
    name: str
    action: str  # "added" | "changed" | "removed" | "unchanged"
    breaking: bool = False
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "action": self.action, "breaking": self.breaking,
                "reasons": self.reasons}


@dataclass
class BuildResult:
    changes: list[Change]
    built: bool  # False when nothing changed
    views: list[str] = field(default_factory=list)
    training_sets: list[str] = field(default_factory=list)
    reloaded: list[str] = field(default_factory=list)  # file sources copied into the warehouse again

    @property
    def summary(self) -> str:
        if not self.built:
            if self.reloaded:
                return f"definitions unchanged; reloaded changed source data: {', '.join(self.reloaded)}"
            return "nothing to do: the registry and warehouse already match the feature files"
        counts: dict[str, int] = {}
        for change in self.changes:
            counts[change.action] = counts.get(change.action, 0) + 1
        parts = [f"{counts[a]} {a}" for a in ("added", "changed", "removed", "unchanged") if counts.get(a)]
        return f"built {len(self.views)} feature views and {len(self.training_sets)} training sets ({', '.join(parts)})"

    def to_dict(self) -> dict[str, Any]:
        return {"built": self.built, "summary": self.summary, "changes": [c.to_dict() for c in self.changes]}


@dataclass
class RunResult:
    view: str
    version: str
    start: datetime | None
    end: datetime
    rows: int
    seconds: float
    outcome: str

    def to_dict(self) -> dict[str, Any]:
        return {"view": self.view, "version": self.version, "start": self.start, "end": self.end,
                "rows": self.rows, "seconds": round(self.seconds, 3), "outcome": self.outcome}


class Service:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._engine: Engine | None = None
        self._registry: Any = None
        self._online: Any = None
        self._definitions_cache: tuple[float, dict[str, FeatureView], dict[str, TrainingSet]] | None = None
        self._online_tables: dict[tuple[str, str], Any] = {}
        # How stale the definitions behind online reads may be (seconds); see `definitions`.
        self.online_definitions_max_age = 2.0

    @classmethod
    def open(cls, root: str | Path = ".", overrides: dict[str, dict[str, Any]] | None = None) -> Service:
        return cls(load_config(root, overrides))

    # Resources, opened lazily so read-only commands never touch what they do not need ---------------
    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = open_engine(self.config.warehouse, self.config.root)
        return self._engine

    @property
    def registry(self) -> Any:
        if self._registry is None:
            from fsql.registry import Registry

            self._registry = Registry.open(self.config.registry.url, base_dir=self.config.root)
        return self._registry

    @property
    def online_store(self) -> Any:
        if self._online is None:
            from fsql.config import RedisOnline
            from fsql.online import open_online_store

            cfg = self.config.online
            if isinstance(cfg, RedisOnline):
                self._online = open_online_store("redis", url=cfg.url, prefix=cfg.prefix)
            else:
                path = cfg.path if cfg.path == ":memory:" else str(self.config.resolve(cfg.path))
                self._online = open_online_store("sqlite", path=path, prefix=self.config.name)
        return self._online

    def close(self) -> None:
        for resource in (self._engine, self._online):
            if resource is not None:
                resource.close()
        if self._registry is not None and hasattr(self._registry, "close"):
            self._registry.close()
        self._engine = self._registry = self._online = None

    # Parsing and compilation ------------------------------------------------------------------------
    def parse(self) -> ParsedProject:
        return parse_project(self.config)

    def relation_for(self, dialect: str) -> Callable[[str], exp.Expression]:
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

    @property
    def engine_dialect(self) -> str:
        return self.config.warehouse.engine

    def compile_body(self, parsed: ParsedFile, dialect: str, *, pretty: bool = False) -> str:
        names = set(self.config.sources) | set(parsed.references)
        resolved = resolve_names(parsed.query, names, self.relation_for(dialect))
        return to_dialect(resolved, parsed.dialect, dialect, pretty=pretty, path=parsed.path, line=parsed.line)

    # Build ------------------------------------------------------------------------------------------
    def plan(self) -> list[Change]:
        parsed = self.parse()
        snapshot = self.registry.snapshot()
        return _diff(parsed, snapshot)

    def build(self, *, allow_breaking: bool = False, force: bool = False, progress: Progress | None = None) -> BuildResult:
        say = progress or (lambda _msg: None)
        parsed = self.parse()
        snapshot = self.registry.snapshot()
        changes = _diff(parsed, snapshot)
        engine = self.engine
        schema = self.config.warehouse.schema
        expected = set()
        for name in parsed.views:
            expected |= {name, f"{name}__latest"}
            if self.persists_history:
                expected.add(f"{name}__history")
        existing = engine.list_relations(schema)
        self._definitions_cache = None
        unchanged = all(c.action == "unchanged" for c in changes) and expected <= set(existing)
        # Engines that copy file sources (PostgreSQL) must reload changed files even when no
        # definition changed; reloading recreates the views, so it goes through the full build.
        stale = engine.stale_sources(list(self.config.sources.values()))
        if not force and unchanged and not stale:
            return BuildResult(changes, built=False, views=list(parsed.views), training_sets=list(parsed.training_sets))

        views: dict[str, FeatureView] = {}
        sets: dict[str, TrainingSet] = {}
        compiled: dict[str, dict[str, str]] = {}
        lineage: list[Any] = []
        with self.registry.transaction() as tx, engine.transaction():
            engine.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            loaded = engine.prepare_sources(list(self.config.sources.values()))
            for name in loaded:
                say(f"loaded source {name} into the warehouse")
            if unchanged and not force:
                result = BuildResult(changes, built=False, views=list(parsed.views),
                                     training_sets=list(parsed.training_sets), reloaded=loaded)
            removed = [c.name for c in changes if c.action == "removed"]
            for name in removed:
                for relation in (f"{name}__latest", f"{name}__history", name):
                    self._drop_relation(relation, existing.get(relation))
            for name, view_file in parsed.views.items():
                say(f"building view {name}")
                body = self.compile_body(view_file, engine.dialect)
                with _located(view_file):
                    self._create_view(name, body, existing)
                    columns = engine.describe(f'SELECT * FROM "{schema}"."{name}"')
                view = self._feature_view(view_file, columns, snapshot, allow_breaking)
                views[name] = view
                self.refresh_history(view, recreate=True)
                latest = pit.latest_per_entity(self._pit_view(view), dialect=engine.dialect)
                latest_sql = latest.sql(dialect=engine.dialect)
                self._create_view(f"{name}__latest", latest_sql, existing)
                compiled[name] = {engine.dialect: body, f"{engine.dialect}:latest": latest_sql}
                lineage.extend(self._lineage(view_file))
            for name, set_file in parsed.training_sets.items():
                say(f"building training set {name}")
                training_set, sql = self._training_set(set_file, views)
                sets[name] = training_set
                lineage.extend(self._set_lineage(training_set))
                if sql is not None:
                    with _located(set_file):
                        self._create_view(name, sql, existing)
            project = Project(
                name=self.config.name,
                dialect=self.config.dialect,
                entities={n: Entity(n, e.keys, e.description) for n, e in self.config.entities.items()},
                sources={n: Source(n, s.path, s.table, s.format, s.description) for n, s in self.config.sources.items()},
                views=views,
                training_sets=sets,
            )
            tx.apply(project, compiled=compiled, lineage=lineage)
        if unchanged and not force:
            return result
        return BuildResult(changes, built=True, views=list(views), training_sets=list(sets), reloaded=loaded)

    def _drop_relation(self, name: str, kind: str | None) -> None:
        if kind is None:
            return
        schema = self.config.warehouse.schema
        what = "VIEW" if "VIEW" in kind.upper() else "TABLE"
        cascade = " CASCADE" if self.engine.dialect == "postgres" else ""
        self.engine.execute(f'DROP {what} IF EXISTS "{schema}"."{name}"{cascade}')

    def _create_view(self, name: str, body: str, existing: dict[str, str]) -> None:
        schema = self.config.warehouse.schema
        if self.engine.dialect == "postgres":
            # CREATE OR REPLACE VIEW cannot drop or retype columns on PostgreSQL; dependants are
            # recreated later in the same transaction because views are built in dependency order.
            self.engine.execute(f'DROP VIEW IF EXISTS "{schema}"."{name}" CASCADE')
            self.engine.execute(f'CREATE VIEW "{schema}"."{name}" AS {body}')
        else:
            self.engine.execute(f'CREATE OR REPLACE VIEW "{schema}"."{name}" AS {body}')

    def _feature_view(self, parsed: ParsedFile, columns: list[Column], snapshot: Any, allow_breaking: bool) -> FeatureView:
        entity = self.config.entities[parsed.entity]
        descriptions = dict(parsed.projections)
        by_name = {c.name: c for c in columns}
        for key in entity.keys:
            if key not in by_name:
                raise parsed.error(
                    f"entity key column '{key}' of entity '{entity.name}' is not selected",
                    key="entity",
                    hint=did_you_mean(key, by_name) or f"add {key} to the SELECT list",
                )
            if by_name[key].dtype in ("DOUBLE", "FLOAT") or by_name[key].dtype.startswith("DECIMAL"):
                raise parsed.error(
                    f"entity key column '{key}' has type {by_name[key].dtype}; keys must be integers, strings or dates",
                    key="entity",
                    hint=f"CAST({key} AS BIGINT) or VARCHAR",
                )
        for key in ("timestamp", "created"):
            column = parsed.header.values.get(key)
            if not column:
                continue
            if column not in by_name:
                raise parsed.error(f"@{key} column '{column}' is not selected", key=key,
                                   hint=did_you_mean(str(column), by_name))
            if by_name[column].dtype not in TIMESTAMP_TYPES:
                raise parsed.error(
                    f"@{key} column '{column}' has type {by_name[column].dtype}, not a timestamp",
                    key=key,
                    hint=f"CAST({column} AS TIMESTAMP)",
                )
        reserved = {*entity.keys, parsed.timestamp, parsed.created}
        if not [c for c in columns if c.name not in reserved]:
            raise parsed.error(f"feature view '{parsed.name}' selects no feature columns")
        previous = snapshot.view_definitions.get(parsed.name)
        if previous is not None and not allow_breaking:
            old_types = {c.name: c.dtype for c in previous.columns}
            for column in columns:
                before = old_types.get(column.name)
                if before and before != column.dtype:
                    raise parsed.error(
                        f"type of column '{column.name}' changed from {before} to {column.dtype}",
                        hint="this breaks models trained on the old type; cast it back, or run `fsql build --allow-breaking`",
                    )
        return FeatureView(
            name=parsed.name,
            path=parsed.path,
            line=parsed.line,
            entity=entity.name,
            entity_keys=entity.keys,
            timestamp=parsed.timestamp,
            created=parsed.created,
            ttl=parsed.ttl,
            owner=parsed.owner,
            tags=parsed.tags,
            description=parsed.header.description,
            query=parsed.query.sql(dialect=parsed.dialect),
            dialect=parsed.dialect,
            columns=tuple(Column(c.name, c.dtype, descriptions.get(c.name)) for c in columns),
            depends_on=tuple(parsed.references),
            fingerprint=parsed.fingerprint,
        )

    def _lineage(self, parsed: ParsedFile) -> list[Any]:
        from fsql.registry import LineageEdge

        names = {n: n for n in parsed.references}
        edges = []
        for column, upstream in column_lineage(parsed.query, names).items():
            for relation, upstream_column in upstream:
                edges.append(
                    LineageEdge(
                        downstream_kind="view",
                        downstream_name=parsed.name,
                        downstream_column=column,
                        upstream_kind="view" if relation not in self.config.sources else "source",
                        upstream_name=relation,
                        upstream_column=upstream_column,
                    )
                )
        return edges

    @property
    def persists_history(self) -> bool:
        """Whether the warehouse keeps an indexed copy of each view's history for PIT joins."""
        from fsql.config import PostgresWarehouse

        warehouse = self.config.warehouse
        return isinstance(warehouse, PostgresWarehouse) and warehouse.history == "table"

    def _set_lineage(self, training_set: TrainingSet) -> list[Any]:
        """Downstream lineage: which training-set column comes from which view feature."""
        from fsql.registry import LineageEdge

        outputs = output_names(training_set.features, [c.name for c in training_set.spine_columns])
        return [
            LineageEdge(
                downstream_kind="training_set",
                downstream_name=training_set.name,
                downstream_column=outputs[ref],
                upstream_kind="view",
                upstream_name=ref.view,
                upstream_column=ref.feature,
            )
            for ref in training_set.features
        ]

    def _pit_view(self, view: FeatureView, features: Sequence[tuple[str, str]] | None = None,
                  relation: exp.Expression | None = None, *, history: bool = False) -> pit.PitView:
        """The PIT compiler's view of ``view``: the live generated view by default, or (``history``)
        the persisted indexed copy where the warehouse keeps one."""
        schema = self.config.warehouse.schema
        indexed = history and relation is None and self.persists_history
        if relation is None:
            relation = view_table(schema, f"{view.name}__history" if indexed else view.name)
        return pit.PitView(
            name=view.name,
            relation=relation,
            keys=view.entity_keys,
            timestamp=view.timestamp,
            created=view.created,
            ttl=view.ttl,
            features=tuple(features if features is not None else [(f, f) for f in view.feature_names]),
            value_columns=tuple((c.name, c.dtype) for c in view.features),
            indexed=indexed,
        )

    def refresh_history(self, view: FeatureView, *, recreate: bool = False) -> None:
        """Rewrite the persisted history of ``view`` from its generated view, with its covering index.

        PostgreSQL cannot index a view, and the PIT join's index plan is several times faster than
        any plan over the live view (bench/pit.py). The copy is taken in one transaction, so a
        training set never sees it half written."""
        if not self.persists_history:
            return
        schema = self.config.warehouse.schema
        table = view_table(schema, f"{view.name}__history")
        name = f'"{schema}"."{view.name}__history"'
        with self.engine.transaction():
            if recreate or not self.engine.relation_exists(schema, f"{view.name}__history"):
                # A build recreates the training-set views that read it (CASCADE), in this transaction.
                self.engine.execute(f"DROP TABLE IF EXISTS {name} CASCADE")
                self.engine.execute(f'CREATE TABLE {name} AS SELECT * FROM "{schema}"."{view.name}"')
                index = pit.offline_index(self._pit_view(view), table, self.engine.dialect)
                if index is not None:
                    self.engine.execute(index.sql(dialect=self.engine.dialect))
            else:
                # Keep the table (views depend on it) and its index; swap the rows atomically.
                self.engine.execute(f"DELETE FROM {name}")
                self.engine.execute(f'INSERT INTO {name} SELECT * FROM "{schema}"."{view.name}"')
            self.engine.execute(f"ANALYZE {name}")

    def _training_set(self, parsed: ParsedFile, views: dict[str, FeatureView]) -> tuple[TrainingSet, str | None]:
        engine = self.engine
        spine_sql = self.compile_body(parsed, engine.dialect)
        with _located(parsed):
            spine_columns = engine.describe(spine_sql)
        names = [c.name for c in spine_columns]
        if parsed.timestamp not in names:
            raise parsed.error(f"@timestamp column '{parsed.timestamp}' is not selected by the spine", key="timestamp",
                               hint=did_you_mean(parsed.timestamp, names))
        refs = expand_refs(parsed.feature_refs, views, parsed)
        for ref in refs:
            for key in views[ref.view].entity_keys:
                if key not in names:
                    raise parsed.error(
                        f"the spine does not select '{key}', the entity key of feature view '{ref.view}'",
                        key="features",
                        hint=f"select {key} in the spine query",
                    )
        definition = TrainingSet(
            name=parsed.name,
            path=parsed.path,
            line=parsed.line,
            timestamp=parsed.timestamp,
            features=tuple(refs),
            query=parsed.query.sql(dialect=parsed.dialect),
            dialect=parsed.dialect,
            owner=parsed.owner,
            tags=parsed.tags,
            description=parsed.header.description,
            depends_on=tuple(parsed.references),
            spine_columns=tuple(spine_columns),
            fingerprint=parsed.fingerprint,
        )
        query = self._pit_query(
            exp.Subquery(this=sqlglot.parse_one(spine_sql, read=engine.dialect)),
            names,
            parsed.timestamp,
            refs,
            views,
            dialect=engine.dialect,
            mode="known-at",
        )
        return definition, to_dialect(query, engine.dialect, engine.dialect, path=parsed.path, line=parsed.line,
                                      rewrite_asof=False)

    def _pit_query(self, spine: exp.Expression, spine_columns: Sequence[str], timestamp: str,
                   refs: Sequence[FeatureRef], views: dict[str, FeatureView], *, dialect: str, mode: PitMode,
                   ordinal: str | None = None) -> exp.Query:
        outputs = output_names(refs, spine_columns)
        by_view: dict[str, list[tuple[str, str]]] = {}
        for ref in refs:
            by_view.setdefault(ref.view, []).append((ref.feature, outputs[ref]))
        pit_views = [self._pit_view(views[name], features, history=True) for name, features in by_view.items()]
        return pit.compile_pit(spine, list(spine_columns), timestamp, pit_views, dialect=dialect, mode=mode,
                               ordinal=ordinal)

    # Definitions as registered ---------------------------------------------------------------------
    def definitions(self, max_age: float = 0.0) -> tuple[dict[str, FeatureView], dict[str, TrainingSet]]:
        """The registered definitions (the manifest), as the last successful build left them.

        ``max_age`` lets the online read path reuse a recent read: reading the registry costs
        milliseconds, ten times a Redis round trip. A build in this process invalidates the cache; a
        build elsewhere becomes visible within ``max_age`` seconds.
        """
        cached = self._definitions_cache
        if cached is not None and max_age > 0 and time.monotonic() - cached[0] <= max_age:
            return cached[1], cached[2]
        snapshot = self.registry.snapshot()
        views, sets = dict(snapshot.view_definitions), dict(snapshot.training_set_definitions)
        self._definitions_cache = (time.monotonic(), views, sets)
        return views, sets

    def freshness(self) -> dict[str, dict[str, datetime | None]]:
        """Per view (current version): when it was last materialized and its watermark."""
        return {
            record.name: {"last_materialized_at": record.last_materialized_at, "watermark": record.watermark}
            for record in self.registry.list_views()
        }

    def require_built(self, max_age: float = 0.0) -> tuple[dict[str, FeatureView], dict[str, TrainingSet]]:
        views, sets = self.definitions(max_age)
        if not views:
            raise NotFoundError("the registry holds no feature views", hint="run `fsql build` first")
        return views, sets

    def compile(self, name: str, dialect: str, *, pretty: bool = True, mode: PitMode = "known-at") -> str:
        if dialect not in SUPPORTED_DIALECTS:
            raise CompileError(f"unsupported dialect '{dialect}'",
                               hint=did_you_mean(dialect, SUPPORTED_DIALECTS) or f"use one of {', '.join(SUPPORTED_DIALECTS)}")
        parsed = self.parse()
        if name in parsed.views:
            return self.compile_body(parsed.views[name], dialect, pretty=pretty)
        if name not in parsed.training_sets:
            known = [*parsed.views, *parsed.training_sets]
            raise NotFoundError(f"no feature view or training set named '{name}'", hint=did_you_mean(name, known))
        set_file = parsed.training_sets[name]
        views, _ = self.require_built()
        spine = exp.Subquery(this=resolve_names(set_file.query, set(set_file.references), self.relation_for(dialect)))
        if set_file.has_star:
            _, sets = self.definitions()
            names = [c.name for c in sets[name].spine_columns] if name in sets else []
        else:
            names = [n for n, _ in set_file.projections]
        refs = expand_refs(set_file.feature_refs, views, set_file)
        query = self._pit_query(spine, names, set_file.timestamp, refs, views, dialect=dialect, mode=mode)
        return to_dialect(query, dialect, dialect, pretty=pretty, path=set_file.path, line=set_file.line,
                          rewrite_asof=False)

    def query(self, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
        """Plain SQL over the generated views; unqualified names resolve to the warehouse schema."""
        try:
            query = sqlglot.parse_one(sql, read=self.config.dialect)
        except sqlglot.errors.ParseError as e:
            raise FsqlError(f"SQL syntax error: {str(e).splitlines()[0]}") from None
        schema = self.config.warehouse.schema
        generated = set(self.engine.list_relations(schema))
        names = generated | set(self.config.sources)

        def relation(name: str) -> exp.Expression:
            return view_table(schema, name) if name in generated else self.relation_for(self.engine.dialect)(name)

        resolved = resolve_names(query, names, relation)  # type: ignore[arg-type]
        return self.engine.arrow(to_dialect(resolved, self.config.dialect, self.engine.dialect), params)

    # Materialization and online reads ---------------------------------------------------------------
    def online_table(self, view: FeatureView) -> Any:
        from fsql.engines.base import arrow_type
        from fsql.online import OnlineTable

        cached = self._online_tables.get((view.name, view.fingerprint))
        if cached is not None:
            return cached
        table = self._online_tables[(view.name, view.fingerprint)] = OnlineTable(
            view=view.name,
            version=view.version,
            entity_keys=view.entity_keys,
            features=view.feature_names,
            feature_types=tuple(arrow_type(c.dtype) for c in view.features),
            ttl=view.ttl,
        )
        return table

    def materialize(
        self,
        names: Sequence[str] | None = None,
        *,
        full: bool = False,
        start: datetime | None = None,
        end: datetime | None = None,
        progress: Callable[[str, int], None] | None = None,
        batch_size: int = 50_000,
    ) -> list[RunResult]:
        """Upsert the latest row per entity of each view into the online store, newer-wins.

        Incremental by default: only rows that became eligible (event time reached and, with
        ``@created``, known) since the view version's watermark. ``full`` recomputes from the start;
        ``start``/``end`` backfill a window (newer stored values are never overwritten).
        """
        views, _ = self.require_built()
        selected = list(names) if names else list(views)
        for name in selected:
            if name not in views:
                raise NotFoundError(f"no feature view named '{name}'", hint=did_you_mean(name, views) or "run `fsql ls`")
        run_end = _utc(end) if end else datetime.now(UTC)
        results = []
        for name in selected:
            results.append(self._materialize_view(views[name], full=full, start=_utc(start) if start else None,
                                                  end=run_end, progress=progress, batch_size=batch_size))
        return results

    def _materialize_view(self, view: FeatureView, *, full: bool, start: datetime | None, end: datetime,
                          progress: Callable[[str, int], None] | None, batch_size: int) -> RunResult:
        from fsql.online import CREATED, EVENT_TS

        registry, engine, store = self.registry, self.engine, self.online_store
        table = self.online_table(view)
        watermark = registry.watermark(view.name, view.version)
        window_start = start if start is not None else (None if full else watermark)
        if start is None and window_start is not None and not store.has_marker(table):
            # The store lost this version's data since the last run (Redis restarted without
            # persistence, a deleted file): an incremental run would leave holes, so recompute all.
            window_start = None
        if window_start is not None and window_start >= end:
            return RunResult(view.name, view.version, window_start, end, 0, 0.0, "skipped")
        # A backfill of an old window must not move the watermark past rows it never looked at.
        advances = start is None or (watermark is not None and start <= watermark)
        run_id = registry.start_run(view.name, view.version, window_start, end)
        began = time.perf_counter()
        try:
            # Training sets on an engine with a persisted history read it: refresh it with the same
            # data this run serves online, so offline and online agree.
            self.refresh_history(view)
        except FsqlError as e:
            registry.finish_run(run_id, rows=0, outcome="failed", error=str(e))
            raise MaterializationError(f"refreshing the history of '{view.name}' failed: {e}") from e
        rows = 0
        schema = pa.schema(
            [pa.field(k, arrow_type_of(view, k)) for k in view.entity_keys]
            + [pa.field(EVENT_TS, pa.timestamp("us", tz="UTC")), pa.field(CREATED, pa.timestamp("us", tz="UTC"))]
            + [pa.field(f, t) for f, t in zip(table.features, table.feature_types, strict=True)]
        )

        try:
            # Redis without persistence loses every key when it restarts, and the client reconnects
            # transparently: a run that spans a restart must fail, not advance the watermark.
            instance = store.instance_id()
            sql, params = self._latest_sql(view, window_start, end)
            for batch in engine.batches(sql, params, batch_size=batch_size):
                batch = _online_batch(batch, view, schema)
                store.write_batch(table, batch)
                rows += batch.num_rows
                if progress:
                    progress(view.name, batch.num_rows)
            if store.instance_id() != instance:
                raise OnlineStoreError(
                    "the online store's server restarted during the run, so rows written before the restart "
                    "may be lost",
                    hint="if it lost data written by earlier runs too, run `fsql materialize --full`",
                )
        except FsqlError as e:
            registry.finish_run(run_id, rows=rows, outcome="failed", error=str(e))
            raise MaterializationError(
                f"materializing '{view.name}' failed after {rows} rows: {e}",
                hint="the watermark did not advance; fix the cause and run `fsql materialize` again",
            ) from e
        except Exception as e:
            registry.finish_run(run_id, rows=rows, outcome="failed", error=f"{type(e).__name__}: {e}")
            raise
        duration = time.perf_counter() - began
        if advances:
            store.set_marker(table)
        registry.finish_run(run_id, rows=rows, outcome="success", watermark=end if advances else None)
        return RunResult(view.name, view.version, window_start, end, rows, duration, "success")

    def _latest_sql(self, view: FeatureView, start: datetime | None, end: datetime) -> tuple[str, list[Any]]:
        """Latest row per entity among rows that became eligible in (start, end], as parameters."""
        engine = self.engine
        ts = exp.column(view.timestamp, quoted=True)
        eligible: exp.Expression = ts
        if view.created:
            eligible = exp.Greatest(this=ts, expressions=[
                exp.Coalesce(this=exp.column(view.created, quoted=True), expressions=[ts.copy()])])
        params: list[Any] = []

        def param(value: datetime) -> exp.Expression:
            params.append(value)
            return exp.cast(exp.Parameter(this=exp.Literal.number(len(params))), exp.DataType.build("timestamptz"))

        condition: exp.Expression = exp.LTE(this=eligible.copy(), expression=param(end))
        if start is not None:
            condition = exp.and_(exp.GT(this=eligible.copy(), expression=param(start)), condition)
        # Only rows at their entity's greatest event time can win (the tie order starts with event_ts):
        # dropping the others first spares the full tie-order sort most rows (3-4x faster on DuckDB).
        best = exp.to_identifier("__fsql_best_ts", quoted=True)
        window = (
            exp.select("*").from_(view_table(self.config.warehouse.schema, view.name)).where(condition)
            .select(exp.alias_(exp.Window(this=exp.Max(this=ts.copy()),
                                          partition_by=[exp.column(k, quoted=True) for k in view.entity_keys]), best))
        )
        relation = exp.Subquery(
            this=exp.select("*").from_(window.subquery("__fsql_eligible"))
            .where(exp.EQ(this=ts.copy(), expression=exp.column(best.copy()))),
            alias=exp.TableAlias(this=exp.to_identifier("__fsql_window")),
        )
        query = pit.latest_per_entity(self._pit_view(view, relation=relation), dialect=engine.dialect,
                                      as_of=param(end), apply_ttl=False)
        return query.sql(dialect=engine.dialect), params

    def online(
        self,
        features: Sequence[str] | str,
        entities: Mapping[str, Sequence[Any]],
        *,
        now: datetime | None = None,
        as_dicts: bool = False,
    ) -> Any:
        """Online values for entities, with a per-feature status: present, missing or stale."""
        import polars as pl

        views, sets = self.require_built(self.online_definitions_max_age)
        if isinstance(features, str):
            if features in sets:
                refs = list(sets[features].features)
            elif features in views:
                refs = expand_refs([FeatureRef(features, "*")], views, None)
            else:
                refs = expand_refs([parse_ref(features)], views, None)
        else:
            refs = expand_refs([parse_ref(f) for f in features], views, None)
        columns = {k: list(v) for k, v in entities.items()}
        lengths = {len(v) for v in columns.values()}
        if len(lengths) > 1:
            raise FsqlError("entity columns have different lengths", hint="pass one value per entity in every key column")
        count = lengths.pop() if lengths else 0
        outputs = output_names(refs, list(columns))
        by_view: dict[str, list[FeatureRef]] = {}
        for ref in refs:
            by_view.setdefault(ref.view, []).append(ref)
        requests = []
        for name in by_view:
            view = views[name]
            missing = [k for k in view.entity_keys if k not in columns]
            if missing:
                raise FsqlError(f"feature view '{name}' needs entity key(s) {', '.join(missing)}",
                                hint=f"pass entities={{{', '.join(repr(k) + ': [...]' for k in view.entity_keys)}}}")
            keys = [tuple(_cast_key(columns[k][i], view.column(k).dtype, k) for k in view.entity_keys)  # type: ignore[union-attr]
                    for i in range(count)]
            requests.append((self.online_table(view), keys))
        results = self.online_store.read(requests)
        now = _utc(now) if now else datetime.now(UTC)
        data: dict[str, list[Any]] = {k: v for k, v in columns.items()}
        for (table, _keys), rows in zip(requests, results, strict=True):
            view = views[table.view]
            stale_before = now - view.ttl if view.ttl else None
            for ref in by_view[table.view]:
                index = table.features.index(ref.feature)
                values, statuses = [], []
                for row in rows:
                    if row is None:
                        values.append(None)
                        statuses.append("missing")
                    elif stale_before is not None and row.event_ts < stale_before:
                        values.append(None)
                        statuses.append("stale")
                    else:
                        values.append(row.values[index])
                        statuses.append("present")
                data[outputs[ref]] = values
                data[f"{outputs[ref]}__status"] = statuses
        if as_dicts:
            return [{k: v[i] for k, v in data.items()} for i in range(count)]
        if count <= 16:
            # Row orientation builds a small frame several times faster than one Series per column,
            # which dominates a single-entity read (bench/online.py).
            names = list(data)
            return pl.DataFrame(list(zip(*data.values(), strict=True)), schema=names, orient="row", strict=False)
        return pl.DataFrame(data, strict=False)

    # Training sets -----------------------------------------------------------------------------------
    def training_set(
        self,
        name: str | None = None,
        *,
        features: Sequence[str] | None = None,
        spine: Any = None,
        timestamp: str | None = None,
        mode: PitMode | None = None,
    ) -> pa.Table:
        views, sets = self.require_built()
        definition = None
        if name is not None:
            if name not in sets:
                raise NotFoundError(f"no training set named '{name}'", hint=did_you_mean(name, sets) or "run `fsql ls`")
            definition = sets[name]
        refs = (
            expand_refs([parse_ref(f) for f in features], views, None) if features is not None
            else list(definition.features) if definition else None
        )
        if not refs:
            raise FsqlError("no features requested", hint="pass a training-set name or features=['view.feature', ...]")
        ts = timestamp or (definition.timestamp if definition else None)
        if ts is None:
            raise FsqlError("the spine's timestamp column is unknown", hint="pass timestamp='label_ts'")
        mode = mode or "known-at"
        if mode not in ("known-at", "event-time"):
            raise FsqlError(f"unknown PIT mode '{mode}'", hint="use 'known-at' or 'event-time'")
        engine = self.engine
        with self._spine(spine, definition) as (relation, columns, ordinal):
            if ts not in columns:
                raise FsqlError(f"the spine has no column '{ts}'", hint=did_you_mean(ts, columns) or f"its columns are {', '.join(columns)}")
            for ref in refs:
                for key in views[ref.view].entity_keys:
                    if key not in columns:
                        raise FsqlError(f"the spine has no column '{key}', the entity key of '{ref.view}'",
                                        hint=f"add {key} to the spine")
            query = self._pit_query(relation, columns, ts, refs, views, dialect=engine.dialect, mode=mode, ordinal=ordinal)
            return engine.arrow(query.sql(dialect=engine.dialect))

    @contextmanager
    def _spine(self, spine: Any, definition: TrainingSet | None) -> Iterator[tuple[exp.Expression, list[str], str | None]]:
        """The spine as a relation the engine can join: registered data, a source, or a SQL query."""
        engine = self.engine
        if spine is None:
            if definition is None:
                raise FsqlError("no spine given", hint="pass spine= a DataFrame, a source name or a SQL query")
            # The registered spine query, not the files: a training set runs as it was last built.
            query = sqlglot.parse_one(definition.query, read=definition.dialect)
            resolved = resolve_names(query, set(definition.depends_on), self.relation_for(engine.dialect))  # type: ignore[arg-type]
            sql = to_dialect(resolved, definition.dialect, engine.dialect, path=definition.path, line=definition.line)
            yield exp.Subquery(this=sqlglot.parse_one(sql, read=engine.dialect)), [c.name for c in definition.spine_columns], None
            return
        if isinstance(spine, str):
            known = set(self.config.sources) | set(self.definitions(self.online_definitions_max_age)[0])
            if spine in known:
                relation = self.relation_for(engine.dialect)(spine)
                columns = [c.name for c in engine.describe(exp.select("*").from_(relation.copy()).sql(dialect=engine.dialect))]
                yield relation, columns, None
                return
            try:
                query = sqlglot.parse_one(spine, read=self.config.dialect)
            except sqlglot.errors.ParseError as e:
                raise FsqlError(f"the spine is neither a source nor valid SQL: {str(e).splitlines()[0]}",
                                hint=f"sources are {', '.join(self.config.sources)}") from None
            if not isinstance(query, exp.Query):
                raise FsqlError("a SQL spine must be a SELECT query")
            from fsql.parsing.project import table_references

            names = {t.name for t in table_references(query)}
            for unknown in sorted(names - known):
                raise FsqlError(f"unknown source or view '{unknown}' in the spine query", hint=did_you_mean(unknown, known))
            resolved = resolve_names(query, names, self.relation_for(engine.dialect))
            sql = to_dialect(resolved, self.config.dialect, engine.dialect)
            columns = [c.name for c in engine.describe(sql)]
            yield exp.Subquery(this=sqlglot.parse_one(sql, read=engine.dialect)), columns, None
            return
        table = to_arrow(spine)
        if ORDINAL in table.column_names:
            raise FsqlError(f"the spine may not have a column named {ORDINAL}")
        columns = table.column_names
        table = table.append_column(ORDINAL, pa.array(range(table.num_rows), pa.int64()))
        name = f"__fsql_spine_{uuid.uuid4().hex[:12]}"
        relation = engine.register(name, table)
        try:
            yield relation, [*columns, ORDINAL], ORDINAL
        finally:
            engine.unregister(name)


def to_arrow(data: Any) -> pa.Table:
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    module = type(data).__module__
    if module.startswith("polars"):
        return data.to_arrow()
    if module.startswith("pandas"):
        return pa.Table.from_pandas(data, preserve_index=False)
    raise FsqlError(f"cannot use a {type(data).__name__} as a spine",
                    hint="pass a polars or pandas DataFrame, an Arrow table, a source name or a SQL query")


def parse_ref(text: str) -> FeatureRef:
    view, sep, feature = text.partition(".")
    if not sep or not view or not feature:
        raise FsqlError(f"invalid feature reference '{text}'", hint="write view.feature or view.*")
    return FeatureRef(view, feature)


def expand_refs(refs: Sequence[FeatureRef], views: dict[str, FeatureView], parsed: ParsedFile | None) -> list[FeatureRef]:
    expanded: list[FeatureRef] = []

    def fail(message: str, hint: str | None) -> FsqlError:
        if parsed is not None:
            return parsed.error(message, key="features", hint=hint)
        return NotFoundError(message, hint=hint)

    for ref in refs:
        view = views.get(ref.view)
        if view is None:
            raise fail(f"unknown feature view '{ref.view}'", did_you_mean(ref.view, views))
        if ref.feature == "*":
            expanded.extend(FeatureRef(ref.view, f) for f in view.feature_names)
        elif ref.feature in view.feature_names:
            expanded.append(ref)
        else:
            raise fail(f"feature view '{ref.view}' has no feature '{ref.feature}'",
                       did_you_mean(ref.feature, view.feature_names) or f"its features are {', '.join(view.feature_names)}")
    unique: list[FeatureRef] = []
    for ref in expanded:
        if ref not in unique:
            unique.append(ref)
    return unique


def output_names(refs: Sequence[FeatureRef], spine_columns: Sequence[str]) -> dict[FeatureRef, str]:
    """A feature keeps its own name unless another requested view or a spine column shares it;
    then it is named ``<view>__<feature>`` (the documented rule)."""
    counts: dict[str, int] = {}
    for ref in refs:
        counts[ref.feature] = counts.get(ref.feature, 0) + 1
    taken = set(spine_columns)
    return {ref: ref.feature if counts[ref.feature] == 1 and ref.feature not in taken else f"{ref.view}__{ref.feature}"
            for ref in refs}


def _diff(parsed: ParsedProject, snapshot: Any) -> list[Change]:
    changes: list[Change] = []
    old_views: dict[str, str] = dict(snapshot.views)
    old_sets: dict[str, str] = dict(snapshot.training_sets)
    definitions: dict[str, FeatureView] = snapshot.view_definitions
    for kind, files, old in (("feature_view", parsed.views, old_views), ("training_set", parsed.training_sets, old_sets)):
        for name, file in files.items():
            if name not in old:
                changes.append(Change(kind, name, "added"))
            elif old[name] != file.fingerprint:
                change = Change(kind, name, "changed")
                doc = definitions.get(name)
                if doc and kind == "feature_view":
                    _classify(change, file, doc)
                changes.append(change)
            else:
                changes.append(Change(kind, name, "unchanged"))
        for name in old:
            if name not in files:
                changes.append(Change(kind, name, "removed", breaking=True, reasons=["removed"]))
    return changes


def _classify(change: Change, file: ParsedFile, old: FeatureView) -> None:
    """Breaking: something a consumer relies on disappeared or changed meaning; else compatible."""
    old_columns = [c.name for c in old.columns]
    new_columns = [n for n, _ in file.projections]
    if not file.has_star:
        removed = [c for c in old_columns if c not in new_columns]
        added = [c for c in new_columns if c not in old_columns]
        if removed:
            change.breaking = True
            change.reasons.append(f"columns removed: {', '.join(removed)}")
        if added:
            change.reasons.append(f"columns added: {', '.join(added)}")
    for key, label in (("timestamp", "timestamp"), ("created", "created")):
        if getattr(old, key) != file.header.values.get(key):
            change.breaking = True
            change.reasons.append(f"{label} column changed")
    if old.ttl != file.ttl:
        change.reasons.append("ttl changed")
    if old.entity != file.header.values.get("entity"):
        change.breaking = True
        change.reasons.append("entity changed")
    if not change.reasons:
        change.reasons.append("query changed")



def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def arrow_type_of(view: FeatureView, column: str) -> pa.DataType:
    from fsql.engines.base import arrow_type

    found = view.column(column)
    return arrow_type(found.dtype) if found else pa.string()


def _online_batch(batch: pa.RecordBatch, view: FeatureView, schema: pa.Schema) -> pa.RecordBatch:
    """The engine's latest rows renamed and cast to what the online store expects."""
    from fsql.online import CREATED, EVENT_TS

    arrays = []
    for field_ in schema:
        source = {EVENT_TS: view.timestamp, CREATED: view.created}.get(field_.name, field_.name)
        if source is None:
            arrays.append(pa.nulls(batch.num_rows, field_.type))
            continue
        column = batch.column(batch.schema.get_field_index(source))
        if pa.types.is_timestamp(field_.type) and pa.types.is_timestamp(column.type) and column.type.tz is None \
                and field_.type.tz is not None:
            column = column.cast(pa.timestamp("us")).cast(field_.type)  # naive timestamps are UTC
        elif pa.types.is_date(column.type) and pa.types.is_timestamp(field_.type):
            column = column.cast(pa.timestamp("us")).cast(field_.type)
        arrays.append(column.cast(field_.type) if column.type != field_.type else column)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _cast_key(value: Any, dtype: str, name: str) -> Any:
    """Entity key values from a request (often strings from a CLI or JSON) cast to the key's type."""
    if value is None:
        return None  # a NULL key never matches (PIT rule 1): the entity is reported missing
    upper = dtype.upper()
    try:
        if "INT" in upper and not isinstance(value, int):
            return int(value)
        if upper == "VARCHAR" and not isinstance(value, str):
            return str(value)
    except (TypeError, ValueError):
        raise FsqlError(f"entity key {name}={value!r} is not a valid {dtype}") from None
    return value


@contextmanager
def _located(parsed: ParsedFile) -> Iterator[None]:
    """Engine errors while building a file's view point at the file, and at the line of the name the
    engine complains about when the message quotes one."""
    from fsql.errors import EngineError

    try:
        yield
    except EngineError as e:
        if e.path is not None:
            raise
        import re

        line = parsed.line
        quoted = re.findall(r'"([^"]+)"', e.message) + re.findall(r"'([^']+)'", e.message)
        for name in quoted:
            for identifier in parsed.query.find_all(exp.Identifier):
                if identifier.name == name and identifier.meta.get("line"):
                    line = parsed.file_line(int(identifier.meta["line"])) or line
                    break
            else:
                continue
            break
        raise FeatureFileError(
            e.message.replace("\n", " "),
            path=parsed.path,
            line=line,
            hint="fix the query; it must run on the warehouse engine",
        ) from e
