"""Shared fixtures. Tests talk to real PostgreSQL and Redis; each test gets its own schema / key prefix."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import duckdb
import pytest

POSTGRES_URL = os.environ.get("FSQL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("FSQL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


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
