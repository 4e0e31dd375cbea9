"""Untrusted feature files: templates cannot reach Python, queries read only declared sources and views,
the DuckDB connection cannot open other files, and secrets never appear in messages."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from fsql.cli import app
from fsql.config import SourceConfig, load_config
from fsql.engines.duckdb import DuckDBEngine
from fsql.errors import EngineError, FeatureFileError, OnlineStoreError, RegistryError, redact_url
from fsql.parsing.project import parse_project
from tests.conftest import POSTGRES_URL
from tests.projects import example_project
from tests.service_adapter import Service

runner = CliRunner()

TOML = """
[project]
name = "t"

[entities.customer]
keys = ["customer_id"]

[sources.orders]
path = "orders.parquet"
"""
HEADER = "-- @feature_view v\n-- @entity customer\n-- @timestamp ts\n"


def tiny_project(root: Path, files: dict[str, str]) -> Path:
    (root / "fsql.toml").write_text(TOML)
    (root / "features").mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def parse_error(tmp_path: Path, body: str, header: str = HEADER) -> str:
    root = tiny_project(tmp_path, {"features/v.sql": header + body})
    with pytest.raises(FeatureFileError) as info:
        parse_project(load_config(root))
    return str(info.value)


# --- 9.1 sandboxed Jinja ---------------------------------------------------------------------------

PAYLOADS = {
    "cycler": "{{ cycler.__init__.__globals__.os.system('touch MARKER') }}",
    "lipsum": "{{ lipsum.__globals__['os'].popen('touch MARKER').read() }}",
    "self": "{{ self.__init__.__globals__.__builtins__.__import__('os').system('touch MARKER') }}",
    "subclasses": "{{ ''.__class__.__mro__[1].__subclasses__()[0]('touch MARKER') }}",
    "var-globals": "{{ var.__globals__['os'].system('touch MARKER') }}",
    "attr-filter": "{{ (''|attr('__class__')).__mro__ }}",
    "namespace": "{% set ns = namespace(x=1) %}{{ ns.__init__.__globals__.os.system('touch MARKER') }}",
}


def _with_marker(text: str, marker: Path) -> str:
    return text.replace("MARKER", str(marker))


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return example_project(tmp_path_factory.mktemp("sec") / "proj", tmp_path_factory.getbasetemp())


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_template_code_cannot_reach_python(name: str, example: Path, tmp_path: Path) -> None:
    project = tmp_path / "proj"
    import shutil

    shutil.copytree(example, project)
    marker = tmp_path / "pwned"
    spend = project / "features/customer_spend.sql"
    spend.write_text(spend.read_text().replace(
        "-- Trailing spend", "-- " + _with_marker(PAYLOADS[name], marker) + "\n-- Trailing spend", 1))
    for command in (["plan"], ["compile", "customer_spend"], ["build"]):
        result = runner.invoke(app, [*command, "-p", str(project)])
        assert result.exit_code == 1, (command, result.output)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1, result.output
        assert lines[0].startswith("features/customer_spend.sql:8: "), lines[0]
        assert not marker.exists(), f"{name} ran a shell command through {command}"


@pytest.mark.parametrize("where", ["macro-body", "macro-file-top-level"])
def test_macros_files_are_sandboxed_too(where: str, example: Path, tmp_path: Path) -> None:
    project = tmp_path / "proj"
    import shutil

    shutil.copytree(example, project)
    marker = tmp_path / "pwned"
    evil = _with_marker(PAYLOADS["cycler"], marker)
    macros = project / "macros"
    macros.mkdir()
    if where == "macro-body":
        (macros / "util.sql").write_text("{% macro days() %}" + evil + "30{% endmacro %}\n")
        spend = project / "features/customer_spend.sql"
        spend.write_text(spend.read_text().replace("{{ var('spend_window_days') }} DAYS", "{{ days() }} DAYS"))
    else:
        (macros / "util.sql").write_text("\n" + evil + "\n{% macro days() %}30{% endmacro %}\n")
    result = runner.invoke(app, ["plan", "-p", str(project)])
    assert result.exit_code == 1, result.output
    assert "unsafe template code" in result.output or "undefined" in result.output, result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1
    assert not marker.exists()
    if where == "macro-file-top-level":
        assert result.output.startswith("macros/util.sql:2: ")
    else:  # the caller's line, and where in the macros file it failed
        assert result.output.startswith("features/customer_spend.sql:17: ")
        assert "(in macros/util.sql:1)" in result.output


def test_templates_keep_var_range_loops_and_refuse_huge_values(tmp_path: Path) -> None:
    body = ("SELECT customer_id, ts,\n{% for d in range(2) %}  {{ var('k', 3) * d }} AS c{{ d }},\n{% endfor %}"
            "  1 AS one\nFROM orders\n")
    root = tiny_project(tmp_path, {"features/v.sql": HEADER + body})
    view = parse_project(load_config(root)).views["v"]
    assert [n for n, _ in view.projections] == ["customer_id", "ts", "c0", "c1", "one"]
    message = parse_error(tmp_path, "SELECT customer_id, ts, '{{ 'x' * 100000000 }}' AS x FROM orders\n")
    assert message.startswith("features/v.sql:4: unsafe template code: the result of '*' is too large")
    message = parse_error(tmp_path, "SELECT customer_id, ts, {{ 7 ** 100000000 }} AS x FROM orders\n")
    assert "the result of '**' is too large" in message


# --- 9.2 feature SQL reads only declared sources and views ------------------------------------------

REFUSED = [
    ("SELECT customer_id, ts, x FROM read_csv('/etc/passwd')", 4, "table function 'read_csv'"),
    ("SELECT customer_id, ts, x FROM orders\nJOIN read_parquet('/tmp/x.parquet') AS p USING (customer_id)", 5,
     "table function 'read_parquet'"),
    ("SELECT customer_id, ts,\n  read_text('/etc/hostname') AS x\nFROM orders", 5, "function 'read_text' is not allowed"),
    ("SELECT customer_id, ts, x FROM glob('/etc/*')", 4, "table function 'glob'"),
    ("SELECT customer_id, ts, x FROM query('SELECT 1')", 4, "table function 'query'"),
    ("SELECT customer_id, ts,\n\n  pg_read_file('/etc/hostname') AS x FROM orders", 6, "function 'pg_read_file' is not allowed"),
    ("SELECT customer_id, ts, lo_from_bytea(0, 'x') AS x FROM orders", 4, "function 'lo_from_bytea' is not allowed"),
    ("SELECT customer_id, ts, current_setting('data_directory') AS x FROM orders", 4, "function 'current_setting'"),
    ("SELECT customer_id, ts, x FROM dblink('host=evil', 'SELECT 1') AS t(x int)", 4, "table function 'dblink'"),
    ("SELECT customer_id, ts, getenv('HOME') AS x FROM orders", 4, "function 'getenv'"),
    ("SELECT customer_id, ts, nextval('s') AS x FROM orders", 4, "function 'nextval'"),
    ("SELECT customer_id, ts, set_config('a', 'b', false) AS x FROM orders", 4, "function 'set_config'"),
    ("SELECT customer_id, ts, pg_catalog.pg_read_file('x') AS x FROM orders", 4, "qualified function call"),
    ("SELECT customer_id, ts, usename AS x FROM pg_catalog.pg_user", 4, "qualified table 'pg_catalog.pg_user'"),
    ("SELECT customer_id, ts,\n x FROM orders\nWHERE x IN (SELECT 1 FROM information_schema.tables)", 6,
     "qualified table 'information_schema.tables'"),
    ("SELECT customer_id, ts, 1 AS x FROM orders FOR UPDATE", 4, "locking clause"),
]


@pytest.mark.parametrize(("body", "line", "message"), REFUSED, ids=[m for _, _, m in REFUSED])
def test_functions_and_relations_outside_the_project_are_refused(tmp_path: Path, body: str, line: int, message: str) -> None:
    error = parse_error(tmp_path, body + "\n")
    assert error.startswith(f"features/v.sql:{line}: "), error
    assert message in error, error
    assert "; " in error  # every refusal carries a hint


def test_postgres_statements_inside_a_query_are_refused(tmp_path: Path) -> None:
    header = HEADER + "-- @dialect postgres\n"
    error = parse_error(tmp_path, "WITH gone AS (DELETE FROM orders RETURNING *)\nSELECT customer_id, ts, 1 AS x FROM gone\n", header)
    assert error.startswith("features/v.sql:5: 'DELETE' is not allowed"), error
    error = parse_error(tmp_path, "SELECT customer_id, ts, 1 AS x\nINTO stolen\nFROM orders\n", header)
    assert error.startswith("features/v.sql:6: SELECT ... INTO is not allowed"), error


def test_refusal_reads_function_name_exactly(tmp_path: Path) -> None:
    error = parse_error(tmp_path, "SELECT customer_id, ts, read_text('/etc/passwd') AS x FROM orders\n")
    assert error == ("features/v.sql:4: function 'read_text' is not allowed in a feature file; "
                     "a feature file may call built-in scalar, aggregate and window functions only")


def test_ordinary_feature_sql_is_still_accepted(tmp_path: Path) -> None:
    body = """WITH recent AS (SELECT * FROM orders WHERE ts >= now() - INTERVAL 30 DAYS)
