"""Warehouse engines: run compiled SQL, Arrow in and out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fsql.config import DuckDBWarehouse, PostgresWarehouse, SourceConfig, SparkWarehouse, Warehouse
from fsql.engines.base import BUILD_LOCK, Engine, HistoryInputs, HistoryRefresh, history_name, view_table


def open_engine(warehouse: Warehouse, root: Path, *, read_only: bool = False,
                sources: Sequence[SourceConfig] | None = None) -> Engine:
    """The warehouse engine; ``read_only`` where the engine has such a mode (a DuckDB file).
    ``sources``: where the engine can restrict file access (DuckDB), only these files are readable."""
    if isinstance(warehouse, PostgresWarehouse):
        from fsql.engines.postgres import PostgresEngine

        return PostgresEngine(warehouse.url, warehouse.schema, root, history=warehouse.history)
    if isinstance(warehouse, SparkWarehouse):
        from fsql.engines.spark import SparkEngine

        return SparkEngine(warehouse, root)
    assert isinstance(warehouse, DuckDBWarehouse)
    from fsql.engines.duckdb import DuckDBEngine

    path = warehouse.path if warehouse.path == ":memory:" else str(root / warehouse.path)
    return DuckDBEngine(path, warehouse.schema, root, read_only=read_only, sources=sources)


__all__ = ["BUILD_LOCK", "Engine", "HistoryInputs", "HistoryRefresh", "history_name", "open_engine", "view_table"]
