"""Online stores: Redis and SQLite behind one protocol (``OnlineStore`` in ``base``: write_batch, read,
markers, generations for full recomputes, drop, close).

from fsql.online import open_online_store, OnlineTable
store = open_online_store("redis", url="redis://127.0.0.1:6379/0", prefix="fsql")
store = open_online_store("redis", url="redis://10.0.0.1:7000,redis://10.0.0.2:7000", cluster=True)
store = open_online_store("sqlite", path=".fsql/online.db")
"""

from __future__ import annotations

from fsql.errors import OnlineStoreError, did_you_mean
from fsql.online.base import CREATED, EVENT_TS, GenerationNotBuilding, OnlineRow, OnlineStore, OnlineTable

__all__ = ["CREATED", "EVENT_TS", "GenerationNotBuilding", "OnlineRow", "OnlineStore", "OnlineTable", "open_online_store"]

KINDS = ("redis", "sqlite")


def open_online_store(
    kind: str, *, url: str | None = None, path: str | None = None, prefix: str = "fsql", cluster: bool = False
) -> OnlineStore:
    """Open an online store.

    ``kind="redis"``: ``url`` (default ``$FSQL_REDIS_URL``, else ``redis://127.0.0.1:6379/0``); the
    server is pinged now, so an unreachable server fails here with ``OnlineStoreError``. ``cluster=True``:
    a Redis Cluster; ``url`` names one or more of its nodes, comma-separated.
    ``kind="sqlite"``: ``path`` of the database file (default ``.fsql/online.db``, created if missing;
    ``":memory:"`` for a private in-memory store). ``prefix`` namespaces keys / table names.
    """
    if kind == "redis" and cluster:
        from fsql.online.redis_cluster import RedisClusterOnlineStore

        return RedisClusterOnlineStore(url, prefix=prefix)
    if kind == "redis":
        from fsql.online.redis import RedisOnlineStore

        return RedisOnlineStore(url, prefix=prefix)
    if kind == "sqlite":
        from fsql.online.sqlite import SqliteOnlineStore

        return SqliteOnlineStore(path, prefix=prefix)
    raise OnlineStoreError(
        f"unknown online store {kind!r}; expected one of: {', '.join(KINDS)}", hint=did_you_mean(kind, KINDS)
    )
