"""Hostile or broken feature files fail with one line, never a traceback: bad bytes, empty files, deep
nesting, reserved names, library warnings; large files stay fast; BigQuery output keeps the semantics."""

from __future__ import annotations

import shutil
import time
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pytest
import sqlglot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fsql.cli import app
from fsql.compiler.rewrites import bigquery_window_order, generate
from fsql.compiler.views import to_dialect
from fsql.config import load_config
from fsql.errors import CompileError, FeatureFileError
from fsql.parsing.limits import MAX_NESTING
from fsql.parsing.project import parse_project
from fsql.parsing.templating import line_map
from tests.projects import example_project

runner = CliRunner()
HEADER = "-- @feature_view {name}\n-- @entity customer\n-- @timestamp ts\n"


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return example_project(tmp_path_factory.mktemp("bad") / "proj", tmp_path_factory.getbasetemp())


@pytest.fixture
def project(example: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(example, tmp_path / "proj"))


def build_fails(project: Path, *commands: list[str]) -> str:
    """The single line every command prints; also checks nothing else is printed."""
    outputs = set()
    for command in commands or (["build"],):
        result = runner.invoke(app, [*command, "-p", str(project)])
        assert result.exit_code == 1, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in result.output, result.output
        outputs.add(lines[0])
    assert len(outputs) == 1, outputs
    return outputs.pop()


# --- 8.13 / 8.14 bytes and empty files ---------------------------------------------------------------


def test_invalid_utf8_is_one_line_with_byte_and_line(project: Path) -> None:
    (project / "features/bad.sql").write_bytes(b"-- @feature_view bad\n-- caf\xe9 latin-1\nSELECT 1\n")
    assert build_fails(project, ["build"], ["plan"]) == "features/bad.sql: not valid UTF-8 (byte 0xe9 at line 2)"


def test_invalid_utf8_in_a_macros_file(project: Path) -> None:
    (project / "macros").mkdir()
    (project / "macros/m.sql").write_bytes(b"{% macro x() %}\n1\n\xff{% endmacro %}\n")
    assert build_fails(project) == "macros/m.sql: not valid UTF-8 (byte 0xff at line 3)"


def test_a_utf8_byte_order_mark_is_accepted(project: Path) -> None:
    spend = project / "features/customer_profile.sql"
    spend.write_bytes(b"\xef\xbb\xbf" + spend.read_bytes())
    assert runner.invoke(app, ["plan", "-p", str(project)]).exit_code == 0


@pytest.mark.parametrize("content", [b"", b"\n\n  \n", b"\t \r\n"])
def test_empty_feature_file_is_reported(project: Path, content: bytes) -> None:
    (project / "features/empty.sql").write_bytes(content)
    assert build_fails(project, ["build"], ["plan"]) == "features/empty.sql: empty feature file; add a header or delete it"


# --- 9.10 nesting and large files --------------------------------------------------------------------


def _view(name: str, expression: str) -> str:
    return HEADER.format(name=name) + f"SELECT customer_id, order_ts AS ts,\n  {expression} AS x\nFROM orders\n"


@pytest.mark.parametrize(
    ("case", "text"),
    [
        ("parentheses", _view("deep", "(" * 100 + "1" + ")" * 100)),
        ("subqueries", HEADER.format(name="deep") + "SELECT customer_id, ts, 1 AS x FROM "
         + "(SELECT * FROM " * 200 + "(SELECT customer_id, order_ts AS ts FROM orders) AS s" + ") AS s" * 200 + "\n"),
        ("case", _view("deep", "CASE WHEN true THEN " * 60 + "1" + " END" * 60)),
        ("brackets", _view("deep", "[" * 80 + "1" + "]" * 80)),
    ],
)
def test_deep_nesting_is_one_line(project: Path, case: str, text: str) -> None:
    (project / "features/deep.sql").write_text(text)
    line = build_fails(project, ["build"], ["plan"])
    assert line.startswith("features/deep.sql: query nested too deeply"), line


def test_nesting_up_to_the_limit_builds(project: Path) -> None:
    depth = MAX_NESTING - 2  # the SELECT list and the expression below add none; the view adds one
    (project / "features/deep.sql").write_text(_view("deep", "(" * depth + "amount" + ")" * depth))
    result = runner.invoke(app, ["build", "-p", str(project)])
    assert result.exit_code == 0, result.output


