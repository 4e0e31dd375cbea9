"""Spark (local, a cluster, or Spark Connect) through pyspark: Arrow in and out, never row by row.

Generated views live in the session's catalog, which by default is in memory and dies with the
process. The engine therefore keeps the DDL it ran in a small catalog file per schema
(``<catalog_dir>/<schema>.json``, under ``.fsql/`` by default) and replays it when a session opens.
Why not Spark's embedded Hive metastore: its Derby database admits one JVM at a time, so a notebook's
session would lock out every `fsql` command. With a shared metastore configured through ``conf``
(``spark.sql.catalogImplementation = hive``) the views are persisted there as well, and anyone can
query them with Spark SQL; ``attach(spark, root)`` replays them into a user's own session.

Spark has no transactions. A build's DDL runs inside ``transaction()``: on failure the views of the
catalog file as it was before are recreated (and views created since are dropped), and the file is
only rewritten on success, so a failed build leaves the views as they were.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from sqlglot import exp

from fsql.config import SourceConfig, SparkWarehouse
from fsql.definitions import Column
from fsql.engines.base import HistoryInputs, HistoryRefresh, SchemaDDL, columns_of, view_table
from fsql.errors import EngineError, EngineUnavailableError
from fsql.extras import require_extra

# A partition's writer: gets the partition's Arrow batches, returns how many rows it wrote.
PartitionSink = Callable[[Iterator[pa.RecordBatch]], int]

# What this process already replayed per (session, schema): a hash of the catalog file.
_REPLAYED: dict[tuple[str, str], str] = {}


@dataclass
class _Entry:
    """One relation of the catalog file: a view (``body`` in Spark SQL) or a CSV source table."""

    name: str
    kind: str  # "view" | "csv"
    body: str

    def to_json(self) -> list[str]:
        return [self.name, self.kind, self.body]


def open_session(warehouse: SparkWarehouse) -> tuple[Any, bool]:
    """The Spark session for ``warehouse`` and whether this call started it (and so should stop it)."""
    sql = require_extra("pyspark.sql", "spark")
    builder = sql.SparkSession.builder
    try:
        if warehouse.remote:
            session = builder.remote(warehouse.remote).getOrCreate()
            owned = False
        else:
            owned = sql.SparkSession.getActiveSession() is None
            builder = builder.master(warehouse.master).appName("fsql")
            builder = builder.config("spark.sql.session.timeZone", "UTC")
            builder = builder.config("spark.ui.enabled", "false")
            builder = builder.config("spark.ui.showConsoleProgress", "false")
            if warehouse.master.startswith("local"):
                # A local session has no peers: its driver and block manager listen on loopback only.
                builder = builder.config("spark.driver.host", "127.0.0.1")
                builder = builder.config("spark.driver.bindAddress", "127.0.0.1")
            for key, value in warehouse.conf:
                builder = builder.config(key, value)
            session = builder.getOrCreate()
            if owned:
                session.sparkContext.setLogLevel("ERROR")
    except Exception as e:  # py4j / grpc raise their own types
        where = warehouse.remote or warehouse.master
        raise EngineUnavailableError(
            f"cannot start a Spark session on {where}: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
            hint="Spark needs Java 17 or later (`java -version`); for remote, check the Connect server is up",
        ) from None
    # Runtime settings a reused session may lack: timestamps are UTC, Arrow transfers are on.
    session.conf.set("spark.sql.session.timeZone", "UTC")
    if not warehouse.remote:
        session.conf.set("spark.sql.execution.arrow.pyspark.enabled", "true")
    for key, value in warehouse.conf:
        with suppress(Exception):  # static settings cannot be set on a running session
            session.conf.set(key, value)
    return session, owned


class SparkEngine:
    dialect = "spark"
    # No indexes to keep: training sets read the live views through the timeline plan.
    persists_history = False
    reads_files_in_place = True
    # partitions of a query can be written by the executors (see write_partitions)
    writes_from_workers = True

    def __init__(self, warehouse: SparkWarehouse, root: Path, *, session: Any = None) -> None:
        self.warehouse = warehouse
        self.schema = warehouse.schema
        self.root = root
        if session is not None:
            self.spark, self._owned = session, False
        else:
            self.spark, self._owned = open_session(warehouse)
        catalog_dir = Path(warehouse.catalog_dir)
        self.catalog_path = (catalog_dir if catalog_dir.is_absolute() else root / catalog_dir) / f"{self.schema}.json"
        self._entries = self._read_catalog()
        self._saved: list[_Entry] | None = None  # the catalog as it was when a transaction began
        self._replay()

    # The catalog file ----------------------------------------------------------------------------------
    def _read_catalog(self) -> list[_Entry]:
        if not self.catalog_path.exists():
            return []
        try:
            data = json.loads(self.catalog_path.read_text())
            return [_Entry(*item) for item in data["relations"]]
        except (ValueError, KeyError, TypeError) as e:
            raise EngineError(f"the Spark catalog file {self.catalog_path.name} is unreadable: {e}",
                              hint="delete it and run `fsql build` again") from None

    def _write_catalog(self) -> None:
        if self._saved is not None:
            return  # written when the transaction commits
        self.catalog_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.catalog_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"relations": [e.to_json() for e in self._entries]}, indent=1))
        os.replace(tmp, self.catalog_path)  # atomic: a reader sees the old file or the new one

    def _session_key(self) -> str:
        if self.warehouse.remote:
            return self.warehouse.remote
        return str(self.spark.sparkContext.applicationId)

    def _replay(self) -> None:
        """Recreate the catalog file's relations in this session (once per session and file content)."""
        if not self._entries:
            return
        digest = hashlib.sha256(json.dumps([e.to_json() for e in self._entries]).encode()).hexdigest()
        key = (self._session_key(), str(self.catalog_path))
        if _REPLAYED.get(key) == digest:
            return
        self.ensure_schema()
        self._create_all(self._entries)
        _REPLAYED[key] = digest

    def _create_all(self, entries: Sequence[_Entry]) -> None:
        # Views are resolved when created, so one must come after what it reads; the file's order is
        # the order they were last created in, which a replaced view may break: retry until stable.
        pending = list(entries)
        while pending:
            failed: list[_Entry] = []
            error: EngineError | None = None
            for entry in pending:
                try:
                    self._create(entry)
                except EngineError as e:
                    failed.append(entry)
                    error = e
            if len(failed) == len(pending):
                assert error is not None
                raise error
            pending = failed

    def _create(self, entry: _Entry) -> None:
        if entry.kind == "csv":
            self._create_csv_table(entry.name, entry.body)
        else:
            self.execute(f"CREATE OR REPLACE VIEW {self._qualified(entry.name)} AS {entry.body}")

    def _remember(self, entry: _Entry | None, name: str) -> None:
        self._entries = [e for e in self._entries if e.name != name]
        if entry is not None:
            self._entries.append(entry)
        self._write_catalog()

    # Transactions -----------------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[None]:
        if self._saved is not None:
            yield
            return
        self._saved = list(self._entries)
        try:
            yield
        except BaseException:
            saved, self._saved = self._saved, None
            self._restore(saved)
            raise
        else:
            self._saved = None
            self._write_catalog()

    def _restore(self, saved: list[_Entry]) -> None:
        """Undo a failed transaction's DDL: drop what it created, recreate what was there before."""
        kept = {e.name for e in saved}
        for entry in reversed(self._entries):
            if entry.name not in kept:
                with suppress(EngineError):
                    self._drop(entry.name, entry.kind)
        self._entries = saved
        if saved:
            self._create_all(saved)

    # Running SQL --------------------------------------------------------------------------------------
    def _df(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        args: list[Any] | dict[str, Any] | None = list(params) if params else None
        if params and "${" in sql:
            sql, args = _named_parameters(sql, params)
        try:
            return self.spark.sql(sql, args=args) if args else self.spark.sql(sql)
        except Exception as e:
            raise EngineError(f"Spark: {_first_line(e)}") from e

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None:
        df = self._df(sql, params)
        try:
            df.collect()  # DDL runs eagerly already; a query must run too
        except Exception as e:
            raise EngineError(f"Spark: {_first_line(e)}") from e

    def dataframe(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        """The query as a Spark DataFrame (for writers that run on the executors)."""
        return self._df(sql, params)

    def arrow(self, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
        df = self._df(sql, params)
        try:
            return df.toArrow()
        except Exception as e:
            raise EngineError(f"Spark: {_first_line(e)}") from e

    def batches(self, sql: str, params: Sequence[Any] | None = None, batch_size: int = 50_000) -> Iterator[pa.RecordBatch]:
        # The result comes to the driver whole: large results go through write_partitions or
        # write_parquet instead, which run on the executors.
        yield from self.arrow(sql, params).to_batches(max_chunksize=batch_size)

    def describe(self, sql: str) -> list[Column]:
        return columns_of(self.arrow(f"SELECT * FROM ({sql}) AS __fsql_describe LIMIT 0").schema)

    # Sources ------------------------------------------------------------------------------------------
    def _path(self, source: SourceConfig) -> str:
        assert source.path is not None
        return str(Path(source.path) if Path(source.path).is_absolute() else self.root / source.path)

    def _source_table(self, source: SourceConfig) -> str:
        return f"src__{source.name}"

    def source_relation(self, source: SourceConfig) -> exp.Expression:
        if source.table:
            return exp.to_table(source.table, dialect="spark")
        if source.format == "csv":
            # CSV needs reader options (header, types) that the parquet.`path` form cannot take
            return view_table(self.schema, self._source_table(source))
        return exp.Table(this=exp.to_identifier(self._path(source), quoted=True), db=exp.to_identifier("parquet"))

    def prepare_sources(self, sources: Sequence[SourceConfig]) -> list[str]:
        missing = []
        for source in sources:
            if source.path and not any(ch in source.path for ch in "*?[") and not Path(self._path(source)).exists():
                missing.append(source.name)
        if missing:
            raise EngineError(f"source file for {', '.join(missing)} does not exist")
        for source in sources:
            if source.path and source.format == "csv":
                name = self._source_table(source)
                current = next((e for e in self._entries if e.name == name), None)
                if current is None or current.body != self._path(source) or not self.relation_exists(self.schema, name):
                    self.ensure_schema()
                    self._create_csv_table(name, self._path(source))
                    self._remember(_Entry(name, "csv", self._path(source)), name)
        return []  # Spark reads the files in place: nothing is copied

    def _create_csv_table(self, name: str, path: str) -> None:
        qualified = f"{self.schema}.{name}"
        try:
            with suppress(Exception):
                self.spark.sql(f"DROP TABLE IF EXISTS {self._qualified(name)}")
            self.spark.catalog.createTable(qualified, path=path, source="csv", header="true", inferSchema="true")
        except Exception as e:
            raise EngineError(f"Spark: cannot read the CSV source {path}: {_first_line(e)}") from e

    def stale_sources(self, sources: Sequence[SourceConfig]) -> list[str]:
        return []  # files are read in place: nothing is ever stale

    # Spines -------------------------------------------------------------------------------------------
    def register(self, name: str, data: pa.Table) -> exp.Table:
        try:
            df = self.spark.createDataFrame(data)
            # Spark reads every Arrow timestamp as an instant; a naive column stays naive (TIMESTAMP_NTZ,
            # the same wall clock since the session is in UTC), as on the other engines.
            naive = [f.name for f in data.schema if pa.types.is_timestamp(f.type) and f.type.tz is None]
            if naive:
                F = require_extra("pyspark.sql.functions", "spark")  # noqa: N806 - pyspark's own idiom
                df = df.withColumns({c: F.col(f"`{c}`").cast("timestamp_ntz") for c in naive})
            df.createOrReplaceTempView(name)
        except Exception as e:
            raise EngineError(f"Spark: cannot load the spine: {_first_line(e)}") from e
        return exp.table_(name, quoted=True)

    def unregister(self, name: str) -> None:
        with suppress(Exception):
            self.spark.catalog.dropTempView(name)

    # Catalog ------------------------------------------------------------------------------------------
    def relation_exists(self, schema: str, name: str) -> bool:
        return name in self.list_relations(schema)

    def list_relations(self, schema: str) -> dict[str, str]:
        try:
            if not self.spark.catalog.databaseExists(schema):
                return {}
            tables = self.spark.catalog.listTables(schema)
        except Exception as e:
            raise EngineError(f"Spark: cannot list the relations of {schema}: {_first_line(e)}") from e
        return {t.name: ("VIEW" if t.tableType == "VIEW" else "BASE TABLE") for t in tables if not t.isTemporary}

    _qualified = SchemaDDL._qualified
    ensure_schema = SchemaDDL.ensure_schema
    hold_lock = SchemaDDL.hold_lock
    create_indexes = SchemaDDL.create_indexes

    def replace_view(self, name: str, body: str) -> None:
        entry = _Entry(name, "view", body)
        self._create(entry)
        self._remember(entry, name)

    def _drop(self, name: str, kind: str) -> None:
        what = "VIEW" if kind == "view" else "TABLE"
        self.execute(f"DROP {what} IF EXISTS {self._qualified(name)}")

    def drop_relation(self, name: str) -> None:
        kind = self.list_relations(self.schema).get(name)
        if kind is not None:
            self._drop(name, "view" if kind == "VIEW" else "csv")
        self._remember(None, name)

    def refresh_history(self, name: str, index: exp.Expression | None, *, recreate: bool = False,
                        full: bool = False, inputs: HistoryInputs | None = None) -> HistoryRefresh:
        raise EngineError("Spark keeps no persisted view history")  # callers check persists_history

    # Writers on the executors ------------------------------------------------------------------------
    def write_partitions(self, sql: str, params: Sequence[Any] | None, sink: PartitionSink) -> int:
        """Run ``sink`` on every partition of the query's result, on the executors; the driver only
        collects one row count per partition. ``sink`` must be picklable (it is shipped to workers)."""

        def per_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            yield pa.RecordBatch.from_pydict({"rows": [sink(batches)]}, schema=pa.schema([("rows", pa.int64())]))

        df = self._df(sql, params)
        try:
            counts = df.mapInArrow(per_partition, "rows long").agg({"rows": "sum"}).collect()
        except Exception as e:
            raise EngineError(f"Spark: writing from the executors failed: {_first_line(e)}") from e
        return int(counts[0][0] or 0)

    def write_parquet(self, sql: str, directory: Path, params: Sequence[Any] | None = None) -> int:
        """Write the query's rows as Parquet files under ``directory`` from the executors; returns the
        row count (read back from the files' footers, not by scanning the data on the driver)."""
        df = self._df(sql, params)
        try:
            df.write.mode("overwrite").parquet(str(directory))
        except Exception as e:
            raise EngineError(f"Spark: cannot write {directory.name}: {_first_line(e)}") from e
        import pyarrow.dataset as ds

        return ds.dataset(str(directory), format="parquet").count_rows()

    def close(self) -> None:
        if self._owned:
            with suppress(Exception):
                self.spark.stop()
            _REPLAYED.clear()


def attach(spark: Any, root: str | Path, warehouse: SparkWarehouse | None = None) -> SparkEngine:
    """Recreate a project's generated views in a session you already have, to query them with Spark SQL."""
    return SparkEngine(warehouse or SparkWarehouse(), Path(root), session=spark)


def _named_parameters(sql: str, params: Sequence[Any]) -> tuple[str, dict[str, Any]]:
    """sqlglot writes numbered parameters as ``${1}`` for Spark, which Spark reads as a variable:
    rewrite them as the named markers ``:p1`` that ``spark.sql(args=...)`` binds."""
    import sqlglot

    tree = sqlglot.parse_one(sql, read="spark")
    tree = tree.transform(
        lambda node: exp.Placeholder(this=f"p{node.this.name}") if isinstance(node, exp.Parameter) else node
    )
    return tree.sql(dialect="spark"), {f"p{i}": value for i, value in enumerate(params, 1)}


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
