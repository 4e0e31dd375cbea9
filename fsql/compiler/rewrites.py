"""Pure Expr -> Expr rewrites that give a query the same results on every engine.

Each rewrite is a small function on sqlglot trees with a docstring saying why it exists. A rewrite
that meets a shape it does not understand raises ``CompileError``: it never emits SQL whose
semantics differ from the input.

``rewrite_asof_joins``: a feature view may use DuckDB's ``ASOF [LEFT] JOIN`` (e.g. orders joined to
the exchange rate in force). sqlglot parses it but emits it unchanged for engines that lack it.

    Tie rule. Native ASOF joins pick an arbitrary row among right rows that tie on the equality keys
    and the inequality column, so results are not even reproducible on one engine. Every rewrite,
    including the one for DuckDB itself, picks the first tied row in this order: the right side's
    columns that the query references (qualified as ``alias.column``), sorted by name, each greatest
    first with NULL lowest, NaN above every number and strings in byte order (the rule-4 value order
    of the PIT join, ``fsql.compiler.dialects.value_sort_keys``). Rows equal on all of them produce
    the same output, so the result is deterministic and identical on every engine.

``inline_named_windows``: ``WINDOW w AS (...)`` crashes sqlglot's BigQuery generator (30.x) and its
Snowflake output drops a frame that refines a named window; inlining is plain substitution.

``ignore_nulls_as_value_functions``: Spark's ``LAST(x, TRUE) OVER`` loses its IGNORE NULLS when sqlglot
30.x writes DuckDB or PostgreSQL.

``generate``: SQL text for a dialect after the two rewrites above, with sqlglot crashes and
"unsupported" warnings turned into ``CompileError`` instead of silently different SQL.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlglot import exp
from sqlglot.errors import ErrorLevel, SqlglotError
from sqlglot.schema import MappingSchema

from fsql.compiler.dialects import Capabilities, capabilities, natural_order, value_sort_keys
from fsql.compiler.names import Namer
from fsql.errors import CompileError

_FLIP = {"GTE": "LTE", "GT": "LT", "LTE": "GTE", "LT": "GT"}
_INEQUALITIES = {"GTE": exp.GTE, "GT": exp.GT, "LTE": exp.LTE, "LT": exp.LT}


@dataclass
class _Asof:
    """One ASOF join, normalised: every condition reads ``left OP right``."""

    join: exp.Join
    alias: str  # the right side's alias (or table name)
    alias_id: exp.Identifier  # the same, with the user's quoting
    equalities: list[tuple[exp.Expression, exp.Expression]]  # (left, right)
    left_time: exp.Expression
    right_time: exp.Expression
    op: str  # GTE, GT, LTE or LT, reading `left_time OP right_time`
    outer: bool
    columns: list[tuple[exp.Identifier, str | None]]  # referenced right columns, sorted by name
    tie_columns: list[tuple[exp.Identifier, str | None]]  # the same minus keys and time

    @property
    def backward(self) -> bool:
        """left >= right: the latest right row at or before the left time (the usual as-of)."""
        return self.op in ("GTE", "GT")

    @property
    def strict(self) -> bool:
        return self.op in ("GT", "LT")

    def condition(self) -> exp.Expression:
        return _INEQUALITIES[self.op](this=self.left_time.copy(), expression=self.right_time.copy())


def rewrite_asof_joins(
    query: exp.Expression,
    dialect: str,
    *,
    schema: Mapping[str, Mapping[str, str]] | None = None,
    deterministic_ties: bool = True,
) -> exp.Expression:
    """Rewrite DuckDB-style ASOF joins for ``dialect`` with identical results, ties included.

    Why: engines without ASOF (PostgreSQL, BigQuery, Spark, Trino...) reject it, and engines with it
    (DuckDB, Snowflake) pick arbitrarily among tied rows. Per dialect (capability flags):

    * native ``ON`` syntax (DuckDB): keep the join; the right side is first reduced to one row per
      (keys, time) by the tie rule, so the native join has no tie left to pick from;
    * ``MATCH_CONDITION`` syntax (Snowflake): the same, spelled ``ASOF JOIN ... MATCH_CONDITION``;
    * LATERAL (PostgreSQL): ``[LEFT] JOIN LATERAL (SELECT * ... ORDER BY time, tie rule LIMIT 1)``;
    * otherwise: a window rewrite (running MAX/MIN over a UNION ALL timeline of left probe points and
      right rows, then an equi-join on the winning time and ROW_NUMBER by the tie rule).

    Understood shape: ``a ASOF [LEFT] JOIN b ON <a-expr> = <b-expr> AND ... AND <a-expr> OP <b-expr>``
    with OP one of >=, >, <=, < (either operand order), every column qualified by its table alias.
    ``schema`` ({table: {column: type}}) lets unqualified columns and ``*`` be resolved and gives
    the tie columns their types. Anything else raises ``CompileError``.
    """
    caps = capabilities(dialect)
    if not deterministic_ties and caps.asof is None:
        raise CompileError("deterministic_ties=False only makes sense for engines with a native ASOF join")
    query = query.copy()
    mapping = MappingSchema(dict(schema)) if schema else None  # type: ignore[arg-type]
    if mapping is not None:
        from sqlglot.optimizer.qualify_columns import qualify_columns

        try:
            query = qualify_columns(query, schema=mapping, expand_stars=False)
        except SqlglotError as error:
            raise CompileError(f"cannot resolve the columns of an ASOF JOIN query: {error}") from error

    # deepest SELECTs first, so a rewritten join never copies a subquery that still has an ASOF join
    selects = list(query.find_all(exp.Select, bfs=True))
    for select in reversed(selects):
        joins = select.args.get("joins") or []
        for index, join in enumerate(list(joins)):
            if str(join.args.get("method") or "").upper() != "ASOF":
                continue
            asof = _parse_asof(select, join, mapping)
            if caps.asof == "on":
                new = _native(asof, caps, deterministic_ties, match_condition=False)
            elif caps.asof == "match_condition" and asof.outer:
                # Snowflake's ASOF JOIN keeps unmatched left rows: it is DuckDB's ASOF LEFT JOIN
                new = _native(asof, caps, deterministic_ties, match_condition=True)
            elif caps.lateral:
                new = _lateral(asof, caps)
            else:
                new = _window(select, index, asof, caps)
            joins[index] = new
            new.parent = select
    return query


# --- parsing -----------------------------------------------------------------------------------


def _parse_asof(select: exp.Select, join: exp.Join, mapping: MappingSchema | None) -> _Asof:
    right = join.this
    alias = right.alias_or_name
    if not alias or not isinstance(right, exp.Table | exp.Subquery):
        raise CompileError("the right side of an ASOF JOIN must be a table or an aliased subquery")
    side = str(join.args.get("side") or "").upper()
    if side not in ("", "LEFT") or join.args.get("kind"):
        raise CompileError(
            f"ASOF {side or join.args.get('kind')} JOIN is not supported",
            hint="use ASOF JOIN or ASOF LEFT JOIN",
        )
    if join.args.get("using"):
        raise CompileError(
            "ASOF JOIN ... USING cannot be rewritten",
            hint="spell the condition: ON a.k = b.k AND a.ts >= b.ts",
        )

    conjuncts: list[exp.Expression] = []
    if join.args.get("match_condition") is not None:
        conjuncts.append(join.args["match_condition"])
    on = join.args.get("on")
    if on is not None:
        conjuncts += list(on.flatten()) if isinstance(on, exp.And) else [on]

    equalities: list[tuple[exp.Expression, exp.Expression]] = []
    inequality: tuple[exp.Expression, exp.Expression, str] | None = None
    for cond in conjuncts:
        cond = cond.unnest()
        key = type(cond).__name__.upper()
        if not isinstance(cond, exp.EQ) and key not in _INEQUALITIES:
            raise CompileError(
                f"ASOF JOIN condition '{cond.sql('duckdb')}' is not an equality or a comparison",
                hint="use ON a.k = b.k AND a.ts >= b.ts; filter the right side in a subquery",
            )
        a, b = cond.this, cond.expression
        if _side(a, alias) == "right" and _side(b, alias) == "left":
            a, b = b, a
            key = _FLIP.get(key, key)
        if not (_side(a, alias) == "left" and _side(b, alias) == "right"):
            raise CompileError(
                f"ASOF JOIN condition '{cond.sql('duckdb')}' must compare a left-side expression with "
                f"a right-side ('{alias}') expression, every column qualified by its table alias",
            )
        if isinstance(cond, exp.EQ):
            equalities.append((a, b))
        elif inequality is not None:
            raise CompileError(
                "an ASOF JOIN has exactly one inequality", hint="move other conditions to WHERE"
            )
        else:
            inequality = (a, b, key)
    if inequality is None:
        raise CompileError("an ASOF JOIN needs one inequality such as a.ts >= b.ts")

    constant = {r.name for _, r in equalities if isinstance(r, exp.Column)}
    if isinstance(inequality[1], exp.Column):
        constant.add(inequality[1].name)
    # keys and the time are equal among tied rows: ordering by them would only add noise
    columns = _tie_columns(select, join, alias, mapping)
    tie_columns = [(i, t) for i, t in columns if i.name not in constant]
    alias_id = right.args["alias"].this if right.args.get("alias") else right.this
    return _Asof(
        join=join,
        alias=alias,
        alias_id=alias_id.copy(),
        equalities=equalities,
        left_time=inequality[0],
        right_time=inequality[1],
        op=inequality[2],
        outer=str(join.args.get("side") or "").upper() == "LEFT",
        columns=columns,
        tie_columns=tie_columns,
    )


def _side(expression: exp.Expression, alias: str) -> str:
    tables = set()
    for column in expression.find_all(exp.Column):
        if not column.table:
            raise CompileError(
                f"column '{column.sql('duckdb')}' in an ASOF JOIN condition is not qualified",
                hint="qualify it with its table alias (or pass a schema)",
            )
        tables.add(column.table)
    if not tables:
        return "none"
    if tables == {alias}:
        return "right"
    return "left" if alias not in tables else "mixed"


def _tie_columns(
    select: exp.Select, join: exp.Join, alias: str, mapping: MappingSchema | None
) -> list[tuple[exp.Identifier, str | None]]:
    """The right side's columns the query can observe: they decide ties (see the module docstring)."""
    right_columns = _right_columns(join.this, mapping)
    # DuckDB lets ORDER BY, GROUP BY, HAVING and QUALIFY name a projection's alias
    outputs = {s.alias for s in select.expressions if isinstance(s, exp.Alias)}
    names: dict[str, exp.Identifier] = {}
    star = any(isinstance(s, exp.Star) for s in select.expressions)
    for column in select.find_all(exp.Column):
        if (
            column.find_ancestor(exp.Join) is join
            and column.find_ancestor(exp.Subquery, exp.Lateral) is join.this
        ):
            continue  # inside the right side's own subquery: a different scope
        if isinstance(column.this, exp.Star):
            star = star or column.table == alias
            continue
        if column.table == alias:
            names.setdefault(column.name, column.this.copy())
        elif (
            not column.table
            and _in_scope(column, select)
            and not (column.name in outputs and _clause(column, select) != "expressions")
        ):
            raise CompileError(
                f"column '{column.name}' in a query with an ASOF JOIN is not qualified",
                hint=f"write {alias}.{column.name} or <left alias>.{column.name}, or pass a schema",
            )
    if star:
        if right_columns is None:
            raise CompileError(
                f"'*' over the right side '{alias}' of an ASOF JOIN needs its columns",
                hint="list the columns you need, or pass a schema",
            )
        for name in right_columns:
            names.setdefault(name, exp.to_identifier(name))
    types = right_columns or {}
    return [(names[name], types.get(name)) for name in sorted(names)]