def test_line_map_is_linear_on_repeated_lines() -> None:
    # One value a line, as a generated IN list is written; difflib alone is quadratic on this input.
    lines = ["    1,"] * 20_000
    source = "{{ 'SELECT' }}\n" + "\n".join(lines) + "\n{{ 'x' }}\n"
    rendered = "SELECT\n" + "\n".join(lines) + "\nx\n"
    start = time.perf_counter()
    mapping = line_map(source, rendered)
    assert time.perf_counter() - start < 2.0
    assert mapping[0] == 1 and mapping[1] == 2 and mapping[20_000] == 20_001 and mapping[20_001] == 20_002


def test_large_in_list_parses_in_linear_time(tmp_path: Path) -> None:
    """Where the time goes for a big IN list: sqlglot's tokenizer and parser (linear). fsql adds no
    quadratic step: doubling the list about doubles the parse time."""

    def parse_seconds(n: int, root: Path) -> float:
        root.mkdir()
        (root / "fsql.toml").write_text('[project]\nname = "t"\n[entities.customer]\nkeys = ["customer_id"]\n'
                                        '[sources.orders]\npath = "orders.parquet"\n')
        (root / "features").mkdir()
        values = ",\n".join(str(i) for i in range(n))
        (root / "features/v.sql").write_text(
            HEADER.format(name="v") + "-- {{ var('x', 1) }}\nSELECT customer_id, ts, 1 AS y FROM orders\n"
            f"WHERE customer_id IN (\n{values}\n)\n")
        start = time.perf_counter()
        parse_project(load_config(root))
        return time.perf_counter() - start

    small, large = parse_seconds(10_000, tmp_path / "a"), parse_seconds(40_000, tmp_path / "b")
    assert large < small * 4 * 2.5 + 0.5, (small, large)


# --- 9.11 library warnings ------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "line", "what"), [
    ("LOAD httpfs", 4, "'LOAD'"), ("CALL pragma_version()", 4, "'CALL'"),
    ("SELECT 1 AS customer_id;\nINSTALL httpfs", 5, "'INSTALL'"),
])
def test_unsupported_statements_print_one_line_and_no_library_warning(
    project: Path, body: str, line: int, what: str, capfd: pytest.CaptureFixture[str]
) -> None:
    (project / "features/ext.sql").write_text(HEADER.format(name="ext") + body + "\n")
    printed = build_fails(project)
    assert printed.startswith(f"features/ext.sql:{line}: {what} is not allowed in a feature file"), printed
    captured = capfd.readouterr()
    assert "unsupported syntax" not in captured.err + captured.out


def test_no_sqlglot_warning_reaches_stderr_for_a_bad_json_path(project: Path, capfd: pytest.CaptureFixture[str]) -> None:
    (project / "features/j.sql").write_text(_view("j", "json_extract('{}', '$[')"))
    runner.invoke(app, ["plan", "-p", str(project)])
    captured = capfd.readouterr()
    assert "Invalid JSON path" not in captured.err + captured.out


# --- 9.13 reserved names ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["base__latest", "Up__LATEST", "x__history", "x__known_at", "__fsql_x", "src__orders"])
def test_generated_names_are_reserved(project: Path, name: str) -> None:
    (project / "features/reserved.sql").write_text(
        "-- a view named like a generated relation\n" + _view(name, "amount"))
    line = build_fails(project)
    assert line.startswith(f"features/reserved.sql:2: name '{name}' is reserved"), line


def test_reserved_names_apply_to_training_sets(project: Path) -> None:
    churn = project / "features/churn.sql"
    churn.write_text(churn.read_text().replace("-- @training_set churn", "-- @training_set churn__latest"))
    assert build_fails(project).startswith("features/churn.sql:1: name 'churn__latest' is reserved")


# --- 8.9 BigQuery ---------------------------------------------------------------------------------------


def test_example_view_compiles_for_bigquery(project: Path) -> None:
    result = runner.invoke(app, ["compile", "customer_spend", "--dialect", "bigquery", "-p", str(project)])
    assert result.exit_code == 0, result.output
    assert "NULLS" not in result.output
    assert "ORDER BY UNIX_MICROS(CAST(order_ts AS TIMESTAMP))" in result.output
    assert "RANGE BETWEEN 2592000000000 PRECEDING AND CURRENT ROW" in result.output


