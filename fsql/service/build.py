"""Plan and build: feature files → validated definitions → generated views → registry.

A build validates everything first, then does all its warehouse work in one transaction nested in one
registry transaction: an error anywhere rolls both back, so a failed build changes nothing. `plan` is
the same build, rolled back: it binds every column on the engine (a missing column is reported by plan,
not only by build), sees what is missing from the warehouse, and reports the same diff build would.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import sqlglot
from sqlglot import exp

from fsql.compiler import pit
from fsql.compiler.indexes import source_indexes
from fsql.compiler.rewrites import generate
from fsql.compiler.views import column_lineage, to_dialect
from fsql.config import CONFIG_FILE, ModelConfig
from fsql.definitions import (
    KNOWN_AT,
    Column,
    Entity,
    FeatureView,
    Model,
    Project,
    RequestField,
    Source,
    TrainingSet,
    expand_refs,
    output_names,
)
from fsql.engines import BUILD_LOCK, history_name
from fsql.errors import ConfigError, EngineError, FeatureFileError, UnavailableError, did_you_mean
from fsql.models import PREDICTION, bind_inputs, file_digest, load_model, model_file
from fsql.parsing import governance
from fsql.parsing.git import head_commit
from fsql.parsing.project import ParsedFile, ParsedProject, parse_project
from fsql.registry import LineageEdge, RegistrySnapshot, model_fingerprint
from fsql.registry.diff import Change, diff_definitions
from fsql.service.context import Context

Progress = Callable[[str], None]
TIMESTAMP_TYPES = ("TIMESTAMP", "TIMESTAMP WITH TIME ZONE", "DATE", "TIMESTAMP_NS", "TIMESTAMP_MS", "TIMESTAMP_S")
KEY_TYPES_REFUSED = ("DOUBLE", "FLOAT")


@dataclass
class BuildResult:
    changes: list[Change]
    built: bool  # False when nothing changed (or for a plan)
    views: list[str] = field(default_factory=list)
    training_sets: list[str] = field(default_factory=list)
    reloaded: list[str] = field(default_factory=list)  # file sources copied into the warehouse again
    missing: list[str] = field(default_factory=list)  # generated relations absent from the warehouse

    @property
    def pending(self) -> list[Change]:
        return [c for c in self.changes if c.action != "unchanged"]

    @property
    def summary(self) -> str:
        if not self.built:
            if self.reloaded:
                return f"definitions unchanged; reloaded changed source data: {', '.join(self.reloaded)}"
            return "nothing to do: the registry and warehouse already match the feature files"
        counts: dict[str, int] = {}
        for change in self.changes:
            counts[change.action] = counts.get(change.action, 0) + 1
        parts = [f"{counts[a]} {a}" for a in ("added", "changed", "updated", "removed", "unchanged") if counts.get(a)]
        views = _plural(len(self.views), "feature view")
        sets = _plural(len(self.training_sets), "training set")
        return f"built {views} and {sets} ({', '.join(parts)})"

    def to_dict(self) -> dict[str, Any]:
        return {"built": self.built, "summary": self.summary, "changes": [c.to_dict() for c in self.changes],
                "missing": self.missing, "reloaded": self.reloaded}


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


class _RollBack(Exception):
    """Raised inside the build transaction to undo it: a plan, or a build with nothing to do."""


def plan(ctx: Context) -> BuildResult:
    """What `build` would change, computed by running the build and rolling it back."""
    return build(ctx, dry_run=True)


def build(
    ctx: Context,
    *,
    allow_breaking: bool = False,
    force: bool = False,
    dry_run: bool = False,
    progress: Progress | None = None,
    skip_models: bool = False,
) -> BuildResult:
    say = progress or (lambda _msg: None)
    parsed = parse_project(ctx.config)
    governance.enforce(parsed, ctx.config.governance)  # before the registry or warehouse is touched
    snapshot = ctx.registry.snapshot()
    engine = ctx.engine
    expected = set()
    for name in parsed.views:
        expected |= {name, f"{name}__latest"}
        if ctx.persists_history:
            expected.add(history_name(name))
    existing = engine.list_relations(ctx.config.warehouse.schema)
    missing = sorted(expected - set(existing))
    ctx.invalidate()
    builder = _Builder(ctx, parsed, snapshot, allow_breaking, say)
    builder.skip_models = skip_models
    result: BuildResult | None = None
    try:
        with ctx.registry.transaction() as tx, engine.transaction():
            project, compiled, lineage, loaded = builder.run(existing, missing)
            # Where an engine copied the files at build, the copy is what its views read, wherever the
            # files lie now (it reloads them when they change): only in-place readers compare.
            locations = ctx.config.source_locations() if engine.reads_files_in_place else None
            changes = diff_definitions(project, snapshot.view_definitions, snapshot.training_set_definitions,
                                       locations=locations, recorded=snapshot.source_locations)
            _note_missing(changes, missing)
            models_changed = {n: model_fingerprint(m) for n, m in project.models.items()} != snapshot.models
            # A warehouse built before fsql indexed its sources gets the indexes on the next build.
            nothing = (not force and not missing and not models_changed and not builder.indexed
                       and not any(c.action != "unchanged" for c in changes))
            result = BuildResult(changes, built=not (dry_run or nothing), views=list(project.views),
                                 training_sets=list(project.training_sets), reloaded=loaded, missing=missing)
            if dry_run or (nothing and not loaded):
                raise _RollBack
            tx.apply(project, compiled=compiled, lineage=lineage, git_commit=head_commit(ctx.config.root),
                     source_locations=locations)
            tx.reset_watermarks(_reading(project.views, {c.name for c in changes if c.kind == "source"}))
    except _RollBack:
        pass
    assert result is not None
    if not dry_run:
        # After the commit (a shape belongs to a registered version). Versions already measured keep
        # their shape unless sources were reloaded or, even when nothing else changed, the inputs it
        # was stamped with did (a source file rewritten); materialize measures again as data arrives.
        measured = ctx.registry.view_shapes()
        registered = ctx.definitions().views
        for name, view in project.views.items():
            if name not in registered:
                continue
            moved = name in measured and measured[name].inputs not in (None, ctx.inputs_stamp(view, registered))
            if moved or (result.built and (name not in measured or loaded or force)):
                say(f"measuring view {name}")
                ctx.measure_shape(view)
    return result


def _reading(views: dict[str, FeatureView], sources: set[str]) -> set[str]:
    """The views that read any of ``sources``, directly or through other views."""
    found: set[str] = set()
    grew = True
    while grew:
        grew = False
        for name, view in views.items():
            if name not in found and any(d in sources or d in found for d in view.depends_on):
                found.add(name)
                grew = True
    return found


class _Builder:
    """One build's work inside the transaction; holds what the steps share."""

    def __init__(self, ctx: Context, parsed: ParsedProject, snapshot: RegistrySnapshot, allow_breaking: bool,
                 say: Progress) -> None:
        self.ctx, self.parsed, self.snapshot = ctx, parsed, snapshot
        self.allow_breaking, self.say = allow_breaking, say
        self.engine = ctx.engine
        self.schema = ctx.config.warehouse.schema
        self._key_types: dict[tuple[str, str], tuple[str, str]] = {}  # (entity, key) -> (type, first file)
        self.skip_models = False
        self.indexed: list[str] = []  # indexes this build created on loaded sources

    def run(self, existing: dict[str, str], missing: list[str]
            ) -> tuple[Project, dict[str, dict[str, str]], list[LineageEdge], list[str]]:
        config, engine = self.ctx.config, self.engine
        # Two builds of one schema take turns: both would create the schema and load the sources.
        engine.hold_lock(BUILD_LOCK, doing=f"a build of schema '{self.schema}'")
        engine.ensure_schema()
        loaded = engine.prepare_sources(list(config.sources.values()))
        # the loaded copies of the file sources, as compiled view bodies name them
        source_tables = [engine.source_relation(s) for s in config.sources.values() if s.path and not s.table]
        for name in loaded:
            self.say(f"loaded source {name} into the warehouse")
        old_views = self.snapshot.view_definitions
        for name in old_views:
            if name not in self.parsed.views:
                for relation in (f"{name}__latest", history_name(name), name):
                    if relation in existing:
                        engine.drop_relation(relation)
        views: dict[str, FeatureView] = {}
        compiled: dict[str, dict[str, str]] = {}
        lineage: list[LineageEdge] = []
        for name, view_file in self.parsed.views.items():
            self.say(f"building view {name}")
            body = self.ctx.compile_body(view_file, engine.dialect, views=self.parsed.views)
            with located(view_file):
                engine.replace_view(name, body)
                columns = engine.describe(exp.select("*").from_(self._table(name)).sql(dialect=engine.dialect))
                # Before the history is computed from the view: its joins probe these indexes.
                self.indexed += engine.create_indexes(source_indexes([body], source_tables, engine.dialect))
            view = self._feature_view(view_file, columns)
            views[name] = view
            previous = old_views.get(name)
            if loaded or history_name(name) in missing or previous is None or previous.fingerprint != view.fingerprint:
                self.ctx.refresh_history(view, recreate=True, views=views)
            latest = pit.latest_per_entity(self.ctx.pit_view(view), dialect=engine.dialect)
            latest_sql = generate(latest, engine.dialect)
            engine.replace_view(f"{name}__latest", latest_sql)
            compiled[name] = {engine.dialect: body, f"{engine.dialect}:latest": latest_sql}
            lineage.extend(self._lineage(view_file))
        sets: dict[str, TrainingSet] = {}
        for name, set_file in self.parsed.training_sets.items():
            self.say(f"building training set {name}")
            training_set, sql = self._training_set(set_file, views)
            sets[name] = training_set
            lineage.extend(_set_lineage(training_set))
            with located(set_file):
                engine.replace_view(name, sql)
        project = Project(
            name=config.name,
            dialect=config.dialect,
            entities={n: Entity(n, e.keys, e.description) for n, e in config.entities.items()},
            sources={n: Source(n, s.path, s.table, s.format, s.description) for n, s in config.sources.items()},
            views=views,
            training_sets=sets,
            # Skipped to train a first model: its declared file does not exist before training.
            models={} if self.skip_models else self._models(sets),
        )
        return project, compiled, lineage, loaded

    def _models(self, sets: dict[str, TrainingSet]) -> dict[str, Model]:
        models = {}
        for name, model in self.ctx.config.models.items():
            if model.training_set not in sets:
                raise ConfigError(f"model '{name}' uses unknown training set '{model.training_set}'",
                                  path=CONFIG_FILE, line=model.line,
                                  hint=did_you_mean(model.training_set, sets) or "define it under features/")
            models[name] = _bind_model(self.ctx, model, sets[model.training_set])
        return models

    def _check_key_type(self, parsed: ParsedFile, entity: str, key: str, dtype: str, annotation: str) -> None:
        """Every file joining on an entity key gives it the same kind of type: the first view that
        selects it decides, the rest must match (an integer key compared with a string joins nothing
        on DuckDB and fails late on PostgreSQL)."""
        first = self._key_types.setdefault((entity, key), (dtype, parsed.path))
        if _key_family(first[0]) != _key_family(dtype):
            raise parsed.error(
                f"entity key '{key}' of entity '{entity}' has type {dtype} here but {first[0]} in {first[1]}",
                key=annotation,
                hint=f"CAST({key} AS {first[0]}) so every view and spine keys '{entity}' alike",
            )

    def _table(self, name: str) -> exp.Table:
        return exp.table_(name, db=self.schema, quoted=True)

    def _feature_view(self, parsed: ParsedFile, columns: list[Column]) -> FeatureView:
        entity = self.ctx.config.entities[parsed.entity]
        descriptions = dict(parsed.projections)
        by_name = {c.name: c for c in columns}
        for key in entity.keys:
            if key not in by_name:
                raise parsed.error(
                    f"entity key column '{key}' of entity '{entity.name}' is not selected",
                    key="entity",
                    hint=did_you_mean(key, by_name) or f"add {key} to the SELECT list",
                )
            dtype = by_name[key].dtype
            if dtype in KEY_TYPES_REFUSED or dtype.startswith("DECIMAL"):
                raise parsed.error(
                    f"entity key column '{key}' has type {dtype}; keys must be integers, strings or dates",
                    key="entity",
                    hint=f"CAST({key} AS BIGINT) or VARCHAR",
                )
            self._check_key_type(parsed, entity.name, key, dtype, "entity")
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
        reserved = {*entity.keys, parsed.timestamp, parsed.created, KNOWN_AT}
        if not [c for c in columns if c.name not in reserved]:
            raise parsed.error(f"feature view '{parsed.name}' selects no feature columns")
        previous = self.snapshot.view_definitions.get(parsed.name)
        if previous is not None and not self.allow_breaking:
            old_types = {c.name: c.dtype for c in previous.columns}
            for column in columns:
                before = old_types.get(column.name)
                if before and before != column.dtype:
                    raise parsed.error(
                        f"type of column '{column.name}' changed from {before} to {column.dtype}",
                        hint="this breaks models trained on the old type; cast it back, or run "
                             "`fsql build --allow-breaking`",
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
            pit_plan=parsed.pit_plan,
            owner=parsed.owner,
            tags=parsed.tags,
            description=parsed.header.description,
            query=parsed.query.sql(dialect=parsed.dialect),
            dialect=parsed.dialect,
            columns=tuple(Column(c.name, c.dtype, descriptions.get(c.name)) for c in columns),
            depends_on=tuple(parsed.references),
            fingerprint=parsed.fingerprint,
        )

    def _lineage(self, parsed: ParsedFile) -> list[LineageEdge]:
        sources = self.ctx.config.sources
        names = {n: n for n in parsed.references}
        return [
            LineageEdge(
                downstream_kind="view",
                downstream_name=parsed.name,
                downstream_column=column,
                upstream_kind="source" if relation in sources else "view",
                upstream_name=relation,
                upstream_column=upstream_column,
            )
            for column, upstream in column_lineage(parsed.query, names).items()
            for relation, upstream_column in upstream
        ]

    def _training_set(self, parsed: ParsedFile, views: dict[str, FeatureView]) -> tuple[TrainingSet, str]:
        engine = self.engine
        spine_sql = self.ctx.compile_body(parsed, engine.dialect)
        with located(parsed):
            spine_columns = engine.describe(spine_sql)
        names = [c.name for c in spine_columns]
        if parsed.timestamp not in names:
            raise parsed.error(f"@timestamp column '{parsed.timestamp}' is not selected by the spine",
                               key="timestamp", hint=did_you_mean(parsed.timestamp, names))

        def fail(message: str, hint: str | None) -> FeatureFileError:
            return parsed.error(message, key="features", hint=hint)

        refs = expand_refs(parsed.feature_refs, views, fail)
        spine_types = {c.name: c.dtype for c in spine_columns}
        for ref in refs:
            for key in views[ref.view].entity_keys:
                if key not in names:
                    raise parsed.error(
                        f"the spine does not select '{key}', the entity key of feature view '{ref.view}'",
                        key="features",
                        hint=f"select {key} in the spine query",
                    )
                self._check_key_type(parsed, views[ref.view].entity, key, spine_types[key], "features")
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
        spine = exp.Subquery(this=sqlglot.parse_one(spine_sql, read=engine.dialect))
        query = self.ctx.pit_query(spine, names, parsed.timestamp, refs, views, dialect=engine.dialect,
                                   mode="known-at")
        sql = to_dialect(query, engine.dialect, engine.dialect, path=parsed.path, line=parsed.line,
                         rewrite_asof=False)
        return definition, sql