def _right_columns(right: exp.Expression, mapping: MappingSchema | None) -> dict[str, str | None] | None:
    if isinstance(right, exp.Table) and mapping is not None:
        try:
            names = mapping.column_names(right)
        except SqlglotError:
            return None
        if not names:
            return None
        return {n: mapping.get_column_type(right, n).sql() for n in names}
    if isinstance(right, exp.Subquery) and isinstance(right.this, exp.Select):
        if any(
            isinstance(s, exp.Star) or (isinstance(s, exp.Column) and s.is_star)
            for s in right.this.expressions
        ):
            return None
        return dict.fromkeys(right.this.named_selects)
    return None


def _clause(node: exp.Expression, select: exp.Select) -> str | None:
    """Which argument of ``select`` (expressions, where, order...) holds ``node``."""
    while node.parent is not None and node.parent is not select:
        node = node.parent
    return node.arg_key if node.parent is select else None


def _in_scope(column: exp.Column, select: exp.Select) -> bool:
    """The column belongs to ``select`` itself, not to a nested query."""
    return column.find_ancestor(exp.Select) is select


# --- per-dialect forms -------------------------------------------------------------------------


def _tie_order(asof: _Asof, caps: Capabilities) -> list[exp.Ordered]:
    order: list[exp.Ordered] = []
    for ident, dtype in asof.tie_columns:
        order += value_sort_keys(_right_column(asof, ident), dtype, caps)
    return order


