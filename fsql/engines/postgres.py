"""PostgreSQL through ADBC: Arrow in (COPY) and Arrow out without a row-by-row Python loop.

File sources (Parquet/CSV) cannot be scanned by PostgreSQL, so a build loads them into tables under
the warehouse schema (``src__<name>``), reloading only when the file changed.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pyarrow as pa
from sqlglot import exp

from fsql.config import SourceConfig
from fsql.definitions import Column
from fsql.engines.base import (
    SchemaDDL,
    columns_of,
    history_name,
    missing_source,
    write_batches_parquet,
)
from fsql.errors import EngineError, EngineUnavailableError, redact_url
from fsql.extras import require_extra


class PostgresEngine(SchemaDDL):
    dialect = "postgres"
    drop_cascades = True

    def __init__(self, url: str, schema: str, root: Path, *, history: str = "table") -> None:
        # PostgreSQL cannot index a view, and the PIT join's index plan is several times faster than
        # any plan over the live view (bench/pit.py): keep an indexed copy unless told not to.
        self.persists_history = history == "table"
        adbc = require_extra("adbc_driver_postgresql.dbapi", "postgres")
        self.url = url
        self.schema = schema
        self.root = root
        self._adbc = adbc
        try:
            self.con = adbc.connect(_libpq_url(url))
        except Exception as e:  # the driver raises its own OperationalError types
            raise EngineUnavailableError(
                f"cannot connect to PostgreSQL at {redact_url(url)}: {str(e).splitlines()[0]}",
                hint="check the server is running and [warehouse] url (or FSQL_POSTGRES_URL)",
            ) from None
        self._autocommit(True)
        self._run("SET TIME ZONE 'UTC'")
        self._in_tx = False

    def _autocommit(self, on: bool) -> None:
        self.con.adbc_connection.set_options(**{"adbc.connection.autocommit": "true" if on else "false"})

    @contextmanager
    def transaction(self) -> Iterator[None]:
        if self._in_tx:
            yield
            return
        self._autocommit(False)
        self._in_tx = True
        try:
            yield
        except BaseException:
            # The original error is the one to report: on a lost connection the rollback and the
            # switch back to autocommit fail too, and must not replace it (the server rolls back).
            with suppress(Exception):
                self.con.rollback()
            self._in_tx = False
            with suppress(Exception):
                self._autocommit(True)
            raise
        try:
            self.con.commit()
        except Exception as e:
            raise EngineUnavailableError(f"PostgreSQL: the commit failed: {str(e).splitlines()[0]}",
                                         hint="nothing was changed; check the server and run the command again") from e
        finally:
            self._in_tx = False
            with suppress(Exception):
                self._autocommit(True)

    def _run(self, sql: str, params: Sequence[Any] | None = None):
        cur = self.con.cursor()
        try:
            cur.execute(sql, list(params) if params else None)
        except Exception as e:
            cur.close()
            raise EngineError(f"PostgreSQL: {str(e).splitlines()[0]}") from e
        return cur

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None:
        self._run(sql, params).close()

    def arrow(self, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
        cur = self._run(sql, params)
        try:
            return cur.fetch_arrow_table()
        finally:
            cur.close()

    def batches(self, sql: str, params: Sequence[Any] | None = None, batch_size: int = 50_000) -> Iterator[pa.RecordBatch]:
        cur = self._run(sql, params)
        try:
            reader = cur.fetch_record_batch()
            for batch in reader:
                for offset in range(0, batch.num_rows, batch_size):
                    yield batch.slice(offset, batch_size)
        except EngineError:
            raise
        except Exception as e:
            raise EngineError(f"PostgreSQL: {str(e).splitlines()[0]}") from e
        finally:
            cur.close()

    def describe(self, sql: str) -> list[Column]:
        return columns_of(self.arrow(f"SELECT * FROM ({sql}) AS __fsql_describe LIMIT 0").schema)

    def _source_table(self, source: SourceConfig) -> str:
        return f"src__{source.name}"

    def source_relation(self, source: SourceConfig) -> exp.Expression:
        if source.table:
            return exp.to_table(source.table, dialect="postgres")
        return exp.table_(self._source_table(source), db=self.schema, quoted=True)

    def _source_files(self, source: SourceConfig) -> tuple[list[Path], str]:
        assert source.path is not None
        pattern = any(c in source.path for c in "*?[")
        files = sorted(self.root.glob(source.path)) if pattern else [self.root / source.path]
        files = [f for f in files if f.exists()]
        if not files:
            raise missing_source(source)
        signature = hashlib.sha256(
            "|".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files).encode()
        ).hexdigest()[:16]
        return files, signature

    def stale_sources(self, sources: Sequence[SourceConfig]) -> list[str]:
        """File sources whose files changed since they were last loaded (or were never loaded)."""
        notes = {
            r["relname"]: r["note"]
            for r in self.arrow(
                "SELECT c.relname, obj_description(c.oid) AS note FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1",
                [self.schema],
            ).to_pylist()
        }
        stale = []
        for source in sources:
            if source.path:
                _, signature = self._source_files(source)
                if notes.get(self._source_table(source)) != f"fsql:{signature}":
                    stale.append(source.name)
        return stale

    def prepare_sources(self, sources: Sequence[SourceConfig]) -> list[str]:
        """Load file sources that changed since the last load; returns the names loaded.

        Reloading drops the table with CASCADE, which drops the views reading it: call this only in
        a transaction that recreates every generated view afterwards (as a build does)."""
        import pyarrow.csv as pcsv
        import pyarrow.dataset as ds

        self.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
        stale = set(self.stale_sources(sources))
        loaded = []
        for source in sources:
            if source.name not in stale:
                continue
            files, signature = self._source_files(source)
            table = self._source_table(source)
            if source.format == "csv":
                data = pa.concat_tables([pcsv.read_csv(f) for f in files])
            else:
                data = ds.dataset([str(f) for f in files], format="parquet").to_table()
            cur = self.con.cursor()
            try:
                self._run(f'DROP TABLE IF EXISTS "{self.schema}"."{table}" CASCADE').close()
                cur.adbc_ingest(table, data, mode="create", db_schema_name=self.schema)
            finally:
                cur.close()
            self.execute(f"COMMENT ON TABLE \"{self.schema}\".\"{table}\" IS 'fsql:{signature}'")
            loaded.append(source.name)
        return loaded

    def register(self, name: str, data: pa.Table) -> exp.Table:
        cur = self.con.cursor()
        try:
            cur.adbc_ingest(name, data, mode="replace", temporary=True)
        except Exception as e:
            raise EngineError(f"PostgreSQL: cannot load the spine: {str(e).splitlines()[0]}") from e
        finally:
            cur.close()
        return exp.table_(name, quoted=True)

    def unregister(self, name: str) -> None:
        self.execute(f'DROP TABLE IF EXISTS "{name}"')

    def relation_exists(self, schema: str, name: str) -> bool:
        rows = self.arrow(
            "SELECT 1 AS x FROM information_schema.tables WHERE table_schema = $1 AND table_name = $2", [schema, name]
        )
        return rows.num_rows > 0

    def list_relations(self, schema: str) -> dict[str, str]:
        rows = self.arrow(
            "SELECT table_name, table_type FROM information_schema.tables WHERE table_schema = $1", [schema]
        ).to_pylist()
        return {r["table_name"]: r["table_type"] for r in rows}

    def replace_view(self, name: str, body: str) -> None:
        # CREATE OR REPLACE VIEW cannot drop or retype columns on PostgreSQL; dependants dropped by
        # CASCADE are recreated later in the same transaction, since views are built in dependency order.
        self.execute(f"DROP VIEW IF EXISTS {self._qualified(name)} CASCADE")
        self.execute(f"CREATE VIEW {self._qualified(name)} AS {body}")

    def refresh_history(self, name: str, index: exp.Expression | None, *, recreate: bool) -> None:
        """Rewrite ``<name>__history`` from the view, in one transaction, so a training set never
        sees it half written."""
        history = history_name(name)
        table, view = self._qualified(history), self._qualified(name)
        with self.transaction():
            if recreate or not self.relation_exists(self.schema, history):
                # A build recreates the training-set views that read it (CASCADE), in its transaction.
                self.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
                self.execute(f"CREATE TABLE {table} AS SELECT * FROM {view}")
                if index is not None:
                    self.execute(index.sql(dialect=self.dialect))
            else:
                # Keep the table (views depend on it) and its index; swap the rows atomically.
                self.execute(f"DELETE FROM {table}")
                self.execute(f"INSERT INTO {table} SELECT * FROM {view}")
            self.execute(f"ANALYZE {table}")

    def write_parquet(self, sql: str, directory: Path, params: Sequence[Any] | None = None) -> int:
        # PostgreSQL cannot write Parquet: stream the result, one Arrow batch in memory at a time.
        return write_batches_parquet(self.batches(sql, params), directory)

    def close(self) -> None:
        with suppress(Exception):
            self.con.close()


def _libpq_url(url: str) -> str:
    """ADBC wants a libpq URI: drop SQLAlchemy-style driver suffixes such as +psycopg."""
    return re.sub(r"^postgres(ql)?\+\w+://", "postgresql://", url)
