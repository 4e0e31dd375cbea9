"""What a feature file's query may do: read its declared sources and views, and compute.

Checked on the sqlglot tree right after parsing, before anything reaches an engine:

- no statement other than a query anywhere in it (``SELECT ... INTO``, data-modifying CTEs, row locks);
- every relation in FROM / JOIN is a plain name (resolved later against sources and views), a
  subquery, VALUES, or an allowed set-returning function such as ``unnest``; a schema-qualified table
  is refused because it bypasses the declared sources;
- every function call is a typed sqlglot function not in ``DENIED_TYPED`` or a name in
  ``ALLOWED_FUNCTIONS``; schema-qualified and method-style calls are refused.

On DuckDB the engine is locked down as well (``DuckDBEngine.lock_down``), so a construct this check
misses still cannot open a file outside the declared sources.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlglot import exp

from fsql.errors import FeatureFileError
from fsql.parsing.allowlist import ALLOWED_FUNCTIONS, DENIED_TYPED, TABLE_FUNCTIONS

LineOf = Callable[[exp.Expression], "int | None"]
FUNCTION_HINT = "a feature file may call built-in scalar, aggregate and window functions only"

_STATEMENTS: tuple[type[exp.Expression], ...] = tuple(
    getattr(exp, name)
    for name in (
        "DML", "DDL", "Command", "Into", "Lock", "Set", "Pragma", "Use", "Transaction", "Commit",
        "Rollback", "Describe", "Summarize", "Kill", "Grant", "Revoke", "Analyze", "Attach", "Detach",
        "Install", "LoadData", "Export", "Refresh", "Cache", "Uncache", "TruncateTable", "Execute",
        "Declare", "Show", "Comment", "Alter", "Drop",
    )
    if hasattr(exp, name)
)


# Calls sqlglot does not know: their name is whatever the user wrote.
_ANONYMOUS: tuple[type[exp.Expression], ...] = tuple(
    getattr(exp, name)
    for name in ("Anonymous", "AnonymousAggFunc", "CombinedAggFunc", "ParameterizedAgg")
    if hasattr(exp, name)
)


def function_name(node: exp.Func) -> str:
    """The lowercase SQL name of a function call, typed or anonymous."""
    if isinstance(node, _ANONYMOUS):
        return str(node.name).lower()
    return node.sql_name().lower()


def check_query(query: exp.Expression, *, path: str, line_of: LineOf) -> None:
    """Raise a located FeatureFileError for the first construct a feature file may not use."""

    def fail(node: exp.Expression, message: str, hint: str) -> FeatureFileError:
        # Some nodes (a FOR UPDATE clause) keep no token line: the closest enclosing one is used.
        at: exp.Expression | None = node
        line = None
        while at is not None and line is None:
            line, at = line_of(at), at.parent
        return FeatureFileError(message, path=path, line=line, hint=hint)

    for node in query.walk():
        if isinstance(node, _STATEMENTS):
            what = _statement_name(node)
            raise fail(node, f"{what} is not allowed in a feature file",
                       "a feature file holds one read-only SELECT; fsql creates and changes every object itself")
        if isinstance(node, exp.Table):
            _check_table(node, fail)
        elif isinstance(node, exp.Lateral) and isinstance(node.this, exp.Func):
            _check_table_function(node.this, fail)
        elif isinstance(node, exp.Dot) and isinstance(node.expression, exp.Func):
            raise fail(node, f"qualified function call '{node.sql()}' is not allowed in a feature file",
                       "call built-in functions by their plain name, e.g. lower(x)")
        elif isinstance(node, exp.Func) and not _is_table_source(node):
            _check_function(node, fail)


def _statement_name(node: exp.Expression) -> str:
    if isinstance(node, exp.Command):
        return f"'{str(node.this).upper()}'"
    if isinstance(node, exp.Into):
        return "SELECT ... INTO"
    if isinstance(node, exp.Lock):
        return "a locking clause (FOR UPDATE/SHARE)"
    return f"'{node.key.upper()}'"


def _is_table_source(node: exp.Func) -> bool:
    return isinstance(node.parent, (exp.Table, exp.Lateral)) and node.arg_key == "this"


def _check_table(table: exp.Table, fail: Callable[..., FeatureFileError]) -> None:
    this = table.this
    if isinstance(this, exp.Func):
        _check_table_function(this, fail)
        return
    if table.args.get("db") or table.args.get("catalog"):
        qualified = exp.table_name(table)
        raise fail(
            table,
            f"qualified table '{qualified}' is not allowed in a feature file",
            f"declare it in fsql.toml as [sources.{table.name}] with table = \"{qualified}\" and read it as {table.name}",
        )
    if this is not None and not isinstance(this, exp.Identifier):
        raise fail(table, f"'{table.sql()}' cannot be read in a feature file",
                   "read declared sources and views by name")


def _check_table_function(node: exp.Func, fail: Callable[..., FeatureFileError]) -> None:
    name = function_name(node)
    if isinstance(node, DENIED_TYPED) or name not in TABLE_FUNCTIONS:
        raise fail(
            node,
            f"table function '{name}' is not allowed in a feature file",
            "read declared sources and views by name; add files as [sources] in fsql.toml",
        )


def _check_function(node: exp.Func, fail: Callable[..., FeatureFileError]) -> None:
    anonymous = isinstance(node, _ANONYMOUS)
    if isinstance(node, DENIED_TYPED) or (anonymous and function_name(node) not in ALLOWED_FUNCTIONS):
        raise fail(node, f"function '{function_name(node)}' is not allowed in a feature file", FUNCTION_HINT)