def _right_column(asof: _Asof, ident: exp.Identifier) -> exp.Column:
    return exp.Column(this=ident.copy(), table=asof.alias_id.copy())


def _right_relation(asof: _Asof) -> exp.Expression:
    return asof.join.this.copy()


def _native(asof: _Asof, caps: Capabilities, deterministic: bool, *, match_condition: bool) -> exp.Join:
    """Native ASOF join over a right side reduced to one row per (keys, time) by the tie rule."""
    right = _right_relation(asof)
    if deterministic:
        partition = [r.copy() for _, r in asof.equalities] + [asof.right_time.copy()]
        rn = exp.Window(
            this=exp.RowNumber(),
            partition_by=partition,
            order=exp.Order(expressions=_tie_order(asof, caps)) if asof.tie_columns else None,
        )
        inner = exp.select("*").from_(right)
        if caps.qualify:
            inner = inner.qualify(exp.EQ(this=rn, expression=exp.Literal.number(1)))
        else:
            raise CompileError(f"dialect '{caps.name}' has ASOF but no QUALIFY: unsupported combination")
        right = inner.subquery(asof.alias_id.copy())
    equal = [exp.EQ(this=left.copy(), expression=r.copy()) for left, r in asof.equalities]
    join = exp.Join(this=right, method="ASOF", side="LEFT" if asof.outer else None)
    if match_condition:
        join.set("match_condition", asof.condition())
        join.set("on", exp.and_(*equal) if equal else exp.true())
    else:
        join.set("on", exp.and_(*equal, asof.condition()))
    return join


