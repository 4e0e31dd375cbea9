"""Discover, render, parse and statically validate every feature file of a project.

The result is engine-independent: names are checked against the project's sources and views, the view
graph is ordered (a cycle is an error), and each view gets a content fingerprint. Column types come
later, from the engine (``fsql.service``), because only the engine knows a source's schema.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ParseError, SqlglotError

from fsql.compiler.rewrites import node_line
from fsql.config import SUPPORTED_DIALECTS, Config
from fsql.definitions import FeatureRef, fingerprint
from fsql.errors import FeatureFileError, ResolutionError, did_you_mean
from fsql.parsing.header import Header, parse_header
from fsql.parsing.library_log import captured
from fsql.parsing.limits import check_nesting, too_deep
from fsql.parsing.safety import check_query
from fsql.parsing.templating import Renderer, read_text

# Relations fsql generates next to a view (``<view>__latest``...) and loads sources into
# (``src__<source>``); a user's name must never collide with them.
RESERVED_SUFFIXES = ("__latest", "__history", "__known_at")
RESERVED_PREFIXES = ("__fsql", "src__")


@dataclass
class ParsedFile:
    name: str
    kind: str  # "feature_view" | "training_set"
    path: str  # project-relative, for messages
    line: int  # line of the kind annotation
    header: Header
    query: exp.Query  # parsed, names not yet resolved
    dialect: str
    line_map: list[int]  # rendered line (0-based) -> file line (1-based)
    references: dict[str, int] = field(default_factory=dict)  # referenced name -> file line
    projections: list[tuple[str, str | None]] = field(default_factory=list)  # (name, description)
    has_star: bool = False
    fingerprint: str = ""

    def file_line(self, rendered_line: int | None) -> int | None:
        if rendered_line is None:
            return None
        index = min(max(rendered_line - 1, 0), len(self.line_map) - 1)
        return self.line_map[index]

    def annotation_line(self, key: str) -> int:
        return self.header.lines.get(key, self.line)

    def error(self, message: str, *, key: str | None = None, line: int | None = None, hint: str | None = None,
              cls: type[FeatureFileError] = FeatureFileError) -> FeatureFileError:
        where = line if line is not None else (self.annotation_line(key) if key else self.line)
        return cls(message, path=self.path, line=where, hint=hint)

    # Feature-view accessors -------------------------------------------------------------
    @property
    def entity(self) -> str:
        return str(self.header.values["entity"])

    @property
    def timestamp(self) -> str:
        return str(self.header.values["timestamp"])

    @property
    def created(self) -> str | None:
        value = self.header.values.get("created")
        return str(value) if value else None

    @property
    def ttl(self) -> timedelta | None:
        value = self.header.values.get("ttl")
        return value if isinstance(value, timedelta) else None

    @property
    def pit_plan(self) -> str | None:
        value = self.header.values.get("pit_plan")
        return str(value) if value else None

    @property
    def owner(self) -> str | None:
        value = self.header.values.get("owner")
        return str(value) if value else None

    @property
    def tags(self) -> tuple[str, ...]:
        value = self.header.values.get("tags")
        return tuple(value) if isinstance(value, tuple) else ()

    @property
    def feature_refs(self) -> tuple[FeatureRef, ...]:
        value = self.header.values.get("features") or ()
        return tuple(FeatureRef(v, f) for v, f in value)  # type: ignore[misc]


@dataclass
class ParsedProject:
    config: Config
    views: dict[str, ParsedFile]  # topological order: upstream first
    training_sets: dict[str, ParsedFile]


def parse_project(config: Config) -> ParsedProject:
    renderer = Renderer(config.vars, config.resolve(config.macros_dir), config.root)
    features_dir = config.resolve(config.features_dir)
    if not features_dir.is_dir():
        raise FeatureFileError(
            f"no {config.features_dir}/ folder in the project",
            path=config.features_dir,
            hint="create it and add annotated .sql files (see `fsql init`)",
        )
    files: list[ParsedFile] = []
    for file in sorted(features_dir.rglob("*.sql")):
        files.append(parse_file(file, config, renderer))

    views: dict[str, ParsedFile] = {}
    sets: dict[str, ParsedFile] = {}
    for parsed in files:
        for other in (views, sets):
            if parsed.name in other:
                first = other[parsed.name]
                raise parsed.error(
                    f"duplicate name '{parsed.name}' (also defined in {first.path}:{first.line})",
                    hint="names of feature views and training sets must be unique in a project",
                )
        if parsed.name in config.sources:
            raise parsed.error(
                f"'{parsed.name}' is already a source in fsql.toml", hint="rename the view or the source"
            )
        (views if parsed.kind == "feature_view" else sets)[parsed.name] = parsed

    known = set(config.sources) | set(views)
    for parsed in [*views.values(), *sets.values()]:
        _check_references(parsed, known, config)
        if parsed.kind == "feature_view":
            _check_view(parsed, config)
        else:
            _check_training_set(parsed, views)

    ordered = _topological(views)
    for parsed in ordered:
        parsed.fingerprint = _fingerprint(parsed, views, config)
    for parsed in sets.values():
        parsed.fingerprint = _fingerprint(parsed, views, config)
    return ParsedProject(config, {p.name: p for p in ordered}, sets)


def parse_file(file: Path, config: Config, renderer: Renderer) -> ParsedFile:
    shown = str(file.relative_to(config.root))
    raw = read_text(file, shown)
    if not raw.strip():
        raise FeatureFileError("empty feature file", path=shown, hint="add a header or delete it")
    rendered, mapping = renderer.render(raw, shown)
    header = parse_header(rendered, shown)
    for key, line in header.lines.items():
        header.lines[key] = mapping[min(line - 1, len(mapping) - 1)]
    kind = header.kind
    if kind is None:
        raise FeatureFileError(
            "missing '@feature_view NAME' or '@training_set NAME' annotation",
            path=shown,
            line=1,
            hint="start the file with a header such as -- @feature_view customer_spend",
        )
    if all(k in header.values for k in ("feature_view", "training_set")):
        raise FeatureFileError(
            "a file is either a feature view or a training set, not both",
            path=shown,
            line=header.lines["training_set"],
        )
    _check_reserved_name(str(header.values[kind]), shown, header.lines[kind])
    dialect = str(header.values.get("dialect", config.dialect))
    if dialect not in SUPPORTED_DIALECTS:
        raise FeatureFileError(
            f"unsupported dialect '{dialect}'",
            path=shown,
            line=header.lines.get("dialect"),
            hint=did_you_mean(dialect, SUPPORTED_DIALECTS) or f"use one of {', '.join(SUPPORTED_DIALECTS)}",
        )
    body = rendered.splitlines()[header.body_start - 1 :] if header.body_start else []
    if not "".join(body).strip():
        raise FeatureFileError("the file has a header but no SELECT", path=shown, line=header.lines[kind],
                               hint="write the query below the header")
    # The header is blanked rather than cut so sqlglot's line numbers stay the rendered file's, and
    # header comments do not ride along on the query into generated SQL.
    lines = rendered.splitlines()
    sql_text = "\n" * (header.body_start - 1) + "\n".join(lines[header.body_start - 1 :])

    def file_line(rendered_line: int | None) -> int:
        return mapping[min(max(int(rendered_line or 1) - 1, 0), len(mapping) - 1)]

    statements = _parse_sql(sql_text, dialect, shown, file_line, header.body_start)
    for statement in statements:
        if not isinstance(statement, exp.Query):
            check_query(statement, path=shown, line_of=lambda n: file_line(node_line(n) or header.body_start))
    if len(statements) != 1 or not isinstance(statements[0], exp.Query):
        raise FeatureFileError(
            "a feature file must hold exactly one SELECT query",
            path=shown,
            line=mapping[header.body_start - 1] if header.body_start <= len(mapping) else header.body_start,
            hint="remove other statements; trailing semicolons are fine",
        )
    query = statements[0]
    parsed = ParsedFile(
        name=str(header.values[kind]),
        kind=kind,
        path=shown,
        line=header.lines[kind],
        header=header,
        query=query,
        dialect=dialect,
        line_map=mapping,
    )
    check_query(query, path=shown, line_of=lambda n: parsed.file_line(node_line(n)))
    _collect_projections(parsed)
    return parsed


def _parse_sql(sql_text: str, dialect: str, shown: str, file_line: Callable[[int | None], int],
               body_start: int) -> list[exp.Expression]:
    """sqlglot statements of a feature file's body, with every failure a located FeatureFileError."""
    try:
        parser_dialect = Dialect.get_or_raise(dialect)
        with captured():
            tokens = parser_dialect.tokenize(sql_text)
            check_nesting(tokens, shown, file_line)
            statements = parser_dialect.parser().parse(tokens, sql_text)
    except ParseError as e:
        detail = e.errors[0] if e.errors else {}
        description = str(detail.get("description") or e).split("\n")[0]
        raise FeatureFileError(
            f"SQL syntax error: {description}", path=shown, line=file_line(detail.get("line")),
            hint=f"check the query is valid {dialect} SQL",
        ) from None
    except SqlglotError as e:
        raise FeatureFileError(f"SQL error: {e}", path=shown, line=file_line(body_start)) from None
    except RecursionError:
        raise too_deep(shown) from None
    return [s for s in statements if s is not None]


