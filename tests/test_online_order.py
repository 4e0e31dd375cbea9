"""The online newer-wins order is the offline tie order (DESIGN.md section 3, rule 4).

Three comparators must agree on every pair of stored rows: the Redis Lua walker (run on the real
server, so its byte order is proven there, whatever the server's locale), the Python one the SQLite
store uses, and a brute-force rank written here from the rule. The Python one is also checked against
the offline engines themselves: DuckDB (and PostgreSQL) sorting the same values with the compiler's
own ``value_sort_keys``.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import duckdb
import psycopg
import pyarrow as pa
import pytest
import redis
from conftest import REDIS_URL
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlglot import exp

from fsql.compiler.dialects import capabilities, value_sort_keys
from fsql.online import CREATED, EVENT_TS, OnlineTable
from fsql.online.encoding import RowCodec, encode_headers, encode_times
from fsql.online.order import compare_payloads, ordered_int, ordered_int_value
from fsql.online.redis_scripts import COMPARE_VALUES

PROFILE = settings(
    max_examples=60,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
TS = pa.timestamp("us", tz="UTC")
T0 = datetime(2024, 1, 1, tzinfo=UTC)
I64_MIN, I64_MAX, U64_MAX = -(2**63), 2**63 - 1, 2**64 - 1


def sign(x: float) -> int:
    return (x > 0) - (x < 0)


# --- every stored type, three comparators ----------------------------------------------------------------

# (name, Arrow type, values): few values each, so that rows tie deep into the feature list.
COLUMNS: list[tuple[str, pa.DataType, list[Any]]] = [
    ("i8", pa.int8(), [None, -128, -1, 0, 127]),
    ("i64", pa.int64(), [None, I64_MIN, I64_MIN + 1, -(2**31) - 1, -1, 0, 255, 256, 2**53 + 1, I64_MAX]),
    ("u64", pa.uint64(), [None, 0, 1, 2**32, I64_MAX, I64_MAX + 1, U64_MAX]),
    ("f32", pa.float32(), [None, math.nan, -math.inf, -1.5, -0.0, 0.0, 0.25, math.inf]),
    ("f64", pa.float64(), [None, math.nan, -math.inf, -1e308, -0.0, 0.0, 5e-324, 1e308, math.inf]),
    ("s", pa.string(), [None, "", "\x00", "a", "a\x00", "a\x00b", "z", "é", "€", "\U0001f600", "x" * 40]),
    ("bin", pa.binary(), [None, b"", b"\x00", b"\x00\x01", b"\x7f", b"\x80", b"\xff", b"\xff" * 300]),
    ("b", pa.bool_(), [None, False, True]),
    (
        "dec",
        pa.decimal128(38, 9),
        [None, Decimal("-99999999999999999999999999999.999999999"), Decimal("-1.5"), Decimal("-0.000000001"),
         Decimal("0E-9"), Decimal("0.000000001"), Decimal("255.000000000"), Decimal("256"),
         Decimal("99999999999999999999999999999.999999999")],
    ),
    ("d", pa.date32(), [None, date(1, 1, 1), date(1969, 12, 31), date(1970, 1, 1), date(9999, 12, 31)]),
    ("ts", TS, [None, datetime(1900, 1, 1, tzinfo=UTC), T0, T0 + timedelta(microseconds=1)]),
    ("emb", pa.list_(pa.float64()), [None, [], [math.nan], [1.0], [1.0, None], [1.0, 2.0], [None], [-0.0]]),
    ("tags", pa.list_(pa.string()), [None, [], [""], ["a"], ["a", "b"], ["b"], [None, "a"]]),
]
TABLE = OnlineTable("t", "v", ("id",), tuple(c[0] for c in COLUMNS), tuple(c[1] for c in COLUMNS))


def value_rank(value: Any, nested: bool = False) -> tuple:
    """Rule 4 for one value: NULL lowest (highest inside a list, as DuckDB and PostgreSQL sort
    arrays), NaN above +Infinity, -0.0 = 0.0, strings and bytes by bytes, lists element-wise."""
    if value is None:
        return (2,) if nested else (0,)
    if isinstance(value, float):
        return (1, 1) if math.isnan(value) else (1, 0, value)
    if isinstance(value, str):
        return (1, value.encode())
    if isinstance(value, list):
        return (1, tuple(value_rank(v, True) for v in value))
    return (1, value)  # int, bytes, bool, Decimal, date, datetime


def row_rank(row: dict) -> tuple:
    return (row["ev"], (0,) if row["cr"] is None else (1, row["cr"]),
            *(value_rank(row["values"][i]) for i in range(len(COLUMNS))))


def stored_values(rows: list[dict]) -> list[bytes]:
    columns: dict[str, pa.Array] = {
        "id": pa.array(range(len(rows)), pa.int64()),
        EVENT_TS: pa.array([r["ev"] for r in rows], TS),
        CREATED: pa.array([r["cr"] for r in rows], TS),
    }
    for i, (name, t, _) in enumerate(COLUMNS):
        columns[name] = pa.array([r["values"][i] for r in rows], t)
    batch = pa.record_batch(columns)
    headers = encode_headers(*encode_times(batch))
    return [h + p for h, p in zip(headers, RowCodec(TABLE).encode_payloads(batch), strict=True)]


instants = st.sampled_from([T0, T0 + timedelta(microseconds=1)])


@st.composite
def rows_st(draw: st.DrawFn) -> list[dict]:
    base = [draw(st.sampled_from(values)) for _, _, values in COLUMNS]
    rows = []
    for _ in range(draw(st.integers(2, 7))):
        values = [
            draw(st.sampled_from(choices)) if draw(st.integers(0, 3)) == 0 else value
            for (_, _, choices), value in zip(COLUMNS, base, strict=True)
        ]
        rows.append({"ev": draw(instants), "cr": draw(st.one_of(st.none(), instants)), "values": values})
    return rows


@pytest.fixture(scope="module")
def lua() -> Any:
    client = redis.Redis.from_url(REDIS_URL)
    yield client.register_script(COMPARE_VALUES)
    client.close()


@PROFILE
@given(rows=rows_st())
def test_lua_python_and_reference_agree_on_every_pair(lua: Any, rows: list[dict]) -> None:
    stored = stored_values(rows)
    pairs = [(i, j) for i in range(len(rows)) for j in range(len(rows))]
    pipe = lua.registered_client.pipeline(transaction=False)
    for i, j in pairs:
        lua(keys=[], args=[stored[i], stored[j]], client=pipe)
    by_lua = pipe.execute()
    for (i, j), from_lua in zip(pairs, by_lua, strict=True):
        ri, rj = row_rank(rows[i]), row_rank(rows[j])
        want = (ri > rj) - (ri < rj)
        header = (stored[i][:17] > stored[j][:17]) - (stored[i][:17] < stored[j][:17])
        from_python = header or compare_payloads(stored[i][17:], stored[j][17:])
        assert (from_lua, from_python) == (want, want), (rows[i], rows[j])


def test_lua_compares_bytes_not_the_locale(lua: Any) -> None:
    # strcoll in most locales puts 'a' before 'B' and ignores case first; byte order puts 'B' first.
    def one(value: str) -> bytes:
        return stored_values([{"ev": T0, "cr": None, "values": [value if n == "s" else None for n, _, _ in COLUMNS]}])[0]

    assert lua(args=[one("a"), one("B")]) == 1
    assert lua(args=[one("é"), one("z")]) == 1
    assert lua(args=[one("a\x00b"), one("a\x00")]) == 1
    assert lua(args=[one("a"), one("a")]) == 0


@given(n=st.integers(-(2**127), 2**127))
def test_ordered_int_round_trips_and_sorts(n: int) -> None:
    assert ordered_int_value(ordered_int(n)) == n
    for m in (n - 1, n + 1, 0, -n):
        assert (ordered_int(n) < ordered_int(m)) == (n < m)


# --- the Python comparator sorts like the offline engines ----------------------------------------------

# (DuckDB type, Arrow type, values)
OFFLINE_TYPES: list[tuple[str, pa.DataType, list[Any]]] = [
    ("BIGINT", pa.int64(), COLUMNS[1][2]),
    ("UBIGINT", pa.uint64(), COLUMNS[2][2]),
    ("FLOAT", pa.float32(), COLUMNS[3][2]),
    ("DOUBLE", pa.float64(), COLUMNS[4][2]),
    ("VARCHAR", pa.string(), COLUMNS[5][2]),
    ("BLOB", pa.binary(), COLUMNS[6][2]),
    ("BOOLEAN", pa.bool_(), COLUMNS[7][2]),
    ("DECIMAL(38,9)", pa.decimal128(38, 9), COLUMNS[8][2]),
    ("DATE", pa.date32(), COLUMNS[9][2]),
    ("TIMESTAMP WITH TIME ZONE", TS, COLUMNS[10][2]),
    ("TIMESTAMP", pa.timestamp("us"), [None, datetime(1900, 1, 1), datetime(2024, 1, 1)]),
    ("TIME", pa.time64("us"), [None, time(0), time(12, 30), time(23, 59, 59, 999999)]),
    ("DOUBLE[]", pa.list_(pa.float64()), COLUMNS[11][2]),
    ("VARCHAR[]", pa.list_(pa.string()), COLUMNS[12][2]),
]


def payloads_of(arrow_type: pa.DataType, values: list[Any]) -> list[bytes]:
    table = OnlineTable("t", "v", ("id",), ("v",), (arrow_type,))
    batch = pa.record_batch({"v": pa.array(values, arrow_type)})
    return RowCodec(table).encode_payloads(batch)


def offline_ranks(con: Any, dialect: str, dtype: str, relation: str) -> dict[int, int]:
    """i -> dense rank of value i in the compiler's rule-4 order (1 = wins the tie)."""
    keys = value_sort_keys(exp.column("v"), dtype, capabilities(dialect))
    order = ", ".join(k.sql(dialect) for k in keys)
    sql = f"SELECT i, DENSE_RANK() OVER (ORDER BY {order}) FROM {relation}"
    return dict(con.execute(sql).fetchall())