def _bind_model(ctx: Context, config: ModelConfig, training_set: TrainingSet) -> Model:
    """The registered model: its file loaded once to check that its inputs are the set's features, and
    the column order to feed it recorded, so serving never has to guess."""
    fields = tuple(RequestField(name, dtype) for name, dtype in config.request_fields)
    model = Model(config.name, config.training_set, config.path, config.entry_point, config.kind,
                  max_batch=config.batching.max_batch, max_wait_ms=config.batching.max_wait_ms,
                  request_fields=fields)
    outputs = output_names(training_set.features, [c.name for c in training_set.spine_columns])
    features = [outputs[ref] for ref in training_set.features]
    for declared in fields:
        # A request field is its own column: the spine carries it in batch, the request online.
        if declared.name in features or declared.name in (training_set.timestamp, PREDICTION):
            raise ConfigError(f"model '{config.name}': request field '{declared.name}' has the name of a column of "
                              f"training set '{training_set.name}'", path=CONFIG_FILE, line=config.line,
                              hint="rename the request field")
    loaded = load_model(model, ctx.config.root, line=config.line)
    inputs = bind_inputs(loaded, features, request=[f.name for f in fields], line=config.line)
    digest = file_digest(model_file(model, ctx.config.root, config.line)) if model.path else None
    return replace(model, inputs=inputs, digest=digest)