def _check_reserved_name(name: str, shown: str, line: int) -> None:
    lowered = name.lower()
    clash = next((s for s in RESERVED_SUFFIXES if lowered.endswith(s)), None) or next(
        (p for p in RESERVED_PREFIXES if lowered.startswith(p)), None
    )
    if clash:
        where = "end in" if clash in RESERVED_SUFFIXES else "start with"
        raise FeatureFileError(
            f"name '{name}' is reserved: fsql generates relations whose names {where} '{clash}'",
            path=shown,
            line=line,
            hint="rename the view or training set",
        )


def _collect_projections(parsed: ParsedFile) -> None:
    seen: dict[str, int | None] = {}
    for projection in parsed.query.selects:
        if isinstance(projection, exp.Star) or (isinstance(projection, exp.Column) and projection.is_star):
            parsed.has_star = True
            continue
        name = projection.alias_or_name
        line = parsed.file_line(node_line(projection))
        if not name:
            raise parsed.error(
                f"unnamed column '{projection.sql(dialect=parsed.dialect)}'",
                line=line,
                hint="give it a name with AS",
            )
        if name in seen:
            raise parsed.error(f"duplicate column name '{name}'", line=line, hint="rename one of them with AS")
        seen[name] = line
        comments = [c.strip() for c in (projection.comments or []) if c.strip()]
        parsed.projections.append((name, " ".join(comments) or None))