def assert_same_order(payloads: list[bytes], ranks: dict[int, int], values: list[Any]) -> None:
    for i in range(len(payloads)):
        for j in range(len(payloads)):
            # a lower dense rank sorts first, i.e. ranks higher in the tie order
            want = sign(ranks[j] - ranks[i])
            assert compare_payloads(payloads[i], payloads[j]) == want, (values[i], values[j])


@pytest.mark.parametrize("dtype,arrow_type,values", OFFLINE_TYPES, ids=[t[0] for t in OFFLINE_TYPES])
def test_python_order_is_duckdb_order(dtype: str, arrow_type: pa.DataType, values: list[Any]) -> None:
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        data = pa.table({"i": pa.array(range(len(values)), pa.int64()), "v": pa.array(values, arrow_type)})
        con.register("data", data)
        con.execute(f"CREATE TABLE t AS SELECT i, v::{dtype} AS v FROM data")
        ranks = offline_ranks(con, "duckdb", dtype, "t")
    finally:
        con.close()
    assert_same_order(payloads_of(arrow_type, values), ranks, values)


@PROFILE
@given(values=st.lists(st.one_of(st.none(), st.text(max_size=4)), min_size=2, max_size=12))
def test_python_string_order_is_duckdb_order_on_any_text(values: list[str | None]) -> None:
    values = [v if v is None else v.encode("utf-8", "replace").decode() for v in values]
    con = duckdb.connect()
    try:
        con.register("data", pa.table({"i": pa.array(range(len(values)), pa.int64()), "v": values}))
        con.execute("CREATE TABLE t AS SELECT i, v::VARCHAR AS v FROM data")
        ranks = offline_ranks(con, "duckdb", "VARCHAR", "t")
    finally:
        con.close()
    assert_same_order(payloads_of(pa.string(), values), ranks, values)