def _lateral(asof: _Asof, caps: Capabilities) -> exp.Join:
    """[LEFT] JOIN LATERAL (SELECT * FROM right WHERE cond ORDER BY time, tie rule LIMIT 1) ON TRUE."""
    cond = [exp.EQ(this=left.copy(), expression=r.copy()) for left, r in asof.equalities]
    cond.append(asof.condition())
    # the right time is never NULL in a match, so the dialect's default NULL placement is fine
    order = [natural_order(asof.right_time.copy(), caps, desc=asof.backward)]
    order += _tie_order(asof, caps)
    sub = exp.select("*").from_(_right_relation(asof)).where(exp.and_(*cond)).order_by(*order).limit(1)
    lateral = exp.Lateral(this=sub.subquery(), alias=exp.TableAlias(this=asof.alias_id.copy()))
    return exp.Join(this=lateral, side="LEFT" if asof.outer else None, on=exp.true())


def _window(select: exp.Select, index: int, asof: _Asof, caps: Capabilities) -> exp.Join:
    """A window rewrite for engines with neither ASOF nor LATERAL.

    For each distinct left probe point (keys, time), a running MAX (backward) or MIN (forward) of
    the right time over a UNION ALL timeline finds the winning right time; an equi-join fetches the
    right rows at it and ROW_NUMBER applies the tie rule. The result is joined back on the probe
    point. Non-strict comparisons put right rows before probe points at equal times, strict ones
    after. Only the referenced right columns are carried, so ``*`` over the right side is refused.
    """
    if any(isinstance(s, exp.Star) or (isinstance(s, exp.Column) and s.is_star) for s in select.expressions):
        raise CompileError(
            f"'*' in a query whose ASOF JOIN is rewritten for dialect '{caps.name}'",
            hint=f"list the columns (the rewrite replaces '{asof.alias}' by a derived table)",
        )
    n_keys = len(asof.equalities)
    names = Namer(ident.name for ident, _ in asof.columns)
    k_names = [names(f"k{i}") for i in range(n_keys)]
    t_name, kind, best, rn = (names(n) for n in ("t", "kind", "best", "rn"))
    x, y, m, z = (names(n) for n in ("x", "y", "m", "z"))

    # probe points: the left side as joined so far, without the query's WHERE (a superset is fine)
    source = exp.select(
        *(
            exp.alias_(left.copy(), k, quoted=True)
            for (left, _), k in zip(asof.equalities, k_names, strict=True)
        ),
        exp.alias_(asof.left_time.copy(), t_name, quoted=True),
    ).distinct()
    source.set("from_", select.args["from_"].copy())
    prior = [j.copy() for j in (select.args.get("joins") or [])[:index]]
    if prior:
        source.set("joins", prior)
    probe_exprs = [*(left for left, _ in asof.equalities), asof.left_time]
    not_null = [exp.Not(this=exp.Is(this=e.copy(), expression=exp.Null())) for e in probe_exprs]
    source = source.where(exp.and_(*not_null))

    right_kind, probe_kind = (0, 1) if not asof.strict else (1, 0)
    right_rows = (
        exp.select(
            *(
                exp.alias_(r.copy(), k, quoted=True)
                for (_, r), k in zip(asof.equalities, k_names, strict=True)
            ),
            exp.alias_(asof.right_time.copy(), t_name, quoted=True),
            exp.alias_(exp.Literal.number(right_kind), kind, quoted=True),
            exp.alias_(asof.right_time.copy(), best, quoted=True),
        )
        .from_(_right_relation(asof))
        .where(exp.Not(this=exp.Is(this=asof.right_time.copy(), expression=exp.Null())))
    )
    probe_rows = exp.select(
        *(exp.column(k, "__fsql_p", quoted=True) for k in k_names),
        exp.column(t_name, "__fsql_p", quoted=True),
        exp.alias_(exp.Literal.number(probe_kind), kind, quoted=True),
        exp.alias_(exp.Null(), best, quoted=True),
    ).from_(source.subquery("__fsql_p"))
    timeline = exp.union(right_rows, probe_rows, distinct=False)
    aggregate = exp.Max if asof.backward else exp.Min
    running = exp.Window(
        this=aggregate(this=exp.column(best, x, quoted=True)),
        partition_by=[exp.column(k, x, quoted=True) for k in k_names] or None,
        order=exp.Order(
            expressions=[
                natural_order(exp.column(t_name, x, quoted=True), caps, desc=not asof.backward),
                natural_order(exp.column(kind, x, quoted=True), caps),
            ]
        ),
        spec=exp.WindowSpec(kind="ROWS", start="UNBOUNDED", start_side="PRECEDING", end="CURRENT ROW"),
    )
    scanned = exp.select(
        *(exp.column(c, x, quoted=True) for c in [*k_names, t_name, kind]),
        exp.alias_(running, best, quoted=True),
    ).from_(timeline.subquery(x))
    matched = (
        exp.select(*(exp.column(c, y, quoted=True) for c in [*k_names, t_name, best]))
        .from_(scanned.subquery(y))
        .where(
            exp.and_(
                exp.EQ(this=exp.column(kind, y, quoted=True), expression=exp.Literal.number(probe_kind)),
                exp.Not(this=exp.Is(this=exp.column(best, y, quoted=True), expression=exp.Null())),
            )
        )
    )

    on = [
        exp.EQ(this=r.copy(), expression=exp.column(k, m, quoted=True))
        for (_, r), k in zip(asof.equalities, k_names, strict=True)
    ]
    on.append(exp.EQ(this=asof.right_time.copy(), expression=exp.column(best, m, quoted=True)))
    carried: list[exp.Expression] = [_right_column(asof, ident) for ident, _ in asof.columns]
    carried += [exp.column(c, m, quoted=True) for c in [*k_names, t_name]]
    ranked_over = exp.Window(
        this=exp.RowNumber(),
        partition_by=[exp.column(c, m, quoted=True) for c in [*k_names, t_name]],
        order=exp.Order(expressions=_tie_order(asof, caps)) if asof.tie_columns else None,
    )
    fetched = exp.select(*carried, exp.alias_(ranked_over, rn, quoted=True)).from_(matched.subquery(m))
    fetched = fetched.join(_right_relation(asof), on=exp.and_(*on))
    picked = (
        exp.select(
            *(exp.Column(this=ident.copy(), table=exp.to_identifier(z)) for ident, _ in asof.columns),
            *(exp.column(c, z, quoted=True) for c in [*k_names, t_name]),
        )
        .from_(fetched.subquery(z))
        .where(exp.EQ(this=exp.column(rn, z, quoted=True), expression=exp.Literal.number(1)))
    )

    back = [
        exp.EQ(
            this=exp.Column(this=exp.to_identifier(k, quoted=True), table=asof.alias_id.copy()),
            expression=left.copy(),
        )
        for (left, _), k in zip(asof.equalities, k_names, strict=True)
    ]
    t_back = exp.Column(this=exp.to_identifier(t_name, quoted=True), table=asof.alias_id.copy())
    back.append(exp.EQ(this=t_back, expression=asof.left_time.copy()))
    return exp.Join(
        this=picked.subquery(asof.alias_id.copy()),
        side="LEFT" if asof.outer else None,
        on=exp.and_(*back),
    )


