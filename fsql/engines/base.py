"""What the orchestration layer needs from a warehouse engine. Engines run SQL; they never build PIT logic."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import pyarrow as pa
from sqlglot import exp

from fsql.config import SourceConfig
from fsql.definitions import Column

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


def sql_type(arrow_type: pa.DataType) -> str:
    if pa.types.is_timestamp(arrow_type):
        return "TIMESTAMP WITH TIME ZONE" if arrow_type.tz else "TIMESTAMP"
    if pa.types.is_decimal(arrow_type):
        return f"DECIMAL({arrow_type.precision},{arrow_type.scale})"
    for check, name in _ARROW_TO_SQL:
        if check(arrow_type):
            return name
    if pa.types.is_dictionary(arrow_type):
        return sql_type(arrow_type.value_type)
    return str(arrow_type).upper()


def columns_of(schema: pa.Schema) -> list[Column]:
    return [Column(f.name, sql_type(f.type)) for f in schema]


class Engine(Protocol):
    dialect: str
    schema: str

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

    def close(self) -> None: ...


def view_table(schema: str, name: str) -> exp.Table:
    return exp.table_(name, db=schema, quoted=True)


def arrow_type(dtype: str) -> pa.DataType:
    """The Arrow type of a recorded column type (DuckDB spelling), the inverse of ``sql_type``."""
    upper = dtype.upper()
    if upper.startswith("DECIMAL"):
        inner = upper[upper.index("(") + 1 : upper.index(")")] if "(" in upper else "18,3"
        precision, scale = (int(x) for x in inner.split(","))
        return pa.decimal128(precision, scale)
    fixed = {
        "BOOLEAN": pa.bool_(),
        "TINYINT": pa.int8(),
        "SMALLINT": pa.int16(),
        "INTEGER": pa.int32(),
        "BIGINT": pa.int64(),
        "HUGEINT": pa.float64(),
        "UTINYINT": pa.uint8(),
        "USMALLINT": pa.uint16(),
        "UINTEGER": pa.uint32(),
        "UBIGINT": pa.uint64(),
        "FLOAT": pa.float32(),
        "DOUBLE": pa.float64(),
        "DATE": pa.date32(),
        "TIME": pa.time64("us"),
        "VARCHAR": pa.string(),
        "BLOB": pa.binary(),
        "TIMESTAMP": pa.timestamp("us"),
        "TIMESTAMP WITH TIME ZONE": pa.timestamp("us", tz="UTC"),
    }
    return fixed.get(upper, pa.string())