def table_references(query: exp.Expression) -> list[exp.Table]:
    """Unqualified table references that are not CTE names: the names fsql resolves."""
    ctes = {cte.alias_or_name for cte in query.find_all(exp.CTE)}
    refs = []
    for table in query.find_all(exp.Table):
        if table.args.get("db") or table.args.get("catalog"):
            continue
        if not isinstance(table.this, exp.Identifier):
            continue  # a table function such as read_parquet(...)
        if table.name in ctes:
            continue
        refs.append(table)
    return refs


def _check_references(parsed: ParsedFile, known: set[str], config: Config) -> None:
    for table in table_references(parsed.query):
        name = table.name
        line = parsed.file_line(node_line(table))
        if name not in known:
            hint = did_you_mean(name, known) or (
                "declare it under [sources] in fsql.toml"
            )
            raise parsed.error(f"unknown source or view '{name}'", line=line, hint=hint, cls=ResolutionError)
        if name == parsed.name:
            raise parsed.error(f"view '{name}' reads itself", line=line, cls=ResolutionError)
        parsed.references.setdefault(name, line or parsed.line)


def _check_view(parsed: ParsedFile, config: Config) -> None:
    for key in ("entity", "timestamp"):
        if key not in parsed.header.values:
            raise parsed.error(
                f"feature view '{parsed.name}' needs an '@{key}' annotation",
                hint=f"add -- @{key} {'customer' if key == 'entity' else 'event_ts'} to the header",
            )
    if "features" in parsed.header.values:
        raise parsed.error("'@features' belongs to training sets, not feature views", key="features")
    entity = parsed.entity
    if entity not in config.entities:
        raise parsed.error(
            f"unknown entity '{entity}'",
            key="entity",
            hint=did_you_mean(entity, config.entities) or "declare it under [entities] in fsql.toml",
        )
    if parsed.has_star:
        return  # columns are checked once the engine has described the query
    names = {n for n, _ in parsed.projections}
    for key_column in config.entities[entity].keys:
        if key_column not in names:
            raise parsed.error(
                f"entity key column '{key_column}' of entity '{entity}' is not selected",
                key="entity",
                hint=did_you_mean(key_column, names) or f"add {key_column} to the SELECT list",
            )
    for key in ("timestamp", "created"):
        column = parsed.header.values.get(key)
        if column and column not in names:
            raise parsed.error(
                f"@{key} column '{column}' is not selected",
                key=key,
                hint=did_you_mean(str(column), names) or f"add it to the SELECT list, e.g. ... AS {column}",
            )
    reserved = {*config.entities[entity].keys, parsed.timestamp, parsed.created}
    if not [n for n in names if n not in reserved]:
        raise parsed.error(f"feature view '{parsed.name}' selects no feature columns", hint="select at least one feature")
    for name in names:
        if name.startswith("__fsql"):
            raise parsed.error(f"column name '{name}' is reserved", hint="names starting with __fsql are internal")