# --- named windows -----------------------------------------------------------------------------


def inline_named_windows(query: exp.Expression, *, copy: bool = True) -> exp.Expression:
    """Replace ``OVER w`` / ``OVER (w ...)`` by the definition from ``WINDOW w AS (...)``.

    Why: sqlglot 30.x crashes generating BigQuery from a WINDOW clause and drops a refining frame
    for Snowflake. Merge rules are the SQL standard's: the referencing window may add an ORDER BY if
    the named one has none, and a frame; it may not repeat PARTITION BY, ORDER BY or a frame the
    named window already has (CompileError rather than a guess).
    """
    query = query.copy() if copy else query
    for select in list(query.find_all(exp.Select)):
        definitions = select.args.get("windows")
        if not definitions:
            continue
        named: dict[str, exp.Window] = {}
        for definition in definitions:
            resolved = definition.copy()
            base_name = resolved.args.get("alias")
            if base_name is not None:
                base = named.get(base_name.name)
                if base is None:
                    raise CompileError(f"window '{base_name.name}' is used before it is defined")
                resolved = _merge_window(base, resolved, base_name.name)
            named[definition.this.name] = resolved
        for window in list(select.find_all(exp.Window)):
            if window.find_ancestor(exp.Select) is not select:
                continue
            ref = window.args.get("alias")
            if ref is None or ref.name not in named:
                continue
            merged = _merge_window(named[ref.name], window, ref.name)
            for arg in ("partition_by", "order", "spec"):
                window.set(arg, merged.args.get(arg))
            window.set("alias", None)
        select.set("windows", None)
    return query


