"""The offline use cases: compile, point-in-time training sets, plain SQL over the generated views.

A spine is registered with the engine (DuckDB reads Arrow in place; PostgreSQL loads it with COPY),
named by a source, or given as SQL; it is never uploaded row by row.
"""

from __future__ import annotations

import uuid
from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import sqlglot
from sqlglot import exp

from fsql.compiler.rewrites import generate
from fsql.compiler.views import resolve_names, to_dialect
from fsql.config import SUPPORTED_DIALECTS
from fsql.definitions import (
    FeatureRef,
    PitMode,
    PlanChoice,
    TrainingSet,
    check_pit_mode,
    check_plan,
    expand_refs,
    parse_ref,
)
from fsql.engines import view_table
from fsql.errors import (
    EngineError,
    FeatureFileError,
    NotFoundError,
    QueryError,
    RequestError,
    UnavailableError,
    did_you_mean,
)
from fsql.parsing.project import parse_project, table_references
from fsql.service.context import Context

ORDINAL = "__fsql_row"
SPINE_TABLE = "__fsql_spine"
Spine = Any  # a polars/pandas DataFrame, an Arrow table, a source or view name, or a SQL query


def compile_sql(ctx: Context, name: str, dialect: str, *, pretty: bool = True, mode: PitMode = "known-at",
                plan: PlanChoice | None = None) -> str:
    """The exact SQL of a view or training set for ``dialect``, as the files define it now."""
    if dialect not in SUPPORTED_DIALECTS:
        raise RequestError(f"unsupported dialect '{dialect}'",
                           hint=did_you_mean(dialect, SUPPORTED_DIALECTS) or f"use one of {', '.join(SUPPORTED_DIALECTS)}")
    mode = check_pit_mode(mode)
    parsed = parse_project(ctx.config)
    if name in parsed.views:
        return ctx.compile_body(parsed.views[name], dialect, views=parsed.views, pretty=pretty)
    if name not in parsed.training_sets:
        known = [*parsed.views, *parsed.training_sets]
        raise NotFoundError(f"no feature view or training set named '{name}'", hint=did_you_mean(name, known))
    set_file = parsed.training_sets[name]
    definitions = ctx.definitions().require_built()
    views = definitions.views
    spine = exp.Subquery(this=resolve_names(set_file.query, set(set_file.references), ctx.relation_for(dialect)))
    if set_file.has_star:
        registered = definitions.training_sets.get(name)
        names = [c.name for c in registered.spine_columns] if registered else []
    else:
        names = [n for n, _ in set_file.projections]

    def fail(message: str, hint: str | None) -> FeatureFileError:
        return set_file.error(message, key="features", hint=hint)

    refs = expand_refs(set_file.feature_refs, views, fail)
    query = ctx.pit_query(spine, names, set_file.timestamp, refs, views, dialect=dialect, mode=mode,
                          plan=check_plan(plan), shapes=definitions.shapes)
    # The plan per view is data-dependent: say which one and why, first thing in the printed SQL (on
    # the WITH clause, which sqlglot prints before everything else; the text still parses back).
    notes = [f" PIT plan for {name}: {why} " for name, (_, why) in query.meta["pit_plans"].items()]
    (query.args.get("with_") or query).add_comments(notes)
    return to_dialect(query, dialect, dialect, pretty=pretty, path=set_file.path, line=set_file.line,
                      rewrite_asof=False)


def training_set(
    ctx: Context,
    name: str | None = None,
    *,
    features: Sequence[str] | None = None,
    spine: Spine = None,
    timestamp: str | None = None,
    mode: PitMode | None = None,
    plan: PlanChoice | None = None,
) -> pa.Table:
    """A point-in-time correct training set: the spine's rows in order, then one column per feature."""
    with _training_query(ctx, name, features=features, spine=spine, timestamp=timestamp, mode=mode,
                         plan=plan) as sql:
        return ctx.engine.arrow(sql)


@dataclass(frozen=True)
class WrittenSet:
    """A training set written as Parquet files by the engine."""

    path: Path
    rows: int
    files: int


