"""Warehouse engines: run compiled SQL, Arrow in and out."""

from __future__ import annotations

from pathlib import Path

from fsql.config import DuckDBWarehouse, PostgresWarehouse, Warehouse
from fsql.engines.base import Engine, view_table


def open_engine(warehouse: Warehouse, root: Path) -> Engine:
    if isinstance(warehouse, PostgresWarehouse):
        from fsql.engines.postgres import PostgresEngine

        return PostgresEngine(warehouse.url, warehouse.schema, root)
    assert isinstance(warehouse, DuckDBWarehouse)
    from fsql.engines.duckdb import DuckDBEngine

    path = warehouse.path if warehouse.path == ":memory:" else str(root / warehouse.path)
    return DuckDBEngine(path, warehouse.schema, root)


__all__ = ["Engine", "open_engine", "view_table"]
