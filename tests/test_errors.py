"""Bad inputs: each fails with one clear `path:line: message` line and leaves registry and warehouse as
they were (the project is built once before the bad edit, and both are dumped before and after)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fsql.cli import app
from tests.projects import example_project, registry_dump, warehouse_dump

runner = CliRunner()


@dataclass(frozen=True)
class Case:
    id: str
    edit: Callable[[Path], None]
    location: str  # expected "path:line" prefix, or a path prefix when the line is not fixed
    message: str  # substring of the message


def sub(file: str, old: str, new: str) -> Callable[[Path], None]:
    def edit(project: Path) -> None:
        path = project / file
        text = path.read_text()
        assert old in text, f"{old!r} not in {file}"
        path.write_text(text.replace(old, new, 1))

    return edit


def write(file: str, text: str) -> Callable[[Path], None]:
    def edit(project: Path) -> None:
        (project / file).parent.mkdir(parents=True, exist_ok=True)
        (project / file).write_text(text)

    return edit


def write_bytes(file: str, data: bytes) -> Callable[[Path], None]:
    def edit(project: Path) -> None:
        (project / file).write_bytes(data)

    return edit


def both(*edits: Callable[[Path], None]) -> Callable[[Path], None]:
    def edit(project: Path) -> None:
        for e in edits:
            e(project)

    return edit


SPEND = "features/customer_spend.sql"
PROFILE = "features/customer_profile.sql"
CHURN = "features/churn.sql"
VIEW_A = """-- @feature_view view_a
-- @entity customer
-- @timestamp event_ts
SELECT customer_id, event_ts, spend_30d AS x
FROM view_b
"""
VIEW_B = """-- @feature_view view_b
-- @entity customer
-- @timestamp event_ts
SELECT customer_id, event_ts, x AS spend_30d
FROM view_a
"""

CASES = [
    Case("bad-sql", sub(PROFILE, "    country,", "    country AS AS c,"), "features/customer_profile.sql:10", "SQL syntax error"),
    Case("unknown-annotation", sub(SPEND, "-- @ttl 30d", "-- @ttll 30d"), "features/customer_spend.sql:5",
         "unknown annotation '@ttll'; did you mean 'ttl'?"),
    Case("missing-entity-key", sub(PROFILE, "    customer_id,\n", ""), "features/customer_profile.sql:2",
         "entity key column 'customer_id'"),
    Case("missing-timestamp-column", sub(PROFILE, "-- @timestamp updated_at", "-- @timestamp updated"),
         "features/customer_profile.sql:3", "@timestamp column 'updated' is not selected; did you mean 'updated_at'?"),
    Case("unknown-source", sub(SPEND, "FROM orders", "FROM order_s"), "features/customer_spend.sql:15",
         "unknown source or view 'order_s'; did you mean 'orders'?"),
    Case("cycle", both(write("features/view_a.sql", VIEW_A), write("features/view_b.sql", VIEW_B)),
         "features/view_a.sql:5", "cycle between feature views: view_a -> view_b -> view_a"),
    Case("duplicate-view-name", write("features/zz_copy.sql", (Path(__file__).parent.parent / SPEND).read_text()),
         "features/zz_copy.sql:1", "duplicate name 'customer_spend'"),
    Case("bad-ttl", sub(SPEND, "-- @ttl 30d", "-- @ttl 30 days"), "features/customer_spend.sql:5", "invalid duration '30 days'"),
    Case("negative-ttl", sub(SPEND, "-- @ttl 30d", "-- @ttl 0d"), "features/customer_spend.sql:5", "invalid duration '0d'"),
    Case("bad-toml", sub("fsql.toml", 'name = "demo"', 'name = "demo'), "fsql.toml:3", "invalid TOML"),
    Case("unknown-toml-section", sub("fsql.toml", "[registry]", "[registri]"), "fsql.toml:", "unknown section [registri]"),
    Case("unknown-toml-key", sub("fsql.toml", 'schema = "fsql"', 'shema = "fsql"'), "fsql.toml:", "unknown key 'shema' in [warehouse]"),
    Case("unknown-engine", sub("fsql.toml", 'engine = "duckdb"', 'engine = "duckbd"'), "fsql.toml:", "unknown warehouse engine 'duckbd'"),
    Case("unreachable-postgres",
         sub("fsql.toml", 'engine = "duckdb"           # or "postgres" with url = "${FSQL_POSTGRES_URL}"\npath = ".fsql/warehouse.duckdb"',
             'engine = "postgres"\nurl = "postgresql://postgres@127.0.0.1:1/test"'),
         "", "cannot connect to PostgreSQL at postgresql://postgres@127.0.0.1:1/test"),
    Case("missing-env-var", sub("fsql.toml", 'url = "sqlite:///.fsql/registry.db"', 'url = "${FSQL_NO_SUCH_VAR_X}"'),
         "fsql.toml:", "environment variable FSQL_NO_SUCH_VAR_X, which is not set"),
    Case("unknown-entity", sub(SPEND, "-- @entity customer", "-- @entity custmer"), "features/customer_spend.sql:2",
         "unknown entity 'custmer'; did you mean 'customer'?"),
    Case("missing-entity-annotation", sub(PROFILE, "-- @entity customer\n", ""), "features/customer_profile.sql:1",
         "needs an '@entity' annotation"),
    Case("missing-kind", sub(PROFILE, "-- @feature_view customer_profile\n", ""), "features/customer_profile.sql:1",
         "missing '@feature_view NAME' or '@training_set NAME'"),
    Case("duplicate-column", sub(PROFILE, "    segment,", "    country,"), "features/customer_profile.sql:11",
         "duplicate column name 'country'"),
    Case("two-statements", sub(PROFILE, "FROM customers", "FROM customers;\nSELECT 1"), "features/customer_profile.sql",
         "exactly one SELECT"),
    Case("jinja-undefined-var", sub(SPEND, "{{ var('spend_window_days') }} DAYS", "{{ var('window_days') }} DAYS"),
         "features/customer_spend.sql:17", "var 'window_days' is not defined"),
    Case("jinja-syntax", sub(SPEND, "{{ var('spend_window_days') }} DAYS", "{{ var('spend_window_days') DAYS"),
         "features/customer_spend.sql:", "Jinja syntax error"),
    Case("training-set-unknown-view", sub(CHURN, "customer_profile.*", "customer_profil.*"), "features/churn.sql:4",
         "unknown feature view 'customer_profil' in @features; did you mean 'customer_profile'?"),
    Case("training-set-unknown-feature", sub(CHURN, "customer_spend.spend_30d", "customer_spend.spend_3d"), "features/churn.sql:4",
         "feature view 'customer_spend' has no feature 'spend_3d'; did you mean 'spend_30d'?"),
    Case("training-set-timestamp-not-selected", sub(CHURN, "-- @timestamp label_ts", "-- @timestamp label_time"),
         "features/churn.sql:2", "@timestamp column 'label_time' is not selected by the spine"),
    Case("bad-feature-ref", sub(CHURN, "customer_spend.orders_30d", "orders_30d"), "features/churn.sql:4",
         "invalid feature reference 'orders_30d'"),
    Case("timestamp-not-a-timestamp", sub(PROFILE, "    updated_at,", "    age AS updated_at,"), "features/customer_profile.sql:3",
         "has type INTEGER, not a timestamp"),
    Case("float-entity-key", sub(PROFILE, "    customer_id,", "    customer_id * 1.5 AS customer_id,"),
         "features/customer_profile.sql:2", "keys must be integers, strings or dates"),
    Case("unknown-column-in-source", sub(PROFILE, "    segment,", "    segmnt,"), "features/customer_profile.sql:11",
         "segmnt"),
    Case("missing-source-file", sub("fsql.toml", 'path = "data/customers.parquet"', 'path = "data/nope.parquet"'), "fsql.toml:",
         "source 'customers' reads data/nope.parquet, which matches no file; fix [sources.customers] path"),
    Case("type-change", sub(PROFILE, "    age ", "    CAST(age AS DOUBLE) AS age "), "features/customer_profile.sql:1",
         "type of column 'age' changed from INTEGER to DOUBLE"),
    Case("created-not-selected", sub(SPEND, "    loaded_at,\n", ""), "features/customer_spend.sql:4",
         "@created column 'loaded_at' is not selected"),
    Case("source-path-and-table", sub("fsql.toml", 'path = "data/fx_rates.parquet"', 'path = "data/fx_rates.parquet"\ntable = "raw.fx"'),
         "fsql.toml:", "needs exactly one of path"),
    Case("unknown-dialect-annotation", sub(PROFILE, "-- @owner crm-team", "-- @dialect postgress"), "features/customer_profile.sql:4",
         "unsupported dialect 'postgress'; did you mean 'postgres'?"),
    Case("table-function", sub(PROFILE, "FROM customers", "FROM read_csv('/etc/passwd')"), "features/customer_profile.sql:13",
         "table function 'read_csv' is not allowed in a feature file"),
    Case("file-reading-function", sub(PROFILE, "    age ", "    read_text('/etc/hostname') AS age "),
         "features/customer_profile.sql:12", "function 'read_text' is not allowed in a feature file"),
    Case("jinja-escape", sub(SPEND, "-- Trailing", "-- {{ lipsum.__globals__.os.getcwd() }}\n-- Trailing"),
         "features/customer_spend.sql:8", "'lipsum' is undefined"),
    Case("empty-file", write("features/empty.sql", ""), "features/empty.sql",
         "empty feature file; add a header or delete it"),
    Case("invalid-utf8", write_bytes("features/latin1.sql", b"-- @feature_view x\n-- \xe9\n"), "features/latin1.sql",
         "not valid UTF-8 (byte 0xe9 at line 2)"),
    Case("reserved-name", sub(PROFILE, "-- @feature_view customer_profile", "-- @feature_view customer_spend__latest"),
         "features/customer_profile.sql:1", "name 'customer_spend__latest' is reserved"),
    Case("too-deep", sub(PROFILE, "    age ", "    " + "(" * 100 + "age" + ")" * 100 + " AS age "),
         "features/customer_profile.sql", "query nested too deeply"),
    Case("no-features", sub(PROFILE, "    country,   -- ISO country code of the billing address\n    segment,   -- consumer, smb or enterprise\n    age        -- age in years at the time of the snapshot\n", ""),
         "features/customer_profile.sql", "selects no feature columns"),
]


@pytest.fixture(scope="module")
def built_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = example_project(tmp_path_factory.mktemp("errors") / "proj", tmp_path_factory.getbasetemp())
    result = runner.invoke(app, ["build", "-p", str(project)])
    assert result.exit_code == 0, result.output
    return project


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_cleanly(case: Case, built_project: Path, tmp_path: Path) -> None:
    project = tmp_path / "proj"
    shutil.copytree(built_project, project)
    registry, warehouse = registry_dump(project), warehouse_dump(project)
    assert registry and warehouse
    case.edit(project)
    result = runner.invoke(app, ["build", "-p", str(project)])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    line = lines[0]
    assert "Traceback" not in result.output
    if case.location:
        assert line.startswith(case.location), line
        if re.match(r"^[\w/.-]+:\d+$", case.location):
            assert line.startswith(case.location + ":"), line
    assert case.message in line, line
    assert registry_dump(project) == registry
    assert warehouse_dump(project) == warehouse
