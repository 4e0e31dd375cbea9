"""Golden SQL for the PIT compiler, per case and dialect, and the same SQL executed on live engines.

``tests/fixtures/compile/<case>/<dialect>.sql`` holds the expected text. Regenerate after an
intended change with ``FSQL_UPDATE_FIXTURES=1 pytest tests/test_pit_golden.py`` and review the diff.
The DuckDB and PostgreSQL files are also run (the file text itself) on deterministic data with ties,
NULLs and NaN, and compared with the brute-force reference.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
import sqlglot
from pit_reference import RefView, latest, load_duckdb, load_postgres, pit_join, rows_mismatch, same_value
from sqlglot import exp

from fsql.compiler.pit import PitView, compile_pit, latest_per_entity, offline_index

FIXTURES = Path(__file__).parent / "fixtures" / "compile"
DIALECTS = ["duckdb", "postgres", "snowflake", "bigquery", "spark", "trino"]
UPDATE = os.environ.get("FSQL_UPDATE_FIXTURES") == "1"
T0 = datetime(2024, 1, 1)


@dataclass
class Case:
    spine: exp.Expression
    spine_table: tuple[list[tuple[str, str]], list[tuple]]
    spine_columns: list[str]
    spine_timestamp: str
    views: list[tuple[PitView, list[tuple[str, str]], list[tuple]]]
    ordinal: str | None = None
    mode: str = "known-at"
    reference_spine: list[tuple] = field(default_factory=list)  # the rows the spine query returns


def _spend(rng: random.Random, n: int, keys: int) -> list[tuple]:
    rows = []
    for _ in range(n):
        ts = None if rng.random() < 0.03 else T0 + timedelta(days=rng.randint(0, 60))
        spend = rng.choice([None, float("nan"), 0.0, round(rng.uniform(0, 500), 2)])
        rows.append((rng.randint(1, keys), ts, spend, rng.choice([None, rng.randint(0, 2**62)])))
    rows += rows[: n // 20]  # exact duplicates
    return rows


def _profile(rng: random.Random, n: int, keys: int) -> list[tuple]:
    rows = []
    for _ in range(n):
        ts = T0 + timedelta(hours=12 * rng.randint(0, 120))
        loaded = None if rng.random() < 0.2 else ts + timedelta(hours=rng.choice([0, 6, 12, 48, 24 * 20]))
        city = rng.choice(["Zürich", "zurich", "Oslo", "oslo", "", None, "Ärhus"])
        rows.append((rng.randint(1, keys), ts, loaded, city, rng.choice([None, 30, 31, 2**53 + 1])))
    return rows


def _spine(rng: random.Random, n: int, keys: int) -> list[tuple]:
    rows = [
        (rng.randint(1, keys + 3), T0 + timedelta(hours=12 * rng.randint(0, 130)), rng.random() < 0.3)
        for _ in range(n)
    ]
    return rows + rows[:5]  # duplicated spine rows


SPEND_COLS = [
    ("customer_id", "BIGINT"),
    ("event_ts", "TIMESTAMP"),
    ("spend_30d", "DOUBLE"),
    ("orders_30d", "BIGINT"),
]
PROFILE_COLS = [
    ("customer_id", "BIGINT"),
    ("event_ts", "TIMESTAMP"),
    ("loaded_at", "TIMESTAMPTZ"),
    ("city", "VARCHAR"),
    ("age", "BIGINT"),
]
LABEL_COLS = [("customer_id", "BIGINT"), ("label_ts", "TIMESTAMP"), ("churned", "BOOLEAN")]


def spend_view(**extra: Any) -> PitView:
    return PitView(
        name="customer_spend",
        relation=exp.to_table("customer_spend"),
        keys=("customer_id",),
        timestamp="event_ts",
        created=None,
        ttl=timedelta(days=30),
        features=(("spend_30d", "spend_30d"), ("orders_30d", "orders_30d")),
        value_columns=(("spend_30d", "DOUBLE"), ("orders_30d", "BIGINT")),
        **extra,
    )


def profile_view(**extra: Any) -> PitView:
    return PitView(
        name="customer_profile",
        relation=exp.to_table("customer_profile"),
        keys=("customer_id",),
        timestamp="event_ts",
        created="loaded_at",
        ttl=timedelta(hours=12 * 5),
        features=(("city", "customer_profile__city"), ("age", "customer_profile__age")),
        value_columns=(("city", "VARCHAR"), ("age", "BIGINT")),
        **extra,
    )


def build_cases() -> dict[str, Case]:
    rng = random.Random(20240601)
    labels = _spine(rng, 120, 40)
    cases: dict[str, Case] = {}

    cases["one_view"] = Case(
        spine=exp.to_table("labels"),
        spine_table=(LABEL_COLS, labels),
        spine_columns=["customer_id", "label_ts", "churned"],
        spine_timestamp="label_ts",
        views=[(spend_view(), SPEND_COLS, _spend(rng, 400, 40))],
    )

    # spine as a query with an explicit ordinal (what the SDK does for DataFrame spines)
    ordered = [(i * 7 % 125, *r) for i, r in enumerate(labels)]
    spine_query = sqlglot.parse_one(
        "SELECT row_id, customer_id, label_ts, churned FROM labels_ord WHERE label_ts >= DATE '2024-01-02'"
    )
    cases["two_views_ttl_created"] = Case(
        spine=spine_query,
        spine_table=([("row_id", "BIGINT"), *LABEL_COLS], ordered),
        spine_columns=["row_id", "customer_id", "label_ts", "churned"],
        spine_timestamp="label_ts",
        views=[
            (spend_view(), SPEND_COLS, _spend(rng, 400, 40)),
            (profile_view(), PROFILE_COLS, _profile(rng, 400, 40)),
        ],
        ordinal="row_id",
        reference_spine=[r for r in ordered if r[2] >= datetime(2024, 1, 2)],
    )

    # composite int + str key, spine keys named differently, history indexed (PostgreSQL: LATERAL)
    stock_cols = [
        ("store_id", "BIGINT"),
        ("sku", "VARCHAR"),
        ("ts", "TIMESTAMPTZ"),
        ("loaded_at", "TIMESTAMP"),
        ("qty", "BIGINT"),
        ("price", "DOUBLE"),
    ]
    stock = []
    for _ in range(500):
        ts = T0 + timedelta(hours=6 * rng.randint(0, 60))
        loaded = None if rng.random() < 0.3 else ts + timedelta(hours=rng.choice([0, 6, 30]))
        stock.append(
            (
                rng.randint(1, 4),
                rng.choice(["A", "a", "B", ""]),
                ts,
                loaded,
                rng.choice([None, 0, 5, 2**62]),
                rng.choice([None, 1.25, float("nan")]),
            )
        )
    stock_view = PitView(
        name="stock",
        relation=exp.to_table("stock"),
        keys=("store_id", "sku"),
        timestamp="ts",
        created="loaded_at",
        ttl=None,
        features=(("qty", "stock_qty"), ("price", "stock_price")),
        spine_keys=("shop", "item"),
        value_columns=(("qty", "BIGINT"), ("price", "DOUBLE")),
        indexed=True,
    )
    shop_cols = [("shop", "BIGINT"), ("item", "VARCHAR"), ("at", "TIMESTAMPTZ"), ("label", "DOUBLE")]
    shops = [
        (
            rng.randint(1, 5),
            rng.choice(["A", "a", "B", "", "C"]),
            T0 + timedelta(hours=3 * rng.randint(0, 130)),
            rng.random(),
        )
        for _ in range(150)
    ]
    cases["composite_keys"] = Case(
        spine=exp.to_table("shops"),
        spine_table=(shop_cols, shops),
        spine_columns=["shop", "item", "at", "label"],
        spine_timestamp="at",
        views=[(stock_view, stock_cols, stock)],
    )
    return cases


CASES = build_cases()


def fixture_check(path: Path, text: str) -> None:
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
        return
    assert path.exists(), f"missing fixture {path}; run with FSQL_UPDATE_FIXTURES=1"
    assert path.read_text() == text + "\n", (
        f"{path} differs; if intended, regenerate with FSQL_UPDATE_FIXTURES=1"
    )


def compiled_text(case: Case, dialect: str) -> str:
    query = compile_pit(
        case.spine,
        case.spine_columns,
        case.spine_timestamp,
        [v for v, _, _ in case.views],
        dialect=dialect,
        mode=case.mode,  # type: ignore[arg-type]
        ordinal=case.ordinal,
    )
    return query.sql(dialect, pretty=True)


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("name", list(CASES))
def test_golden_sql(name: str, dialect: str) -> None:
    fixture_check(FIXTURES / name / f"{dialect}.sql", compiled_text(CASES[name], dialect))


@pytest.mark.parametrize("dialect", DIALECTS)
def test_golden_latest_sql(dialect: str) -> None:
    query = latest_per_entity(profile_view(), dialect=dialect)
    fixture_check(FIXTURES / "latest_per_entity" / f"{dialect}.sql", query.sql(dialect, pretty=True))


@pytest.mark.parametrize("dialect", ["postgres"])
def test_golden_offline_index(dialect: str) -> None:
    index = offline_index(profile_view(), exp.to_table("fsql.customer_profile__history"), dialect)
    assert index is not None
    fixture_check(FIXTURES / "offline_index" / f"{dialect}.sql", index.sql(dialect))
    assert offline_index(profile_view(), exp.to_table("x"), "duckdb") is None


# --- the fixture text, executed ------------------------------------------------------------------


def expected(case: Case) -> list[tuple]:
    cols, rows = case.spine_table
    names = [c for c, _ in cols]
    spine_rows = case.reference_spine or rows
    spine = [dict(zip(names, r, strict=True)) for r in spine_rows]
    views = []
    for view, vcols, vrows in case.views:
        vnames = [c for c, _ in vcols]
        views.append(
            RefView(
                rows=[dict(zip(vnames, r, strict=True)) for r in vrows],
                keys=view.keys,
                timestamp=view.timestamp,
                created=view.created,
                ttl=view.ttl,
                features=view.features,
                spine_keys=view.spine_keys,
                value_columns=tuple(c for c, _ in view.value_columns),
            )
        )
    return pit_join(spine, case.spine_columns, case.spine_timestamp, views, case.mode, case.ordinal)


def table_of(case: Case) -> str:
    spine = case.spine
    if isinstance(spine, exp.Table):
        return spine.name
    return next(spine.find_all(exp.Table)).name


def test_golden_duckdb_results(duck: duckdb.DuckDBPyConnection) -> None:
    for name, case in CASES.items():
        load_duckdb(duck, table_of(case), *case.spine_table)
        for view, cols, rows in case.views:
            load_duckdb(duck, view.relation.name, cols, rows)
        sql = (FIXTURES / name / "duckdb.sql").read_text()
        problem = rows_mismatch(expected(case), duck.execute(sql).fetchall())
        assert problem is None, f"{name}: {problem}"


def test_golden_postgres_results(pg: Any) -> None:
    for name, case in CASES.items():
        load_postgres(pg, table_of(case), *case.spine_table)
        for view, cols, rows in case.views:
            load_postgres(pg, view.relation.name, cols, rows)
            if view.indexed:
                index = offline_index(view, exp.to_table(view.relation.name), "postgres")
                assert index is not None
                pg.execute(index.sql("postgres"))
        sql = (FIXTURES / name / "postgres.sql").read_text()
        problem = rows_mismatch(expected(case), pg.execute(sql).fetchall())
        assert problem is None, f"{name}: {problem}"


def test_golden_latest_results(duck: duckdb.DuckDBPyConnection, pg: Any) -> None:
    """The latest-per-entity fixtures, as of a fixed instant instead of CURRENT_TIMESTAMP."""
    case = CASES["two_views_ttl_created"]
    view, cols, rows = case.views[1]
    as_of = datetime(2024, 2, 10, 12)
    ref = RefView(
        rows=[dict(zip([c for c, _ in cols], r, strict=True)) for r in rows],
        keys=view.keys,
        timestamp=view.timestamp,
        created=view.created,
        ttl=view.ttl,
        features=view.features,
        value_columns=tuple(c for c, _ in view.value_columns),
    )
    want = latest(ref, as_of)
    literal = "TIMESTAMP '2024-02-10 12:00:00'"
    for engine, con, loader in (("duckdb", duck, load_duckdb), ("postgres", pg, load_postgres)):
        loader(con, "customer_profile", cols, rows)
        sql = (
            (FIXTURES / "latest_per_entity" / f"{engine}.sql")
            .read_text()
            .replace("CURRENT_TIMESTAMP", literal)
        )
        got = con.execute(sql).fetchall()
        assert len(got) == len(want)
        for row in got:
            best = want[(row[0],)]
            expect = (best["customer_id"], best["event_ts"], best["loaded_at"], best["city"], best["age"])
            assert all(same_value(e, g) for e, g in zip(expect, row, strict=True)), (engine, expect, row)
