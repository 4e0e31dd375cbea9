"""Derived known time (fsql.compiler.known_time) against a brute-force reference, on real engines.

Property tests draw tiny sources from small domains (an hourly grid, so ties and frame boundaries
are hit exactly; many late and NULL load times; duplicate rows) and one view shape (windows with
ROWS and RANGE frames, LAG, ROW_NUMBER, GROUP BY, joins, an ASOF join, a view on a view, UNION ALL,
CTEs and subqueries). The derived column, computed on DuckDB and on PostgreSQL from the rewritten
SQL, must equal the reference in ``pit_reference`` row for row (as multisets: a view has no order).

Hypothesis runs derandomized; a failure prints the drawn case and is a real counterexample.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
import sqlglot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pit_reference import (
    KNOWN,
    RefFrame,
    RefWindow,
    instant,
    known_asof_left,
    known_group,
    known_join,
    known_scan,
    known_window,
    load_duckdb,
    load_postgres,
    null_last,
    same_value,
)
from sqlglot import exp

from fsql.compiler.known_time import KnownInput, derive_known_time, known_inputs
from fsql.compiler.views import to_dialect
from fsql.errors import CompileError, FsqlError

EXAMPLES = int(os.environ.get("FSQL_KNOWN_TIME_EXAMPLES", "60"))
PROFILE = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
BASE = datetime(2024, 3, 1)
HOUR = timedelta(hours=1)

ORDERS = [("c", "INTEGER"), ("ts", "TIMESTAMP"), ("loaded", "TIMESTAMP"), ("amount", "INTEGER")]
CUSTOMERS = [("c", "INTEGER"), ("updated", "TIMESTAMP"), ("loaded", "TIMESTAMP"), ("seg", "VARCHAR")]
RATES = [("c", "INTEGER"), ("ts", "TIMESTAMP"), ("loaded", "TIMESTAMP"), ("rate", "INTEGER")]
INPUTS = {
    "orders": KnownInput("loaded", "ts"),
    "customers": KnownInput("loaded", "updated"),
    "rates": KnownInput("loaded", "ts"),
    "v1": KnownInput("__known_at", "ts"),
}


# --- data ----------------------------------------------------------------------------------------


def _loaded(draw: st.DrawFn, ts: datetime) -> datetime | None:
    late = draw(st.sampled_from([None, 0, 1, 3, 10, 30]))  # hours after the event; None = no load time
    return None if late is None else ts + late * HOUR


@st.composite
def orders(draw: st.DrawFn) -> list[tuple]:
    rows = []
    for _ in range(draw(st.integers(0, 10))):
        ts = BASE + draw(st.integers(0, 8)) * HOUR
        rows.append((draw(st.sampled_from([1, 2])), ts, _loaded(draw, ts), draw(st.sampled_from([0, 1, 2, 5]))))
    if rows and draw(st.booleans()):
        rows += draw(st.lists(st.sampled_from(rows), max_size=3))  # exact duplicates
    return rows


@st.composite
def customers(draw: st.DrawFn) -> list[tuple]:
    rows = []
    for _ in range(draw(st.integers(0, 5))):
        ts = BASE + draw(st.integers(0, 8)) * HOUR
        rows.append((draw(st.sampled_from([1, 2, 3])), ts, _loaded(draw, ts), draw(st.sampled_from(["a", "b", None]))))
    return rows


@st.composite
def rates(draw: st.DrawFn) -> list[tuple]:
    points = draw(st.sets(st.tuples(st.sampled_from([1, 2]), st.integers(0, 8)), max_size=6))
    rows = []
    for c, h in sorted(points):  # unique per (key, time): the ASOF tie rule is tested elsewhere
        ts = BASE + h * HOUR
        rows.append((c, ts, _loaded(draw, ts), draw(st.integers(1, 4))))
    return rows


def dicts(columns: list[tuple[str, str]], rows: list[tuple]) -> list[dict[str, Any]]:
    return [dict(zip([c for c, _ in columns], r, strict=True)) for r in rows]


# --- view shapes: SQL and the reference's evaluation of the same ---------------------------------


@dataclass
class Shape:
    """A view's SQL with its expected output (column values then the known time), plus the
    upstream views it reads (name, SQL), built first with their own derived column."""

    sql: str
    columns: list[str]
    expected: Callable[[dict[str, list[dict[str, Any]]]], list[dict[str, Any]]]
    upstream: list[tuple[str, str]] = field(default_factory=list)

    def expected_rows(self, tables: dict[str, list[dict[str, Any]]]) -> list[tuple]:
        return [tuple(r[c] for c in self.columns) + (r[KNOWN],) for r in self.expected(tables)]


TOTAL_ORDER = ("ts", "amount", "loaded")  # ROWS frames need it: ties only among identical rows
TOTAL_SQL = "ts, amount, loaded NULLS LAST"
ROWS_FRAMES = [(-1, 0), (-2, 1), (None, 0), (-2, -1), (1, 2), (None, None), (0, None)]
RANGE_FRAMES = [(-3, 0), (None, 0), (-2, 1), (0, 2), (1, 3), (-1, -1)]


def _bound(offset: int | None, *, start: bool, hours: bool) -> str:
    if offset is None:
        return "UNBOUNDED PRECEDING" if start else "UNBOUNDED FOLLOWING"
    if offset == 0:
        return "CURRENT ROW"
    amount = f"INTERVAL {abs(offset)} HOURS" if hours else str(abs(offset))
    return f"{amount} {'PRECEDING' if offset < 0 else 'FOLLOWING'}"


def _sum(rows: list[dict[str, Any]]) -> int | None:
    return sum(r["amount"] for r in rows) if rows else None


def _key(row: dict[str, Any]) -> tuple:
    return tuple(null_last(row[c]) for c in TOTAL_ORDER)


# extra window functions: (SQL, reference). Their frames are not the drawn one: LAG/LEAD read the
# n rows before/after, ROW_NUMBER the partition up to the current row, CUME_DIST and an unordered
# COUNT the whole partition.
EXTRAS: dict[str, tuple[str, RefWindow]] = {
    "lag1": (f"LAG(amount) OVER (PARTITION BY c ORDER BY {TOTAL_SQL})",
             RefWindow("lag1", TOTAL_ORDER, RefFrame("ROWS", -1, 0),
                       lambda f, p, i: p[i - 1]["amount"] if i >= 1 else None)),
    "lag2": (f"LAG(amount, 2) OVER (PARTITION BY c ORDER BY {TOTAL_SQL})",
             RefWindow("lag2", TOTAL_ORDER, RefFrame("ROWS", -2, 0),
                       lambda f, p, i: p[i - 2]["amount"] if i >= 2 else None)),
    "lead2": (f"LEAD(amount, 2, -1) OVER (PARTITION BY c ORDER BY {TOTAL_SQL})",
              RefWindow("lead2", TOTAL_ORDER, RefFrame("ROWS", 0, 2),
                        lambda f, p, i: p[i + 2]["amount"] if i + 2 < len(p) else -1)),
    "rn": (f"ROW_NUMBER() OVER (PARTITION BY c ORDER BY {TOTAL_SQL})",
           RefWindow("rn", TOTAL_ORDER, RefFrame("RANGE", None, 0), lambda f, p, i: i + 1)),
    "cume": (f"CUME_DIST() OVER (PARTITION BY c ORDER BY {TOTAL_SQL})",
             RefWindow("cume", TOTAL_ORDER, None,
                       lambda f, p, i: sum(1 for r in p if _key(r) <= _key(p[i])) / len(p))),
    "total_n": ("COUNT(*) OVER (PARTITION BY c)", RefWindow("total_n", (), None, lambda f, p, i: len(p))),
}


def window_view(
    frame: tuple[str, int | None, int | None] | None, extras: tuple[str, ...]
) -> tuple[str, list[str], Callable[[list[dict]], list[dict]]]:
    """A window view over orders: its SQL, output columns and reference over scanned rows.

    ``frame`` (kind, start, end) adds SUM and COUNT over that frame (RANGE offsets in hours)."""
    projections = ["c", "ts", "amount", "loaded"]
    windows: list[RefWindow] = []
    clause = ""
    if frame is not None:
        kind, start, end = frame
        hours = kind == "RANGE"
        bounds = f"{_bound(start, start=True, hours=hours)} AND {_bound(end, start=False, hours=hours)}"
        order_sql, order = (TOTAL_SQL, TOTAL_ORDER) if kind == "ROWS" else ("ts", ("ts",))
        clause = f"\nWINDOW w AS (PARTITION BY c ORDER BY {order_sql} {kind} BETWEEN {bounds})"
        scale = HOUR if hours else 1
        ref = RefFrame(kind, None if start is None else start * scale, None if end is None else end * scale)
        projections += ["SUM(amount) OVER w AS s", "COUNT(*) OVER w AS n"]
        windows += [
            RefWindow("s", order, ref, lambda f, p, i: _sum(f)),
            RefWindow("n", order, ref, lambda f, p, i: len(f)),
        ]
    for name in extras:
        sql, ref_window = EXTRAS[name]
        projections.append(f"{sql} AS {name}")
        windows.append(ref_window)
    sql = f"SELECT {', '.join(projections)} FROM orders{clause}"
    columns = ["c", "ts", "amount", "loaded"] + [w.name for w in windows]
    return sql, columns, lambda scanned: known_window(scanned, ["c"], windows)


FRAMES = [("ROWS", a, b) for a, b in ROWS_FRAMES] + [("RANGE", a, b) for a, b in RANGE_FRAMES]


def window_shape(frame: tuple[str, int | None, int | None] | None, extras: tuple[str, ...]) -> Shape:
    sql, columns, ref = window_view(frame, extras)
    return Shape(sql, columns, lambda t: ref(known_scan(t["orders"], "loaded", "ts")))


def group_shape(threshold: int, having: bool) -> Shape:
    sql = (
        "SELECT c, MAX(ts) AS ts, SUM(amount) AS s, COUNT(*) AS n FROM orders "
        f"WHERE amount >= {threshold} GROUP BY c" + (" HAVING COUNT(*) > 1" if having else "")
    )

    def group(t: dict) -> list[dict]:
        rows = [r for r in known_scan(t["orders"], "loaded", "ts") if r["amount"] >= threshold]
        out = known_group(rows, ["c"], {"ts": lambda g: max(r["ts"] for r in g), "s": _sum, "n": len})
        return [r for r in out if not having or r["n"] > 1]

    return Shape(sql, ["c", "ts", "s", "n"], group)


def join_shape(outer: bool) -> Shape:
    sql = (
        "SELECT o.c, o.ts, o.amount, p.seg, p.updated FROM orders AS o "
        f"{'LEFT JOIN' if outer else 'JOIN'} customers AS p ON o.c = p.c AND p.updated <= o.ts"
    )

    def join(t: dict) -> list[dict]:
        return known_join(
            known_scan(t["orders"], "loaded", "ts"), known_scan(t["customers"], "loaded", "updated"),
            lambda o, p: o["c"] == p["c"] and p["updated"] <= o["ts"], outer=outer, right_prefix="p.",
            right_columns=[c for c, _ in CUSTOMERS],
        )

    return Shape(sql, ["c", "ts", "amount", "p.seg", "p.updated"], join)


def asof_shape() -> Shape:
    sql = "SELECT o.c, o.ts, o.amount, r.rate FROM orders AS o ASOF LEFT JOIN rates AS r ON o.c = r.c AND o.ts >= r.ts"

    def asof(t: dict) -> list[dict]:
        return known_asof_left(
            known_scan(t["orders"], "loaded", "ts"), known_scan(t["rates"], "loaded", "ts"),
            [("c", "c")], ("ts", "ts"), "r.", [c for c, _ in RATES],
        )

    return Shape(sql, ["c", "ts", "amount", "r.rate"], asof)


def _sum_of(rows: list[dict], column: str) -> int | None:
    values = [r[column] for r in rows if r[column] is not None]
    return sum(values) if values else None


def view_on_view_shape(frame: tuple[str, int | None, int | None], grouped: bool) -> Shape:
    """v1 is a window view over orders (built with its own derived column); the view reads v1."""
    up_sql, _, up_ref = window_view(frame, ())
    if grouped:
        sql = "SELECT c, MAX(ts) AS ts, SUM(s) AS total, MAX(n) AS most FROM v1 GROUP BY c"
    else:
        sql = (
            "SELECT c, ts, s, SUM(s) OVER (PARTITION BY c ORDER BY ts "
            "RANGE BETWEEN INTERVAL 2 HOURS PRECEDING AND CURRENT ROW) AS total FROM v1"
        )

    def on_view(t: dict) -> list[dict]:
        upstream = up_ref(known_scan(t["orders"], "loaded", "ts"))
        rows = known_scan([{**r, "__known_at": r[KNOWN]} for r in upstream], "__known_at", "ts")
        if grouped:
            return known_group(rows, ["c"], {
                "ts": lambda g: max(r["ts"] for r in g),
                "total": lambda g: _sum_of(g, "s"),
                "most": lambda g: max(r["n"] for r in g),
            })
        total = RefWindow("total", ("ts",), RefFrame("RANGE", -2 * HOUR, 0), lambda f, p, i: _sum_of(f, "s"))
        return known_window(rows, ["c"], [total])

    columns = ["c", "ts", "total", "most"] if grouped else ["c", "ts", "s", "total"]
    return Shape(sql, columns, on_view, upstream=[("v1", up_sql)])


def union_shape() -> Shape:
    sql = (
        "SELECT c, ts, amount FROM orders WHERE amount > 0 "
        "UNION ALL SELECT c, updated AS ts, 0 AS amount FROM customers"
    )

    def union(t: dict) -> list[dict]:
        first = [r for r in known_scan(t["orders"], "loaded", "ts") if r["amount"] > 0]
        second = [{**r, "ts": r["updated"], "amount": 0} for r in known_scan(t["customers"], "loaded", "updated")]
        return first + second

    return Shape(sql, ["c", "ts", "amount"], union)


def cte_shape() -> Shape:
    """A CTE read through a '*' subquery, so the hidden column is carried and the '*' expanded."""
    sql = (
        "WITH f AS (SELECT c, ts, amount, loaded FROM orders WHERE amount < 5) "
        "SELECT s.c, s.ts, SUM(s.amount) OVER (PARTITION BY s.c ORDER BY s.ts "
        "RANGE BETWEEN INTERVAL 2 HOURS PRECEDING AND CURRENT ROW) AS total FROM (SELECT * FROM f) AS s"
    )

    def cte(t: dict) -> list[dict]:
        rows = [r for r in known_scan(t["orders"], "loaded", "ts") if r["amount"] < 5]
        total = RefWindow("total", ("ts",), RefFrame("RANGE", -2 * HOUR, 0), lambda f, p, i: _sum(f))
        return known_window(rows, ["c"], [total])

    return Shape(sql, ["c", "ts", "total"], cte)


@st.composite
def shapes(draw: st.DrawFn) -> Shape:
    name = draw(st.sampled_from(["window", "window", "group", "join", "asof", "view_on_view", "union", "cte"]))
    if name == "window":
        extras = tuple(draw(st.lists(st.sampled_from(sorted(EXTRAS)), max_size=2, unique=True)))
        frame = draw(st.sampled_from(FRAMES)) if not extras or draw(st.booleans()) else None
        return window_shape(frame, extras)
    if name == "group":
        return group_shape(draw(st.sampled_from([0, 1, 2])), draw(st.booleans()))
    if name == "join":
        return join_shape(draw(st.booleans()))
    if name == "view_on_view":
        return view_on_view_shape(draw(st.sampled_from(FRAMES)), draw(st.booleans()))
    return {"asof": asof_shape, "union": union_shape, "cte": cte_shape}[name]()


# every shape and frame once, for the dense fixed data below
ALL_SHAPES = (
    [window_shape(f, ()) for f in FRAMES]
    + [window_shape(None, (e,)) for e in sorted(EXTRAS)]
    + [group_shape(1, having) for having in (False, True)]
    + [join_shape(outer) for outer in (False, True)]
    + [asof_shape(), union_shape(), cte_shape()]
    + [view_on_view_shape(("RANGE", -3, 0), grouped) for grouped in (False, True)]
    + [view_on_view_shape(("ROWS", 1, 2), True)]
)


@dataclass
class Case:
    shape: Shape
    orders: list[tuple]
    customers: list[tuple]
    rates: list[tuple]

    def __repr__(self) -> str:
        lines = [f"sql: {self.shape.sql}"] + [f"upstream {n}: {s}" for n, s in self.shape.upstream]
        for name in ("orders", "customers", "rates"):
            lines.append(f"{name}:")
            lines += [f"  {r}" for r in getattr(self, name)]
        return "\n".join(lines)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    return Case(draw(shapes()), draw(orders()), draw(customers()), draw(rates()))


# --- running on engines --------------------------------------------------------------------------


def engine_sql(sql: str, dialect: str) -> str:
    """Derive the known time and transpile for ``dialect`` the way a build does."""
    query = sqlglot.parse_one(sql, read="duckdb")
    assert isinstance(query, exp.Query)
    derived = derive_known_time(query, dialect="duckdb", inputs=INPUTS)
    return to_dialect(derived, "duckdb", dialect)


def canonical(row: tuple) -> tuple:
    return tuple((v is None, repr(instant(v)) if isinstance(v, datetime) else repr(v)) for v in row)


def assert_same_rows(expected: list[tuple], actual: list[tuple], context: str) -> None:
    want, got = sorted(expected, key=canonical), sorted(actual, key=canonical)
    assert len(want) == len(got), f"{context}: expected {len(want)} rows, got {len(got)}"
    for e, a in zip(want, got, strict=True):
        assert all(same_value(instant(x) if isinstance(x, datetime) else x,
                              instant(y) if isinstance(y, datetime) else y) for x, y in zip(e, a, strict=True)), (
            f"{context}: expected {e!r}, got {a!r}"
        )


def check_case(con: Any, engine: str, case: Case) -> None:
    loader = load_duckdb if engine == "duckdb" else load_postgres
    con.execute('DROP VIEW IF EXISTS "v1"')  # it reads the tables reloaded below
    loader(con, "orders", ORDERS, case.orders)
    loader(con, "customers", CUSTOMERS, case.customers)
    loader(con, "rates", RATES, case.rates)
    for name, sql in case.shape.upstream:
        body = engine_sql(sql, engine)
        con.execute(f'CREATE VIEW "{name}" AS {body}')
    sql = engine_sql(case.shape.sql, engine)
    got = [tuple(r) for r in con.execute(sql).fetchall()]
    tables = {
        "orders": dicts(ORDERS, case.orders),
        "customers": dicts(CUSTOMERS, case.customers),
        "rates": dicts(RATES, case.rates),
    }
    assert_same_rows(case.shape.expected_rows(tables), got, f"{engine}\n{sql}")


def test_known_time_duckdb_matches_reference(duck: duckdb.DuckDBPyConnection) -> None:
    @PROFILE
    @given(case=cases())
    def check(case: Case) -> None:
        check_case(duck, "duckdb", case)

    check()


def test_known_time_postgres_matches_reference(pg: Any) -> None:
    @PROFILE
    @given(case=cases())
    def check(case: Case) -> None:
        check_case(pg, "postgres", case)

    check()


def dense_case(shape: Shape) -> Case:
    """Fixed data denser than hypothesis draws: many late loads inside every frame."""
    import random

    rng = random.Random(11)
    orders_rows = []
    for _ in range(40):
        ts = BASE + rng.randint(0, 12) * HOUR
        late = rng.choice([None, 0, 1, 2, 5, 9, 30])
        orders_rows.append((rng.randint(1, 3), ts, None if late is None else ts + late * HOUR, rng.randint(0, 4)))
    orders_rows += orders_rows[:4]
    customers_rows = []
    for _ in range(8):
        ts = BASE + rng.randint(0, 12) * HOUR
        late = rng.choice([None, 0, 4, 20])
        customers_rows.append((rng.randint(1, 4), ts, None if late is None else ts + late * HOUR, rng.choice("ab")))
    rates_rows = []
    for c, h in sorted({(rng.randint(1, 3), rng.randint(0, 12)) for _ in range(12)}):
        ts = BASE + h * HOUR
        late = rng.choice([None, 0, 6, 30])
        rates_rows.append((c, ts, None if late is None else ts + late * HOUR, rng.randint(1, 9)))
    return Case(shape, orders_rows, customers_rows, rates_rows)


@pytest.mark.parametrize("engine", ["duckdb", "postgres"])
def test_known_time_every_shape_on_dense_data(engine: str, request: pytest.FixtureRequest) -> None:
    con = request.getfixturevalue("duck" if engine == "duckdb" else "pg")
    for shape in ALL_SHAPES:
        check_case(con, engine, dense_case(shape))


# --- shapes it cannot propagate through: located errors ------------------------------------------

PROJECT_TOML = """
[project]
name = "kt"
[warehouse]
engine = "duckdb"
[entities.customer]
keys = ["customer_id"]
[sources.orders]
path = "orders.parquet"
[sources.customers]
path = "customers.parquet"
"""
HEADER = ["-- @feature_view v", "-- @entity customer", "-- @timestamp event_ts", "-- @created loaded_at"]
# a Jinja comment spanning lines: the rendered text is shorter, error lines must still be the file's
JINJA = ["{# lookback", "   is fixed here #}"]


def parse_view(tmp_path: Path, body: list[str]) -> Any:
    from fsql.config import load_config
    from fsql.parsing.project import parse_project

    (tmp_path / "fsql.toml").write_text(PROJECT_TOML)
    (tmp_path / "features").mkdir(exist_ok=True)
    (tmp_path / "features" / "v.sql").write_text("\n".join(HEADER + JINJA + body) + "\n")
    return parse_project(load_config(tmp_path)).views["v"]


def derive_parsed(parsed: Any) -> exp.Query:
    inputs = known_inputs(parsed.query, dialect=parsed.dialect, timestamp=parsed.timestamp, created=parsed.created,
                          sources={"orders", "customers"}, views={}, path=parsed.path,
                          line=parsed.annotation_line("created"))
    return derive_known_time(parsed.query, dialect=parsed.dialect, inputs=inputs, created=parsed.created,
                             path=parsed.path, file_line=parsed.file_line)


SELECT = "SELECT customer_id, order_ts AS event_ts, loaded_at, amount"
UNSUPPORTED = {
    "lateral": [SELECT, "FROM orders,", "LATERAL (SELECT 1 AS one) AS l  --!"],
    "table function": [SELECT, "FROM orders", "CROSS JOIN generate_series(1, 3) AS g(n)  --!"],
    "unnest": [SELECT, "FROM orders", "CROSS JOIN UNNEST([1, 2]) AS u(x)  --!"],
    "recursive cte": ["WITH RECURSIVE r AS (SELECT 1 AS n)  --!", SELECT, "FROM orders"],
    "distinct on": ["SELECT DISTINCT ON (customer_id)  --!", "customer_id, order_ts AS event_ts, loaded_at, amount",
                    "FROM orders"],
    "scalar subquery": [SELECT + ",", "(SELECT MAX(amount) FROM orders) AS top  --!", "FROM orders"],
    "in subquery": [SELECT, "FROM orders", "WHERE customer_id IN (SELECT customer_id FROM customers)  --!"],
    "semi join": [SELECT, "FROM orders AS o", "SEMI JOIN customers AS c ON o.customer_id = c.customer_id  --!"],
    "user window function": [SELECT + ",", "my_decay(amount) OVER (PARTITION BY customer_id ORDER BY order_ts)"
                             " AS decayed  --!", "FROM orders"],
    "lag by a column": [SELECT + ",", "LAG(amount, customer_id) OVER (ORDER BY order_ts) AS odd  --!",
                        "FROM orders"],
    "intersect": [SELECT + "  --!", "FROM orders", "INTERSECT", SELECT, "FROM orders"],
    "star over unlisted columns": ["SELECT *  --!", "FROM (SELECT * FROM orders) AS s"],
    "created as MIN": ["SELECT customer_id, order_ts AS event_ts,",
                       "MIN(loaded_at) OVER (PARTITION BY customer_id ORDER BY order_ts) AS loaded_at,  --!",
                       "SUM(amount) OVER (PARTITION BY customer_id ORDER BY order_ts) AS s", "FROM orders"],
    "created over another window": [
        "SELECT customer_id, order_ts AS event_ts,",
        "MAX(loaded_at) OVER (PARTITION BY customer_id ORDER BY order_ts ROWS 1 PRECEDING) AS loaded_at,  --!",
        "SUM(amount) OVER (PARTITION BY customer_id ORDER BY order_ts) AS s", "FROM orders"],
    "reserved column": ["SELECT customer_id, order_ts AS event_ts, loaded_at,", "amount AS __known_at  --!",
                        "FROM orders"],
}


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_unsupported_shape_is_a_located_error(tmp_path: Path, name: str) -> None:
    body = UNSUPPORTED[name]
    expected = len(HEADER) + len(JINJA) + next(i for i, line in enumerate(body) if line.endswith("--!")) + 1
    try:
        parsed = parse_view(tmp_path, body)
    except FsqlError as refused:  # some shapes (an unknown function) are refused by parsing already
        error: FsqlError = refused
    else:
        with pytest.raises(CompileError) as info:
            derive_parsed(parsed)
        error = info.value
    assert (error.path, error.line) == ("features/v.sql", expected), str(error)
    assert str(error).startswith(f"features/v.sql:{expected}: ")
    assert "\n" not in str(error) and error.hint


def test_unsupported_shape_hint_names_the_escape_hatch(tmp_path: Path) -> None:
    parsed = parse_view(tmp_path, UNSUPPORTED["lateral"])
    with pytest.raises(CompileError, match=r"LATERAL.*MAX\(loaded_at\) OVER w AS loaded_at.*@created"):
        derive_parsed(parsed)


# --- an explicit @created -----------------------------------------------------------------------


def test_explicit_created_over_the_same_window_is_taken_as_written(tmp_path: Path, duck: Any) -> None:
    """The escape hatch: a LATERAL the rewrite refuses, with @created written as MAX over the window."""
    body = [
        "SELECT customer_id, order_ts AS event_ts,",
        "MAX(loaded_at) OVER w AS loaded_at,",
        "SUM(amount) OVER w AS s",
        "FROM orders, LATERAL (SELECT 1 AS one) AS l",
        "WINDOW w AS (PARTITION BY customer_id ORDER BY order_ts ROWS BETWEEN 2 PRECEDING AND CURRENT ROW)",
    ]
    derived = derive_parsed(parse_view(tmp_path, body))
    assert derived.named_selects[-1] == "__known_at"
    load_duckdb(duck, "orders", [("customer_id", "INTEGER"), ("order_ts", "TIMESTAMP"), ("loaded_at", "TIMESTAMP"),
                                 ("amount", "INTEGER")],
                [(1, BASE + i * HOUR, BASE + (30 - i) * HOUR, i) for i in range(5)])
    rows = duck.execute(derived.sql("duckdb")).fetchall()
    assert rows and all(r[2] == r[-1] for r in rows)  # __known_at is the @created column


def test_pass_through_created_is_derived_over_the_frame(tmp_path: Path, duck: Any) -> None:
    """The natural way (loaded_at passed through) gets the frame's latest load, not the row's own."""
    body = [
        "SELECT customer_id, order_ts AS event_ts, loaded_at,",
        "SUM(amount) OVER (PARTITION BY customer_id ORDER BY order_ts",
        "                  RANGE BETWEEN INTERVAL 2 HOURS PRECEDING AND CURRENT ROW) AS s",
        "FROM orders",
    ]
    derived = derive_parsed(parse_view(tmp_path, body))
    load_duckdb(duck, "orders", [("customer_id", "INTEGER"), ("order_ts", "TIMESTAMP"), ("loaded_at", "TIMESTAMP"),
                                 ("amount", "INTEGER")],
                [(1, BASE, BASE + 10 * HOUR, 1), (1, BASE + HOUR, BASE + HOUR, 2), (1, BASE + 5 * HOUR, None, 4)])
    rows = sorted(duck.execute(derived.sql("duckdb")).fetchall(), key=lambda r: r[1])
    assert [(r[3], r[-1]) for r in rows] == [
        (1, BASE + 10 * HOUR),
        (3, BASE + 10 * HOUR),  # counts the order loaded at +10h though its own row loaded at +1h
        (4, BASE + 5 * HOUR),  # NULL load: known at its event time
    ]


def test_explicit_created_as_group_max_and_purity() -> None:
    sql = "SELECT customer_id, MAX(order_ts) AS event_ts, MAX(loaded_at) AS loaded_at, SUM(amount) AS s FROM orders GROUP BY 1"
    query = sqlglot.parse_one(sql, read="duckdb")
    before = query.sql("duckdb")
    derived = derive_known_time(query, dialect="duckdb", inputs={"orders": KnownInput("loaded_at", "order_ts")},
                                created="loaded_at")
    assert query.sql("duckdb") == before  # the input tree is untouched
    assert derived.selects[-1].sql("duckdb") == "MAX(loaded_at) AS __known_at"


# --- lineage: which column of each input is its load time ----------------------------------------


def test_known_inputs_trace_created_and_timestamp_to_source_columns(tmp_path: Path) -> None:
    body = [
        "WITH o AS (SELECT customer_id, order_ts AS t, loaded_at AS l, amount FROM orders)",
        "SELECT o.customer_id, o.t AS event_ts, o.l AS loaded_at, p.segment",
        "FROM o LEFT JOIN customers AS p ON o.customer_id = p.customer_id",
    ]
    parsed = parse_view(tmp_path, body)
    inputs = known_inputs(parsed.query, dialect="duckdb", timestamp="event_ts", created="loaded_at",
                          sources={"orders", "customers"}, views={"upstream": "event_ts"})
    assert inputs == {"orders": KnownInput("loaded_at", "order_ts"), "customers": KnownInput(None, None)}


def test_known_inputs_of_the_example_project() -> None:
    from fsql.config import load_config
    from fsql.parsing.project import parse_project

    project = parse_project(load_config(Path(__file__).parent.parent))
    timestamps = {name: view.timestamp for name, view in project.views.items()}
    found = {}
    for name, view in project.views.items():
        upstream = {n: timestamps[n] for n in view.references if n in timestamps}
        found[name] = known_inputs(view.query, dialect=view.dialect, timestamp=view.timestamp, created=view.created,
                                   sources=set(project.config.sources), views=upstream)
    assert found["customer_spend"] == {"orders": KnownInput("loaded_at", "order_ts")}
    assert found["customer_value"] == {"customer_spend": KnownInput("__known_at", "event_ts")}
    assert found["order_amount_usd"] == {"orders": KnownInput(None, "order_ts"), "fx_rates": KnownInput(None, None)}
    assert found["customer_profile"] == {"customers": KnownInput(None, "updated_at")}


# --- golden SQL per dialect ----------------------------------------------------------------------

GOLDEN = Path(__file__).parent / "fixtures" / "known_time"
DIALECTS = ["duckdb", "postgres", "snowflake", "bigquery", "spark", "trino"]
UPDATE = os.environ.get("FSQL_UPDATE_FIXTURES") == "1"
# Window orders say NULLS FIRST: sqlglot cannot write DuckDB's default NULLS LAST for BigQuery
# windows, and the event time of these views is never NULL.
GOLDEN_CASES = {
    "window_range": (
        "SELECT customer_id, order_ts AS event_ts, loaded_at, SUM(amount) OVER w AS spend_30d, "
        "COUNT(*) OVER w AS orders_30d FROM orders WINDOW w AS (PARTITION BY customer_id "
        "ORDER BY order_ts NULLS FIRST RANGE BETWEEN INTERVAL 30 DAYS PRECEDING AND CURRENT ROW)"
    ),
    "window_rows_following": (
        "SELECT customer_id, order_ts AS event_ts, AVG(amount) OVER (PARTITION BY customer_id "
        "ORDER BY order_ts NULLS FIRST ROWS BETWEEN 1 FOLLOWING AND 3 FOLLOWING) AS next_avg, "
        "LAG(amount, 2) OVER (PARTITION BY customer_id ORDER BY order_ts NULLS FIRST) AS before2 FROM orders"
    ),
    "group_by": (
        "SELECT customer_id, DATE_TRUNC('day', order_ts) AS event_ts, SUM(amount) AS daily FROM orders "
        "GROUP BY customer_id, DATE_TRUNC('day', order_ts)"
    ),
    "left_join": (
        "SELECT o.customer_id, o.order_ts AS event_ts, o.amount, c.segment FROM orders AS o "
        "LEFT JOIN customers AS c ON o.customer_id = c.customer_id"
    ),
    "asof_join": (
        "SELECT o.customer_id, o.order_ts AS event_ts, o.amount * r.rate_to_usd AS amount_usd FROM orders AS o "
        "ASOF LEFT JOIN fx_rates AS r ON o.currency = r.currency AND o.order_ts >= r.rate_ts"
    ),
    "view_on_view": "SELECT customer_id, event_ts, spend_30d / orders_30d AS avg_order FROM customer_spend",
    "union_cte": (
        "WITH big AS (SELECT customer_id, order_ts, amount, loaded_at FROM orders WHERE amount > 100) "
        "SELECT customer_id, order_ts AS event_ts, amount FROM big "
        "UNION ALL SELECT customer_id, updated_at, 0 FROM customers"
    ),
    "distinct": "SELECT DISTINCT customer_id, segment, updated_at AS event_ts FROM customers",
}
GOLDEN_INPUTS = {
    "orders": KnownInput("loaded_at", "order_ts"),
    "customers": KnownInput("loaded_at", "updated_at"),
    "fx_rates": KnownInput("loaded_at", "rate_ts"),
    "customer_spend": KnownInput("__known_at", "event_ts"),
}


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("case", sorted(GOLDEN_CASES))
def test_golden_sql(case: str, dialect: str) -> None:
    query = sqlglot.parse_one(GOLDEN_CASES[case], read="duckdb")
    assert isinstance(query, exp.Query)
    derived = derive_known_time(query, dialect="duckdb", inputs=GOLDEN_INPUTS)
    text = to_dialect(derived, "duckdb", dialect, pretty=True) + "\n"
    path = GOLDEN / case / f"{dialect}.sql"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.read_text() == text, f"{path} differs; regenerate with FSQL_UPDATE_FIXTURES=1 and review the diff"
    back = sqlglot.parse_one(text, read=dialect)
    assert isinstance(back, exp.Query)
    assert "__known_at" in back.named_selects


# --- the headline, on the example project's own data ---------------------------------------------


def _leaking_spine_rows(con: duckdb.DuckDBPyConnection, created: str) -> tuple[int, int]:
    """(spine rows, spine rows whose customer_spend value counts an order loaded after label_ts)
    when rule 3 reads ``created``; the PIT join written out in plain DuckDB SQL."""
    sql = f"""
        WITH s AS (SELECT ROW_NUMBER() OVER () AS sid, * FROM spine),
        candidates AS (
            SELECT s.sid, s.customer_id, s.label_ts, v.event_ts,
                   ROW_NUMBER() OVER (PARTITION BY s.sid ORDER BY v.event_ts DESC, v.{created} DESC NULLS LAST) AS rn
            FROM s JOIN customer_spend AS v
              ON v.customer_id = s.customer_id
             AND v.event_ts <= s.label_ts AND v.event_ts >= s.label_ts - INTERVAL 30 DAYS
             AND (v.{created} IS NULL OR v.{created} <= s.label_ts)
        )
        SELECT (SELECT COUNT(*) FROM spine), COUNT(*) FROM candidates AS c
        WHERE c.rn = 1 AND EXISTS (
            SELECT 1 FROM orders AS o
            WHERE o.customer_id = c.customer_id
              AND o.order_ts BETWEEN c.event_ts - INTERVAL 30 DAYS AND c.event_ts
              AND o.loaded_at > c.label_ts)
    """
    total, leaking = con.execute(sql).fetchone()
    return total, leaking


def test_example_churn_set_leaks_with_the_naive_created_and_not_with_the_derived(
    duck: Any, tmp_path: Path, tmp_path_factory: Any
) -> None:
    from fsql.config import load_config
    from fsql.parsing.project import parse_project
    from tests.projects import example_project

    root = example_project(tmp_path / "example", tmp_path_factory.getbasetemp())
    config = load_config(root)
    assert config.vars["spend_window_days"] == 30  # the frame and TTL written out below
    project = parse_project(config)
    view, churn = project.views["customer_spend"], project.training_sets["churn"]
    for name in config.sources:
        relation = exp.select("*").from_(exp.func("read_parquet", exp.Literal.string(str(root / config.sources[name].path))))
        duck.execute(f"CREATE VIEW {name} AS {relation.sql('duckdb')}")
    inputs = known_inputs(view.query, dialect=view.dialect, timestamp=view.timestamp, created=view.created,
                          sources=set(config.sources), views={})
    derived = derive_known_time(view.query, dialect=view.dialect, inputs=inputs, created=view.created)
    duck.execute(f"CREATE VIEW customer_spend AS {to_dialect(derived, view.dialect, 'duckdb')}")
    duck.execute(f"CREATE VIEW spine AS {churn.query.sql('duckdb')}")

    total, naive = _leaking_spine_rows(duck, "loaded_at")
    _, derived_leaks = _leaking_spine_rows(duck, "__known_at")
    assert total > 1000
    assert naive > 0, "the example data no longer has late-loaded orders inside the 30-day windows"
    print(f"churn spine rows: {total}; leaking with loaded_at: {naive}; with __known_at: {derived_leaks}")
    assert derived_leaks == 0