def _merge_window(base: exp.Window, window: exp.Window, name: str) -> exp.Window:
    merged = exp.Window()
    for arg in ("partition_by", "order", "spec"):
        mine, theirs = window.args.get(arg), base.args.get(arg)
        if mine and theirs:
            raise CompileError(
                f"window refining '{name}' repeats its {arg.replace('_', ' ').upper()}",
                hint="define the full window in the WINDOW clause or inline it",
            )
        value = mine or theirs
        merged.set(
            arg,
            value.copy()
            if isinstance(value, exp.Expression)
            else [v.copy() for v in value]
            if value
            else None,
        )
    return merged


# --- IGNORE NULLS -------------------------------------------------------------------------------


def ignore_nulls_as_value_functions(query: exp.Expression, *, copy: bool = True) -> exp.Expression:
    """``FIRST/LAST(x) IGNORE NULLS OVER (...)`` -> ``FIRST_VALUE/LAST_VALUE(x IGNORE NULLS) OVER``.

    Why: Spark's ``LAST(x, TRUE) OVER w`` (last non-NULL value of the frame) parses to an ignore-NULLS
    ``LAST`` aggregate, and sqlglot 30.x emits it for DuckDB and PostgreSQL as plain ``LAST(x)``:
    NULLs are no longer skipped, silently. The value functions take IGNORE NULLS where the engine
    supports it (DuckDB, BigQuery, Trino...); where it does not (PostgreSQL), ``generate`` reports
    it instead of dropping it. Same frame, same rows: the meaning is unchanged.
    """
    query = query.copy() if copy else query
    swaps = {exp.Last: exp.LastValue, exp.First: exp.FirstValue}
    for window in list(query.find_all(exp.Window)):
        inner = window.this
        if isinstance(inner, exp.IgnoreNulls) and type(inner.this) in swaps:
            aggregate = inner.this
            inner.set("this", swaps[type(aggregate)](this=aggregate.this.copy()))
    return query