SELECT customer_id, ts,
  COALESCE(SUM(amount) OVER w, 0) AS s,
  date_trunc('day', ts) AS d, epoch_ms(ts) AS e, list_sum([1, 2]) AS l,
  regexp_replace(lower(name), 'a', 'b') AS r, hash(name) AS h, strftime(ts, '%Y') AS y,
  row_number() OVER (PARTITION BY customer_id ORDER BY ts) AS n,
  (SELECT max(g) FROM generate_series(1, 3) AS t(g)) AS g,
  (SELECT count(*) FROM unnest([1, 2]) AS u(v)) AS c,
  (SELECT max(i) FROM range(3) AS r(i)) AS i
FROM recent
WINDOW w AS (PARTITION BY customer_id ORDER BY ts ROWS BETWEEN 3 PRECEDING AND CURRENT ROW)
"""
    root = tiny_project(tmp_path, {"features/v.sql": HEADER + body})
    view = parse_project(load_config(root)).views["v"]
    assert view.references == {"orders": 4}


def test_a_refused_view_changes_nothing_on_the_warehouse(example: Path, tmp_path: Path) -> None:
    import shutil

    project = tmp_path / "proj"
    shutil.copytree(example, project)
    (project / "features/leak.sql").write_text(HEADER.replace("-- @feature_view v", "-- @feature_view leak")
                                               + "SELECT 1 AS customer_id, now() AS ts, *\nFROM read_csv('/etc/passwd')\n")
    result = runner.invoke(app, ["build", "-p", str(project)])
    assert result.exit_code == 1
    assert result.output.strip() == (
        "features/leak.sql:5: table function 'read_csv' is not allowed in a feature file; "
        "read declared sources and views by name; add files as [sources] in fsql.toml"
    )
    assert not (project / ".fsql/warehouse.duckdb").exists()


def test_postgres_build_creates_no_large_object(example: Path, tmp_path: Path, pg_schema: str) -> None:
    import shutil

    import psycopg

    project = tmp_path / "proj"
    shutil.copytree(example, project)
    (project / "features/lo.sql").write_text(
        HEADER.replace("-- @feature_view v", "-- @feature_view lo")
        + "SELECT customer_id, order_ts AS ts, lo_from_bytea(0, 'x') AS oid FROM orders\n"
    )
    with psycopg.connect(POSTGRES_URL) as con:
        before = con.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()
    service = Service.open(project, {"warehouse": {"engine": "postgres", "url": POSTGRES_URL, "schema": pg_schema},
                                     "registry": {"url": "sqlite:///.fsql/registry-pg.db"}})
    with pytest.raises(FeatureFileError, match=r"^features/lo\.sql:4: function 'lo_from_bytea' is not allowed"):
        service.build()
    service.close()
    with psycopg.connect(POSTGRES_URL) as con:
        assert con.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone() == before


# --- 9.2 the DuckDB connection is locked down to the declared sources ---------------------------------


def _source(name: str, path: str) -> SourceConfig:
    return SourceConfig(name=name, path=path, table=None, format="parquet", description=None, line=1)


def test_duckdb_lockdown_allows_declared_sources_only(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "parts").mkdir(parents=True)
    pq.write_table(pa.table({"a": [1, 2]}), data / "orders.parquet")
    pq.write_table(pa.table({"a": [3]}), data / "secret.parquet")  # same folder, not declared
    pq.write_table(pa.table({"a": [4]}), data / "parts" / "p1.parquet")
    engine = DuckDBEngine(tmp_path / "w.duckdb", "fsql", tmp_path,
                          sources=[_source("orders", "data/orders.parquet"), _source("parts", "data/parts/*.parquet")])
    assert engine.locked
    orders = engine.source_relation(_source("orders", "data/orders.parquet")).sql("duckdb")
    parts = engine.source_relation(_source("parts", "data/parts/*.parquet")).sql("duckdb")
    engine.execute("CREATE SCHEMA fsql")
    engine.execute(f"CREATE VIEW fsql.v AS SELECT * FROM {orders} UNION ALL SELECT * FROM {parts}")
    assert sorted(engine.arrow("SELECT a FROM fsql.v").column("a").to_pylist()) == [1, 2, 4]
    spine = engine.register("__fsql_spine", pa.table({"a": [7]}))  # Arrow spines are not files
    assert engine.arrow(f"SELECT a FROM {spine.sql('duckdb')}").column("a").to_pylist() == [7]
    engine.execute("CREATE TABLE fsql.t AS SELECT 1 AS x")  # its own database file stays writable
    for sql in (
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('/etc/hostname')",
        "SELECT * FROM glob('/etc/*')",
        f"SELECT * FROM read_parquet('{data / 'secret.parquet'}')",
        f"SELECT * FROM read_parquet('{data / 'parts' / '..' / 'secret.parquet'}')",
        f"COPY (SELECT 1) TO '{tmp_path / 'out.csv'}'",
        "INSTALL httpfs",
        "SET enable_external_access = true",
    ):
        with pytest.raises(EngineError):
            engine.execute(sql)
    assert not (tmp_path / "out.csv").exists()
    engine.close()
    reopened = DuckDBEngine(tmp_path / "w.duckdb", "fsql", tmp_path, sources=[])
    assert reopened.arrow("SELECT x FROM fsql.t").column("x").to_pylist() == [1]
    reopened.close()


def test_second_engine_on_a_locked_database_in_the_same_process(tmp_path: Path) -> None:
    pq.write_table(pa.table({"a": [1, 2, 3]}), tmp_path / "orders.parquet")
    pq.write_table(pa.table({"a": [9]}), tmp_path / "other.parquet")
    sources = [_source("orders", "orders.parquet")]
    first = DuckDBEngine(tmp_path / "w.duckdb", "fsql", tmp_path, sources=sources)
    # DuckDB shares one database between the connections of a process, settings included
    second = DuckDBEngine(tmp_path / "w.duckdb", "fsql", tmp_path, sources=sources)
    relation = second.source_relation(sources[0]).sql("duckdb")
    assert sum(b.num_rows for b in second.batches(f"SELECT * FROM {relation}", batch_size=2)) == 3
    with pytest.raises(EngineError, match="already open in this process with other sources"):
        DuckDBEngine(tmp_path / "w.duckdb", "fsql", tmp_path, sources=[*sources, _source("other", "other.parquet")])
    first.close()
    second.close()


def test_locked_service_builds_materializes_and_serves(example: Path, tmp_path: Path) -> None:
    import shutil

    project = tmp_path / "proj"
    shutil.copytree(example, project)
    service = Service.open(project)
    service.engine.lock_down(list(service.config.sources.values()))
    assert service.build().built
    service.materialize()
    labels = pq.read_table(project / "data" / "churn_labels.parquet")
    from_arrow = service.training_set("churn", spine=labels)  # a registered Arrow spine
    from_sql = service.training_set("churn", spine="SELECT * FROM churn_labels")
    assert from_arrow.num_rows == from_sql.num_rows == labels.num_rows > 0
    with pytest.raises(EngineError, match="file system operations are disabled"):
        service.engine.arrow("SELECT * FROM read_csv('/etc/passwd')")
    service.close()


# --- 9.3 secrets are redacted everywhere ------------------------------------------------------------

REDACTIONS = [
    ("postgresql://u:hunter2@h:5432/db", "postgresql://u:***@h:5432/db"),
    ("postgresql://u@h/db?password=hunter2&sslmode=require", "postgresql://u@h/db?password=***&sslmode=require"),
    ("postgresql+psycopg://u:p%40ss@h/db?sslpassword=hunter2&PASSWORD=x", "postgresql+psycopg://u:***@h/db?sslpassword=***&PASSWORD=***"),
    ("postgresql://u:p@ss@h/db", "postgresql://u:***@h/db"),
    ("redis://:hunter2@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
    ("redis://127.0.0.1:6379/0?password=hunter2", "redis://127.0.0.1:6379/0?password=***"),
    ("rediss://default:hunter2@h:6380/1?token=t0k&ssl_cert_reqs=none", "rediss://default:***@h:6380/1?token=***&ssl_cert_reqs=none"),
    ("sqlite:///.fsql/registry.db", "sqlite:///.fsql/registry.db"),
    ("sqlite:///reg.db?access_token=abc&secret=s", "sqlite:///reg.db?access_token=***&secret=***"),
    ("host=h dbname=d password=hunter2 user=u", "host=h dbname=d password=*** user=u"),
    ("host=h password='two words' user=u", "host=h password=*** user=u"),
    ("postgresql://u:hunter2@[::1/db?token=x", "postgresql://u:***@[::1/db?token=***"),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
]


@pytest.mark.parametrize(("url", "expected"), REDACTIONS)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


@pytest.mark.parametrize("url", [
    "postgresql://postgres:hunter2@127.0.0.1:1/test?sslpassword=hunter3",
    "postgresql://postgres@127.0.0.1:1/test?password=hunter2&connect_timeout=2",
])
def test_connection_errors_never_show_secrets(url: str, tmp_path: Path) -> None:
    from fsql.engines.postgres import PostgresEngine
    from fsql.registry import Registry

    with pytest.raises(EngineError) as engine_error:
        PostgresEngine(url, "s", tmp_path)
    with pytest.raises(RegistryError) as registry_error:
        Registry.open(url)
    for error in (engine_error.value, registry_error.value):
        text = f"{error} {error.to_dict()}"
        assert "hunter" not in text and "127.0.0.1:1" in text, text


@pytest.mark.parametrize("url", ["redis://:hunter2@127.0.0.1:1/0", "redis://127.0.0.1:1/0?password=hunter2"])
def test_redis_errors_never_show_secrets(url: str) -> None:
    from fsql.online.redis import RedisOnlineStore

    with pytest.raises(OnlineStoreError) as info:
        store = RedisOnlineStore(url, prefix="x")
        store.client.ping()
        raise AssertionError("port 1 answered")
    assert "hunter" not in str(info.value) and "127.0.0.1:1" in str(info.value)


def test_cli_json_errors_never_show_secrets(example: Path, tmp_path: Path) -> None:
    import shutil

    project = tmp_path / "proj"
    shutil.copytree(example, project)
    toml = (project / "fsql.toml").read_text()
    toml = re.sub(r'url = "sqlite:///\.fsql/registry\.db"',
                  'url = "postgresql://postgres@127.0.0.1:1/test?password=hunter2"', toml)
    (project / "fsql.toml").write_text(toml)
    for args in (["plan"], ["build"], ["--json", "build"], ["build", "--json"]):
        result = runner.invoke(app, [*args, "-p", str(project)])
        if result.exit_code == 2:  # this option spelling does not exist
            continue
        assert result.exit_code == 1, result.output
        assert "hunter2" not in result.output and "password=***" in result.output, result.output


def test_allowlists_hold_no_function_that_reads_files_or_changes_state() -> None:
    from fsql.parsing.allowlist import ALLOWED_FUNCTIONS, TABLE_FUNCTIONS

    dangerous = {
        "read_csv", "read_csv_auto", "read_parquet", "parquet_scan", "read_json", "read_json_auto", "read_text",
        "read_blob", "read_ndjson", "glob", "query", "query_table", "sniff_csv", "parquet_metadata", "getenv",
        "getvariable", "current_setting", "set_config", "nextval", "setval", "currval", "setseed", "pg_read_file",
        "pg_read_binary_file", "pg_ls_dir", "pg_stat_file", "lo_import", "lo_export", "lo_from_bytea", "lo_get",
        "dblink", "dblink_exec", "query_to_xml", "pg_sleep", "sleep_ms", "write_log", "json_execute_serialized_sql",
        "json_deserialize_sql", "pg_terminate_backend", "pg_advisory_lock", "txid_current", "duckdb_settings",
    }
    assert not dangerous & (ALLOWED_FUNCTIONS | TABLE_FUNCTIONS)
