"""The Spark engine through Spark Connect: a local Connect server (the one shipped in pyspark) on a spare
loopback port, and the example project built, trained and materialized through it with the same rows as
on DuckDB. The server is a subprocess of this module and is stopped with it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from projects import example_project
from redis_server import free_port

import fsql
from fsql.engines import spark as spark_engine

STARTUP_SECONDS = 180


def _connect_server_command(port: int) -> list[str]:
    import pyspark

    spark_home = Path(pyspark.__file__).parent
    return [
        str(spark_home / "bin" / "spark-submit"),
        "--class", "org.apache.spark.sql.connect.service.SparkConnectServer",
        "--master", "local[2]",
        "--conf", f"spark.connect.grpc.binding.port={port}",
        "--conf", "spark.connect.grpc.binding.address=127.0.0.1",
        "--conf", "spark.driver.host=127.0.0.1",
        "--conf", "spark.driver.bindAddress=127.0.0.1",
        "--conf", "spark.ui.enabled=false",
        "--conf", "spark.sql.shuffle.partitions=4",
    ]


def _wait_listening(port: int, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the Spark Connect server exited: {log.read_text()[-2000:]}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise RuntimeError(f"the Spark Connect server did not listen within {STARTUP_SECONDS} s")


@pytest.fixture(scope="module")
def connect_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if shutil.which("java") is None:
        pytest.fail("Spark needs Java 17 (.ci/run installs a headless JRE)")
    port = free_port()
    # pyspark records Connect mode in the process environment; a later local session must not inherit it.
    spark_environment = {k: v for k, v in os.environ.items() if k.startswith("SPARK")}
    log = tmp_path_factory.mktemp("spark-connect") / "server.log"
    # The server runs Python UDFs (materialization's mapInArrow) with this interpreter, which has fsql.
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_NO_DAEMONIZE": "1"}
    with log.open("wb") as out:
        server = subprocess.Popen(_connect_server_command(port), stdout=out, stderr=subprocess.STDOUT, env=env,
                                  start_new_session=True)
    try:
        _wait_listening(port, server, log)
        yield f"sc://127.0.0.1:{port}"
    finally:
        from pyspark.sql import SparkSession

        active = SparkSession.getActiveSession()
        if active is not None and "connect" in type(active).__module__:
            active.stop()
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        spark_engine._REPLAYED.clear()
        for key in [k for k in os.environ if k.startswith("SPARK") and k not in spark_environment]:
            del os.environ[key]
        os.environ.update(spark_environment)


def test_example_through_spark_connect_equals_duckdb(connect_url: str, tmp_path: Path) -> None:
    root = example_project(tmp_path / "project", tmp_path)
    remote = fsql.Store(root, warehouse={"engine": "spark", "remote": connect_url},
                        online={"path": ".fsql/online-connect.db"})
    local = fsql.Store(root, online={"path": ".fsql/online-duck.db"})
    assert remote.build().built
    local.build()

    got, want = remote.training_set("churn"), local.training_set("churn")
    assert got.height > 1000
    assert got.equals(want)

    runs = remote.materialize(["customer_spend", "customer_profile"])
    assert {r.outcome for r in runs} == {"success"}
    assert all(r.rows > 0 for r in runs)
    local.materialize(["customer_spend", "customer_profile"])
    keys = {"customer_id": list(range(1, 60))}
    features = ["customer_spend.*", "customer_profile.*"]
    assert remote.online(features, keys).equals(local.online(features, keys))
