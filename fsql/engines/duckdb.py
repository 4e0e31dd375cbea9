"""DuckDB: the embedded default warehouse. File sources are scanned in place."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from sqlglot import exp

from fsql.config import SourceConfig
from fsql.definitions import Column
from fsql.engines.base import columns_of, view_table
from fsql.errors import EngineError, EngineUnavailableError


class DuckDBEngine:
    dialect = "duckdb"
    # DuckDB's ASOF join needs no index: training sets read the live views.
    persists_history = False

    def __init__(self, path: str | Path | None, schema: str, root: Path, *, read_only: bool = False) -> None:
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
        self._depth = 0

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
            raise EngineError(f"DuckDB: {str(e).splitlines()[0]}") from e

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None:
        self._run(sql, params)

    def _relation(self, sql: str, params: Sequence[Any] | None) -> duckdb.DuckDBPyRelation:
        # A relation (con.sql) streams Arrow without the extra copy a DB-API result makes.
        try:
            return self.con.sql(sql, params=list(params) if params else None)
        except duckdb.Error as e:
            raise EngineError(f"DuckDB: {str(e).splitlines()[0]}") from e

    def arrow(self, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
        return self.batch_reader(sql, params).read_all()

    def batch_reader(self, sql: str, params: Sequence[Any] | None = None, batch_size: int = 1_000_000) -> pa.RecordBatchReader:
        relation = self._relation(sql, params)
        try:
            if hasattr(relation, "to_arrow_reader"):
                return relation.to_arrow_reader(batch_size)
            return relation.record_batch(batch_size)  # DuckDB < 1.4
        except duckdb.Error as e:
            raise EngineError(f"DuckDB: {str(e).splitlines()[0]}") from e

    def batches(self, sql: str, params: Sequence[Any] | None = None, batch_size: int = 50_000) -> Iterator[pa.RecordBatch]:
        reader = self.batch_reader(sql, params, batch_size)
        try:
            yield from reader
        except duckdb.Error as e:
            raise EngineError(f"DuckDB: {str(e).splitlines()[0]}") from e

    def describe(self, sql: str) -> list[Column]:
        return columns_of(self.arrow(f"SELECT * FROM ({sql}) AS __fsql_describe LIMIT 0").schema)

    def source_relation(self, source: SourceConfig) -> exp.Expression:
        if source.table:
            return exp.to_table(source.table, dialect="duckdb")
        path = str((self.root / source.path) if not Path(source.path).is_absolute() else Path(source.path))
        reader = exp.ReadParquet if source.format == "parquet" else exp.ReadCSV
        return exp.Table(this=reader(expressions=[exp.Literal.string(path)]))

    def prepare_sources(self, sources: Sequence[SourceConfig]) -> list[str]:
        missing = []
        for source in sources:
            if source.path and not any(ch in source.path for ch in "*?[") and not (self.root / source.path).exists():
                missing.append(source.name)
        if missing:
            raise EngineError(f"source file for {', '.join(missing)} does not exist")
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

    def _qualified(self, name: str) -> str:
        return view_table(self.schema, name).sql(dialect=self.dialect)

    def ensure_schema(self) -> None:
        self.execute(exp.Create(this=exp.to_identifier(self.schema, quoted=True), kind="SCHEMA", exists=True)
                     .sql(dialect=self.dialect))

    def replace_view(self, name: str, body: str) -> None:
        self.execute(f"CREATE OR REPLACE VIEW {self._qualified(name)} AS {body}")

    def drop_relation(self, name: str) -> None:
        kind = self.list_relations(self.schema).get(name)
        if kind is not None:
            what = "VIEW" if "VIEW" in kind.upper() else "TABLE"
            self.execute(f"DROP {what} IF EXISTS {self._qualified(name)}")

    def refresh_history(self, name: str, index: exp.Expression | None, *, recreate: bool) -> None:
        raise EngineError("DuckDB keeps no persisted view history")  # callers check persists_history

    def write_parquet(self, sql: str, directory: Path, params: Sequence[Any] | None = None) -> int:
        """COPY ... TO a directory: DuckDB streams the rows into size-capped files data_0.parquet,
        data_1.parquet, ... in the query's order."""
        import sqlglot

        directory.mkdir(parents=True, exist_ok=True)
        copy = exp.Copy(
            this=exp.Subquery(this=sqlglot.parse_one(sql, read="duckdb")),
            kind=False,
            files=[exp.Literal.string(str(directory))],
            params=[
                exp.CopyParameter(this=exp.var("FORMAT"), expression=exp.var("parquet")),
                exp.CopyParameter(this=exp.var("FILE_SIZE_BYTES"), expression=exp.Literal.string("256MB")),
                exp.CopyParameter(this=exp.var("OVERWRITE_OR_IGNORE"), expression=exp.true()),
            ],
        )
        row = self._run(copy.sql(dialect="duckdb"), params).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        self.con.close()