# --- generation --------------------------------------------------------------------------------


# What sqlglot's generator raises on trees it does not handle, besides its own errors (seen with 30.x).
# Caught only around sqlglot calls, never around fsql's rewrites, so a bug of ours still surfaces.
SQLGLOT_GENERATOR_FAILURES: tuple[type[Exception], ...] = (AttributeError, TypeError, KeyError, ValueError)


def generate(expression: exp.Expression, dialect: str, *, pretty: bool = False) -> str:
    """SQL text for ``dialect``, or CompileError where sqlglot cannot express the tree faithfully.

    The tree is copied once and every rewrite works on that copy: on a large query (a 5 MB IN list)
    each copy costs as much as the generation itself. A CompileError carries the (parsed) line of
    the smallest construct that fails to generate, e.g. the window, not the start of the query.
    """
    tree = _prepared(expression, dialect)
    try:
        return tree.sql(dialect=dialect, pretty=pretty, unsupported_level=ErrorLevel.RAISE, copy=False)
    except SqlglotError as error:
        line = _failing_line(expression, dialect)
        raise CompileError(f"cannot express this query in {dialect}: {error}", line=line) from error
    except SQLGLOT_GENERATOR_FAILURES as error:  # only tree.sql() runs here: a sqlglot generator failure
        raise CompileError(
            f"sqlglot failed to generate {dialect} SQL ({type(error).__name__}: {error})",
            line=_failing_line(expression, dialect),
            hint="simplify the construct or report it",
        ) from error


def _prepared(expression: exp.Expression, dialect: str) -> exp.Expression:
    tree = inline_named_windows(expression.copy(), copy=False)
    tree = ignore_nulls_as_value_functions(tree, copy=False)
    if dialect == "bigquery":
        tree = bigquery_window_order(tree, copy=False)
    return tree


def _failing_line(expression: exp.Expression, dialect: str) -> int | None:
    """The line of the smallest subtree that still fails to generate on its own."""
    try:
        node = _prepared(expression, dialect)
    except CompileError:
        return None
    while True:
        for child in node.iter_expressions():
            try:
                child.sql(dialect=dialect, unsupported_level=ErrorLevel.RAISE)
            except (SqlglotError, *SQLGLOT_GENERATOR_FAILURES):
                node = child
                break
        else:
            return node_line(node)


def node_line(node: exp.Expression) -> int | None:
    """The first source line sqlglot recorded inside ``node`` (tokens carry lines, nodes do not)."""
    for candidate in node.walk():
        meta = getattr(candidate, "_meta", None) or {}
        if "line" in meta:
            return int(meta["line"])
    return None


# --- BigQuery window ORDER BY ---------------------------------------------------------------------

_MICROS = {
    "MICROSECOND": 1, "MILLISECOND": 1_000, "SECOND": 1_000_000, "MINUTE": 60_000_000,
    "HOUR": 3_600_000_000, "DAY": 86_400_000_000, "WEEK": 604_800_000_000,
}
_FRAME_EDGES = ("UNBOUNDED", "CURRENT ROW")


