"""Feature-view bodies → SQL for an engine: names resolved on the AST, ASOF joins rewritten, transpiled."""

from __future__ import annotations

from collections.abc import Callable

from sqlglot import exp
from sqlglot.errors import SqlglotError

from fsql.compiler.rewrites import generate, rewrite_asof_joins
from fsql.errors import CompileError

RelationFor = Callable[[str], exp.Expression]


def resolve_names(query: exp.Query, names: set[str], relation_for: RelationFor) -> exp.Query:
    """Replace each unqualified table named after a source or view by the engine's relation for it.

    The original name stays as the alias, so qualified column references (``orders.amount``) keep
    working whatever the relation becomes (a Parquet scan, a table, a generated view).
    """
    resolved = query.copy()
    ctes = {cte.alias_or_name for cte in resolved.find_all(exp.CTE)}
    for table in list(resolved.find_all(exp.Table)):
        if table.args.get("db") or table.args.get("catalog") or not isinstance(table.this, exp.Identifier):
            continue
        name = table.name
        if name in ctes or name not in names:
            continue
        relation = relation_for(name).copy()
        alias = table.args.get("alias") or exp.TableAlias(this=exp.to_identifier(name))
        if isinstance(relation, exp.Table):
            relation.set("alias", alias)
            for key in ("joins", "laterals", "pivots", "hints", "version"):
                if table.args.get(key):
                    relation.set(key, table.args[key])
            table.replace(relation)
        else:
            table.replace(exp.Subquery(this=relation, alias=alias))
    return resolved


def to_dialect(query: exp.Expression, source_dialect: str, target_dialect: str, *, pretty: bool = False,
               path: str | None = None, line: int | None = None, rewrite_asof: bool = True,
               file_line: Callable[[int | None], int | None] | None = None) -> str:
    """Transpile a user query: ASOF joins rewritten for the target, named windows inlined, and a
    construct sqlglot cannot express (or a sqlglot crash) turned into a located CompileError.

    ``rewrite_asof=False`` is for trees the PIT compiler built for ``target_dialect`` already.
    An error found at a construct is reported at its line: the query's parsed line mapped through
    ``file_line`` (``ParsedFile.file_line``, for Jinja-rendered files), else ``line``."""
    try:
        has_asof = any(str(j.args.get("method") or "").upper() == "ASOF" for j in query.find_all(exp.Join))
        tree = rewrite_asof_joins(query, target_dialect) if rewrite_asof and has_asof else query
        return generate(tree, target_dialect, pretty=pretty)
    except CompileError as e:
        if e.path is None:
            found = e.line if file_line is None else file_line(e.line) if e.line is not None else None
            e.path, e.line = path, found if found is not None else line
        if e.hint is None:
            e.hint = f"rewrite the construct for {target_dialect}, or compile for another dialect"
        raise
    except SqlglotError as e:
        raise CompileError(
            f"cannot compile this query from {source_dialect} to {target_dialect}: {str(e).splitlines()[0] or type(e).__name__}",
            path=path,
            line=line,
            hint=f"rewrite the construct for {target_dialect}, or compile for another dialect",
        ) from None


def column_lineage(query: exp.Query, relation_names: dict[str, str]) -> dict[str, list[tuple[str, str]]]:
    """For each output column, the (upstream relation, column) pairs it is computed from.

    ``relation_names`` maps table aliases/names in the query to source or view names. Columns from
    CTEs and subqueries are followed one level by name, which covers feature files as written here.
    """
    aliases: dict[str, str] = {}
    for table in query.find_all(exp.Table):
        if table.name in relation_names:
            aliases[table.alias_or_name] = relation_names[table.name]
    only = next(iter(set(aliases.values()))) if len(set(aliases.values())) == 1 else None
    windows = {w.alias_or_name: w for w in (query.args.get("windows") or []) if isinstance(w, exp.Expression)}
    result: dict[str, list[tuple[str, str]]] = {}
    for projection in query.selects:
        name = projection.alias_or_name
        if not name:
            continue
        nodes = [projection]
        for window in projection.find_all(exp.Window):
            named = windows.get(window.alias_or_name) or windows.get(str(window.args.get("alias") or ""))
            if named is not None:
                nodes.append(named)
        pairs: list[tuple[str, str]] = []
        for node in nodes:
            for column in node.find_all(exp.Column):
                upstream = aliases.get(column.table) if column.table else only
                if upstream and (upstream, column.name) not in pairs:
                    pairs.append((upstream, column.name))
        result[name] = pairs
    return result


# Calls whose value changes from one evaluation to the next with the same input rows: a view using
# one is not a function of its inputs, so a copy of its rows can never be known to be current.
_VOLATILE_CLASSES = tuple(
    getattr(exp, name) for name in (
        "CurrentDate", "CurrentTime", "CurrentTimestamp", "CurrentDatetime", "CurrentTimestampLTZ",
        "Localtime", "Localtimestamp", "Rand", "Randn", "Uuid", "GenerateUuid",
    ) if hasattr(exp, name)
)
_VOLATILE_NAMES = frozenset({
    "now", "get_current_timestamp", "statement_timestamp", "clock_timestamp", "transaction_timestamp",
    "timeofday", "today", "random", "setseed", "gen_random_uuid", "uuid", "nextval", "currval",
})


def volatile_calls(query: exp.Expression) -> list[str]:
    """The calls in ``query`` whose value depends on when or how often it runs (``now()``,
    ``random()``, ``age(x)`` with one argument, which is ``age(now(), x)``), as written."""
    found = []
    for node in query.find_all(exp.Func):
        name = node.name.lower() if isinstance(node, exp.Anonymous) else None
        one_argument_age = name == "age" and len(node.expressions) == 1
        if isinstance(node, _VOLATILE_CLASSES) or name in _VOLATILE_NAMES or one_argument_age:
            found.append(node.sql())
    return found
