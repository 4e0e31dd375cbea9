"""Property tests: every PIT plan, on DuckDB and PostgreSQL, equals the brute-force reference.

Every plan runs on the same generated data, alone and mixed per view (as "auto" picks plans from each
view's shape), so the ASOF and range plans are checked against the same reference rows.

Random data is drawn from tiny domains on purpose: timestamps on an hourly grid (many ties, TTL
boundaries hit exactly), NULL event_ts and created, NULL/NaN/'' values, int64 beyond 2**53,
composite int + str keys, exact duplicate view rows, duplicated spine rows, spine entities with no
history, TIMESTAMP vs TIMESTAMPTZ on either side, generated-name look-alike user columns.

Hypothesis runs derandomized (a fixed example sequence, so CI is deterministic); a failure prints
the drawn scenario and is a real counterexample.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from unittest import mock

import duckdb
import pytest
from conftest import POSTGRES_URL
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pit_reference import (
    RefView,
    instant,
    latest,
    load_duckdb,
    load_postgres,
    pit_join,
    quote,
    rows_mismatch,
    same_value,
)
from sqlglot import exp

import fsql.compiler.pit as pit_module
from fsql.compiler.pit import PitView, compile_pit, latest_per_entity

EXAMPLES = 200
PROFILE = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)

BASE = datetime(2024, 3, 1)
PLUS2 = timezone(timedelta(hours=2))
FLOATS = [1.5, None, float("nan"), 0.0, -2.0, float("inf")]
STRINGS = ["a", None, "", "B", "b", "é", "Z"]
INTS = [2**62 + 1, None, 0, -5, 2**53 + 1]
VALUE_TYPES = {"f_float": ("DOUBLE", FLOATS), "f_str": ("VARCHAR", STRINGS), "f_int": ("BIGINT", INTS)}
KEY_INTS = [1, 2]
KEY_STRS = ["a", ""]


@dataclass
class Table:
    name: str
    columns: list[tuple[str, str]]
    rows: list[tuple]

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip([c for c, _ in self.columns], r, strict=True)) for r in self.rows]


@dataclass
class ViewCase:
    table: Table
    ref: RefView
    pit: PitView


@dataclass
class Scenario:
    spine: Table
    spine_columns: list[str]
    ordinal: str | None
    views: list[ViewCase] = field(default_factory=list)
    spine_as_query: bool = False

    def __repr__(self) -> str:  # what hypothesis prints for a failing example
        lines = [f"spine {self.spine.columns} ordinal={self.ordinal} query={self.spine_as_query}"]
        lines += [f"  {r}" for r in self.spine.rows]
        for v in self.views:
            p = v.pit
            lines.append(
                f"view {p.name} keys={p.keys}->{p.spine_keys} created={p.created} ttl={p.ttl} "
                f"features={p.features} value_columns={p.value_columns} cols={v.table.columns}"
            )
            lines += [f"  {r}" for r in v.table.rows]
        return "\n".join(lines)


def hour_ts(draw: st.DrawFn, *, aware: bool, lo: int = 0, hi: int = 8, late: bool = False) -> datetime:
    hour = draw(st.integers(lo, hi))
    ts = BASE + timedelta(hours=hi + lo - hour if late else hour)
    if draw(st.integers(0, 9)) == 5:  # hypothesis favours boundary values: rare events use a middle one
        ts += timedelta(minutes=30)
    if aware:
        zone = draw(st.sampled_from([UTC, PLUS2]))
        ts = ts.replace(tzinfo=UTC).astimezone(zone)
    return ts


@st.composite
def scenarios(draw: st.DrawFn, *, max_views: int = 3) -> Scenario:
    composite = draw(st.booleans())
    view_keys = ("k", "s") if composite else ("k",)
    renamed = draw(st.booleans())
    spine_keys = ("cust", "seg")[: len(view_keys)] if renamed else view_keys
    spine_ts_type = draw(st.sampled_from(["TIMESTAMP", "TIMESTAMPTZ"]))
    label = draw(st.sampled_from(["label", "__fsql_ord", "__fsql_t", "__fsql_k0", "__fsql_best"]))

    def draw_keys() -> tuple:
        key = (draw(st.sampled_from(KEY_INTS)),)
        return key + (draw(st.sampled_from(KEY_STRS)),) if composite else key

    views: list[ViewCase] = []
    for i in range(draw(st.integers(1, max_views))):
        ts_type = draw(st.sampled_from(["TIMESTAMP", "TIMESTAMPTZ"]))
        created = draw(st.sampled_from(["created", None]))
        created_type = draw(st.sampled_from(["TIMESTAMP", "TIMESTAMPTZ"]))
        value_names = draw(st.lists(st.sampled_from(list(VALUE_TYPES)), min_size=1, max_size=3, unique=True))
        if draw(st.integers(0, 5)) == 3:
            value_names.append("__fsql_best")  # a user column that looks generated
        cols = [(k, "BIGINT" if j == 0 else "VARCHAR") for j, k in enumerate(view_keys)]
        cols.append(("ts", ts_type))
        if created:
            cols.append((created, created_type))
        cols += [(v, VALUE_TYPES.get(v, ("DOUBLE",))[0]) for v in value_names]
        rows: list[tuple] = []
        for _ in range(draw(st.integers(1, 12))):
            if rows and draw(st.integers(0, 4)) == 2:
                rows.append(draw(st.sampled_from(rows)))  # exact duplicate view row
                continue
            ts = None if draw(st.integers(0, 9)) == 5 else hour_ts(draw, aware=ts_type == "TIMESTAMPTZ", hi=6)
            row: list[Any] = [*draw_keys(), ts]
            if created:
                if ts is None or draw(st.integers(0, 4)) == 2:
                    row.append(None)
                else:
                    # the loaders store naive values as UTC and aware ones as instants
                    row.append(ts + timedelta(hours=draw(st.sampled_from([1, -1, 0, 2, 3, 4]))))
            for v in value_names:
                row.append(draw(st.sampled_from(VALUE_TYPES.get(v, ("DOUBLE", FLOATS))[1])))
            rows.append(tuple(row))
        ttl = draw(
            st.sampled_from(
                [timedelta(hours=2), None, timedelta(0), None, timedelta(hours=1), timedelta(hours=4)]
            )
        )
        selected = draw(
            st.lists(st.sampled_from(value_names), min_size=1, max_size=len(value_names), unique=True)
        )
        features = tuple((c, f"v{i}__{c}") for c in selected)
        typed = draw(st.integers(0, 3)) > 0
        value_columns = tuple((c, t if typed else None) for c, t in cols if c in value_names)
        table = Table(f"v{i}", cols, rows)
        ref = RefView(
            rows=table.dicts(),
            keys=view_keys,
            timestamp="ts",
            created=created,
            ttl=ttl,
            features=features,
            spine_keys=spine_keys,
            value_columns=tuple(value_names),
        )
        pit = PitView(
            name=f"v{i}",
            relation=exp.to_table(f"v{i}"),
            keys=view_keys,
            timestamp="ts",
            created=created,
            ttl=ttl,
            features=features,
            spine_keys=spine_keys if renamed else None,
            value_columns=value_columns,
        )
        views.append(ViewCase(table, ref, pit))

    # spine: mostly entities that have history, some without (or with NULL keys), duplicates
    seen = sorted({r[: len(view_keys)] for v in views for r in v.table.rows}, key=repr)
    unseen = [(3, "a"), (None, "a"), (1, "zz"), (1, None)] if composite else [(3,), (None,)]
    spine_rows: list[tuple] = []
    for _ in range(draw(st.integers(2, 8))):
        if spine_rows and draw(st.integers(0, 4)) == 2:
            spine_rows.append(draw(st.sampled_from(spine_rows)))  # exact duplicate spine row
            continue
        pool = unseen if not seen or draw(st.integers(0, 5)) == 3 else seen
        keys = tuple(draw(st.sampled_from(pool)))
        t = (
            None
            if draw(st.integers(0, 14)) == 7
            else hour_ts(draw, aware=spine_ts_type == "TIMESTAMPTZ", hi=8, late=True)
        )
        spine_rows.append((*keys, t, draw(st.sampled_from([None, 7, 2**62 + 3]))))
    spine_cols = [(k, "BIGINT" if i == 0 else "VARCHAR") for i, k in enumerate(spine_keys)]
    spine_cols += [("t", spine_ts_type), (label, "BIGINT")]
    ordinal = None
    if draw(st.booleans()):
        ordinal = "ord"
        order = draw(st.permutations(list(range(len(spine_rows)))))
        spine_rows = [(*r, o * 10) for r, o in zip(spine_rows, order, strict=True)]
        spine_cols.append(("ord", "BIGINT"))
    spine = Table("spine", spine_cols, spine_rows)
    return Scenario(spine, [c for c, _ in spine_cols], ordinal, views, spine_as_query=draw(st.booleans()))


def expected(sc: Scenario, mode: str) -> list[tuple]:
    return pit_join(sc.spine.dicts(), sc.spine_columns, "t", [v.ref for v in sc.views], mode, sc.ordinal)


def compiled(sc: Scenario, dialect: str, mode: str, plan: str | None, run_as: str) -> str:
    spine: exp.Expression = exp.to_table("spine")
    if sc.spine_as_query:
        spine = exp.select("*").from_("spine")
    views = [v.pit for v in sc.views]
    parts = dialect.split("/")
    flags = {"deep", "ordinal"} & set(parts)
    dialect = "/".join(p for p in parts if p not in flags)
    if "deep" in flags:
        # windows measured deep: the range plan keeps each probe's latest rows before ranking
        views = [dataclasses.replace(v, deep_windows=True) for v in views]
    # the scenarios' ordinals are distinct (as the SDK's row numbers are): they may identify the rows
    unique_ordinal = "ordinal" in flags
    if plan is not None and plan.startswith("mixed:"):
        # one plan per view, alternating, as "auto" picks them from each view's shape
        cycle = plan.split(":")[1].split("/")
        plan = {v.name: cycle[i % len(cycle)] for i, v in enumerate(views)}  # type: ignore[assignment]
    if dialect in VARIANTS:
        # the same engine with some capabilities off: exercises plan shapes that only engines we
        # cannot run here use (Snowflake's probe-shaped ASOF plan, plans without MATERIALIZED)
        base, changes = VARIANTS[dialect]
        caps = dataclasses.replace(pit_module.capabilities(base), **changes)
        with mock.patch.object(pit_module, "capabilities", return_value=caps):
            query = compile_pit(
                spine, sc.spine_columns, "t", views, dialect=base, mode=mode, ordinal=sc.ordinal, plan=plan,
                unique_ordinal=unique_ordinal,
            )
        return query.sql(run_as)
    query = compile_pit(
        spine, sc.spine_columns, "t", views, dialect=dialect, mode=mode, ordinal=sc.ordinal, plan=plan,
        unique_ordinal=unique_ordinal,
    )
    return query.sql(run_as)


VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "duckdb/probe": ("duckdb", {"asof_carry_spine": False, "materialized_cte": False}),
    "duckdb/no-split": ("duckdb", {"split_ties": False}),
}


# (dialect the tree is compiled for, plan) -> run as DuckDB / PostgreSQL SQL. Trees compiled for
# engines we cannot run here (Trino: no QUALIFY, BigQuery: IS_NAN keys) run through sqlglot on the
# two live engines, which checks the plans' semantics.
DUCKDB_PLANS = [
    ("duckdb", None),
    ("duckdb", "asof"),
    ("duckdb", "timeline"),
    ("duckdb", "range"),
    ("duckdb/deep", "range"),
    ("duckdb", "mixed:range/asof"),
    ("duckdb/deep", "mixed:asof/range"),
    ("duckdb", "mixed:asof/range"),
    ("duckdb", "lateral"),
    ("duckdb/probe", None),
    ("duckdb/no-split", None),
    ("duckdb/ordinal", None),
    ("duckdb/deep/ordinal", "mixed:range/asof"),
    ("duckdb/probe/ordinal", None),
    ("trino", None),
]
POSTGRES_PLANS = [
    ("postgres", None),
    ("postgres", "lateral"),
    ("postgres", "range"),
    ("postgres", "mixed:range/lateral"),
    ("postgres", "mixed:timeline/range"),
    ("postgres/ordinal", "mixed:range/lateral"),
    ("postgres/ordinal", "timeline"),
]


# --- engines -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def duck_con() -> Iterator[duckdb.DuckDBPyConnection]:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    yield con
    con.close()


@pytest.fixture(scope="module")
def pg_con() -> Iterator[Any]:
    import psycopg

    schema = f"fsqltest_pit_{uuid.uuid4().hex[:10]}"
    # no server-side prepared statements: the same SQL text runs against re-created tables whose
    # column types change between examples ("cached plan must not change result type")
    con = psycopg.connect(POSTGRES_URL, autocommit=True, prepare_threshold=None)
    con.execute(f"CREATE SCHEMA {quote(schema)}")
    con.execute(f"SET search_path TO {quote(schema)}")
    con.execute("SET TIME ZONE 'UTC'")
    yield con
    con.execute(f"DROP SCHEMA IF EXISTS {quote(schema)} CASCADE")
    con.close()


def load(con: Any, engine: str, sc: Scenario) -> None:
    loader = load_duckdb if engine == "duckdb" else load_postgres
    loader(con, "spine", sc.spine.columns, sc.spine.rows)
    for v in sc.views:
        loader(con, v.table.name, v.table.columns, v.table.rows)


def run(con: Any, engine: str, sql: str) -> list[tuple]:
    if engine == "duckdb":
        return con.execute(sql).fetchall()
    return con.execute(sql).fetchall()


def check_all_plans(con: Any, engine: str, sc: Scenario, mode: str) -> None:
    load(con, engine, sc)
    want = expected(sc, mode)
    for dialect, plan in DUCKDB_PLANS if engine == "duckdb" else POSTGRES_PLANS:
        sql = compiled(sc, dialect, mode, plan, engine)
        got = run(con, engine, sql)
        problem = rows_mismatch(want, got)
        assert problem is None, (
            f"{engine} running the {dialect}/{plan or 'default'} plan ({mode}): {problem}\n{sql}"
        )


# --- compile_pit vs reference --------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["known-at", "event-time"])
def test_pit_duckdb_matches_reference(duck_con: duckdb.DuckDBPyConnection, mode: str) -> None:
    @PROFILE
    @given(sc=scenarios())
    def check(sc: Scenario) -> None:
        check_all_plans(duck_con, "duckdb", sc, mode)

    check()


@pytest.mark.parametrize("mode", ["known-at", "event-time"])
def test_pit_postgres_matches_reference(pg_con: Any, mode: str) -> None:
    @PROFILE
    @given(sc=scenarios())
    def check(sc: Scenario) -> None:
        check_all_plans(pg_con, "postgres", sc, mode)

    check()


def without_ttl(sc: Scenario) -> Scenario:
    """The same scenario with no view bounded by a TTL."""
    views = [
        ViewCase(v.table, dataclasses.replace(v.ref, ttl=None), dataclasses.replace(v.pit, ttl=None))
        for v in sc.views
    ]
    return dataclasses.replace(sc, views=views)


# The range plan has no lower bound on a view without a TTL ("auto" picks it for shallow histories):
# every view of these scenarios runs it, alone and mixed with the engine's other plans.
NO_TTL_PLANS = {
    "duckdb": [("duckdb", "range"), ("duckdb/deep", "range"), ("duckdb", "mixed:range/asof"),
               ("duckdb/no-split", "range")],
    "postgres": [("postgres", "range"), ("postgres", "mixed:range/lateral"), ("postgres", "mixed:timeline/range")],
}


@pytest.mark.parametrize("engine", ["duckdb", "postgres"])
@pytest.mark.parametrize("mode", ["known-at", "event-time"])
def test_range_plan_without_ttl_matches_reference(request: pytest.FixtureRequest, engine: str, mode: str) -> None:
    con = request.getfixturevalue("duck_con" if engine == "duckdb" else "pg_con")

    @settings(PROFILE, max_examples=EXAMPLES // 2)
    @given(sc=scenarios().map(without_ttl))
    def check(sc: Scenario) -> None:
        load(con, engine, sc)
        want = expected(sc, mode)
        for dialect, plan in NO_TTL_PLANS[engine]:
            sql = compiled(sc, dialect, mode, plan, engine)
            problem = rows_mismatch(want, run(con, engine, sql))
            assert problem is None, f"{engine} running the {dialect}/{plan} plan without TTL ({mode}): {problem}\n{sql}"

    check()


def with_unique_times(sc: Scenario) -> Scenario:
    """The same scenario with one row kept per (keys, event time) in each view (NULL event times all
    kept: they never qualify), each view marked ``unique_times``, as fsql marks a view whose measured
    history had no ties and whose inputs are unchanged since."""
    views = []
    for v in sc.views:
        names = [c for c, _ in v.table.columns]
        at = [names.index(c) for c in (*v.pit.keys, v.pit.timestamp)]
        seen: set[tuple] = set()
        rows = []
        for row in v.table.rows:
            # the reference compares instants: a naive and an aware time at the same instant are a tie
            key = tuple(instant(row[i]) if isinstance(row[i], datetime) else row[i] for i in at)
            if row[at[-1]] is not None and key in seen:
                continue
            seen.add(key)
            rows.append(row)
        table = dataclasses.replace(v.table, rows=rows)
        views.append(ViewCase(table, dataclasses.replace(v.ref, rows=table.dicts()),
                              dataclasses.replace(v.pit, unique_times=True)))
    return dataclasses.replace(sc, views=views)


# The ASOF plan's shape for such views (the matched row is the winner) runs in event-time matching
# only; in known-at mode a view with a created column keeps the general plan, which must still hold.
UNIQUE_PLANS = [("duckdb", None), ("duckdb", "asof"), ("duckdb", "mixed:asof/range"), ("duckdb/probe", "asof")]


@pytest.mark.parametrize("mode", ["known-at", "event-time"])
def test_asof_plan_on_views_without_ties_matches_reference(duck_con: duckdb.DuckDBPyConnection, mode: str) -> None:
    @settings(PROFILE, max_examples=EXAMPLES // 2)
    @given(sc=scenarios().map(with_unique_times))
    def check(sc: Scenario) -> None:
        load(duck_con, "duckdb", sc)
        want = expected(sc, mode)
        for dialect, plan in UNIQUE_PLANS:
            sql = compiled(sc, dialect, mode, plan, "duckdb")
            problem = rows_mismatch(want, run(duck_con, "duckdb", sql))
            assert problem is None, f"duckdb running the {dialect}/{plan} plan on unique times ({mode}): {problem}\n{sql}"

    check()


# --- latest_per_entity vs reference at t = as_of -------------------------------------------------


@st.composite
def latest_cases(draw: st.DrawFn) -> tuple[Scenario, datetime, bool]:
    sc = draw(scenarios(max_views=1))
    as_of = hour_ts(draw, aware=draw(st.booleans()), lo=0, hi=10)
    return sc, as_of, draw(st.booleans())


def check_latest(con: Any, engine: str, sc: Scenario, as_of: datetime, apply_ttl: bool, mode: str) -> None:
    view = sc.views[0]
    loader = load_duckdb if engine == "duckdb" else load_postgres
    loader(con, view.table.name, view.table.columns, view.table.rows)
    want = latest(view.ref, as_of, mode, apply_ttl)
    literal = exp.cast(exp.Literal.string(as_of.isoformat()), exp.DataType.build("TIMESTAMPTZ"))
    outs = [out for _, out in view.pit.features]
    feature_cols = [c for c, _ in view.pit.features]
    # trees for engines without a byte collation pin only run on DuckDB (byte order by default)
    for dialect in [engine, "trino", "bigquery"] if engine == "duckdb" else [engine]:
        query = latest_per_entity(view.pit, dialect=dialect, mode=mode, as_of=literal, apply_ttl=apply_ttl)
        sql = query.sql(engine)
        got = run(con, engine, sql)
        names = [*view.pit.keys, "ts", *([view.pit.created] if view.pit.created else []), *outs]
        assert len(got) == len(want), f"{engine}/{dialect}: {len(got)} entities, expected {len(want)}\n{sql}"
        for row in got:
            record = dict(zip(names, row, strict=True))
            keys = tuple(record[k] for k in view.pit.keys)
            assert keys in want, f"{engine}/{dialect}: unexpected entity {keys}"
            best = want[keys]
            expect = [
                best[c]
                for c in [
                    *view.pit.keys,
                    "ts",
                    *([view.pit.created] if view.pit.created else []),
                    *feature_cols,
                ]
            ]
            assert all(same_value(e, g) for e, g in zip(expect, row, strict=True)), (
                f"{engine}/{dialect} entity {keys}: expected {expect}, got {row}\n{sql}"
            )


@pytest.mark.parametrize("mode", ["known-at", "event-time"])
def test_latest_duckdb_matches_reference(duck_con: duckdb.DuckDBPyConnection, mode: str) -> None:
    @PROFILE
    @given(case=latest_cases())
    def check(case: tuple[Scenario, datetime, bool]) -> None:
        check_latest(duck_con, "duckdb", *case, mode)

    check()


@pytest.mark.parametrize("mode", ["known-at", "event-time"])
def test_latest_postgres_matches_reference(pg_con: Any, mode: str) -> None:
    @PROFILE
    @given(case=latest_cases())
    def check(case: tuple[Scenario, datetime, bool]) -> None:
        check_latest(pg_con, "postgres", *case, mode)

    check()
