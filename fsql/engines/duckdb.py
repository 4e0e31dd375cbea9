"""DuckDB: the embedded default warehouse. File sources are scanned in place.

Once the declared sources are known the connection is locked down (``lock_down``): DuckDB's own
``enable_external_access = false`` with only the source files (and the folders of glob sources)
allowed, so no query, whatever slipped past the feature-file checks, can read or write another file,
load an extension or reach the network. The setting cannot be turned back on for the connection.

The generated views read a relative source path from the project folder, which every connection
names in the variable ``fsql_root``: a copied or moved project (warehouse file included) reads its own
files, not the original's. DuckDB's ``file_search_path`` would not do, since it looks in the working
directory first. A DuckDB console without the variable reads the paths from its working directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from sqlglot import exp

from fsql.config import SourceConfig
from fsql.definitions import Column
from fsql.engines.base import (
    HistoryInputs,
    HistoryRefresh,
    SchemaDDL,
    columns_of,
    missing_source,
    write_batches_parquet,
)
from fsql.errors import EngineError, EngineUnavailableError


class DuckDBEngine(SchemaDDL):
    dialect = "duckdb"
    # DuckDB's ASOF join needs no index: training sets read the live views.
    persists_history = False
    reads_files_in_place = True

    def __init__(self, path: str | Path | None, schema: str, root: Path, *, read_only: bool = False,
                 sources: Sequence[SourceConfig] | None = None) -> None:
        self.schema = schema
        self.root = root
        self.path = str(path) if path else ":memory:"
        in_file = self.path != ":memory:"
        # Read-only connections of several processes coexist (a notebook and a terminal); a file that
        # does not exist yet can only be created by a writer.
        read_only = read_only and in_file and Path(self.path).exists()
        if in_file and not read_only:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.con = duckdb.connect(self.path, read_only=read_only)
        except duckdb.Error as e:
            raise EngineUnavailableError(
                f"cannot open the DuckDB warehouse {path}: {str(e).splitlines()[0]}",
                hint="another process is writing to it (a build?); retry when it is done",
            ) from None
        self.con.execute("SET TimeZone = 'UTC'")
        # A parameter, never a literal: the folder's name is user data.
        self.con.execute(f"SET VARIABLE {ROOT_VARIABLE} = ?", [str(root)])
        self._depth = 0
        self.locked = False
        if sources is not None:
            self.lock_down(sources)

    def lock_down(self, sources: Sequence[SourceConfig]) -> None:
        """Allow file access only to the declared file sources, for the rest of the connection."""
        if self.locked:
            return
        files, folders = source_allowlist(sources, self.root)
        try:
            # The settings belong to the database, which DuckDB shares between the connections of one
            # process: a second engine on the same file finds it locked already.
            if not self._setting("enable_external_access"):
                self._check_locked_for(files, folders)
                self.locked = True
                return
            self.con.execute("SET allowed_paths = ?", [files])
            self.con.execute("SET allowed_directories = ?", [folders])
            self.con.execute("SET enable_external_access = false")
        except duckdb.Error as e:
            raise EngineError(
                f"cannot restrict DuckDB's file access: {str(e).splitlines()[0]}",
                hint="fsql needs DuckDB 1.2 or newer (allowed_paths); upgrade duckdb",
            ) from None
        self.locked = True

    def _setting(self, name: str) -> Any:
        # fetchall, not fetchone: DuckDB refuses other work on a connection with an unfinished result
        return self.con.execute("SELECT current_setting(?)", [name]).fetchall()[0][0]

    def _check_locked_for(self, files: list[str], folders: list[str]) -> None:
        allowed_files = set(self._setting("allowed_paths") or [])
        allowed_folders = list(self._setting("allowed_directories") or [])
        missing = [f for f in files if f not in allowed_files and not any(f.startswith(d) for d in allowed_folders)]
        missing += [d for d in folders if not any(d.startswith(a) for a in allowed_folders)]
        if missing:
            raise EngineError(
                f"the DuckDB warehouse is already open in this process with other sources ({', '.join(missing)} not allowed)",
                hint="close the other Store or Service on this warehouse and open it again",
            )

    @contextmanager
    def transaction(self) -> Iterator[None]:
        if self._depth:
            yield
            return
        self.con.execute("BEGIN TRANSACTION")
        self._depth = 1
        try:
            yield
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        else:
            self.con.execute("COMMIT")
        finally:
            self._depth = 0

    def _run(self, sql: str, params: Sequence[Any] | None = None) -> duckdb.DuckDBPyConnection:
        try:
            return self.con.execute(sql, list(params) if params else None)
        except duckdb.Error as e:
            raise _duckdb_error(e) from e

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None:
        self._run(sql, params)

    def _relation(self, sql: str, params: Sequence[Any] | None) -> duckdb.DuckDBPyRelation:
        # A relation (con.sql) streams Arrow without the extra copy a DB-API result makes.
        try:
            return self.con.sql(sql, params=list(params) if params else None)
        except duckdb.Error as e:
            raise _duckdb_error(e) from e

    def arrow(self, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
        # Materialized by DuckDB's own threads: reading a stream batch by batch cost ~5 ms more per 100k rows.
        relation = self._relation(sql, params)
        try:
            return relation.to_arrow_table() if hasattr(relation, "to_arrow_table") else relation.arrow()
        except duckdb.Error as e:
            raise _duckdb_error(e) from e

    def batch_reader(self, sql: str, params: Sequence[Any] | None = None, batch_size: int = 1_000_000) -> pa.RecordBatchReader:
        relation = self._relation(sql, params)
        try:
            if hasattr(relation, "to_arrow_reader"):
                return relation.to_arrow_reader(batch_size)
            return relation.record_batch(batch_size)  # DuckDB < 1.4
        except duckdb.Error as e:
            raise _duckdb_error(e) from e

    def batches(self, sql: str, params: Sequence[Any] | None = None, batch_size: int = 50_000) -> Iterator[pa.RecordBatch]:
        reader = self.batch_reader(sql, params, batch_size)
        try:
            yield from reader
        except duckdb.Error as e:
            raise _duckdb_error(e) from e

    def describe(self, sql: str) -> list[Column]:
        return columns_of(self.arrow(f"SELECT * FROM ({sql}) AS __fsql_describe LIMIT 0").schema)

    def source_relation(self, source: SourceConfig) -> exp.Expression:
        if source.table:
            return exp.to_table(source.table, dialect="duckdb")
        reader = exp.ReadParquet if source.format == "parquet" else exp.ReadCSV
        return exp.Table(this=reader(expressions=[source_path_expression(source)]))

    def prepare_sources(self, sources: Sequence[SourceConfig]) -> list[str]:
        for source in sources:
            if source.path and not any(ch in source.path for ch in "*?[") and not (self.root / source.path).exists():
                raise missing_source(source)
        return []

    def stale_sources(self, sources: Sequence[SourceConfig]) -> list[str]:
        return []  # DuckDB scans file sources in place: nothing is ever stale

    def register(self, name: str, data: pa.Table) -> exp.Table:
        self.con.register(name, data)
        return exp.table_(name, quoted=True)

    def unregister(self, name: str) -> None:
        self.con.unregister(name)

    def relation_exists(self, schema: str, name: str) -> bool:
        rows = self._run(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = ? AND table_name = ?", [schema, name]
        ).fetchall()
        return bool(rows)

    def list_relations(self, schema: str) -> dict[str, str]:
        rows = self._run(
            "SELECT table_name, table_type FROM information_schema.tables WHERE table_schema = ?", [schema]
        ).fetchall()
        return {name: kind for name, kind in rows}

    def replace_view(self, name: str, body: str) -> None:
        self.execute(f"CREATE OR REPLACE VIEW {self._qualified(name)} AS {body}")

    def refresh_history(self, name: str, index: exp.Expression | None, *, recreate: bool = False,
                        full: bool = False, inputs: HistoryInputs | None = None) -> HistoryRefresh:
        raise EngineError("DuckDB keeps no persisted view history")  # callers check persists_history

    def write_parquet(self, sql: str, directory: Path, params: Sequence[Any] | None = None) -> int:
        """Stream the rows into numbered Parquet files in the query's order, one batch in memory at a
        time. Written from Python rather than with COPY ... TO, because the connection may not touch
        files other than the declared sources (see ``lock_down``)."""
        return write_batches_parquet(self.batches(sql, params, batch_size=100_000), directory)

    def close(self) -> None:
        self.con.close()


def _duckdb_error(error: duckdb.Error) -> EngineError:
    message = f"DuckDB: {str(error).splitlines()[0]}"
    if isinstance(error, duckdb.PermissionException):
        # The lock-down refused a file: a view built elsewhere (an older fsql stored absolute paths),
        # or SQL reaching past the declared sources.
        return EngineError(message, hint="only declared sources can be read; if the project was copied or "
                                         "moved, run `fsql build` to recreate its views")
    return EngineError(message)


_GLOB = "*?["
ROOT_VARIABLE = "fsql_root"


def source_path_expression(source: SourceConfig) -> exp.Expression:
    """The path a view reads: an absolute path as written, a relative one under the project folder of
    the connection that runs the view (``fsql_root``, or the working directory in a bare console)."""
    assert source.path is not None
    path = Path(source.path)
    if path.is_absolute():
        return exp.Literal.string(str(path))
    root = exp.func("coalesce", exp.func("getvariable", exp.Literal.string(ROOT_VARIABLE)), exp.Literal.string("."))
    return exp.DPipe(this=root, expression=exp.Literal.string("/" + path.as_posix()), safe=True)


def source_path(source: SourceConfig, root: Path) -> Path:
    """A file source's absolute path (globs kept), as the generated views read it."""
    path = Path(source.path)
    return path if path.is_absolute() else root / path


def source_allowlist(sources: Sequence[SourceConfig], root: Path) -> tuple[list[str], list[str]]:
    """(files, folders) DuckDB may read: each plain source file, and for a glob the folder before its
    first wildcard (with a trailing separator, since DuckDB matches folders by prefix)."""
    files: list[str] = []
    folders: list[str] = []
    for source in sources:
        if not source.path:
            continue
        path = str(source_path(source, root))
        if any(ch in path for ch in _GLOB):
            fixed = path[: min(path.index(ch) for ch in _GLOB if ch in path)]
            folder = fixed[: fixed.rfind(os.sep) + 1] or os.sep
            folders.append(folder)
        else:
            files.append(path)
    return sorted(set(files)), sorted(set(folders))