def write_training_set(
    ctx: Context,
    directory: Path,
    name: str | None = None,
    *,
    features: Sequence[str] | None = None,
    spine: Spine = None,
    timestamp: str | None = None,
    mode: PitMode | None = None,
    plan: PlanChoice | None = None,
) -> WrittenSet:
    """The training set written as Parquet files into ``directory`` by the engine itself (Spark's
    writers, DuckDB's COPY, streamed batches on PostgreSQL): the client never holds the whole set.
    The files are numbered in the set's row order; an existing directory's Parquet files are replaced."""
    if directory.exists() and not directory.is_dir():
        raise RequestError(f"cannot write the training set into '{directory}': it is a file",
                           hint="name a directory, or a .parquet file for a single file")
    if directory.is_dir():
        for old in directory.glob("*.parquet"):
            old.unlink()
    with _training_query(ctx, name, features=features, spine=spine, timestamp=timestamp, mode=mode,
                         plan=plan) as sql:
        rows = ctx.engine.write_parquet(sql, directory)
    return WrittenSet(directory, rows, len(list(directory.glob("*.parquet"))))


@contextmanager
def _training_query(
    ctx: Context,
    name: str | None,
    *,
    features: Sequence[str] | None,
    spine: Spine,
    timestamp: str | None,
    mode: PitMode | None,
    plan: PlanChoice | None,
) -> Iterator[str]:
    """The training set's SQL in the engine's dialect, valid while the context is open (a DataFrame
    spine stays registered with the engine until then)."""
    # A notebook calls this in a loop: the registry read is reused while the registry's version says
    # nothing changed (a build anywhere is seen at once), and so is the SQL compiled for the same request.
    definitions = ctx.definitions(validate=True).require_built()
    views, sets = definitions.views, definitions.training_sets
    definition = None
    if name is not None:
        if name not in sets:
            raise NotFoundError(f"no training set named '{name}'", hint=did_you_mean(name, sets) or "run `fsql ls`")
        definition = sets[name]
    refs: list[FeatureRef] = (
        expand_refs([parse_ref(f) for f in features], views) if features is not None
        else list(definition.features) if definition else []
    )
    if not refs:
        raise RequestError("no features requested", hint="pass a training-set name or features=['view.feature', ...]")
    ts = timestamp or (definition.timestamp if definition else None)
    if ts is None:
        raise RequestError("the spine's timestamp column is unknown", hint="pass timestamp='label_ts'")
    mode = check_pit_mode(mode or "known-at")
    plan = check_plan(plan)
    engine = ctx.engine
    with _spine(ctx, spine, definition) as (relation, columns, ordinal, shape, rows):
        if ts not in columns:
            raise RequestError(f"the spine has no column '{ts}'",
                               hint=did_you_mean(ts, columns) or f"its columns are {', '.join(columns)}")
        for ref in refs:
            for key in views[ref.view].entity_keys:
                if key not in columns:
                    raise RequestError(f"the spine has no column '{key}', the entity key of '{ref.view}'",
                                       hint=f"add {key} to the spine")

        # the plans first (cheap): they depend on the spine's size, which the cached SQL must not
        choices = ctx.plan_choices(refs, columns, views, dialect=engine.dialect, mode=mode, plan=plan,
                                   shapes=definitions.shapes, spine_rows=rows)

        def compile() -> str:
            query = ctx.pit_query(relation, columns, ts, refs, views, dialect=engine.dialect, mode=mode,
                                  ordinal=ordinal, choices=choices, unique_ordinal=True)
            return generate(query, engine.dialect)

        if shape is None:
            yield compile()
        else:
            key = (shape, ts, tuple(refs), mode, tuple((n, c.plan, c.unique_times, c.deep_windows) for n, c in choices.items()),
                   engine.dialect)
            yield ctx.compiled(definitions, key, compile)