def bigquery_window_order(query: exp.Expression, *, copy: bool = True) -> exp.Expression:
    """Window ORDER BYs BigQuery accepts, with the source's NULL placement and frames.

    Why: feature files default to DuckDB, where NULLs sort last ascending; BigQuery sorts them first
    and has no ``NULLS LAST`` for aggregate window functions, and its RANGE frames with an offset need
    one numeric ORDER BY key, so ``RANGE BETWEEN INTERVAL 30 DAYS PRECEDING`` over a timestamp is refused.

    * RANGE with an offset bound: NULL placement cannot change such a frame (a NULL key is never within
      an offset of a value, and NULL rows frame their NULL peers wherever they sort), so BigQuery's own
      placement is kept. An INTERVAL offset becomes microseconds over ``UNIX_MICROS(CAST(key AS
      TIMESTAMP))``; months and years have no fixed length and are refused.
    * Otherwise a leading ``key IS NULL`` sort key gives the requested placement: it splits no peer
      group, so ROWS, GROUPS and unbounded RANGE frames hold the same rows.
    """
    query = query.copy() if copy else query
    for window in list(query.find_all(exp.Window)):
        order = window.args.get("order")
        if order is None:
            continue
        spec = window.args.get("spec")
        offset_range = spec is not None and str(spec.args.get("kind") or "").upper() == "RANGE" and any(
            _is_offset(spec.args.get(edge)) for edge in ("start", "end")
        )
        keys: list[exp.Expression] = []
        for ordered in order.expressions:
            if not isinstance(ordered, exp.Ordered):
                keys.append(ordered)
                continue
            desc = bool(ordered.args.get("desc"))
            default_first = not desc  # BigQuery: NULLs are the smallest values
            wanted_first = bool(ordered.args.get("nulls_first"))
            ordered.set("nulls_first", default_first)
            if wanted_first != default_first and not offset_range:
                value = ordered.this.copy()
                if not isinstance(value, (exp.Column, exp.Paren)):
                    value = exp.paren(value, copy=False)
                null_key = exp.Is(this=value, expression=exp.Null())
                keys.append(exp.Ordered(this=null_key, desc=desc, nulls_first=default_first))
            keys.append(ordered)
        order.set("expressions", keys)
        if offset_range:
            _numeric_range(window, order, spec)
    return query


def _is_offset(edge: object) -> bool:
    return edge is not None and not (isinstance(edge, str) and edge.upper() in _FRAME_EDGES)


def _numeric_range(window: exp.Window, order: exp.Order, spec: exp.WindowSpec) -> None:
    edges = [spec.args.get(edge) for edge in ("start", "end")]
    if not any(isinstance(edge, exp.Interval) for edge in edges):
        return
    if len(order.expressions) != 1:
        raise CompileError("a RANGE window with an INTERVAL offset needs exactly one ORDER BY key",
                           line=node_line(window))
    key = order.expressions[0]
    timestamp = exp.DataType.build("TIMESTAMPTZ")
    key.set("this", exp.UnixMicros(this=exp.Cast(this=key.this, to=timestamp)))
    for name in ("start", "end"):
        edge = spec.args.get(name)
        if isinstance(edge, exp.Interval):
            spec.set(name, exp.Literal.number(_interval_micros(edge, window)))


def _interval_micros(interval: exp.Interval, window: exp.Window) -> int:
    value = interval.this.unnest() if isinstance(interval.this, exp.Paren) else interval.this
    unit_node = interval.args.get("unit")
    unit = (unit_node.name if isinstance(unit_node, exp.Expression) else str(unit_node or "")).upper().rstrip("S")
    try:
        amount = float(value.name) if isinstance(value, exp.Literal) else None
    except ValueError:
        amount = None
    if amount is None or unit not in _MICROS or amount * _MICROS[unit] != int(amount * _MICROS[unit]):
        raise CompileError(
            f"RANGE offset {interval.sql()} has no fixed length in microseconds for BigQuery",
            line=node_line(window),
            hint="use a whole number of weeks, days, hours, minutes or seconds",
        )
    return int(amount * _MICROS[unit])