def _key_family(dtype: str) -> str:
    """Types that join with each other: integers of any width, strings, dates, timestamps."""
    upper = dtype.upper()
    if "INT" in upper:
        return "integer"
    if upper.startswith(("VARCHAR", "TEXT", "STRING", "CHAR")):
        return "string"
    return "timestamp" if upper.startswith("TIMESTAMP") else upper


def _note_missing(changes: list[Change], missing: list[str]) -> None:
    """A view whose generated relations vanished from the warehouse (a new database, a manual DROP)
    is rebuilt: say so on its change."""
    for change in changes:
        gone = [m for m in missing if m in (change.name, f"{change.name}__latest", history_name(change.name))]
        if gone and change.action != "removed":
            change.reasons.append(f"missing from the warehouse: {', '.join(gone)}")
            if change.action == "unchanged":
                change.action = "updated"


def _set_lineage(training_set: TrainingSet) -> list[LineageEdge]:
    """Downstream lineage: which training-set column comes from which view feature."""
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


@contextmanager
def located(parsed: ParsedFile) -> Iterator[None]:
    """Engine errors while building a file's view point at the file, and at the line of the name the
    engine complains about when the message quotes one."""
    try:
        yield
    except EngineError as e:
        if e.path is not None or isinstance(e, UnavailableError):
            raise
        line = parsed.line
        quoted = re.findall(r'"([^"]+)"', e.message) + re.findall(r"'([^']+)'", e.message)
        for name in quoted:
            found = next((i for i in parsed.query.find_all(exp.Identifier)
                          if i.name == name and i.meta.get("line")), None)
            if found is not None:
                line = parsed.file_line(int(found.meta["line"])) or line
                break
        raise FeatureFileError(
            e.message.replace("\n", " "),
            path=parsed.path,
            line=line,
            hint="fix the query; it must run on the warehouse engine",
        ) from e