def query(ctx: Context, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
    """Plain SQL over the generated views; unqualified names resolve to the warehouse schema."""
    try:
        parsed = sqlglot.parse_one(sql, read=ctx.config.dialect)
    except sqlglot.errors.ParseError as e:
        raise QueryError(f"SQL syntax error: {str(e).splitlines()[0]}") from None
    engine = ctx.engine
    schema = ctx.config.warehouse.schema
    generated = set(engine.list_relations(schema))
    names = generated | set(ctx.config.sources)
    source_relation = ctx.relation_for(engine.dialect)

    def relation(name: str) -> exp.Expression:
        return view_table(schema, name) if name in generated else source_relation(name)

    resolved = resolve_names(parsed, names, relation)  # type: ignore[arg-type]
    try:
        return engine.arrow(to_dialect(resolved, ctx.config.dialect, engine.dialect), params)
    except EngineError as e:
        if isinstance(e, UnavailableError):
            raise
        raise QueryError(e.message, hint="check the SQL; `fsql ls` lists the generated views") from e


@contextmanager
def _spine(ctx: Context, spine: Spine, definition: TrainingSet | None
           ) -> Iterator[tuple[exp.Expression, list[str], str | None, Hashable | None, int | None]]:
    """The spine as a relation the engine can join: registered data, a source, or a SQL query; and,
    for registered data, its shape (name and column types: what the compiled SQL depends on) and
    its row count (what the plan choice weighs)."""
    engine = ctx.engine
    if spine is None:
        if definition is None:
            raise RequestError("no spine given", hint="pass spine= a DataFrame, a source name or a SQL query")
        # The registered spine query, not the files: a training set runs as it was last built.
        registered = sqlglot.parse_one(definition.query, read=definition.dialect)
        resolved = resolve_names(registered, set(definition.depends_on), ctx.relation_for(engine.dialect))  # type: ignore[arg-type]
        sql = to_dialect(resolved, definition.dialect, engine.dialect, path=definition.path, line=definition.line)
        yield (exp.Subquery(this=sqlglot.parse_one(sql, read=engine.dialect)),
               [c.name for c in definition.spine_columns], None, None, None)
        return
    if isinstance(spine, str):
        yield (*_named_or_sql_spine(ctx, spine), None, None)
        return
    table = to_arrow(spine)
    if ORDINAL in table.column_names:
        raise RequestError(f"the spine may not have a column named {ORDINAL}")
    columns = table.column_names
    # Arrow and polars columns are registered in place (no copy); the ordinal is one numpy range.
    table = table.append_column(ORDINAL, pa.array(np.arange(table.num_rows, dtype=np.int64)))
    # One name per call shape, so the compiled SQL can be reused; a nested call gets a fresh name.
    name = SPINE_TABLE if SPINE_TABLE not in ctx.spines_in_use else f"{SPINE_TABLE}_{uuid.uuid4().hex[:12]}"
    shape = (name, tuple((f.name, str(f.type)) for f in table.schema)) if name == SPINE_TABLE else None
    ctx.spines_in_use.add(name)
    try:
        relation = engine.register(name, table)
        try:
            yield relation, [*columns, ORDINAL], ORDINAL, shape, table.num_rows
        finally:
            engine.unregister(name)
    finally:
        ctx.spines_in_use.discard(name)


def _named_or_sql_spine(ctx: Context, spine: str) -> tuple[exp.Expression, list[str], None]:
    engine = ctx.engine
    known = set(ctx.config.sources) | set(ctx.definitions().views)
    if spine in known:
        relation = ctx.relation_for(engine.dialect)(spine)
        columns = [c.name for c in engine.describe(exp.select("*").from_(relation.copy()).sql(dialect=engine.dialect))]
        return relation, columns, None
    try:
        parsed = sqlglot.parse_one(spine, read=ctx.config.dialect)
    except sqlglot.errors.ParseError as e:
        raise RequestError(f"the spine is neither a source nor valid SQL: {str(e).splitlines()[0]}",
                           hint=f"sources are {', '.join(ctx.config.sources)}") from None
    if not isinstance(parsed, exp.Query):
        raise RequestError("a SQL spine must be a SELECT query")
    names = {t.name for t in table_references(parsed)}
    for unknown in sorted(names - known):
        raise NotFoundError(f"unknown source or view '{unknown}' in the spine query", hint=did_you_mean(unknown, known))
    resolved = resolve_names(parsed, names, ctx.relation_for(engine.dialect))
    sql = to_dialect(resolved, ctx.config.dialect, engine.dialect)
    columns = [c.name for c in engine.describe(sql)]
    return exp.Subquery(this=sqlglot.parse_one(sql, read=engine.dialect)), columns, None


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
    raise RequestError(f"cannot use a {type(data).__name__} as a spine",
                       hint="pass a polars or pandas DataFrame, an Arrow table, a source name or a SQL query")
