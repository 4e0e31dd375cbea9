"""Shared fixtures. Tests talk to real PostgreSQL and Redis; each test gets its own schema / key prefix.

Hypothesis: with ``CI=true`` the ``ci`` profile is loaded: examples are derandomized (a fixed
sequence derived from each test) and a failure prints its reproduction blob, so a red CI run fails
the same way on a laptop (``HYPOTHESIS_PROFILE=ci python -m pytest ...``). ``HYPOTHESIS_PROFILE``
picks a profile explicitly.

Time zone: the suite must pass whatever the process time zone is (sessions run in UTC). Run it
under another zone with ``TZ=America/New_York python -m pytest -q``; the report header shows the
zone the run used.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from typing import Any

import duckdb
import pytest
from hypothesis import settings

POSTGRES_URL = os.environ.get("FSQL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("FSQL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() == "true"
HYPOTHESIS_PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci" if IN_CI else "dev")

settings.register_profile("ci", derandomize=True, print_blob=True, database=None)
settings.register_profile("dev", print_blob=True)
settings.load_profile(HYPOTHESIS_PROFILE)


def pytest_report_header() -> list[str]:
    zone = "/".join(time.tzname)
    return [f"fsql: process time zone {zone} (TZ={os.environ.get('TZ', 'unset')}), "
            f"hypothesis profile {HYPOTHESIS_PROFILE}"]


def require_binary(name: str) -> str:
    """The path of an executable a test needs. Missing: skipped on a laptop, but a failure in CI,
    where a silent skip would hide every test that needs it."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not on PATH"
        if IN_CI:
            pytest.fail(f"{message}; CI must install it (these tests may not be skipped in CI)", pytrace=False)
        pytest.skip(message)
    return path


def unique_name(prefix: str = "t") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def duck() -> Iterator[duckdb.DuckDBPyConnection]:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    yield con
    con.close()


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh PostgreSQL schema, dropped after the test."""
    import psycopg

    schema = unique_name("fsqltest")
    with psycopg.connect(POSTGRES_URL, autocommit=True) as con:
        con.execute(f'CREATE SCHEMA "{schema}"')
    yield schema
    with psycopg.connect(POSTGRES_URL, autocommit=True) as con:
        con.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def pg(pg_schema: str):
    """A psycopg connection whose search_path is a fresh schema, session time zone UTC."""
    import psycopg

    con = psycopg.connect(POSTGRES_URL, autocommit=True)
    con.execute(f'SET search_path TO "{pg_schema}"')
    con.execute("SET TIME ZONE 'UTC'")
    yield con
    con.close()


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix private to the test; its keys are deleted afterwards."""
    import redis

    prefix = unique_name("fsqltest")
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A private Redis Cluster of three masters on free loopback ports, shared by a module's tests
    (each uses its own key prefix), stopped at the end of the module."""
    from redis_server import redis_cluster as start_cluster

    yield from start_cluster(tmp_path_factory.mktemp("redis_cluster"))
