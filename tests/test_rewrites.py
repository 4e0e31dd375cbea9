"""fsql.compiler.rewrites: ASOF join rewrites (results, not only text), named windows, generation."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import duckdb
import pytest
import sqlglot
from conftest import POSTGRES_URL
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pit_reference import load_duckdb, load_postgres, quote, rows_mismatch, value_rank
from sqlglot import exp

from fsql.compiler.rewrites import generate, inline_named_windows, rewrite_asof_joins
from fsql.errors import CompileError

PROFILE = settings(
    max_examples=200,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)


def parse(sql: str) -> exp.Expression:
    return sqlglot.parse_one(sql, read="duckdb")


# --- shapes ------------------------------------------------------------------------------------

BASIC = "SELECT o.id, r.rate FROM orders AS o ASOF LEFT JOIN rates AS r ON o.cur = r.cur AND o.ts >= r.ts"


@pytest.mark.parametrize("dialect", ["duckdb", "postgres", "snowflake", "bigquery", "spark", "trino"])
def test_no_asof_left_for_engines_without_it(dialect: str) -> None:
    sql = generate(rewrite_asof_joins(parse(BASIC), dialect), dialect)
    if dialect in ("duckdb", "snowflake"):
        assert "ASOF" in sql.upper()
    else:
        assert "ASOF" not in sql.upper()
    if dialect == "snowflake":
        assert "MATCH_CONDITION" in sql


def test_postgres_uses_lateral_with_byte_order_ties() -> None:
    schema = {
        "orders": {"id": "BIGINT", "cur": "VARCHAR", "ts": "TIMESTAMP"},
        "rates": {"cur": "VARCHAR", "ts": "TIMESTAMP", "rate": "VARCHAR"},
    }
    sql = generate(rewrite_asof_joins(parse(BASIC), "postgres", schema=schema), "postgres")
    assert "LEFT JOIN LATERAL" in sql
    assert 'r.rate COLLATE "C" DESC NULLS LAST' in sql
    assert "LIMIT 1" in sql


def test_operand_order_and_strictness_are_normalised() -> None:
    flipped = parse(
        "SELECT o.id, r.rate FROM orders AS o ASOF JOIN rates AS r ON r.cur = o.cur AND r.ts < o.ts"
    )
    sql = generate(rewrite_asof_joins(flipped, "postgres"), "postgres")
    assert "o.ts > r.ts" in sql and "o.cur = r.cur" in sql
    assert "LEFT JOIN" not in sql  # inner ASOF stays inner


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        (
            "SELECT o.id, r.rate FROM orders AS o ASOF JOIN rates AS r ON o.cur = r.cur OR o.ts >= r.ts",
            "not an equality",
        ),
        (
            "SELECT o.id, r.rate FROM orders AS o ASOF JOIN rates AS r ON o.cur = r.cur",
            "needs one inequality",
        ),
        (
            "SELECT o.id, r.rate FROM orders AS o ASOF JOIN rates AS r ON o.ts >= r.ts AND o.ts2 <= r.ts",
            "exactly one",
        ),
        (
            "SELECT o.id, r.rate FROM orders AS o ASOF JOIN rates AS r ON cur = r.cur AND o.ts >= r.ts",
            "not qualified",
        ),
        (
            "SELECT o.id, rate FROM orders AS o ASOF JOIN rates AS r ON o.cur = r.cur AND o.ts >= r.ts",
            "not qualified",
        ),
        ("SELECT * FROM orders AS o ASOF JOIN rates AS r ON o.cur = r.cur AND o.ts >= r.ts", "'*'"),
        ("SELECT o.id, r.rate FROM orders AS o ASOF JOIN rates AS r USING (cur, ts)", "USING"),
        (
            "SELECT o.id, r.rate FROM orders AS o ASOF JOIN rates AS r ON o.cur = r.cur AND r.ts >= r.ts2",
            "left-side",
        ),
        (
            "SELECT o.id, r.rate FROM orders AS o ASOF JOIN rates AS r ON o.cur = r.cur AND o.ts >= r.ts AND r.ok = TRUE",
            "left-side",
        ),
    ],
)
def test_shapes_not_understood_raise(sql: str, message: str) -> None:
    with pytest.raises(CompileError, match=message):
        rewrite_asof_joins(parse(sql), "postgres")


def test_star_resolved_with_schema() -> None:
    schema = {
        "orders": {"id": "BIGINT", "cur": "VARCHAR", "ts": "TIMESTAMP"},
        "rates": {"cur": "VARCHAR", "ts": "TIMESTAMP", "rate": "DOUBLE"},
    }
    q = parse("SELECT * FROM orders AS o ASOF LEFT JOIN rates AS r ON o.cur = r.cur AND o.ts >= r.ts")
    sql = generate(rewrite_asof_joins(q, "postgres", schema=schema), "postgres")
    assert "r.rate DESC NULLS LAST" in sql
    with pytest.raises(CompileError, match="'\\*'"):
        rewrite_asof_joins(q, "trino", schema=schema)  # the window rewrite cannot carry '*'


def test_nested_asof_joins_are_all_rewritten() -> None:
    q = parse(
        "WITH x AS (SELECT o.id, o.ts, r.rate FROM orders AS o ASOF LEFT JOIN rates AS r ON o.cur = r.cur AND o.ts >= r.ts) "
        "SELECT x.id, f.fee FROM (SELECT * FROM x) AS x ASOF LEFT JOIN (SELECT g.ts, g.fee FROM fees AS g) AS f ON x.ts >= f.ts"
    )
    sql = generate(rewrite_asof_joins(q, "postgres"), "postgres")
    assert "ASOF" not in sql.upper() and sql.count("LATERAL") == 2


def test_unknown_dialect() -> None:
    with pytest.raises(CompileError, match="not supported"):
        rewrite_asof_joins(parse(BASIC), "postgress")


# --- named windows -----------------------------------------------------------------------------

WINDOWED = """
SELECT customer_id, SUM(amount) OVER w AS s, COUNT(*) OVER (w2 ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) AS c
FROM orders
WINDOW w AS (PARTITION BY customer_id ORDER BY order_ts RANGE BETWEEN INTERVAL 30 DAYS PRECEDING AND CURRENT ROW),
       w2 AS (PARTITION BY customer_id ORDER BY order_ts)
