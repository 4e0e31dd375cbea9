"""Derived known time: when every input row behind a feature-view row was known.

Why: rule 3 (known-at) filters candidates on their created time, but a view row is usually derived.
``SUM(amount) OVER w`` over 30 days depends on every order in the frame, so passing one order's
``loaded_at`` through as ``@created`` marks the sum known before a late-loaded order it counts. The
rewrite here adds one column to a view's query holding the time its row became fully known, so
rule 3, materialization eligibility and late-row pickup can use it instead.

Semantics (the brute-force reference in the tests follows the same rules):

* an input row is known at its load column (``KnownInput.known_at``), or at its event time where
  that is NULL or absent; an input with neither is known since forever (NULL, adds nothing);
* filters and non-aggregate projections keep the row's known time; joins of any side and ASOF
  joins take the greatest known time of the rows they combine, NULL-safe, so a NULL-extended side
  of an outer join adds nothing; ``GROUP BY`` takes the MAX over the group; UNION ALL is per branch;
  CTEs and subqueries are derived recursively; views on views read the upstream ``__known_at``;
* a window function takes the MAX over the rows its value reads, always including the current row:
  aggregates and FIRST/LAST/NTH_VALUE over the same partition, order and frame (any frame is
  copied as written: ROWS, RANGE, GROUPS, EXCLUDE); ROW_NUMBER/RANK/DENSE_RANK over the
  partition up to the current row's peers; LAG/LEAD(x, n) over the n rows up to the target row;
  PERCENT_RANK/CUME_DIST/NTILE over the whole partition;
* only the rows a value is computed from count, not the absence of others: a row kept by a
  LIMIT, a QUALIFY or an unmatched outer join is known when its own inputs are. This is the
  contract "a training row sees the latest view row whose whole input was known at the label time".

A shape whose inputs cannot be named (table functions, LATERAL, UNNEST, recursive CTEs, subquery
expressions, semi/anti joins, window functions of unknown frame, DISTINCT ON, INTERSECT/EXCEPT)
raises ``CompileError`` at the file line, with the escape hatch as hint: write the known time
yourself, ``MAX(loaded_at) OVER w AS loaded_at``, and name it with ``@created``. A ``@created``
projection that already aggregates with MAX is accepted as written (nothing is derived); its windows
must be those of the view's window functions.

How it relates to ``@created``: the derived column, not ``@created``, is the view's known time for
rule 3, materialization eligibility and late-row pickup. ``@created`` written the natural way
(``loaded_at`` passed through) names which source column is a row's load time: ``known_inputs``
traces it back by lineage to the source column it reads, and the derivation takes the MAX of that
column over every frame, group and join. The ``@created`` column itself is left as written (one
input row's load time). When ``@created`` is an explicit MAX aggregate, the derived column is that
expression verbatim. A view without ``@created`` still gets the column: its rows are known at
their inputs' event times, which matters for frames that read later rows (``FOLLOWING``).

The rewrite runs on the query as parsed, before names are resolved to engine relations, so
``inputs`` is keyed by the plain names the SQL uses. Intermediate levels carry the known time in a
hidden ``__fsql_known`` column; only the outermost projects ``column``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from sqlglot import exp
from sqlglot.errors import SqlglotError

from fsql.compiler.rewrites import inline_named_windows, node_line
from fsql.errors import CompileError

HIDDEN = "__fsql_known"
DEFAULT_COLUMN = "__known_at"
HINT = (
    "write the known time yourself, e.g. MAX(loaded_at) OVER w AS loaded_at over the same window, "
    "and name it with -- @created loaded_at"
)

FileLine = Callable[[int | None], int | None]


@dataclass(frozen=True)
class KnownInput:
    """How the known time of one input relation's rows is read.

    ``known_at``: the load column of a source (the one the view's ``@created`` traces back to), or
    an upstream view's derived ``__known_at``; ``event_ts``: the row's event time, used where
    ``known_at`` is absent or NULL. Both None: the rows are known since forever.
    """

    known_at: str | None
    event_ts: str | None = None


def derive_known_time(
    query: exp.Query,
    *,
    dialect: str,
    inputs: Mapping[str, KnownInput],
    column: str = DEFAULT_COLUMN,
    created: str | None = None,
    path: str | None = None,
    file_line: FileLine | None = None,
) -> exp.Query:
    """``query`` with one more output column, ``column``: when each output row became fully known.

    ``inputs`` maps every relation the query reads, by its plain name, to how its rows' known
    time is read. ``created`` names the view's ``@created`` column: when its expression is already a
    MAX aggregate it is taken as the known time as written. ``path`` and ``file_line`` (the parsed
    file's rendered-line to file-line map) locate errors; without them the line is the SQL text's.
    Pure: the input tree is not modified.
    """
    ctx = _Context(dialect, inputs, path, file_line)
    query = inline_named_windows(query)
    assert isinstance(query, exp.Query)
    outer = _outer_select(query)
    if outer is not None and column in outer.named_selects:
        raise ctx.error(
            f"column name '{column}' is reserved for the derived known time",
            next(p for p in outer.selects if p.alias_or_name == column),
            hint="rename the column",
        )
    if created and outer is not None:
        explicit = _explicit_created(ctx, outer, created)
        if explicit is not None:
            result = query.copy()
            target = _outer_select(result)
            assert target is not None
            target.select(exp.alias_(explicit, column), copy=False)
            return result
    derived = ctx.query(query, {}, outermost=column)
    _rename_hidden(derived, column)
    return derived


def known_inputs(
    query: exp.Query,
    *,
    dialect: str,
    timestamp: str,
    created: str | None,
    sources: Collection[str],
    views: Mapping[str, str],
    column: str = DEFAULT_COLUMN,
    path: str | None = None,
    line: int | None = None,
) -> dict[str, KnownInput]:
    """The ``inputs`` of ``derive_known_time`` for a feature view's query.

    A source's load column is the source column the view's ``@created`` column reads, and its event
    time the one the ``@timestamp`` column reads, both traced back through CTEs and subqueries with
    sqlglot's lineage; a source the columns do not trace to gets None for them. ``views`` maps each
    upstream view name to its timestamp column: its rows are known at its derived ``column``.
    """
    names = {t.name for t in query.find_all(exp.Table) if isinstance(t.this, exp.Identifier)}
    outer = _outer_select(query)
    projection = next((p for p in outer.selects if p.alias_or_name == created), None) if outer and created else None
    # an explicit aggregate (MAX(loaded_at) OVER w) is the known time itself: nothing to trace
    explicit = projection is not None and any(_own(a, outer) for a in projection.find_all(exp.AggFunc))
    traced_created = _trace(query, created, dialect, sources, path, line) if created and not explicit else {}
    traced_ts = _trace(query, timestamp, dialect, sources, path, line)
    result: dict[str, KnownInput] = {}
    for name in sorted(names):
        if name in views:
            result[name] = KnownInput(column, views[name])
        elif name in sources:
            result[name] = KnownInput(traced_created.get(name), traced_ts.get(name))
    return result


# --- lineage -----------------------------------------------------------------------------------


def _trace(
    query: exp.Query, name: str, dialect: str, sources: Collection[str], path: str | None, line: int | None
) -> dict[str, str]:
    """Source name -> the one column of it that output column ``name`` reads."""
    from sqlglot.lineage import lineage

    read = {t.name for t in query.find_all(exp.Table) if t.name in sources}
    try:
        root = lineage(name, query, None, dialect=dialect)
    except (SqlglotError, KeyError, ValueError, AttributeError):
        # ``SELECT *`` over one source cannot be traced without a schema: the name passes through
        return {next(iter(read)): name} if len(read) == 1 else {}
    found: dict[str, set[str]] = {}
    for node in root.walk():
        if isinstance(node.source, exp.Table) and node.source.name in sources:
            found.setdefault(node.source.name, set()).add(node.name.split(".")[-1])
    result: dict[str, str] = {}
    for source, columns in found.items():
        if len(columns) > 1:
            raise CompileError(
                f"column '{name}' reads several columns of source '{source}' ({', '.join(sorted(columns))}), "
                "so its rows' load time is ambiguous",
                path=path,
                line=line,
                hint=HINT,
            )
        result[source] = next(iter(columns))
    return result


# --- the rewrite -------------------------------------------------------------------------------


@dataclass
class _Rel:
    """One relation in a FROM clause, as the enclosing select sees it."""

    alias: exp.Identifier | None
    known: exp.Expression | None  # the row's known time in the enclosing scope, None = always
    columns: list[exp.Identifier] | None  # output columns when listed, None when a '*' over a table hides them
    hidden: bool  # carries the hidden known-time column
    exposes: set[str]  # known-time column names a '*' over it would pass through


class _Context:
    def __init__(self, dialect: str, inputs: Mapping[str, KnownInput], path: str | None, file_line: FileLine | None):
        self.dialect = dialect
        self.inputs = inputs
        self.path = path
        self.file_line = file_line

    def error(self, message: str, node: exp.Expression | None, hint: str | None = HINT) -> CompileError:
        line = node_line(node) if node is not None else None
        if self.file_line is not None:
            line = self.file_line(line) if line is not None else None
        return CompileError(message, path=self.path, line=line, hint=hint)

    def sql(self, node: exp.Expression) -> str:
        text = node.sql(dialect=self.dialect)
        return text if len(text) <= 60 else text[:57] + "..."

    # queries ---------------------------------------------------------------------------------

    def query(self, query: exp.Query, ctes: dict[str, _Rel], *, outermost: str | None = None) -> exp.Query:
        """A copy of ``query`` whose last output column is the hidden known time."""
        query = query.copy()
        with_ = query.args.get("with_")
        if with_ is not None:
            if with_.args.get("recursive"):
                raise self.error("a recursive CTE's known time cannot be derived", with_)
            ctes = dict(ctes)
            for cte in with_.expressions:
                body = self.query(cte.this, ctes)
                cte.set("this", body)
                ctes[cte.alias_or_name] = _Rel(None, None, _output_columns(body), True, set())
            query.set("with_", with_)
        if isinstance(query, exp.Subquery):
            inner = self.query(query.this, ctes, outermost=outermost)
            query.set("this", inner)
            return query
        if isinstance(query, exp.Select):
            return self.select(query, ctes, outermost=outermost)
        if isinstance(query, exp.Union):
            return self.union(query, ctes, outermost=outermost)
        raise self.error(f"{query.key.upper()}: its known time cannot be derived", query)

    def union(self, union: exp.Union, ctes: dict[str, _Rel], *, outermost: str | None) -> exp.Query:
        for side in ("this", "expression"):
            branch = union.args[side]
            body = branch.this if isinstance(branch, exp.Subquery) else branch
            derived = self.query(body, ctes, outermost=outermost)
            if isinstance(branch, exp.Subquery):
                branch.set("this", derived)
            else:
                union.set(side, derived)
        if union.args.get("distinct"):
            # a row kept once stands for all its duplicates: known when all of them are
            union.set("distinct", False)
            return self.collapse(union, union)
        return union

    def select(self, select: exp.Select, ctes: dict[str, _Rel], *, outermost: str | None) -> exp.Query:
        self.check_select(select)
        rels = self.relations(select, ctes)
        self.expand_stars(select, rels, outermost)
        row = _greatest([r.known for r in rels if r.known is not None])
        grouped = _is_grouped(select)
        if grouped:
            row = exp.Max(this=row) if row is not None else None
        parts: list[exp.Expression] = []
        seen: set[str] = set()
        current = False  # some mirrored frame holds the current row, so the row's own time is in it
        for window in _windows(select):
            frame = self.mirror(window)
            if row is None:
                continue
            mirrored = exp.Window(this=exp.Max(this=row.copy()), **{k: v for k, v in frame.items() if v is not None})
            key = mirrored.sql(dialect=self.dialect)
            if key not in seen:
                seen.add(key)
                parts.append(mirrored)
                current = current or _holds_current_row(mirrored)
        if row is not None and not current:
            parts.insert(0, row)
        known = _greatest(parts) if parts else exp.cast(exp.Null(), exp.DataType.build("timestamp"))
        distinct = select.args.get("distinct")
        select.select(exp.alias_(known, HIDDEN), copy=False)
        if distinct is not None:
            select.set("distinct", None)
            return self.collapse(select, distinct)
        return select

    def collapse(self, query: exp.Query, at: exp.Expression) -> exp.Select:
        """DISTINCT as a GROUP BY over the output columns, with the MAX known time per group."""
        names = _output_columns(query)
        if names is None or len({n.name for n in names}) != len(names):
            raise self.error("DISTINCT over '*' or unnamed columns: its known time cannot be derived", at,
                             hint="list the columns with distinct names")
        if isinstance(query, exp.Select) and any(query.args.get(k) for k in ("order", "limit", "offset")):
            raise self.error("DISTINCT with ORDER BY/LIMIT: its known time cannot be derived", at)
        inner = "__fsql_distinct"
        cols = [exp.Column(this=n.copy(), table=exp.to_identifier(inner)) for n in names]
        return (
            exp.select(*cols, exp.alias_(exp.Max(this=exp.column(HIDDEN, inner)), HIDDEN))
            .from_(query.subquery(inner))
            .group_by(*(c.copy() for c in cols))
        )

    # checks ----------------------------------------------------------------------------------

    def check_select(self, select: exp.Select) -> None:
        distinct = select.args.get("distinct")
        if distinct is not None and distinct.args.get("on") is not None:
            raise self.error("DISTINCT ON keeps one row per group by order: its known time cannot be derived",
                             distinct)
        if select.args.get("laterals"):
            raise self.error("LATERAL: its known time cannot be derived", select.args["laterals"][0])
        for key in ("expressions", "where", "having", "qualify", "group"):
            value = select.args.get(key)
            for node in value if isinstance(value, list) else [value] if value is not None else []:
                for sub in node.find_all(exp.Query):
                    raise self.error(
                        f"subquery expression '{self.sql(sub)}': its known time cannot be derived",
                        sub,
                        hint="join the subquery instead; or " + HINT,
                    )

    def relations(self, select: exp.Select, ctes: dict[str, _Rel]) -> list[_Rel]:
        from_ = select.args.get("from_")
        if from_ is None:
            return []
        rels = [self.relation(from_.this, ctes)]
        for join in select.args.get("joins") or []:
            kind = str(join.args.get("kind") or "").upper()
            if kind in ("SEMI", "ANTI"):
                raise self.error(f"{kind} JOIN: its known time cannot be derived", join,
                                 hint="use an inner join, or " + HINT)
            rels.append(self.relation(join.this, ctes))
        return rels

    def relation(self, node: exp.Expression, ctes: dict[str, _Rel]) -> _Rel:
        alias_id = _alias_identifier(node)
        if node.args.get("joins") or node.args.get("pivots"):
            raise self.error(f"nested join or PIVOT '{self.sql(node)}': its known time cannot be derived", node,
                             hint="join at the top level or use a subquery with an alias")
        if isinstance(node, exp.Table) and isinstance(node.this, exp.Identifier):
            name = node.name
            qualified = ".".join(p.name for p in node.parts)
            ref = alias_id or node.this
            if not node.args.get("db") and name in ctes:
                cte = ctes[name]
                return _Rel(ref, exp.column(HIDDEN, ref.copy()), cte.columns, True, cte.exposes)
            known = self.inputs.get(qualified) or self.inputs.get(name)
            if known is None:
                raise self.error(f"relation '{qualified}' has no known time", node,
                                 hint="declare it as a source or feature view")
            cols = [c for c in (known.known_at, known.event_ts) if c]
            # unquoted like the user's own references, so engines fold their case alike
            expr = _coalesce([exp.column(c, ref.copy()) for c in cols]) if cols else None
            return _Rel(ref, expr, None, False, {known.known_at} if known.known_at else set())
        if isinstance(node, exp.Subquery) and isinstance(node.this, exp.Query):
            if alias_id is None:
                raise self.error("a subquery in FROM needs an alias", node, hint="add AS name after it")
            body = self.query(node.this, ctes)
            node.set("this", body)
            return _Rel(alias_id, exp.column(HIDDEN, alias_id.copy()), _output_columns(body), True,
                        set())
        if isinstance(node, exp.Values):
            columns = node.args["alias"].columns if alias_id is not None else None
            return _Rel(alias_id, None, [c.copy() for c in columns] if columns else None, False, set())
        if isinstance(node, exp.Lateral):
            raise self.error("LATERAL: its known time cannot be derived", node)
        if isinstance(node, exp.Unnest):
            raise self.error("UNNEST: its known time cannot be derived", node)
        raise self.error(f"table function '{self.sql(node)}': its known time cannot be derived", node,
                         hint="declare what it reads as a source, or " + HINT)

    def expand_stars(self, select: exp.Select, rels: list[_Rel], outermost: str | None) -> None:
        """Replace '*' over relations that carry the hidden column by their listed columns.

        A '*' would pass ``__fsql_known`` (or, in the outermost query, an upstream view's
        ``__known_at``) through to the output next to the derived column."""
        using = any(j.args.get("using") or j.args.get("method") == "NATURAL" for j in select.args.get("joins") or [])
        new: list[exp.Expression] = []
        changed = False
        for projection in select.expressions:
            star = isinstance(projection, exp.Star) or (isinstance(projection, exp.Column) and projection.is_star)
            if not star:
                new.append(projection)
                continue
            qualifier = projection.table if isinstance(projection, exp.Column) else ""
            covered = [r for r in rels if not qualifier or (r.alias is not None and r.alias.name == qualifier)]
            inner = projection.this if isinstance(projection, exp.Column) else projection
            clashes = any(r.hidden or (outermost is not None and outermost in r.exposes) for r in covered)
            if not clashes:
                new.append(projection)
                continue
            if using or any(inner.args.get(k) for k in ("except_", "replace", "rename")):
                raise self.error("'*' with USING, NATURAL, EXCLUDE or REPLACE over a derived relation", projection,
                                 hint="list the columns")
            for rel in covered:
                if rel.columns is None or rel.alias is None:
                    raise self.error(
                        "'*' over a relation whose columns are not listed: its known-time column would be selected "
                        "twice",
                        projection,
                        hint="list the columns",
                    )
                new += [exp.Column(this=c.copy(), table=rel.alias.copy()) for c in rel.columns]
            changed = True
        if changed:
            select.set("expressions", new)

    def mirror(self, window: exp.Window) -> dict[str, exp.Expression | list | None]:
        """The partition, order and frame holding every row ``window``'s value reads."""
        func = _unwrap(window.this)
        partition = [p.copy() for p in window.args.get("partition_by") or []] or None
        order = window.args.get("order")
        spec = window.args.get("spec")
        if isinstance(func, exp.Lag | exp.Lead):
            offset = func.args.get("offset")
            if offset is not None and not (isinstance(offset, exp.Literal) and not offset.is_string
                                           and offset.name.isdigit()):
                raise self.error(f"{type(func).__name__.upper()} with offset '{self.sql(offset)}': "
                                 "the rows it reads cannot be mirrored", window)
            n = exp.Literal.number(int(offset.name) if offset is not None else 1)
            if order is None:
                return {"partition_by": partition}
            if isinstance(func, exp.Lag):
                frame = exp.WindowSpec(kind="ROWS", start=n, start_side="PRECEDING", end="CURRENT ROW")
            else:
                frame = exp.WindowSpec(kind="ROWS", start="CURRENT ROW", end=n, end_side="FOLLOWING")
            return {"partition_by": partition, "order": order.copy(), "spec": frame}
        if isinstance(func, exp.RowNumber | exp.Rank | exp.DenseRank):
            if order is None:
                return {"partition_by": partition}
            # peers are included: ROW_NUMBER's order among them is the engine's
            frame = exp.WindowSpec(kind="RANGE", start="UNBOUNDED", start_side="PRECEDING", end="CURRENT ROW")
            return {"partition_by": partition, "order": order.copy(), "spec": frame}
        if isinstance(func, exp.PercentRank | exp.CumeDist | exp.Ntile):
            return {"partition_by": partition}
        if isinstance(func, exp.AggFunc) and not isinstance(func, exp.AnonymousAggFunc):
            return {
                "partition_by": partition,
                "order": order.copy() if order is not None else None,
                "spec": spec.copy() if spec is not None else None,
            }
        raise self.error(f"window function '{self.sql(window.this)}': the rows it reads cannot be mirrored", window)


# --- explicit @created --------------------------------------------------------------------------


def _explicit_created(ctx: _Context, select: exp.Select, created: str) -> exp.Expression | None:
    """The ``@created`` projection's expression when it already aggregates with MAX, else None."""
    projection = next((p for p in select.selects if p.alias_or_name == created), None)
    if projection is None:
        return None
    expression = projection.this if isinstance(projection, exp.Alias) else projection
    aggregates = [a for a in expression.find_all(exp.AggFunc) if a.find_ancestor(exp.Select) is select]
    if not aggregates:
        return None
    for aggregate in aggregates:
        if not isinstance(aggregate, exp.Max):
            raise ctx.error(
                f"@created column '{created}' aggregates with {aggregate.key.upper()}: a derived row is known at "
                "the MAX of its inputs' known times",
                projection,
            )
    own = {_frame_key(ctx, w) for w in expression.find_all(exp.Window)}
    for window in _windows(select):
        if window.find_ancestor(exp.Alias) is projection or window.parent is projection:
            continue
        try:
            needed = exp.Window(this=exp.Max(this=exp.Null()), **{
                k: v for k, v in ctx.mirror(window).items() if v is not None})
        except CompileError:
            continue  # an unmirrorable window is the reason to write @created: taken as written
        if _frame_key(ctx, needed) not in own:
            raise ctx.error(
                f"@created column '{created}' is not a MAX over the window of '{ctx.sql(window)}'",
                projection,
                hint="use the same window, e.g. MAX(loaded_at) OVER w, or pass the load column through and let "
                "fsql derive the known time",
            )
    return expression.copy()


def _frame_key(ctx: _Context, window: exp.Window) -> str:
    """A window's partition, order and frame as text, a spec-less ordered frame spelt out."""
    spec = window.args.get("spec")
    if spec is None and window.args.get("order") is not None:
        spec = exp.WindowSpec(kind="RANGE", start="UNBOUNDED", start_side="PRECEDING", end="CURRENT ROW")
    key = exp.Window(this=exp.Max(this=exp.Null()), partition_by=window.args.get("partition_by"),
                     order=window.args.get("order"), spec=spec)
    return key.sql(dialect=ctx.dialect)


# --- helpers -----------------------------------------------------------------------------------


def _outer_select(query: exp.Expression) -> exp.Select | None:
    while isinstance(query, exp.Subquery):
        query = query.this
    return query if isinstance(query, exp.Select) else None


def _rename_hidden(query: exp.Expression, column: str) -> None:
    if isinstance(query, exp.Subquery):
        _rename_hidden(query.this, column)
    elif isinstance(query, exp.Union):
        _rename_hidden(query.this, column)
        _rename_hidden(query.expression, column)
    elif isinstance(query, exp.Select):
        last = query.expressions[-1]
        assert isinstance(last, exp.Alias) and last.alias == HIDDEN
        last.set("alias", exp.to_identifier(column))


def _output_columns(query: exp.Expression) -> list[exp.Identifier] | None:
    """The output columns except the hidden one, with the user's quoting; None when a '*' hides them."""
    while isinstance(query, exp.Subquery):
        query = query.this
    if isinstance(query, exp.Union):
        return _output_columns(query.this)
    if not isinstance(query, exp.Select):
        return None
    columns: list[exp.Identifier] = []
    for projection in query.expressions:
        if isinstance(projection, exp.Star) or (isinstance(projection, exp.Column) and projection.is_star):
            return None
        ident = projection.args.get("alias") if isinstance(projection, exp.Alias) else projection.this
        if isinstance(projection, exp.Alias | exp.Column) and isinstance(ident, exp.Identifier):
            if ident.name != HIDDEN:
                columns.append(ident)
        elif projection.alias_or_name:
            columns.append(exp.to_identifier(projection.alias_or_name))
        else:
            return None
    return columns


def _alias_identifier(node: exp.Expression) -> exp.Identifier | None:
    alias = node.args.get("alias")
    if isinstance(alias, exp.TableAlias) and isinstance(alias.this, exp.Identifier):
        return alias.this
    if isinstance(alias, exp.Identifier):
        return alias
    return None


def _unwrap(func: exp.Expression) -> exp.Expression:
    while isinstance(func, exp.Filter | exp.IgnoreNulls | exp.RespectNulls | exp.WithinGroup):
        func = func.this
    return func


def _own(node: exp.Expression, select: exp.Select) -> bool:
    return node.find_ancestor(exp.Select) is select


def _windows(select: exp.Select) -> list[exp.Window]:
    """Window functions that compute the output: projections and QUALIFY, not ORDER BY."""
    found: list[exp.Window] = []
    for key in ("expressions", "qualify"):
        value = select.args.get(key)
        for node in value if isinstance(value, list) else [value] if value is not None else []:
            found += [w for w in node.find_all(exp.Window) if _own(w, select)]
    return found


def _is_grouped(select: exp.Select) -> bool:
    if select.args.get("group") is not None or select.args.get("having") is not None:
        return True
    for key in ("expressions", "qualify"):
        value = select.args.get(key)
        for node in value if isinstance(value, list) else [value] if value is not None else []:
            for aggregate in node.find_all(exp.AggFunc):
                if not _own(aggregate, select):
                    continue
                parent = aggregate.parent
                while isinstance(parent, exp.Filter | exp.IgnoreNulls | exp.RespectNulls | exp.WithinGroup):
                    parent = parent.parent
                if not isinstance(parent, exp.Window):
                    return True
    return False


def _holds_current_row(window: exp.Window) -> bool:
    """The frame surely contains the current row: it starts at or before it, ends at or after it,
    and excludes nothing."""
    spec = window.args.get("spec")
    if spec is None:
        return True  # the whole partition, or the start up to the current row's peers
    if spec.args.get("exclude") is not None:
        return False
    start, start_side, end, end_side = (
        str(spec.args.get(k) or "").upper() for k in ("start", "start_side", "end", "end_side")
    )
    starts_before = start == "CURRENT ROW" or start_side == "PRECEDING" or start == "UNBOUNDED"
    if not end:  # ``ROWS n PRECEDING`` is short for ``BETWEEN n PRECEDING AND CURRENT ROW``
        return starts_before and start_side != "FOLLOWING"
    ends_after = end == "CURRENT ROW" or end_side == "FOLLOWING"
    return starts_before and start_side != "FOLLOWING" and ends_after


def _coalesce(parts: list[exp.Expression]) -> exp.Expression:
    if len(parts) == 1:
        return parts[0]
    return exp.Coalesce(this=parts[0], expressions=parts[1:])


def _greatest(parts: list[exp.Expression]) -> exp.Expression | None:
    """The greatest non-NULL value, NULL when all are NULL, on every dialect.

    GREATEST returns NULL when any argument is NULL on Snowflake, BigQuery and Trino and skips NULLs
    on DuckDB and PostgreSQL; coalescing each argument with the others makes both readings agree."""
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    args = [_coalesce([p.copy()] + [q.copy() for j, q in enumerate(parts) if j != i]) for i, p in enumerate(parts)]
    return exp.Greatest(this=args[0], expressions=args[1:], ignore_nulls=True)


