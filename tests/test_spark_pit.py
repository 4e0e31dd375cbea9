"""The canonical PIT plan on Spark: the property tests' random scenarios against the brute-force
reference, the latest-per-entity plan, and the golden spark.sql fixtures executed on Spark.

Spark answers each query in about a second, so the property tests draw fewer examples than on DuckDB
(the scenarios, generators and reference are the same: see test_pit_property.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pit_reference import RefView, instant, latest, rows_mismatch, same_value
from sqlglot import exp
from test_pit_golden import CASES, FIXTURES, table_of
from test_pit_golden import expected as golden_expected
from test_pit_property import (
    BASE,
    PROFILE,
    Scenario,
    Table,
    ViewCase,
    compiled,
    expected,
    latest_cases,
    scenarios,
)

from fsql.compiler.pit import PitView, latest_per_entity

SPARK_PROFILE = settings(PROFILE, max_examples=15)
ARROW_TYPES = {
    "BIGINT": pa.int64(),
    "INTEGER": pa.int32(),
    "DOUBLE": pa.float64(),
    "VARCHAR": pa.string(),
    "TIMESTAMP": pa.timestamp("us"),
    "TIMESTAMPTZ": pa.timestamp("us", tz="UTC"),
    "BOOLEAN": pa.bool_(),
}


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]").appName("fsql-pit-tests")
        .config("spark.sql.session.timeZone", "UTC").config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false").config("spark.sql.shuffle.partitions", "2")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def load_spark(spark: Any, table: str, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]]) -> None:
    """A temporary view filled through Arrow (NULL and NaN distinct, int64 exact, naive stays naive)."""
    from pyspark.sql import functions as F

    arrays = {}
    for j, (name, dtype) in enumerate(columns):
        values = [r[j] for r in rows]
        if dtype == "TIMESTAMP":
            values = [None if v is None else instant(v).replace(tzinfo=None) for v in values]
        arrays[name] = pa.array(values, type=ARROW_TYPES[dtype], from_pandas=False)
    schema = pa.schema([(n, ARROW_TYPES[t]) for n, t in columns])
    df = spark.createDataFrame(pa.table(arrays, schema=schema))
    naive = [n for n, t in columns if t == "TIMESTAMP"]
    if naive:
        df = df.withColumns({n: F.col(f"`{n}`").cast("timestamp_ntz") for n in naive})
    df.createOrReplaceTempView(table)


def run(spark: Any, sql: str) -> list[tuple]:
    # Through Arrow: collect() would turn instants into naive datetimes in the client's time zone.
    table = spark.sql(sql).toArrow()
    return [tuple(row.values()) for row in table.to_pylist()]


def load(spark: Any, sc: Scenario) -> None:
    load_spark(spark, "spine", sc.spine.columns, sc.spine.rows)
    for v in sc.views:
        load_spark(spark, v.table.name, v.table.columns, v.table.rows)


@pytest.mark.parametrize("mode", ["known-at", "event-time"])
def test_pit_spark_matches_reference(spark: Any, mode: str) -> None:
    @SPARK_PROFILE
    @given(sc=scenarios())
    def check(sc: Scenario) -> None:
        load(spark, sc)
        for plan in (None, "range"):
            sql = compiled(sc, "spark", mode, plan, "spark")
            problem = rows_mismatch(expected(sc, mode), run(spark, sql))
            assert problem is None, f"spark running the {plan or 'default'} plan ({mode}): {problem}\n{sql}"

    check()


@st.composite
def tie_scenarios(draw: st.DrawFn) -> Scenario:
    """Heavy ties: many rows per key at two instants, created times that tie or are NULL, and values
    from tiny pools of NULL, NaN, +Infinity, '' and int64 beyond 2**53, so the winner is decided
    deep in the tie order (Spark's struct comparison must agree with ROW_NUMBER's order elsewhere).
    Two views share the spine keys, so they also share one timeline."""
    pools = {
        "f_float": ("DOUBLE", [None, float("nan"), float("inf"), 1.5]),
        "f_str": ("VARCHAR", [None, "", "é", "Z"]),
        "f_int": ("BIGINT", [None, 2**62 + 1, 2**62, 0]),  # equal as doubles: compared exactly
    }
    views: list[ViewCase] = []
    for i in range(draw(st.integers(1, 2))):
        created = draw(st.sampled_from(["created", None]))
        order = draw(st.permutations(list(pools)))  # the values' position in the tie order
        cols = [("k", "BIGINT"), ("ts", "TIMESTAMP"), *([("created", "TIMESTAMP")] if created else [])]
        cols += [(c, pools[c][0]) for c in order]
        rows: list[tuple] = []
        for _ in range(draw(st.integers(4, 24))):
            ts = BASE + timedelta(hours=draw(st.sampled_from([0, 2])))
            row: list[Any] = [draw(st.sampled_from([1, 2])), ts]
            if created:
                row.append(draw(st.sampled_from([None, ts, ts + timedelta(hours=1), ts + timedelta(hours=3)])))
            row += [draw(st.sampled_from(pools[c][1])) for c in order]
            rows.append(tuple(row))
        ttl = draw(st.sampled_from([None, timedelta(hours=1), timedelta(0)]))
        selected = draw(st.lists(st.sampled_from(order), min_size=1, max_size=3, unique=True))
        features = tuple((c, f"v{i}__{c}") for c in selected)
        table = Table(f"v{i}", cols, rows)
        ref = RefView(
            rows=table.dicts(), keys=("k",), timestamp="ts", created=created, ttl=ttl, features=features,
            value_columns=tuple(order),
        )
        pit = PitView(
            name=f"v{i}", relation=exp.to_table(f"v{i}"), keys=("k",), timestamp="ts", created=created, ttl=ttl,
            features=features, value_columns=tuple((c, pools[c][0]) for c in order),
        )
        views.append(ViewCase(table, ref, pit))
    spine_rows = [
        (
            draw(st.sampled_from([1, 2, 3, None])),
            None if draw(st.integers(0, 9)) == 0 else BASE + timedelta(hours=draw(st.integers(0, 6))),
            j,
        )
        for j in range(draw(st.integers(3, 8)))
    ]
    spine = Table("spine", [("k", "BIGINT"), ("t", "TIMESTAMP"), ("label", "BIGINT")], spine_rows)
    return Scenario(spine, ["k", "t", "label"], None, views)


@pytest.mark.parametrize("mode", ["known-at", "event-time"])
def test_pit_spark_heavy_ties(spark: Any, mode: str) -> None:
    @SPARK_PROFILE
    @given(sc=tie_scenarios())
    def check(sc: Scenario) -> None:
        load(spark, sc)
        sql = compiled(sc, "spark", mode, None, "spark")
        problem = rows_mismatch(expected(sc, mode), run(spark, sql))
        assert problem is None, f"spark ({mode}): {problem}\n{sql}"

    check()


@pytest.mark.parametrize("mode", ["known-at", "event-time"])
def test_latest_spark_matches_reference(spark: Any, mode: str) -> None:
    @settings(SPARK_PROFILE, max_examples=10)
    @given(case=latest_cases())
    def check(case: tuple[Scenario, datetime, bool]) -> None:
        sc, as_of, apply_ttl = case
        view = sc.views[0]
        load_spark(spark, view.table.name, view.table.columns, view.table.rows)
        want = latest(view.ref, as_of, mode, apply_ttl)
        literal = exp.cast(exp.Literal.string(as_of.isoformat()), exp.DataType.build("TIMESTAMPTZ"))
        sql = latest_per_entity(view.pit, dialect="spark", mode=mode, as_of=literal, apply_ttl=apply_ttl).sql("spark")
        got = run(spark, sql)
        assert len(got) == len(want), f"{len(got)} entities, expected {len(want)}\n{sql}"
        created = [view.pit.created] if view.pit.created else []
        for row in got:
            keys = tuple(row[: len(view.pit.keys)])
            assert keys in want, f"unexpected entity {keys}"
            best = want[keys]
            expect = [best[c] for c in [*view.pit.keys, "ts", *created, *(c for c, _ in view.pit.features)]]
            assert all(same_value(e, g) for e, g in zip(expect, row, strict=True)), (
                f"entity {keys}: expected {expect}, got {row}\n{sql}"
            )

    check()


def test_golden_spark_sql_runs_on_spark(spark: Any) -> None:
    """The checked-in spark.sql fixtures, executed as they are, give the reference's rows (the same
    rows the DuckDB and PostgreSQL fixtures are checked against)."""
    for name, case in CASES.items():
        load_spark(spark, table_of(case), *case.spine_table)
        for view, cols, rows in case.views:
            load_spark(spark, view.relation.name, cols, rows)
        sql = (FIXTURES / name / "spark.sql").read_text()
        problem = rows_mismatch(golden_expected(case), run(spark, sql))
        assert problem is None, f"{name}: {problem}"


def test_golden_latest_spark_sql(spark: Any) -> None:
    case = CASES["two_views_ttl_created"]
    view, cols, rows = case.views[1]
    as_of = datetime(2024, 2, 10, 12)
    ref = RefView(
        rows=[dict(zip([c for c, _ in cols], r, strict=True)) for r in rows],
        keys=view.keys, timestamp=view.timestamp, created=view.created, ttl=view.ttl,
        features=view.features, value_columns=tuple(c for c, _ in view.value_columns),
    )
    want = latest(ref, as_of)
    load_spark(spark, "customer_profile", cols, rows)
    sql = (FIXTURES / "latest_per_entity" / "spark.sql").read_text().replace(
        "CURRENT_TIMESTAMP()", "TIMESTAMP '2024-02-10 12:00:00'").replace(
        "CURRENT_TIMESTAMP", "TIMESTAMP '2024-02-10 12:00:00'")
    got = run(spark, sql)
    assert len(got) == len(want)
    for row in got:
        best = want[(row[0],)]
        expect = (best["customer_id"], best["event_ts"], best["loaded_at"], best["city"], best["age"])
        assert all(same_value(e, g) for e, g in zip(expect, row, strict=True)), (expect, row)