def _check_training_set(parsed: ParsedFile, views: dict[str, ParsedFile]) -> None:
    for key in ("entity", "created", "ttl", "pit_plan"):
        if key in parsed.header.values:
            raise parsed.error(f"'@{key}' belongs to feature views, not training sets", key=key)
    if "timestamp" not in parsed.header.values:
        raise parsed.error(
            f"training set '{parsed.name}' needs an '@timestamp' annotation naming the spine's timestamp column",
            hint="add -- @timestamp label_ts",
        )
    refs = parsed.feature_refs
    if not refs:
        raise parsed.error(
            f"training set '{parsed.name}' needs '@features'",
            hint="add -- @features view.feature, other_view.*",
        )
    for ref in refs:
        view = views.get(ref.view)
        if view is None:
            raise parsed.error(
                f"unknown feature view '{ref.view}' in @features",
                key="features",
                hint=did_you_mean(ref.view, views) or "feature references are view.feature or view.*",
                cls=ResolutionError,
            )
        names = {n for n, _ in view.projections}
        if ref.feature != "*" and not view.has_star and ref.feature not in names:
            raise parsed.error(
                f"feature view '{ref.view}' has no feature '{ref.feature}'",
                key="features",
                hint=did_you_mean(ref.feature, names) or f"its columns are {', '.join(sorted(names))}",
                cls=ResolutionError,
            )
    if not parsed.has_star:
        names = {n for n, _ in parsed.projections}
        if parsed.timestamp not in names:
            raise parsed.error(
                f"@timestamp column '{parsed.timestamp}' is not selected by the spine",
                key="timestamp",
                hint=did_you_mean(parsed.timestamp, names) or "select it in the spine query",
            )


def _topological(views: dict[str, ParsedFile]) -> list[ParsedFile]:
    order: list[ParsedFile] = []
    state: dict[str, int] = {}  # 1 = visiting, 2 = done
    stack: list[str] = []

    def visit(name: str) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = [*stack[stack.index(name) :], name]
            parsed = views[name]
            raise ResolutionError(
                f"cycle between feature views: {' -> '.join(cycle)}",
                path=parsed.path,
                line=parsed.references.get(cycle[1], parsed.line) if len(cycle) > 1 else parsed.line,
                hint="a view may not read, directly or indirectly, from itself",
            )
        state[name] = 1
        stack.append(name)
        for dep in views[name].references:
            if dep in views:
                visit(dep)
        stack.pop()
        state[name] = 2
        order.append(views[name])

    for name in sorted(views):
        visit(name)
    return order


def _fingerprint(parsed: ParsedFile, views: dict[str, ParsedFile], config: Config) -> str:
    """Content hash of what decides the values: SQL without comments, keys, timing, upstream hashes."""
    upstream = {}
    for name in sorted(parsed.references):
        if name in views:
            upstream[name] = views[name].fingerprint
        else:
            src = config.sources[name]
            upstream[name] = {"path": src.path, "table": src.table, "format": src.format}
    if parsed.kind == "training_set":
        for ref in parsed.feature_refs:
            upstream[f"feature:{ref}"] = views[ref.view].fingerprint
    payload = {
        # bumped when the same file compiles to different semantics (2: derived known time)
        "semantics": 2,
        "kind": parsed.kind,
        "name": parsed.name,
        "sql": parsed.query.sql(dialect=parsed.dialect, comments=False, normalize=False),
        "dialect": parsed.dialect,
        "entity_keys": list(config.entities[parsed.entity].keys) if parsed.kind == "feature_view" else None,
        "timestamp": parsed.timestamp,
        "created": parsed.created,
        "ttl": parsed.ttl.total_seconds() if parsed.ttl else None,
        "features": [str(r) for r in parsed.feature_refs],
        "upstream": upstream,
    }
    return fingerprint(payload)