"""


def test_named_windows_inlined_for_bigquery() -> None:
    tree = parse(WINDOWED)
    with pytest.raises(AttributeError):
        tree.sql("bigquery")  # the sqlglot 30.x crash this works around
    # inlined, the crash is gone; DuckDB's NULLS LAST becomes what BigQuery accepts (see
    # test_bigquery_windows_keep_duckdb_semantics in test_bad_input.py)
    sql = generate(tree, "bigquery")
    assert "NULLS" not in sql and "order_ts IS NULL" in sql and "UNIX_MICROS" in sql
    portable = parse(WINDOWED.replace("ORDER BY order_ts", "ORDER BY order_ts NULLS FIRST"))
    sql = generate(portable, "bigquery")
    assert "WINDOW" not in sql
    assert "ROWS BETWEEN 1 PRECEDING AND CURRENT ROW" in sql  # the refining frame survives
    assert sql.count("PARTITION BY customer_id") == 2


def test_named_windows_same_results(duck: duckdb.DuckDBPyConnection) -> None:
    duck.execute(
        "CREATE TABLE orders AS SELECT i % 3 AS customer_id, TIMESTAMP '2024-01-01' + i * INTERVAL 5 DAY AS order_ts,"
        " i * 1.5 AS amount FROM range(40) t(i)"
    )
    tree = parse(WINDOWED + " ORDER BY customer_id, s, c")
    inlined = inline_named_windows(tree)
    assert inlined.args.get("windows") is None
    assert duck.execute(tree.sql("duckdb")).fetchall() == duck.execute(inlined.sql("duckdb")).fetchall()


def test_refining_a_framed_window_raises() -> None:
    q = parse(
        "SELECT SUM(x) OVER (w ROWS UNBOUNDED PRECEDING) FROM t WINDOW w AS (ORDER BY y ROWS 2 PRECEDING)"
    )
    with pytest.raises(CompileError, match="repeats"):
        inline_named_windows(q)


def test_generate_turns_unsupported_into_compile_error() -> None:
    # a construct sqlglot reports as unsupported for the target must not be emitted silently
    q = parse("SELECT k,\n  ARRAY_AGG(x ORDER BY t NULLS LAST) AS xs\nFROM tbl GROUP BY k")
    with pytest.raises(CompileError) as info:
        generate(q, "bigquery")
    assert info.value.line == 2  # the offending aggregate, not the start of the query


# --- IGNORE NULLS (Spark LAST(x, TRUE)) -----------------------------------------------------------

SPARK_LOCF = """
SELECT k, t, x, LAST(x, TRUE) OVER (PARTITION BY k ORDER BY t) AS carried,
       FIRST(x, TRUE) OVER (PARTITION BY k ORDER BY t) AS first_seen
