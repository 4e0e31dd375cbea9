"""PostgreSQL through ADBC: Arrow in (COPY) and Arrow out without a row-by-row Python loop.

File sources (Parquet/CSV) cannot be scanned by PostgreSQL, so a build loads them into tables under
the warehouse schema (``src__<name>``), reloading only when the file changed.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pyarrow as pa
from sqlglot import exp

from fsql.config import SourceConfig
from fsql.definitions import Column
from fsql.engines.base import (
    BUILD_LOCK,
    HistoryInputs,
    HistoryRefresh,
    SchemaDDL,
    columns_of,
    files_signature,
    history_name,
    missing_source,
    source_files,
    view_table,
    write_batches_parquet,
)
from fsql.errors import ContentionError, EngineError, EngineUnavailableError, redact_url
from fsql.extras import require_extra
from fsql.locks import advisory_key

# How long a build or a history refresh waits for another one on the same schema or view before it
# reports contention. A history refresh of a large view takes seconds, a build with reloads minutes.
LOCK_WAIT_S = 120.0


class PostgresEngine(SchemaDDL):
    dialect = "postgres"
    drop_cascades = True

    def __init__(self, url: str, schema: str, root: Path, *, history: str = "table",
                 lock_wait: float = LOCK_WAIT_S) -> None:
        self.lock_wait = lock_wait
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
        # JIT's inlining and optimization passes start above a planner cost that PIT joins over a large
        # spine pass at once, and cost ~0.2 s per query without making it faster (bench/pit.py --matrix,
        # 1M spine rows: 7%); expression compilation, which is cheap, stays on where the server has JIT.
        self._run("SET jit_inline_above_cost = -1")
        self._run("SET jit_optimize_above_cost = -1")
        self._in_tx = False
        # histories written in the current transaction, vacuumed once it commits (see `_settle`)
        self._unsettled: set[str] = set()

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
            self._unsettled.clear()
            with suppress(Exception):
                self._autocommit(True)
            raise
        try:
            self.con.commit()
        except Exception as e:
            self._unsettled.clear()
            raise EngineUnavailableError(f"PostgreSQL: the commit failed: {str(e).splitlines()[0]}",
                                         hint="nothing was changed; check the server and run the command again") from e
        finally:
            self._in_tx = False
            with suppress(Exception):
                self._autocommit(True)
        self._settle()

    def _settle(self) -> None:
        """VACUUM the histories the committed transaction wrote. A new table's visibility map is empty,
        so until autovacuum comes by, every index-only probe of the PIT join (LATERAL) also reads the
        heap: 1.4x slower (bench/pit.py --matrix, 1,000 rows per entity). VACUUM cannot run inside a
        transaction, hence after it; SKIP_LOCKED so it never waits behind another build or refresh."""
        tables, self._unsettled = sorted(self._unsettled), set()
        for table in tables:
            # the work is committed: a failed VACUUM only leaves the probes slower until autovacuum
            with suppress(EngineError):
                self._run(f"VACUUM (SKIP_LOCKED) {table}")

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
        return _source_table(source.name)

    def source_relation(self, source: SourceConfig) -> exp.Expression:
        if source.table:
            return exp.to_table(source.table, dialect="postgres")
        return exp.table_(self._source_table(source), db=self.schema, quoted=True)

    def _source_files(self, source: SourceConfig) -> tuple[list[Path], str]:
        files = source_files(self.root, source)
        if not files:
            raise missing_source(source)
        return files, files_signature(files)

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
            # Without statistics the planner takes the table for a few rows and probes it with a
            # bitmap scan and a sort instead of the index's order (5x slower on the example's ASOF join).
            self.execute(f"ANALYZE {view_table(self.schema, table).sql(dialect=self.dialect)}")
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

    def create_indexes(self, indexes: Sequence[exp.Create]) -> list[str]:
        existing = set(self._relation_states(kinds=("i",)))
        created = []
        for index in indexes:
            name = index.this.this.name
            if name not in existing:
                self.execute(index.sql(dialect=self.dialect))
                existing.add(name)
                created.append(name)
        return created

    def hold_lock(self, name: str, *, doing: str, shared: bool = False) -> None:
        """A transaction-scoped advisory lock keyed by (schema, name). Polled rather than waited for,
        so that a wait is bounded and the error can say who holds the lock."""
        if not self._in_tx:
            raise EngineError(f"PostgreSQL: the lock '{name}' can only be held inside a transaction")
        key = advisory_key(f"fsql.warehouse:{self.schema}:{name}")
        function = "pg_try_advisory_xact_lock_shared" if shared else "pg_try_advisory_xact_lock"
        began = time.monotonic()
        pause = 0.02
        while not self.arrow(f"SELECT {function}($1) AS ok", [key]).column(0)[0].as_py():
            waited = time.monotonic() - began
            if waited >= self.lock_wait:
                raise ContentionError(f"{doing} is already running ({self._lock_holder(key)}); "
                                      f"gave up after waiting {waited:.0f} s",
                                      hint="run the command again once it has finished")
            time.sleep(min(pause, max(self.lock_wait - waited, 0.0)))
            pause = min(pause * 2, 0.5)

    def _lock_holder(self, key: int) -> str:
        # pg_locks splits a 64-bit advisory key into two unsigned 32-bit halves
        rows = self.arrow(
            "SELECT a.pid, a.application_name AS app, "
            "CAST(EXTRACT(EPOCH FROM now() - a.xact_start) AS BIGINT) AS seconds "
            "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
            "AND l.classid = CAST($1 AS BIGINT)::oid AND l.objid = CAST($2 AS BIGINT)::oid AND a.pid <> pg_backend_pid() "
            "ORDER BY a.xact_start LIMIT 1",
            [(key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF],
        ).to_pylist()
        if not rows:
            return "its holder has just finished"
        holder = rows[0]
        app = f" of {holder['app']}" if holder["app"] else ""
        return f"held by PostgreSQL backend {holder['pid']}{app} for {holder['seconds']} s"

    def refresh_history(self, name: str, index: exp.Expression | None, *, recreate: bool = False,
                        full: bool = False, inputs: HistoryInputs | None = None) -> HistoryRefresh:
        """Make ``<name>__history`` hold the view's rows, in one transaction, so a training set never
        sees it half written.

        By default only the difference is written: nothing while the history's stamp (its table
        comment: a hash of the view definitions and source loads in ``inputs``) matches, else the
        rows the view gained and lost since (a multiset difference over whole rows, so a late row,
        a correction at the same event time and a window value that a late row changed all arrive,
        and nothing is duplicated). Without ``inputs`` (a live table, a volatile call) the stamp is
        never trusted and the difference is computed on every refresh.
        """
        history = history_name(name)
        table, view = self._qualified(history), self._qualified(name)
        with self.transaction():
            # Overlapping refreshes of one view would each insert every row; a build rewrites the
            # views they read.
            self.hold_lock(BUILD_LOCK, doing=f"a build of schema '{self.schema}'", shared=True)
            self.hold_lock(f"history:{name}", doing=f"a refresh of the history of view '{name}'")
            state = self._relation_states()
            stamp = self._stamp(inputs, state)
            current = state.get(history)
            if recreate or current is None or current["kind"] != "r":
                # A build recreates the training-set views that read it (CASCADE), in its transaction.
                self.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
                self.execute(f"CREATE TABLE {table} AS SELECT * FROM {view}")
                if index is not None:
                    self.execute(index.sql(dialect=self.dialect))
                outcome: HistoryRefresh = "created"
                note = None
            elif full:
                # Keep the table (views depend on it) and its index; swap the rows atomically.
                self.execute(f"DELETE FROM {table}")
                self.execute(f"INSERT INTO {table} SELECT * FROM {view}")
                outcome, note = "rewritten", current["note"]
            elif stamp is not None and current["note"] == stamp:
                return "unchanged"
            else:
                outcome, note = "merged", current["note"]
            if outcome != "merged" or self._merge(table, view) > 0:
                self.execute(f"ANALYZE {table}")
                self._unsettled.add(table)
            if note != stamp:
                comment = exp.Comment(this=view_table(self.schema, history), kind="TABLE",
                                      expression=exp.Literal.string(stamp) if stamp else exp.null())
                self.execute(comment.sql(dialect=self.dialect))
        return outcome

    def _relation_states(self, kinds: Sequence[str] = ("r", "v")) -> dict[str, dict[str, Any]]:
        """Per relation of the schema of one of ``kinds`` (pg_class.relkind: 'r' table, 'v' view,
        'i' index): its kind, comment and view definition."""
        rows = self.arrow(
            "SELECT c.relname AS name, CAST(c.relkind AS TEXT) AS kind, obj_description(c.oid, 'pg_class') AS note, "
            "CASE WHEN c.relkind = 'v' THEN pg_get_viewdef(c.oid) END AS definition "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND CAST(c.relkind AS TEXT) = ANY(string_to_array($2, ','))",
            [self.schema, ",".join(kinds)],
        ).to_pylist()
        return {r["name"]: r for r in rows}

    @staticmethod
    def _stamp(inputs: HistoryInputs | None, state: dict[str, dict[str, Any]]) -> str | None:
        """A hash of what the view's rows are computed from, as the warehouse holds it now: the
        definitions of the views and the load signatures of the sources. None when unknown."""
        if inputs is None:
            return None
        parts = []
        for view in sorted(set(inputs.views)):
            found = state.get(view)
            if found is None or found["kind"] != "v":
                return None
            parts.append(["view", view, found["definition"]])
        for source in sorted(set(inputs.sources)):
            found = state.get(_source_table(source))
            if found is None or not (found["note"] or "").startswith("fsql:"):
                return None
            parts.append(["source", source, found["note"]])
        return "fsql:" + hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]

    def _merge(self, table: str, view: str) -> int:
        """Delete the history rows the view no longer has and insert the view rows the history lacks,
        as multisets of whole rows (numbered among equal rows, so duplicates count); returns how many
        rows changed. The view is evaluated once, unchanged rows are not touched."""
        self.execute(
            f'CREATE TEMP TABLE "__fsql_view_rows" ON COMMIT DROP AS SELECT "__fsql_v" AS "__fsql_row", '
            f'CAST(ROW("__fsql_v".*) AS TEXT) AS "__fsql_t", '
            f'ROW_NUMBER() OVER (PARTITION BY CAST(ROW("__fsql_v".*) AS TEXT)) AS "__fsql_n" FROM {view} AS "__fsql_v"'
        )
        self.execute(
            f'CREATE TEMP TABLE "__fsql_history_rows" ON COMMIT DROP AS SELECT "__fsql_h".ctid AS "__fsql_id", '
            f'CAST(ROW("__fsql_h".*) AS TEXT) AS "__fsql_t", '
            f'ROW_NUMBER() OVER (PARTITION BY CAST(ROW("__fsql_h".*) AS TEXT)) AS "__fsql_n" FROM {table} AS "__fsql_h"'
        )
        same = 'o."__fsql_t" = n."__fsql_t" AND o."__fsql_n" = n."__fsql_n"'
        deleted = self._changed(
            f'DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT o."__fsql_id" FROM "__fsql_history_rows" AS o '
            f'WHERE NOT EXISTS (SELECT 1 FROM "__fsql_view_rows" AS n WHERE {same})))'
        )
        inserted = self._changed(
            f'INSERT INTO {table} SELECT (n."__fsql_row").* FROM "__fsql_view_rows" AS n '
            f'WHERE NOT EXISTS (SELECT 1 FROM "__fsql_history_rows" AS o WHERE {same})'
        )
        self.execute('DROP TABLE "__fsql_view_rows", "__fsql_history_rows"')
        return deleted + inserted

    def _changed(self, sql: str) -> int:
        cur = self._run(sql)
        try:
            return max(cur.rowcount, 0)
        finally:
            cur.close()

    def write_parquet(self, sql: str, directory: Path, params: Sequence[Any] | None = None) -> int:
        # PostgreSQL cannot write Parquet: stream the result, one Arrow batch in memory at a time.
        return write_batches_parquet(self.batches(sql, params), directory)

    def close(self) -> None:
        with suppress(Exception):
            self.con.close()


def _source_table(name: str) -> str:
    """The table a file source is loaded into."""
    return f"src__{name}"


def _libpq_url(url: str) -> str:
    """ADBC wants a libpq URI: drop SQLAlchemy-style driver suffixes such as +psycopg."""
    return re.sub(r"^postgres(ql)?\+\w+://", "postgresql://", url)