def test_bigquery_errors_point_at_the_window(project: Path) -> None:
    spend = project / "features/customer_spend.sql"
    spend.write_text(spend.read_text().replace("INTERVAL {{ var('spend_window_days') }} DAYS", "INTERVAL 1 MONTH"))
    result = runner.invoke(app, ["compile", "customer_spend", "--dialect", "bigquery", "-p", str(project)])
    assert result.exit_code == 1
    assert result.output.startswith("features/customer_spend.sql:13: RANGE offset INTERVAL '1' MONTH"), result.output


def test_to_dialect_maps_error_lines_through_the_template() -> None:
    tree = sqlglot.parse_one("SELECT k,\n\n  ARRAY_AGG(x ORDER BY t NULLS LAST) AS xs\nFROM tbl GROUP BY k", read="duckdb")
    with pytest.raises(CompileError) as info:
        to_dialect(tree, "duckdb", "bigquery", path="f.sql", line=1, file_line=lambda line: (line or 0) + 10)
    assert str(info.value).startswith("f.sql:13: cannot express this query in bigquery")


WINDOWS = [
    "SUM(x) OVER (PARTITION BY k ORDER BY t RANGE BETWEEN INTERVAL 2 DAYS PRECEDING AND CURRENT ROW)",
    "COUNT(x) OVER (PARTITION BY k ORDER BY t DESC RANGE BETWEEN INTERVAL 36 HOURS PRECEDING AND INTERVAL 1 DAY FOLLOWING)",
    "SUM(x) OVER (PARTITION BY k ORDER BY t)",
    "SUM(x) OVER (PARTITION BY k ORDER BY t DESC NULLS FIRST)",
    "SUM(x) OVER (PARTITION BY k ORDER BY t, id ROWS BETWEEN 1 PRECEDING AND CURRENT ROW)",
    "SUM(x) OVER (PARTITION BY k ORDER BY t NULLS FIRST, id DESC ROWS UNBOUNDED PRECEDING)",
    "ROW_NUMBER() OVER (PARTITION BY k ORDER BY t, id)",
    "LAG(x) OVER (PARTITION BY k ORDER BY t DESC NULLS FIRST, id)",
    "MAX(x) OVER (PARTITION BY k ORDER BY t GROUPS BETWEEN 1 PRECEDING AND CURRENT ROW)",
]
ROWS = st.lists(
    st.tuples(st.integers(0, 2), st.one_of(st.none(), st.integers(0, 10)), st.integers(-5, 5)), min_size=1, max_size=25
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=ROWS)
def test_bigquery_windows_keep_duckdb_semantics(rows: list[tuple[int, int | None, int]], duck: duckdb.DuckDBPyConnection) -> None:
    """The BigQuery-shaped windows, run on DuckDB, give the original query's values row for row,
    NULL event times included (BigQuery itself is not available to tests)."""
    base = datetime(2024, 1, 1)
    duck.execute("CREATE OR REPLACE TABLE tbl (id INT, k INT, t TIMESTAMP, x BIGINT)")
    duck.executemany("INSERT INTO tbl VALUES (?, ?, ?, ?)",
                     [(i, k, None if t is None else base + timedelta(hours=12 * t), x) for i, (k, t, x) in enumerate(rows)])
    query = "SELECT id, " + ", ".join(f"{w} AS w{i}" for i, w in enumerate(WINDOWS)) + " FROM tbl ORDER BY id"
    tree = sqlglot.parse_one(query, read="duckdb")
    shaped = bigquery_window_order(tree)
    assert "NULLS" not in generate(tree, "bigquery").split(" FROM tbl")[0]
    assert duck.execute(shaped.sql("duckdb")).fetchall() == duck.execute(query).fetchall()


def test_feature_file_error_is_a_feature_file_error(tmp_path: Path) -> None:
    (tmp_path / "fsql.toml").write_text('[project]\nname = "t"\n')
    (tmp_path / "features").mkdir()
    (tmp_path / "features/e.sql").write_text("   \n")
    with pytest.raises(FeatureFileError):
        parse_project(load_config(tmp_path))
