"""Helpers to make throwaway copies of the example project for tests."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import duckdb

from fsql.sample import SEED_ANCHOR, scaffold

_TEMPLATE: Path | None = None


def example_project(target: Path, cache: Path) -> Path:
    """A fresh copy of the example project (the sample data is generated once per session).

    The data ends on the fixed ``SEED_ANCHOR``, so point-in-time answers do not depend on today's date.
    """
    global _TEMPLATE
    if _TEMPLATE is None or not _TEMPLATE.exists():
        _TEMPLATE = cache / "example-template"
        if not _TEMPLATE.exists():
            scaffold(_TEMPLATE, anchor=SEED_ANCHOR)
    shutil.copytree(_TEMPLATE, target, ignore=shutil.ignore_patterns(".fsql"))
    return target


def registry_dump(project: Path) -> dict[str, list[tuple]]:
    """Every row of every registry table (SQLite registry), for before/after comparisons."""
    path = project / ".fsql" / "registry.db"
    if not path.exists():
        return {}
    con = sqlite3.connect(path)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {t: sorted(map(tuple, con.execute(f'SELECT * FROM "{t}"').fetchall()), key=repr) for t in tables}
    finally:
        con.close()


def warehouse_dump(project: Path) -> dict[str, str]:
    """Every relation in the DuckDB warehouse with its definition."""
    path = project / ".fsql" / "warehouse.duckdb"
    if not path.exists():
        return {}
    con = duckdb.connect(str(path), read_only=True)
    try:
        views = con.execute("SELECT schema_name || '.' || view_name, sql FROM duckdb_views() WHERE NOT internal").fetchall()
        tables = con.execute("SELECT schema_name || '.' || table_name, sql FROM duckdb_tables()").fetchall()
        return dict(views + tables)
    finally:
        con.close()
