"""PIT compiler: validation errors, name collisions, edge cases, and the PostgreSQL index plan."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import duckdb
import pytest
import sqlglot
from pit_reference import RefView, load_duckdb, load_postgres, pit_join, rows_mismatch
from sqlglot import exp

from fsql.compiler import (
    SUPPORTED_DIALECTS,
    PitView,
    capabilities,
    compile_pit,
    latest_per_entity,
    offline_index,
)
from fsql.compiler.pit import _interval, auto_plan
from fsql.compiler.rewrites import generate
from fsql.definitions import ViewShape
from fsql.errors import CompileError

T0 = datetime(2024, 1, 1)


def view(**overrides: Any) -> PitView:
    args: dict[str, Any] = {
        "name": "v",
        "relation": exp.to_table("hist"),
        "keys": ("k",),
        "timestamp": "ts",
        "created": None,
        "ttl": None,
        "features": (("x", "x"),),
    }
    args.update(overrides)
    return PitView(**args)


def compile_(views: list[PitView] | None = None, **overrides: Any) -> exp.Query:
    args: dict[str, Any] = {
        "spine": exp.to_table("spine"),
        "spine_columns": ["k", "t", "label"],
        "spine_timestamp": "t",
        "views": views if views is not None else [view()],
        "dialect": "duckdb",
    }
    args.update(overrides)
    return compile_pit(**args)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dialect": "postgress"}, "not supported"),
        ({"spine_timestamp": "when"}, "spine timestamp 'when'"),
        ({"spine_columns": ["k", "t", "K"]}, "duplicate spine column"),
        ({"views": [view(features=(("x", "label"),))]}, "collides with spine column"),
        ({"views": [view(), view(name="w")]}, "duplicate training-set feature"),
        ({"views": [view(keys=("k", "s"), spine_keys=("k",))]}, "2 key"),
        ({"views": [view(spine_keys=("cust",))]}, "does not have"),
        ({"views": [view(ttl=timedelta(hours=-1))]}, "negative TTL"),
        ({"views": [view(keys=())]}, "no entity keys"),
        ({"views": [view(relation=exp.column("nope"))]}, "table or a query"),
        ({"mode": "as-of"}, "unknown PIT mode"),
        ({"plan": "asof", "dialect": "postgres"}, "no ASOF"),
        ({"plan": "lateral", "dialect": "bigquery"}, "no LATERAL"),
        ({"ordinal": "row"}, "ordinal 'row'"),
    ],
)
def test_compile_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(CompileError, match=message):
        compile_(**kwargs)


def test_errors_say_what_to_do() -> None:
    with pytest.raises(CompileError) as info:
        compile_(views=[view(features=(("x", "label"),))])
    assert info.value.hint and "rename" in info.value.hint


def test_every_supported_dialect_compiles() -> None:
    views = [
        view(created="c", ttl=timedelta(days=3), value_columns=(("x", "DOUBLE"), ("y", "VARCHAR"))),
        view(name="w", relation=exp.to_table("h2"), keys=("k",), features=(("y", "w_y"),), indexed=True),
    ]
    for dialect in SUPPORTED_DIALECTS:
        for plan in (None, "timeline", "range"):
            # generate() raises on anything sqlglot reports as unsupported for the dialect
            sql = generate(compile_(views, dialect=dialect, plan=plan), dialect)
            tree = reparsed(sql, dialect)
            assert tree.named_selects == ["k", "t", "label", "x", "w_y"], (dialect, plan)
            assert tree.args.get("order") is not None, (dialect, plan)  # rule 6: spine order
        latest = generate(latest_per_entity(views[0], dialect=dialect), dialect)
        assert reparsed(latest, dialect).named_selects == ["k", "ts", "c", "x"], dialect
        assert capabilities(dialect).name == dialect


def reparsed(sql: str, dialect: str) -> exp.Query:
    """``sql`` parsed back in its own dialect; printing the tree again gives the same text, so the
    text is SQL of that dialect and nothing was lost on the way."""
    tree = sqlglot.parse_one(sql, read=dialect)
    assert isinstance(tree, exp.Query), (dialect, sql)
    assert tree.sql(dialect) == sql, dialect
    return tree


def test_generated_sql_parses_back_to_the_golden_trees() -> None:
    """What the service runs (``generate``, one line) and the golden files (pretty) are the same tree
    in every dialect; the golden text itself is compared in test_pit_golden.py."""
    from test_pit_golden import CASES, DIALECTS, FIXTURES, profile_view

    for name, case in CASES.items():
        views = [v for v, _, _ in case.views]
        for dialect in DIALECTS:
            query = compile_pit(case.spine, case.spine_columns, case.spine_timestamp, views,
                                dialect=dialect, mode=case.mode, ordinal=case.ordinal)  # type: ignore[arg-type]
            golden = sqlglot.parse_one((FIXTURES / name / f"{dialect}.sql").read_text(), read=dialect)
            assert reparsed(generate(query, dialect), dialect) == golden, (name, dialect)
    for dialect in DIALECTS:
        golden = sqlglot.parse_one((FIXTURES / "latest_per_entity" / f"{dialect}.sql").read_text(), read=dialect)
        latest = generate(latest_per_entity(profile_view(), dialect=dialect), dialect)
        assert reparsed(latest, dialect) == golden, dialect


def test_interval_is_exact() -> None:
    assert _interval(timedelta(days=30)).sql("postgres") == "INTERVAL '720 HOUR'"
    assert _interval(timedelta(minutes=90)).sql("duckdb") == "INTERVAL '5400' SECOND"
    assert _interval(timedelta(seconds=1, microseconds=5)).sql("duckdb") == "INTERVAL '1000005' MICROSECOND"


def test_compile_is_pure() -> None:
    spine = sqlglot.parse_one("SELECT k, t, label FROM s")
    before = spine.sql()
    v = view(relation=sqlglot.parse_one("SELECT * FROM h WHERE ts > DATE '2024-01-01'"))
    first = compile_([v], spine=spine).sql("duckdb")
    assert spine.sql() == before
    assert compile_([v], spine=spine).sql("duckdb") == first


# --- edge cases on live engines ------------------------------------------------------------------

HIST_COLS = [("k", "BIGINT"), ("ts", "TIMESTAMP"), ("c", "TIMESTAMP"), ("x", "DOUBLE"), ("y", "VARCHAR")]
SPINE_COLS = [("k", "BIGINT"), ("t", "TIMESTAMP"), ("label", "BIGINT")]


def h(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def run_both(
    duck: duckdb.DuckDBPyConnection, pg: Any, tables: dict[str, tuple[list, list]], build: Any
) -> list:
    results = []
    for engine, con, loader in (("duckdb", duck, load_duckdb), ("postgres", pg, load_postgres)):
        for name, (cols, rows) in tables.items():
            loader(con, name, cols, rows)
        for dialect_plan in build(engine):
            results.append((engine, dialect_plan[0], con.execute(dialect_plan[1]).fetchall()))
    return results


def plans_for(engine: str) -> list[str | None]:
    return [None, "timeline", "range", "lateral"] + (["asof"] if engine == "duckdb" else [])


@pytest.mark.parametrize("mode", ["known-at", "event-time"])
def test_edge_cases(duck: duckdb.DuckDBPyConnection, pg: Any, mode: str) -> None:
    hist = [
        (1, h(1), None, 1.0, "a"),
        (1, h(2), h(9), 2.0, "b"),  # late: unknown until 9h in known-at mode
        (1, h(2), h(2), float("nan"), ""),  # same event time, known at once
        (1, h(3), None, None, None),  # NULL values win and stay NULL
        (1, None, None, 9.0, "never"),  # NULL event_ts never qualifies
        (2, h(5), h(4), 5.0, "created before event"),
        (None, h(1), None, 7.0, "NULL key"),
    ]
    spine = [
        (1, h(0), 1),  # before any history
        (1, h(2), 2),  # equality counts; in known-at the late row is not known yet
        (1, h(2), 2),  # exact duplicate spine row
        (1, h(4), 3),
        (1, h(9), 4),
        (2, h(5), 5),
        (3, h(5), 6),  # no history
        (None, h(5), 7),  # NULL key
        (1, None, 8),  # NULL t
    ]
    v = view(
        created="c", features=(("x", "x"), ("y", "y")), value_columns=(("x", "DOUBLE"), ("y", "VARCHAR"))
    )
    ref = RefView(
        rows=[dict(zip([c for c, _ in HIST_COLS], r, strict=True)) for r in hist],
        keys=("k",),
        timestamp="ts",
        created="c",
        ttl=None,
        features=v.features,
        value_columns=("x", "y"),
    )
    want = pit_join(
        [dict(zip(["k", "t", "label"], r, strict=True)) for r in spine], ["k", "t", "label"], "t", [ref], mode
    )

    def build(engine: str) -> list[tuple[str, str]]:
        return [
            (str(plan), compile_([v], dialect=engine, mode=mode, plan=plan).sql(engine))
            for plan in plans_for(engine)
        ]

    for engine, plan, got in run_both(
        duck, pg, {"hist": (HIST_COLS, hist), "spine": (SPINE_COLS, spine)}, build
    ):
        assert rows_mismatch(want, got) is None, (engine, plan, rows_mismatch(want, got))


@pytest.mark.parametrize("mode", ["known-at", "event-time"])
def test_ttl_boundary_is_inclusive(duck: duckdb.DuckDBPyConnection, pg: Any, mode: str) -> None:
    """Rule 2: ``event_ts >= t - ttl``, equality counts, one microsecond older does not, on every plan."""
    ttl = timedelta(hours=2)
    t = h(10)
    edge, us = t - ttl, timedelta(microseconds=1)
    hist = [
        (1, edge, None, 1.0, "at the edge"),
        (2, edge - us, None, 2.0, "just outside"),
        (3, edge - us, None, 3.0, "outside"),
        (3, edge, t, 4.0, "edge, known at t"),  # created == t counts too (rule 3)
        (4, edge + us, edge, 5.0, "inside"),
    ]
    spine = [
        (1, t, 1),
        (2, t, 2),
        (3, t, 3),
        (4, t, 4),
        (1, t + us, 5),  # a microsecond later the edge row has expired
        (2, t - us, 6),  # and a microsecond earlier the other one is still in
    ]
    expected = [
        (1, t, 1, 1.0, "at the edge"),
        (2, t, 2, None, None),
        (3, t, 3, 4.0, "edge, known at t"),
        (4, t, 4, 5.0, "inside"),
        (1, t + us, 5, None, None),
        (2, t - us, 6, 2.0, "just outside"),
    ]
    v = view(
        created="c", ttl=ttl, features=(("x", "x"), ("y", "y")), value_columns=(("x", "DOUBLE"), ("y", "VARCHAR"))
    )
    ref = RefView(
        rows=[dict(zip([c for c, _ in HIST_COLS], r, strict=True)) for r in hist],
        keys=("k",), timestamp="ts", created="c", ttl=ttl, features=v.features, value_columns=("x", "y"),
    )
    spine_rows = [dict(zip(["k", "t", "label"], r, strict=True)) for r in spine]
    assert rows_mismatch(expected, pit_join(spine_rows, ["k", "t", "label"], "t", [ref], mode)) is None

    def build(engine: str) -> list[tuple[str, str]]:
        plans = [(str(plan), compile_([v], dialect=engine, mode=mode, plan=plan).sql(engine)) for plan in plans_for(engine)]
        literal = exp.cast(exp.Literal.string(t.isoformat(sep=" ")), "TIMESTAMP")
        latest = latest_per_entity(v, dialect=engine, as_of=literal, mode=mode)  # type: ignore[arg-type]
        return [*plans, ("latest", f"SELECT k, x FROM ({latest.sql(engine)}) AS l ORDER BY k")]

    for engine, plan, got in run_both(duck, pg, {"hist": (HIST_COLS, hist), "spine": (SPINE_COLS, spine)}, build):
        if plan == "latest":
            assert got == [(1, 1.0), (3, 4.0), (4, 5.0)], (engine, got)
        else:
            assert rows_mismatch(expected, got) is None, (engine, plan, rows_mismatch(expected, got))


def test_empty_spine_and_empty_history(duck: duckdb.DuckDBPyConnection, pg: Any) -> None:
    def build(engine: str) -> list[tuple[str, str]]:
        return [(str(plan), compile_(dialect=engine, plan=plan).sql(engine)) for plan in plans_for(engine)]

    for spine_rows, hist_rows, expected in (
        ([], [(1, h(1), None, 1.0, "a")], []),
        ([(1, h(1), 5)], [], [(1, h(1), 5, None)]),
    ):
        tables = {"hist": (HIST_COLS, hist_rows), "spine": (SPINE_COLS, spine_rows)}
        for engine, plan, got in run_both(duck, pg, tables, build):
            assert rows_mismatch(expected, got) is None, (engine, plan)


def test_ordinal_orders_and_is_dropped(duck: duckdb.DuckDBPyConnection) -> None:
    load_duckdb(duck, "hist", HIST_COLS, [(1, h(1), None, 1.0, "a")])
    load_duckdb(
        duck,
        "spine",
        [*SPINE_COLS, ("row", "BIGINT")],
        [(1, h(2), 1, 30), (2, h(2), 2, 10), (1, h(0), 3, 20)],
    )
    for plan in plans_for("duckdb"):
        sql = compile_(spine_columns=["k", "t", "label", "row"], ordinal="row", plan=plan).sql("duckdb")
        assert duck.execute(sql).fetchall() == [(2, h(2), 2, None), (1, h(0), 3, None), (1, h(2), 1, 1.0)]
        assert [d[0] for d in duck.execute(sql).description] == ["k", "t", "label", "x"]


def test_generated_names_never_collide(duck: duckdb.DuckDBPyConnection, pg: Any) -> None:
    """User columns named like every generated identifier still compile and give right answers."""
    generated = ["__fsql_ord", "__fsql_s", "__fsql_best", "__fsql_t", "__fsql_k0", "__fsql_rows", "__fsql_c0"]
    spine_cols = [("k", "BIGINT"), ("t", "TIMESTAMP"), *((g, "BIGINT") for g in generated)]
    hist_cols = [("k", "BIGINT"), ("ts", "TIMESTAMP"), ("__fsql_match", "DOUBLE"), ("__fsql_kind", "DOUBLE")]
    spine = [(1, h(3), *range(len(generated))), (1, h(0), *range(len(generated)))]
    hist = [(1, h(1), 1.5, 2.5), (1, h(1), 0.5, 9.5)]
    v = view(
        features=(("__fsql_match", "m"), ("__fsql_kind", "kd")),
        value_columns=(("__fsql_match", "DOUBLE"), ("__fsql_kind", "DOUBLE")),
    )
    names = [c for c, _ in spine_cols]

    def build(engine: str) -> list[tuple[str, str]]:
        return [
            (str(plan), compile_([v], spine_columns=names, dialect=engine, plan=plan).sql(engine))
            for plan in plans_for(engine)
        ]

    expected = [(1, h(3), *range(len(generated)), 1.5, 2.5), (1, h(0), *range(len(generated)), None, None)]
    for engine, plan, got in run_both(
        duck, pg, {"hist": (hist_cols, hist), "spine": (spine_cols, spine)}, build
    ):
        assert rows_mismatch(expected, got) is None, (engine, plan, got)


def test_subquery_relations_as_the_service_passes_them(duck: duckdb.DuckDBPyConnection) -> None:
    load_duckdb(duck, "hist", HIST_COLS, [(1, h(1), None, 1.0, "a"), (1, h(2), None, 2.0, "b")])
    load_duckdb(duck, "spine", SPINE_COLS, [(1, h(5), 1)])
    window = exp.Subquery(
        this=sqlglot.parse_one("SELECT * FROM hist WHERE ts < TIMESTAMP '2024-01-01 01:30:00'"),
        alias=exp.TableAlias(this=exp.to_identifier("__fsql_window")),
    )
    spine = exp.Subquery(this=sqlglot.parse_one("SELECT k, t, label FROM spine"))
    sql = compile_([view(relation=window)], spine=spine).sql("duckdb")
    assert duck.execute(sql).fetchall() == [(1, h(5), 1, 1.0)]
    latest = latest_per_entity(
        view(relation=window), dialect="duckdb", as_of=exp.cast(exp.Literal.string("2024-01-02"), "TIMESTAMP")
    )
    assert duck.execute(latest.sql("duckdb")).fetchall() == [(1, h(1), 1.0)]


def test_latest_columns_and_ttl(duck: duckdb.DuckDBPyConnection) -> None:
    load_duckdb(
        duck,
        "hist",
        HIST_COLS,
        [(1, h(1), h(1), 1.0, "a"), (2, h(10), None, 2.0, "b"), (None, h(1), None, 3.0, "z")],
    )
    v = view(created="c", ttl=timedelta(hours=2), features=(("x", "x_out"), ("c", "c_out")))
    as_of = exp.cast(exp.Literal.string("2024-01-01 11:00:00"), "TIMESTAMP")
    q = latest_per_entity(v, dialect="duckdb", as_of=as_of)
    result = duck.execute(q.sql("duckdb"))
    assert [d[0] for d in result.description] == ["k", "ts", "c", "x_out", "c_out"]
    assert result.fetchall() == [(2, h(10), None, 2.0, None)]  # entity 1 is stale, NULL key left out
    q = latest_per_entity(v, dialect="duckdb", as_of=as_of, apply_ttl=False)
    assert sorted(duck.execute(q.sql("duckdb")).fetchall()) == [
        (1, h(1), h(1), 1.0, h(1)),
        (2, h(10), None, 2.0, None),
    ]


# --- PostgreSQL: the index serves the LATERAL plan -----------------------------------------------


def test_offline_index_serves_the_lateral_plan(pg: Any) -> None:
    hist = [(i % 200, h(i % 97), None, float(i), str(i)) for i in range(8_000)]
    load_postgres(pg, "hist", HIST_COLS, hist)
    load_postgres(pg, "spine", SPINE_COLS, [(i, h(50), i) for i in range(100)])
    v = view(
        features=(("x", "x"), ("y", "y")), value_columns=(("x", "DOUBLE"), ("y", "VARCHAR")), indexed=True
    )
    index = offline_index(v, exp.to_table("hist"), "postgres")
    assert index is not None
    pg.execute(index.sql("postgres"))
    pg.execute("VACUUM ANALYZE hist")
    sql = compile_([v], dialect="postgres").sql("postgres")
    assert "LATERAL" in sql
    plan = "\n".join(r[0] for r in pg.execute("EXPLAIN " + sql).fetchall())
    assert "hist__fsql_pit" in plan, plan
    assert "Index Only Scan" in plan, plan  # covering: no heap access
    # the event_ts order comes from the index: only the tie keys are sorted, incrementally
    assert "Incremental Sort" in plan or "Sort Key" not in plan.split("Limit")[1], plan
    ref = RefView(
        rows=[dict(zip([c for c, _ in HIST_COLS], r, strict=True)) for r in hist],
        keys=("k",),
        timestamp="ts",
        created=None,
        ttl=None,
        features=v.features,
        value_columns=("x", "y"),
    )
    spine = [dict(zip(["k", "t", "label"], (i, h(50), i), strict=True)) for i in range(100)]
    assert rows_mismatch(pit_join(spine, ["k", "t", "label"], "t", [ref]), pg.execute(sql).fetchall()) is None


def test_offline_index_names_and_dialects() -> None:
    long = "x" * 70
    index = offline_index(view(), exp.to_table(f"fsql.{long}"), "postgres")
    assert index is not None
    name = index.this.this.name
    assert len(name.encode()) <= 63 and name.endswith("__fsql_pit")
    assert offline_index(view(), exp.to_table("t"), "duckdb") is None
    assert offline_index(view(), exp.to_table("t"), "bigquery") is None
    with pytest.raises(CompileError):
        offline_index(view(), sqlglot.parse_one("SELECT 1"), "postgres")  # type: ignore[arg-type]


# --- automatic plan choice ------------------------------------------------------------------------

DAY = 86_400.0


def shape(mean: float, p99: float, span_days: float = 90, rows: int = 1_000) -> ViewShape:
    return ViewShape(rows=rows, entities=max(1, int(rows / mean)), events_mean=mean, events_p99=p99,
                     span_seconds=span_days * DAY, tie_share=0.0)


@pytest.mark.parametrize(
    ("ttl_days", "measured", "dialect", "plan", "why"),
    [
        # no TTL: the window is the entity's whole history before t, bounded by its rows per entity
        (None, None, "duckdb", None, "asof: no statistics yet"),
        (None, shape(1, 1), "duckdb", "range", "range: no TTL, ~1.0 rows per entity, p99 ~1"),
        (None, shape(10, 12), "duckdb", "range", "range: no TTL, ~10.0 rows"),
        (None, shape(20, 30), "duckdb", None, "asof: no TTL, ~20.0 rows per entity"),  # deeper: ASOF
        (None, shape(5, 100), "duckdb", None, "asof: no TTL, ~5.0 rows per entity, p99 ~100"),  # skewed tail
        ((None, 50), shape(10, 12), "duckdb", "range", "50 spine rows join ~0.50x the history"),
        ((None, 60), shape(10, 12), "duckdb", None, "60 spine rows join ~0.60x the history"),
        ((None, 100), shape(10, 12), "duckdb/known-at", "range", "100 spine rows join ~1.00x"),
        ((None, 500), shape(10, 12), "duckdb/known-at", None, "500 spine rows join ~5.00x"),
        ((None, 50), shape(1, 1), "postgres/indexed", None, "lateral: the history's index"),
        (3, None, "duckdb", None, "asof: no statistics yet"),
        (3, shape(1000, 1000), "duckdb", None, "asof: ~33.3 rows per entity in the TTL window"),
        (3, shape(10, 30), "duckdb", "range", "range: ~0.3 rows per entity in the TTL window, p99 ~1"),
        (30, shape(20, 101), "duckdb", "range", "range: ~6.7 rows"),  # the Feast-shaped anchor
        (30, shape(20, 400), "duckdb", None, "p99 ~133"),  # a skewed tail would explode the range join
        (365, shape(5, 20), "duckdb", "range", "~5.0 rows"),  # a TTL longer than the history: all of it
        (3, shape(10, 30, span_days=0), "duckdb", None, "~10.0 rows"),  # one instant: every row in the window
        # the spine's size: 50 rows x ~3.3 rows per window stay small against 1,000 history rows; 100 do
        # not when the ASOF plan takes the winner straight from the join (no ties)...
        ((30, 50), shape(10, 30), "duckdb/tie-free", "range", "50 spine rows join ~0.17x the history"),
        ((30, 100), shape(10, 30), "duckdb/tie-free", None, "100 spine rows join ~0.33x the history"),
        ((30, 1_000), shape(10, 30), "duckdb/tie-free", None,
         "asof: ~3.3 rows per entity in the TTL window, p99 ~10, 1,000"),
        # ...while its fetch and tie check leave the range join more room
        ((30, 100), shape(10, 30), "duckdb", "range", "100 spine rows join ~0.33x the history"),
        ((30, 300), shape(10, 30), "duckdb", "range", "300 spine rows join ~1.00x the history"),
        ((30, 400), shape(10, 30), "duckdb", None, "400 spine rows join ~1.33x the history"),
        # known-at with a created column: the ASOF plan's running MAX makes the range join worth more rows
        ((30, 200), shape(10, 30), "duckdb/known-at", "range", "200 spine rows join ~0.67x"),
        # ...deeper windows too, once the spine's size bounds the work; without it the usual window bound
        ((3, 20), shape(1000, 1000, rows=1_000_000), "duckdb/known-at", "range", "~33.3 rows per entity"),
        ((3, 50_000), shape(1000, 1000, rows=1_000_000), "duckdb/known-at", None, "join ~1.67x the history"),
        (3, shape(1000, 1000, rows=1_000_000), "duckdb/known-at", None, "~33.3 rows per entity"),
        ((3, 20), shape(1000, 1000, rows=1_000_000), "duckdb", None, "~33.3 rows per entity"),
        (3, shape(10, 30), "postgres", "range", "range:"),  # unindexed: range vs the timeline plan
        (3, shape(1000, 1000), "postgres", None, "timeline:"),
        (3, shape(10, 30), "postgres/indexed", None, "lateral: the history's index"),
        ((3, 50), shape(10, 30), "postgres/indexed", None, "lateral: the history's index"),  # few probes
        ((3, 200), shape(10, 30), "postgres/indexed", "range", "range:"),  # one scan beats 200 probes
        ((3, 200), shape(100, 300), "postgres/indexed", None, "lateral: ~3.3 rows"),
        # event-time matching on an indexed history: the window's rows decide, not the join share
        ((30, 3_000), shape(3, 30), "postgres/indexed", "range", "3,000 spine rows join ~3.00x"),
        ((30, 3_000), shape(9, 30), "postgres/indexed", None, "lateral: ~3.0 rows"),
    ],
)
def test_auto_plan_takes_the_range_join_only_for_few_rows_per_ttl_window(
    ttl_days: int | tuple[int | None, int] | None, measured: ViewShape | None, dialect: str, plan: str | None, why: str
) -> None:
    dialect, _, variant = dialect.partition("/")
    ttl_days, spine_rows = ttl_days if isinstance(ttl_days, tuple) else (ttl_days, None)
    v = view(ttl=timedelta(days=ttl_days) if ttl_days else None, indexed=variant == "indexed",
             created="created" if variant == "known-at" else None)
    chosen, reason = auto_plan(v, measured, dialect, spine_rows, "known-at", tie_free=variant == "tie-free")
    assert chosen == plan and why in reason, reason


def test_the_range_plan_keeps_each_probes_latest_rows_before_ranking_deep_windows() -> None:
    """Where windows were measured deep and the engine has the tie split (DuckDB), the rows at each
    probe's latest event time are kept first (a MAX per probe: no sort), so most probes keep one row
    and only the others are ranked; shallow windows, and other engines, rank every joined row at once."""
    v = view(ttl=timedelta(days=3), value_columns=(("x", "DOUBLE"),))
    shallow = compile_([v], dialect="duckdb", plan="range").sql("duckdb")
    assert "HAVING" not in shallow and "MAX(" not in shallow and shallow.count("ROW_NUMBER()") == 2
    v = replace(v, deep_windows=True)
    asof = compile_([v], dialect="duckdb", plan="asof").sql("duckdb")
    ranged = compile_([v], dialect="duckdb", plan="range").sql("duckdb")
    assert "HAVING COUNT(*) > 1" in asof and "HAVING COUNT(*) > 1" in ranged
    assert 'QUALIFY "__fsql_h"."ts" = MAX("__fsql_h"."ts") OVER (PARTITION BY "__fsql_p0"."__fsql_ord")' in ranged
    # the ranking window, over the tied rows only, orders by values: every row there has the same event_ts
    assert 'ORDER BY "__fsql_j"."x" DESC' in ranged
    elsewhere = compile_([v], dialect="postgres", plan="range").sql("postgres")
    assert "HAVING" not in elsewhere and "MAX(" not in elsewhere
    assert elsewhere.count("ROW_NUMBER()") == 2  # the spine's numbering and the one ranking window
