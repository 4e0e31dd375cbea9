"""What the orchestration layer needs from a warehouse engine. Engines run SQL; they never build PIT logic."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import pyarrow as pa
from sqlglot import exp

from fsql.config import CONFIG_FILE, SourceConfig
from fsql.definitions import Column
from fsql.errors import ConfigError

# Column types are recorded in DuckDB's spelling whatever the engine, so that the same feature files
# give the same registry on every engine.
_ARROW_TO_SQL = [
    (pa.types.is_boolean, "BOOLEAN"),
    (pa.types.is_int8, "TINYINT"),
    (pa.types.is_int16, "SMALLINT"),
    (pa.types.is_int32, "INTEGER"),
    (pa.types.is_int64, "BIGINT"),
    (pa.types.is_uint8, "UTINYINT"),
    (pa.types.is_uint16, "USMALLINT"),
    (pa.types.is_uint32, "UINTEGER"),
    (pa.types.is_uint64, "UBIGINT"),
    (pa.types.is_float32, "FLOAT"),
    (pa.types.is_float64, "DOUBLE"),
    (pa.types.is_date, "DATE"),
    (pa.types.is_time, "TIME"),
    (pa.types.is_string, "VARCHAR"),
    (pa.types.is_large_string, "VARCHAR"),
    (pa.types.is_string_view, "VARCHAR"),
    (pa.types.is_binary, "BLOB"),
    (pa.types.is_large_binary, "BLOB"),
    (pa.types.is_interval, "INTERVAL"),
    (pa.types.is_duration, "INTERVAL"),
]


def sql_type(data_type: pa.DataType) -> str:
    if pa.types.is_timestamp(data_type):
        return "TIMESTAMP WITH TIME ZONE" if data_type.tz else "TIMESTAMP"
    if pa.types.is_decimal(data_type):
        return f"DECIMAL({data_type.precision},{data_type.scale})"
    for check, name in _ARROW_TO_SQL:
        if check(data_type):
            return name
    if pa.types.is_dictionary(data_type):
        return sql_type(data_type.value_type)
    return str(data_type).upper()


def columns_of(schema: pa.Schema) -> list[Column]:
    return [Column(f.name, sql_type(f.type)) for f in schema]


@dataclass(frozen=True)
class HistoryInputs:
    """What a view's rows are a function of, where nothing else can change them: the generated
    views it reads (itself included, transitively) and the file sources below them, whose loaded
    tables change only when a build reloads them. A view that reads a live table or calls a
    volatile function (``now()``) has none (``None`` where an ``inputs`` is expected)."""

    views: tuple[str, ...]
    sources: tuple[str, ...]


# The lock every build holds exclusively and every history refresh shares (``Engine.hold_lock``): a
# refresh never reads a schema half rebuilt, and two builds never create the schema or load a source
# at the same time.
BUILD_LOCK = "build"

# What a history refresh did: nothing (its inputs are as they were), rows added and removed where the
# view and the copy differ, every row rewritten, or the table created anew.
HistoryRefresh = Literal["unchanged", "merged", "rewritten", "created"]


class Engine(Protocol):
    """A warehouse: runs compiled SQL and owns its DDL. Engine differences are attributes here
    (``persists_history``), never ``isinstance`` checks in the layers above."""

    dialect: str
    schema: str
    # keeps an indexed copy of each view's history (`<view>__history`) for fast PIT joins
    persists_history: bool
    # materialization upserts from the engine's workers (write_partitions), not through the driver
    writes_from_workers: bool
    # the views read file sources where they lie (not a copy loaded at build): a project copied or
    # moved to another folder reads other files, which a build must notice
    reads_files_in_place: bool

    def transaction(self) -> AbstractContextManager[None]: ...

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None: ...

    def arrow(self, sql: str, params: Sequence[Any] | None = None) -> pa.Table: ...

    def batches(
        self, sql: str, params: Sequence[Any] | None = None, batch_size: int = 50_000
    ) -> Iterator[pa.RecordBatch]: ...

    def describe(self, sql: str) -> list[Column]: ...

    def source_relation(self, source: SourceConfig) -> exp.Expression: ...

    def prepare_sources(self, sources: Sequence[SourceConfig]) -> list[str]: ...

    def stale_sources(self, sources: Sequence[SourceConfig]) -> list[str]: ...

    def register(self, name: str, data: pa.Table) -> exp.Table: ...

    def unregister(self, name: str) -> None: ...

    def relation_exists(self, schema: str, name: str) -> bool: ...

    def list_relations(self, schema: str) -> dict[str, str]: ...

    # DDL in the engine's schema -------------------------------------------------------------------
    def ensure_schema(self) -> None: ...

    def replace_view(self, name: str, body: str) -> None:
        """Create or replace the view ``name`` over ``body`` (SQL in the engine's dialect)."""

    def drop_relation(self, name: str) -> None:
        """Drop the view or table ``name`` if it exists (and, where the engine needs it, what reads it)."""

    def refresh_history(self, name: str, index: exp.Expression | None, *, recreate: bool = False,
                        full: bool = False, inputs: HistoryInputs | None = None) -> HistoryRefresh:
        """Make ``<name>__history`` hold the rows of the view ``name`` (engines with
        ``persists_history``): created anew with ``recreate``, every row rewritten with ``full``,
        otherwise only the difference, and nothing at all while ``inputs`` are unchanged."""

    def create_indexes(self, indexes: Sequence[exp.Create]) -> list[str]:
        """Create the indexes (``CREATE INDEX IF NOT EXISTS``) that do not exist yet; their names."""

    def hold_lock(self, name: str, *, doing: str, shared: bool = False) -> None:
        """Hold the lock ``name`` of this engine's schema until the current transaction ends, so that
        two processes doing the same thing take turns; raise ContentionError naming ``doing`` (what
        the holder is doing) after a bounded wait. Engines with a single writer need none."""

    def write_parquet(self, sql: str, directory: Path, params: Sequence[Any] | None = None) -> int:
        """Write the query's rows, in order, as Parquet files in ``directory`` with bounded client
        memory (the engine's own writer where it has one); returns the row count."""

    def close(self) -> None: ...


def missing_source(source: SourceConfig) -> ConfigError:
    """A declared file source that matches no file, located at its fsql.toml table."""
    return ConfigError(f"source '{source.name}' reads {source.path}, which matches no file",
                       path=CONFIG_FILE, line=source.line or None,
                       hint="fix [sources." + source.name + "] path, or create the file")


def source_files(root: Path, source: SourceConfig) -> list[Path]:
    """The files a file source reads now (its glob expanded, in name order); none when they are missing."""
    assert source.path is not None
    pattern = any(c in source.path for c in "*?[")
    files = sorted(root.glob(source.path)) if pattern else [root / source.path]
    return [f for f in files if f.exists()]


def files_signature(files: Sequence[Path]) -> str:
    """Changes when any of ``files`` is written, replaced, added or removed: name, size, modification
    time and inode per file. A rewrite of the same size within the file system's timestamp resolution
    (a few milliseconds) of the previous one is the one change it can miss."""
    parts = []
    for f in files:
        st = f.stat()
        parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


ROWS_PER_FILE = 1_000_000


def write_batches_parquet(batches: Iterator[pa.RecordBatch], directory: Path, rows_per_file: int = ROWS_PER_FILE) -> int:
    """Stream batches into numbered Parquet files (part-00000.parquet, ...), holding one batch at a time."""
    import pyarrow.parquet as pq

    directory.mkdir(parents=True, exist_ok=True)
    writer: pq.ParquetWriter | None = None
    rows = in_file = files = 0
    try:
        for batch in batches:
            if writer is not None and in_file >= rows_per_file:
                writer.close()
                writer = None
            if writer is None:
                writer = pq.ParquetWriter(directory / f"part-{files:05d}.parquet", batch.schema)
                files += 1
                in_file = 0
            writer.write_batch(batch)
            rows += batch.num_rows
            in_file += batch.num_rows
    finally:
        if writer is not None:
            writer.close()
    return rows


class SchemaDDL:
    """The DDL every SQL engine spells the same way, in its own schema (``schema``, ``dialect``)."""

    schema: str
    dialect: str
    # DROP ... CASCADE: the engine refuses to drop what other views read otherwise (PostgreSQL)
    drop_cascades = False
    # single-process engines write the online store from the driver (see Engine.writes_from_workers)
    writes_from_workers = False
    # file sources are copied into the warehouse at build (see Engine.reads_files_in_place)
    reads_files_in_place = False
    # `execute` and `list_relations` come from the engine class itself

    def _qualified(self, name: str) -> str:
        return view_table(self.schema, name).sql(dialect=self.dialect)

    def hold_lock(self, name: str, *, doing: str, shared: bool = False) -> None:
        return None  # DuckDB's file lock already admits one writer

    def create_indexes(self, indexes: Sequence[exp.Create]) -> list[str]:
        return []  # columnar engines scan; the compiler gives them no index to create

    def ensure_schema(self) -> None:
        self.execute(exp.Create(this=exp.to_identifier(self.schema, quoted=True), kind="SCHEMA", exists=True)
                     .sql(dialect=self.dialect))

    def drop_relation(self, name: str) -> None:
        kind = self.list_relations(self.schema).get(name)
        if kind is not None:
            what = "VIEW" if "VIEW" in kind.upper() else "TABLE"
            cascade = " CASCADE" if self.drop_cascades else ""
            self.execute(f"DROP {what} IF EXISTS {self._qualified(name)}{cascade}")


def history_name(view: str) -> str:
    return f"{view}__history"


def view_table(schema: str, name: str) -> exp.Table:
    return exp.table_(name, db=schema, quoted=True)