@pytest.mark.parametrize(
    "dtype,pg_type,arrow_type,values",
    [
        ("DOUBLE", "float8", pa.float64(), COLUMNS[4][2]),
        ("BIGINT", "int8", pa.int64(), COLUMNS[1][2]),
        # PostgreSQL text cannot hold NUL
        ("VARCHAR", "text", pa.string(), [v for v in COLUMNS[5][2] if v is None or "\x00" not in v] + ["B", "b"]),
        ("BLOB", "bytea", pa.binary(), COLUMNS[6][2]),
        ("DECIMAL(38,9)", "numeric(38,9)", pa.decimal128(38, 9), COLUMNS[8][2]),
    ],
    ids=["float8", "int8", "text", "bytea", "numeric"],
)
def test_python_order_is_postgres_order(
    pg: psycopg.Connection, dtype: str, pg_type: str, arrow_type: pa.DataType, values: list[Any]
) -> None:
    pg.execute(f"CREATE TABLE t (i int PRIMARY KEY, v {pg_type})")
    with pg.cursor() as cur:
        cur.executemany("INSERT INTO t VALUES (%s, %s)", list(enumerate(values)))
    ranks = offline_ranks(pg, "postgres", dtype, "t")
    assert_same_order(payloads_of(arrow_type, values), ranks, values)