FROM tbl ORDER BY k, t
"""


def test_spark_last_ignore_nulls_keeps_its_meaning_on_duckdb(duck: duckdb.DuckDBPyConnection) -> None:
    rows = [
        (1, 1, None),
        (1, 2, 5.0),
        (1, 3, None),
        (1, 4, float("nan")),
        (1, 5, None),
        (2, 1, None),
        (2, 2, 7.0),
    ]
    load_duckdb(duck, "tbl", [("k", "BIGINT"), ("t", "BIGINT"), ("x", "DOUBLE")], rows)
    tree = sqlglot.parse_one(SPARK_LOCF, read="spark")
    assert "LAST(x)" in tree.sql("duckdb")  # the silent loss this rewrite exists for
    got = duck.execute(generate(tree, "duckdb")).fetchall()
    expected = []
    for k in (1, 2):
        last = first = None
        for _, t, x in [r for r in rows if r[0] == k]:
            if x is not None:
                last = x
                first = x if first is None else first
            expected.append((k, t, x, last, first))
    assert rows_mismatch(expected, got) is None, got


def test_spark_last_ignore_nulls_refused_for_postgres() -> None:
    with pytest.raises(CompileError, match="IGNORE NULLS"):
        generate(sqlglot.parse_one(SPARK_LOCF, read="spark"), "postgres")


# --- results: DuckDB native == PostgreSQL LATERAL == window rewrite == brute force -----------------

T0 = __import__("datetime").datetime(2024, 5, 1)
OPS = {">=": "GTE", ">": "GT", "<=": "LTE", "<": "LT"}


@st.composite
def asof_cases(draw: st.DrawFn) -> dict[str, Any]:
    n_keys = draw(st.sampled_from([1, 2, 0]))
    op = draw(st.sampled_from(list(OPS)))
    outer = draw(st.booleans())
    left_tz = draw(st.booleans())

    def key() -> tuple:
        return tuple(
            draw(st.sampled_from([1, 2, None] if i == 0 else ["x", "Y", None])) for i in range(n_keys)
        )

    def when() -> Any:
        return None if draw(st.integers(0, 9)) == 5 else T0 + timedelta(hours=draw(st.integers(0, 5)))

    left = [(i, *key(), when()) for i in range(draw(st.integers(1, 8)))]
    right = []
    for _ in range(draw(st.integers(0, 10))):
        if right and draw(st.integers(0, 4)) == 2:
            right.append(draw(st.sampled_from(right)))
            continue
        v = draw(st.sampled_from([1.5, None, float("nan"), -1.0, 0.0]))
        w = draw(st.sampled_from(["a", None, "", "B", "b", "é"]))
        right.append((*key(), when(), v, w))
    return {
        "n_keys": n_keys,
        "op": op,
        "outer": outer,
        "left": left,
        "right": right,
        "left_tz": left_tz,
        "typed": draw(st.booleans()),
    }


def asof_sql(case: dict[str, Any]) -> str:
    keys = ["k", "s"][: case["n_keys"]]
    cond = [f"a.{k} = b.{k}" for k in keys] + [f"a.ts {case['op']} b.ts"]
    join = "ASOF LEFT JOIN" if case["outer"] else "ASOF JOIN"
    return f"SELECT a.id, b.v, b.w, b.ts AS bts FROM a {join} b ON {' AND '.join(cond)} ORDER BY a.id"


def asof_reference(case: dict[str, Any]) -> list[tuple]:
    from pit_reference import instant

    n = case["n_keys"]
    out = []
    for lrow in case["left"]:
        lid, lkeys, lts = lrow[0], lrow[1 : 1 + n], lrow[1 + n]
        cands = []
        for r in case["right"]:
            rkeys, rts = r[:n], r[n]
            if (
                lts is None
                or rts is None
                or not all(x is not None and x == y for x, y in zip(lkeys, rkeys, strict=True))
            ):
                continue
            a, b = instant(lts), instant(rts)
            if {">=": a >= b, ">": a > b, "<=": a <= b, "<": a < b}[case["op"]]:
                cands.append(r)
        if not cands:
            if case["outer"]:
                out.append((lid, None, None, None))
            continue
        backward = case["op"] in (">=", ">")
        best_ts = (max if backward else min)(instant(r[n]) for r in cands)
        tied = [r for r in cands if instant(r[n]) == best_ts]
        win = max(tied, key=lambda r: (value_rank(r[n + 1]), value_rank(r[n + 2])))  # v then w: sorted names
        out.append((lid, win[n + 1], win[n + 2], win[n]))
    return out


def load_asof(con: Any, loader: Any, case: dict[str, Any]) -> None:
    keys = [("k", "BIGINT"), ("s", "VARCHAR")][: case["n_keys"]]
    loader(
        con,
        "a",
        [("id", "BIGINT"), *keys, ("ts", "TIMESTAMPTZ" if case["left_tz"] else "TIMESTAMP")],
        case["left"],
    )
    loader(con, "b", [*keys, ("ts", "TIMESTAMP"), ("v", "DOUBLE"), ("w", "VARCHAR")], case["right"])


def schema_for(case: dict[str, Any]) -> dict[str, dict[str, str]] | None:
    if not case["typed"]:
        return None
    keys = {"k": "BIGINT", "s": "VARCHAR"}
    keys = dict(list(keys.items())[: case["n_keys"]])
    return {
        "a": {"id": "BIGINT", **keys, "ts": "TIMESTAMP"},
        "b": {**keys, "ts": "TIMESTAMP", "v": "DOUBLE", "w": "VARCHAR"},
    }


@pytest.fixture(scope="module")
def duck_con() -> Iterator[duckdb.DuckDBPyConnection]:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    yield con
    con.close()


@pytest.fixture(scope="module")
def pg_con() -> Iterator[Any]:
    import psycopg

    schema = f"fsqltest_rw_{uuid.uuid4().hex[:10]}"
    con = psycopg.connect(POSTGRES_URL, autocommit=True, prepare_threshold=None)
    con.execute(f"CREATE SCHEMA {quote(schema)}")
    con.execute(f"SET search_path TO {quote(schema)}")
    con.execute("SET TIME ZONE 'UTC'")
    yield con
    con.execute(f"DROP SCHEMA IF EXISTS {quote(schema)} CASCADE")
    con.close()


def test_asof_rewrites_match_native_duckdb(duck_con: duckdb.DuckDBPyConnection, pg_con: Any) -> None:
    @PROFILE
    @given(case=asof_cases())
    def check(case: dict[str, Any]) -> None:
        want = asof_reference(case)
        tree = parse(asof_sql(case))
        schema = schema_for(case)
        load_asof(duck_con, load_duckdb, case)
        load_asof(pg_con, load_postgres, case)
        runs = [
            (
                "duckdb native",
                duck_con,
                generate(rewrite_asof_joins(tree, "duckdb", schema=schema), "duckdb"),
            ),
            (
                "postgres lateral",
                pg_con,
                generate(rewrite_asof_joins(tree, "postgres", schema=schema), "postgres"),
            ),
            # the window rewrite (BigQuery, Spark, Trino), executed on DuckDB (byte-order strings)
            (
                "window on duckdb",
                duck_con,
                generate(rewrite_asof_joins(tree, "trino", schema=schema), "duckdb"),
            ),
        ]
        for label, con, sql in runs:
            problem = rows_mismatch(want, con.execute(sql).fetchall())
            assert problem is None, f"{label}: {problem}\n{sql}"

    check()
