"""The Spark engine in local mode: the example project builds, produces the churn training set and
materializes with the same rows as on DuckDB; views survive a new session; a failed build changes no
view; training sets are written as Parquet by Spark. One Spark session serves the whole module."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from projects import example_project

import fsql
from fsql.config import SparkWarehouse, load_config
from fsql.engines import spark as spark_engine
from fsql.errors import ConfigError, FsqlError

SPARK = {"engine": "spark"}


@pytest.fixture(scope="module")
def spark() -> Iterator[object]:
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]").appName("fsql-tests")
        .config("spark.sql.session.timeZone", "UTC").config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false").config("spark.sql.shuffle.partitions", "4")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
    spark_engine._REPLAYED.clear()


@pytest.fixture(scope="module")
def projects(spark: object, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, fsql.Store, fsql.Store]:
    """The example project built on Spark and on DuckDB, each materialized into its own SQLite file."""
    tmp = tmp_path_factory.mktemp("spark-example")
    root = example_project(tmp / "project", tmp_path_factory.getbasetemp())
    on_spark = fsql.Store(root, warehouse=SPARK, online={"path": ".fsql/online-spark.db"})
    on_duck = fsql.Store(root, online={"path": ".fsql/online-duck.db"})
    assert on_spark.build().built
    on_duck.build()
    return root, on_spark, on_duck


def test_example_training_set_equals_duckdb(projects: tuple[Path, fsql.Store, fsql.Store]) -> None:
    _, on_spark, on_duck = projects
    got, want = on_spark.training_set("churn"), on_duck.training_set("churn")
    assert got.height > 1000
    assert got.schema == want.schema
    assert got.equals(want)


def test_dataframe_spine_keeps_order_and_types(projects: tuple[Path, fsql.Store, fsql.Store]) -> None:
    _, on_spark, on_duck = projects
    spine = on_duck.training_set("churn").select("customer_id", "label_ts").reverse().head(300)
    features = ["customer_spend.spend_30d", "customer_profile.country"]
    got = on_spark.training_set(spine=spine, features=features, timestamp="label_ts")
    want = on_duck.training_set(spine=spine, features=features, timestamp="label_ts")
    assert got.equals(want)
    assert got["customer_id"].to_list() == spine["customer_id"].to_list()


def test_query_reads_the_generated_views(projects: tuple[Path, fsql.Store, fsql.Store]) -> None:
    _, on_spark, on_duck = projects
    sql = "SELECT customer_id, spend_30d FROM customer_spend__latest ORDER BY customer_id"
    assert on_spark.query(sql).equals(on_duck.query(sql))


def _online_rows(path: Path) -> dict[str, list[tuple]]:
    con = sqlite3.connect(path)
    try:
        names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        # completion markers name the instant their run was as of, which differs between the two runs
        names = [n for n in names if "%done@" not in n]
        return {n: sorted(con.execute(f'SELECT * FROM "{n}"').fetchall(), key=repr) for n in names}
    finally:
        con.close()


def test_materialize_from_executors_equals_duckdb(projects: tuple[Path, fsql.Store, fsql.Store]) -> None:
    root, on_spark, on_duck = projects
    spark_runs = {r.view: r.rows for r in on_spark.materialize()}
    duck_runs = {r.view: r.rows for r in on_duck.materialize()}
    assert spark_runs == duck_runs and sum(spark_runs.values()) > 1000
    got, want = _online_rows(root / ".fsql/online-spark.db"), _online_rows(root / ".fsql/online-duck.db")
    assert got == want and any(got.values())
    # watermarks moved: nothing new to write, and the run records say so
    assert all(r.rows == 0 and r.outcome == "success" for r in on_spark.materialize())
    assert on_spark.runs("customer_spend")[0].outcome == "success"
    online = on_spark.online(["customer_spend.spend_30d"], {"customer_id": [1, 2]})
    assert online["spend_30d__status"].to_list() != ["not_materialized", "not_materialized"]


def test_views_are_replayed_into_a_new_session(projects: tuple[Path, fsql.Store, fsql.Store], spark: object) -> None:
    root, on_spark, _ = projects
    catalog = json.loads((root / ".fsql/spark/fsql.json").read_text())
    assert {"customer_spend", "customer_spend__latest", "churn"} <= {name for name, _, _ in catalog["relations"]}
    before = on_spark.query("SELECT count(*) AS n FROM churn")
    # A new process starts with an empty in-memory catalog: drop everything, as if it were one.
    spark.sql("DROP DATABASE fsql CASCADE")  # type: ignore[attr-defined]
    spark_engine._REPLAYED.clear()
    reopened = fsql.Store(root, warehouse=SPARK)
    try:
        assert reopened.query("SELECT count(*) AS n FROM churn").equals(before)
        # and a user's own session can attach them, to query with Spark SQL
        spark.sql("DROP DATABASE fsql CASCADE")  # type: ignore[attr-defined]
        spark_engine._REPLAYED.clear()
        spark_engine.attach(spark, root)
        assert spark.sql("SELECT count(*) FROM fsql.churn").collect()[0][0] == before["n"][0]  # type: ignore[attr-defined]
    finally:
        reopened.close()


def test_failed_build_leaves_the_views_as_they_were(projects: tuple[Path, fsql.Store, fsql.Store], spark: object) -> None:
    root, on_spark, _ = projects
    catalog = (root / ".fsql/spark/fsql.json").read_text()
    spend = root / "features/customer_spend.sql"
    original = spend.read_text()
    columns_before = [c.name for c in spark.catalog.listColumns("fsql.customer_spend")]  # type: ignore[attr-defined]
    # customer_spend changes (a new feature) and a new view fails on the engine after it was replaced
    spend.write_text(original.replace("AS spend_30d", "AS spend_30d,\n    1 AS extra_feature", 1))
    broken = root / "features/zz_broken.sql"
    broken.write_text(
        "-- @feature_view zz_broken\n-- @entity customer\n-- @timestamp order_ts\nSELECT customer_id, order_ts, no_such_column AS f FROM orders\n"
    )
    try:
        with pytest.raises(FsqlError):
            on_spark.build()
    finally:
        spend.write_text(original)
        broken.unlink()
    assert (root / ".fsql/spark/fsql.json").read_text() == catalog
    assert [c.name for c in spark.catalog.listColumns("fsql.customer_spend")] == columns_before  # type: ignore[attr-defined]
    assert not spark.catalog.tableExists("fsql.zz_broken")  # type: ignore[attr-defined]


def test_engine_transaction_undoes_its_ddl(projects: tuple[Path, fsql.Store, fsql.Store], spark: object) -> None:
    root, _, _ = projects
    engine = spark_engine.attach(spark, root)
    before = engine.arrow("SELECT * FROM fsql.customer_profile ORDER BY customer_id LIMIT 5")
    with pytest.raises(RuntimeError), engine.transaction():
        engine.replace_view("customer_profile", "SELECT 1 AS customer_id")
        engine.replace_view("scratch_view", "SELECT 2 AS x")
        engine.drop_relation("customer_value")
        raise RuntimeError("the build failed here")
    assert engine.arrow("SELECT * FROM fsql.customer_profile ORDER BY customer_id LIMIT 5").equals(before)
    relations = engine.list_relations("fsql")
    assert "scratch_view" not in relations and "customer_value" in relations


def test_training_set_written_by_spark(projects: tuple[Path, fsql.Store, fsql.Store], tmp_path: Path) -> None:
    _, on_spark, on_duck = projects
    written = on_spark.write_training_set(tmp_path / "churn", "churn")
    files = sorted((tmp_path / "churn").glob("*.parquet"))
    assert written.rows == on_duck.training_set("churn").height and written.files == len(files) >= 1
    # part files are numbered in the set's order
    assert pl.read_parquet(files).equals(on_duck.training_set("churn"))
    with pytest.raises(FsqlError, match="unknown file type"):
        on_spark.write_training_set(tmp_path / "churn.json", "churn")


def test_spark_config(tmp_path: Path) -> None:
    (tmp_path / "fsql.toml").write_text(
        '[project]\nname = "p"\n[warehouse]\nengine = "spark"\nmaster = "local[4]"\n'
        'conf = { "spark.sql.shuffle.partitions" = 8, "spark.sql.adaptive.enabled" = true }\n'
    )
    warehouse = load_config(tmp_path).warehouse
    assert warehouse == SparkWarehouse(master="local[4]", conf=(("spark.sql.adaptive.enabled", "true"),
                                                                ("spark.sql.shuffle.partitions", "8")))
    assert load_config(tmp_path, {"warehouse": {"master": None, "remote": "sc://127.0.0.1:15002"}}).warehouse.remote \
        == "sc://127.0.0.1:15002"
    with pytest.raises(ConfigError, match="master or remote, not both"):
        load_config(tmp_path, {"warehouse": {"remote": "sc://127.0.0.1:15002"}})
    with pytest.raises(ConfigError, match="Spark Connect URL"):
        load_config(tmp_path, {"warehouse": {"master": None, "remote": "http://x"}})
    with pytest.raises(ConfigError, match="conf must be a table"):
        load_config(tmp_path, {"warehouse": {"conf": "x"}})
