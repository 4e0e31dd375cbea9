"""Indexes on loaded source tables, for the lookups the compiled views make into them.

Why: PostgreSQL cannot scan a Parquet file, so a build loads file sources into tables, which have no
index. A view's joins then probe them by scanning: the LATERAL form of an ASOF join
(``fsql.compiler.rewrites``) reads the whole right table once per left row, ordered by time, to keep
one row. An index on (equality columns..., time) turns each probe into one index descent.

What is indexed comes from the compiled tree, never from names or guesses: for every reference to
one of the given tables, the conjuncts of its JOIN ... ON and of the WHERE of the SELECT reading it
that compare one of its columns with something outside it. Equalities give the leading columns
(sorted by name, so the same view gives the same index on every build); a range comparison, or the
first ORDER BY column of the probing SELECT (the ASOF rewrite orders by the right time), gives the
last one. A table read only by scans gets no index.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection

import sqlglot
from sqlglot import exp

from fsql.compiler.dialects import capabilities
from fsql.compiler.names import Namer

_RANGES = (exp.GT, exp.GTE, exp.LT, exp.LTE)
# PostgreSQL truncates longer identifiers, which would make two indexes' names collide
_MAX_NAME = 63


def source_indexes(queries: Collection[exp.Expression | str], tables: Collection[exp.Table], dialect: str
                   ) -> list[exp.Create]:
    """``CREATE INDEX IF NOT EXISTS`` for each distinct lookup ``queries`` (trees, or SQL in
    ``dialect``) make into ``tables`` (as the queries name them, schema included); none for engines
    that do not use indexes."""
    if not capabilities(dialect).indexes:
        return []
    queries = [sqlglot.parse_one(q, read=dialect) if isinstance(q, str) else q for q in queries]
    wanted = {_key(t): t for t in tables}
    found: dict[tuple[str, str], list[tuple[str, ...]]] = {}
    columns_of: dict[tuple[str, str], dict[str, exp.Identifier]] = {}
    for query in queries:
        for select in query.find_all(exp.Select):
            for key, lookup in _lookups(select, wanted):
                names = tuple(c.name for c in lookup)
                if names not in found.setdefault(key, []):
                    found[key].append(names)
                columns_of.setdefault(key, {}).update({c.name: c for c in lookup})
    namer = Namer(t.name for t in tables)
    creates = []
    for key in sorted(found):
        table = wanted[key]
        for names in sorted(found[key]):
            index = _short(namer("__".join([table.name, *names])))
            columns = [exp.Ordered(this=exp.Column(this=columns_of[key][n].copy())) for n in names]
            target = exp.table_(table.name, db=table.db or None, quoted=True)
            creates.append(exp.Create(
                this=exp.Index(this=exp.to_identifier(index, quoted=True), table=target,
                               params=exp.IndexParameters(columns=columns)),
                kind="INDEX",
                exists=True,
            ))
    return creates


def _key(table: exp.Table) -> tuple[str, str]:
    return table.db, table.name


def _lookups(select: exp.Select, wanted: dict[tuple[str, str], exp.Table]
             ) -> list[tuple[tuple[str, str], list[exp.Identifier]]]:
    """(table, index columns) for each wanted table this SELECT reads through a lookup."""
    sources: list[tuple[exp.Expression, exp.Expression | None]] = []
    from_ = select.args.get("from_") or select.args.get("from")
    if from_ is not None:
        sources.append((from_.this, None))
    for join in select.args.get("joins") or []:
        sources.append((join.this, join.args.get("on")))
    aliases = {}
    for relation, _ in sources:
        if isinstance(relation, exp.Table) and _key(relation) in wanted:
            aliases[relation.alias_or_name] = _key(relation)
    if not aliases:
        return []
    single = len(sources) == 1
    where = select.args.get("where")
    order = select.args.get("order")
    out = []
    for relation, on in sources:
        if not isinstance(relation, exp.Table) or _key(relation) not in wanted:
            continue
        alias = relation.alias_or_name
        conjuncts = list(_conjuncts(on)) + list(_conjuncts(where.this if where is not None else None))
        equal: dict[str, exp.Identifier] = {}
        last: exp.Identifier | None = None
        for conjunct in conjuncts:
            column = _own_column(conjunct, alias, single)
            if column is None:
                continue
            if isinstance(conjunct, exp.EQ):
                equal.setdefault(column.name, column)
            elif last is None:
                last = column
        if order is not None and order.expressions:
            first = order.expressions[0].this
            if isinstance(first, exp.Column) and _belongs(first, alias, single) and equal:
                last = first.this
        columns = [equal[n] for n in sorted(equal)]
        if last is not None and last.name not in equal:
            columns.append(last)
        if columns:
            out.append((aliases[alias], columns))
    return out


def _conjuncts(condition: exp.Expression | None):
    if condition is None:
        return
    if isinstance(condition, exp.And):
        yield from _conjuncts(condition.this)
        yield from _conjuncts(condition.expression)
    elif isinstance(condition, exp.Paren):
        yield from _conjuncts(condition.this)
    else:
        yield condition


def _belongs(column: exp.Column, alias: str, single: bool) -> bool:
    return column.table == alias or (single and not column.table)


def _own_column(conjunct: exp.Expression, alias: str, single: bool) -> exp.Identifier | None:
    """The table's column a comparison looks up by: one side is that plain column, the other side
    reads nothing of the table (an outer row's value, a constant)."""
    if not isinstance(conjunct, (exp.EQ, *_RANGES)):
        return None
    for mine, other in ((conjunct.this, conjunct.expression), (conjunct.expression, conjunct.this)):
        if isinstance(mine, exp.Column) and _belongs(mine, alias, single) and isinstance(mine.this, exp.Identifier):
            outer = list(other.find_all(exp.Column))
            # a constant filter is no lookup: only a comparison with another relation's column is
            if outer and not any(_belongs(c, alias, single) for c in outer):
                return mine.this
    return None


def _short(name: str) -> str:
    if len(name.encode()) <= _MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name.encode()[:_MAX_NAME - 9].decode(errors='ignore')}_{digest}"
