"""The registry: the catalog of what a project defines, every version it ever built, lineage, and
materialization state.

It is a plain SQL database (SQLite file by default, PostgreSQL for teams) that anyone can query; this
module is its only writer. ``Registry.open`` applies pending Alembic migrations, so a registry is always
at the schema this code expects. Every method returns plain dataclasses, never ORM objects, and wraps
database failures in ``RegistryError``.

Writes are serialized: on SQLite a write transaction starts with ``BEGIN IMMEDIATE`` (the write lock is
taken up front, so two writers queue on the busy timeout instead of failing on lock upgrade); on
PostgreSQL ``apply`` and migrations take transaction-scoped advisory locks.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import os
import socket
import types
import typing
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any, Literal, TypeVar

import psutil
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine

from fsql.config import DEFAULT_REGISTRY_URL
from fsql.definitions import (
    Entity,
    FeatureRef,
    FeatureView,
    Model,
    Project,
    Source,
    TrainingSet,
    ViewShape,
    fingerprint,
)
from fsql.errors import NotFoundError, RegistryError, did_you_mean, redact_url
from fsql.extras import require_extra
from fsql.locks import advisory_key
from fsql.registry import tables as t

if typing.TYPE_CHECKING:
    from fsql.registry import catalog as catalog_types

DEFAULT_URL = DEFAULT_REGISTRY_URL
# The Alembic scripts live in the repository's top-level migrations/ and ship as the package
# fsql.migrations (see pyproject.toml), so they are found the same way in every kind of install.
MIGRATIONS_DIR = Path(str(importlib.resources.files("fsql.migrations")))

# Long enough to wait out another process's build or migration, short enough to report a stuck lock.
SQLITE_BUSY_TIMEOUT_S = 30.0
PG_CONNECT_TIMEOUT_S = 10

ObjectKind = Literal["entity", "source", "view", "training_set", "model"]
RunOutcome = Literal["running", "success", "failed"]

_T = TypeVar("_T")


# --------------------------------------------------------------------------------------------------
# Definitions <-> JSON


def to_json(obj: Any) -> Any:
    """A JSON-ready form of a definition (dataclasses, tuples, timedeltas as integer microseconds)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_json(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, timedelta):
        # Integer microseconds round-trip exactly; float seconds would not for long durations.
        return obj // timedelta(microseconds=1)
    return obj


def from_json(cls: type[_T], data: Mapping[str, Any]) -> _T:
    """Rebuild a definition dataclass from ``to_json`` output.

    Driven by the class's type hints, so a field added to a definition later round-trips without a change
    here; keys the class does not know (written by a newer fsql) are ignored, and missing keys take the
    field's default.
    """
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in data:
            kwargs[f.name] = _decode(hints[f.name], data[f.name])
    return cls(**kwargs)


def _decode(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return _decode(inner[0], value) if len(inner) == 1 else value
    if origin is tuple:
        item = typing.get_args(hint)[0]
        return tuple(_decode(item, v) for v in value)
    if origin is dict:
        _, item = typing.get_args(hint)
        return {k: _decode(item, v) for k, v in value.items()}
    if hint is timedelta:
        return timedelta(microseconds=value)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return from_json(hint, value)
    return value


def entity_fingerprint(entity: Entity) -> str:
    return fingerprint(to_json(entity))


def source_fingerprint(source: Source) -> str:
    return fingerprint(to_json(source))


def model_fingerprint(model: Model) -> str:
    return fingerprint(to_json(model))


# --------------------------------------------------------------------------------------------------
# Records returned by the API


class _Record:
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (datetimes as ISO 8601, durations in seconds), for ``--json`` output."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]


def _jsonable(value: Any) -> Any:
    if isinstance(value, _Record):
        return value.to_dict()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, FeatureRef):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(to_json(value))
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


@dataclass(frozen=True, kw_only=True)
class LineageEdge(_Record):
    """One lineage edge: ``downstream`` reads ``upstream``.

    A column of None means the whole relation (a table-level edge). ``downstream_version`` is filled in
    by the registry from the applied project; callers of ``apply`` leave it None.
    """

    downstream_kind: Literal["view", "training_set", "model"] = "view"
    downstream_name: str
    downstream_column: str | None = None
    downstream_version: str | None = None
    upstream_kind: Literal["source", "view", "training_set"]
    upstream_name: str
    upstream_column: str | None = None


@dataclass(frozen=True)
class Changes(_Record):
    """Names per outcome for one kind of object.

    ``changed`` means a new fingerprint (a new version for views and training sets); ``updated`` means
    the same version with new metadata (path, line, owner, tags, descriptions, types, compiled SQL or
    lineage) written in place.
    """

    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()

    @property
    def any(self) -> bool:
        return bool(self.added or self.changed or self.updated or self.removed)


@dataclass(frozen=True)
class ApplyResult(_Record):
    entities: Changes
    sources: Changes
    views: Changes
    training_sets: Changes
    models: Changes

    @property
    def changed(self) -> bool:
        """Whether the apply wrote anything."""
        return any(c.any for c in (self.entities, self.sources, self.views, self.training_sets, self.models))


@dataclass(frozen=True)
class RegistrySnapshot(_Record):
    """What the registry currently holds (removed objects excluded), for ``fsql plan`` diffs."""

    project: str | None
    entities: dict[str, str]  # name -> fingerprint
    sources: dict[str, str]
    views: dict[str, str]
    training_sets: dict[str, str]
    models: dict[str, str]
    entity_definitions: dict[str, Entity]
    source_definitions: dict[str, Source]
    view_definitions: dict[str, FeatureView]
    training_set_definitions: dict[str, TrainingSet]
    model_definitions: dict[str, Model]
    # name -> the absolute path a file source resolved to at the last build (None: a table source, or
    # a registry written before locations were recorded)
    source_locations: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class FeatureRecord(_Record):
    name: str
    dtype: str
    description: str | None


@dataclass(frozen=True)
class ViewRecord(_Record):
    name: str
    version: str
    fingerprint: str
    entity: str
    entity_keys: tuple[str, ...]
    timestamp: str
    created: str | None
    features: tuple[FeatureRecord, ...]
    owner: str | None
    tags: tuple[str, ...]
    ttl: timedelta | None
    description: str | None
    path: str
    line: int
    depends_on: tuple[str, ...]
    created_at: datetime
    updated_at: datetime
    removed_at: datetime | None
    last_materialized_at: datetime | None  # last successful materialization of this version
    watermark: datetime | None

    @property
    def keys(self) -> tuple[str, ...]:
        return self.entity_keys

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)


@dataclass(frozen=True)
class ViewVersion(_Record):
    view: str
    version: str
    fingerprint: str
    created_at: datetime
    current: bool
    definition: FeatureView
    compiled: dict[str, str]  # dialect -> SQL
    watermark: datetime | None
    last_materialized_at: datetime | None


@dataclass(frozen=True)
class TrainingSetRecord(_Record):
    name: str
    version: str
    fingerprint: str
    timestamp: str
    features: tuple[FeatureRef, ...]
    owner: str | None
    tags: tuple[str, ...]
    description: str | None
    path: str
    line: int
    depends_on: tuple[str, ...]
    models: tuple[str, ...]  # models bound to this set
    created_at: datetime
    updated_at: datetime
    removed_at: datetime | None


@dataclass(frozen=True)
class LineageGraph(_Record):
    kind: ObjectKind
    name: str
    version: str | None
    upstream: tuple[LineageEdge, ...]
    downstream: tuple[LineageEdge, ...]


@dataclass(frozen=True)
class RunRecord(_Record):
    id: int
    view: str
    version: str
    interval_start: datetime | None
    interval_end: datetime | None
    rows: int | None
    duration_s: float | None
    outcome: RunOutcome
    error: str | None
    started_at: datetime
    finished_at: datetime | None
    pid: int | None = None  # the process that ran it, on ``host``
    host: str | None = None


@dataclass(frozen=True)
class SearchHit(_Record):
    kind: Literal["view", "feature", "training_set"]
    name: str  # "view.feature" for features
    description: str | None
    matched: tuple[str, ...]  # which fields matched: name, description, tags, features


# --------------------------------------------------------------------------------------------------
# Connections


def _normalize_url(url: str, base_dir: str | Path | None) -> URL:
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        # The text may hold a password, so it is not echoed back.
        raise RegistryError(
            "invalid registry URL",
            hint="use sqlite:///path/to/registry.db or postgresql://user@host:5432/db in [registry] url",
        ) from exc
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        if parsed.drivername in ("postgresql", "postgres"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        return parsed
    if backend == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            path = Path(database).expanduser()
            if not path.is_absolute() and base_dir is not None:
                path = Path(base_dir) / path
            parsed = parsed.set(database=str(path))
        return parsed
    raise RegistryError(
        f"unsupported registry database '{backend}'",
        hint="the registry runs on SQLite (sqlite:///...) or PostgreSQL (postgresql://...)",
    )


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take transaction control away from the sqlite3 module, which would not BEGIN before DDL or
    # SELECT; `_sqlite_on_begin` emits BEGIN itself, so migrations and reads are real transactions.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    mode = "IMMEDIATE" if conn.get_execution_options().get("fsql_write") else "DEFERRED"
    conn.exec_driver_sql(f"BEGIN {mode}")


def _create_engine(url: URL) -> Engine:
    if url.get_backend_name() == "sqlite":
        memory = not url.database or url.database == ":memory:"
        if memory:
            engine = sa.create_engine(
                url, poolclass=sa.pool.StaticPool, connect_args={"check_same_thread": False}
            )
        else:
            if not url.database.startswith("file:"):
                try:
                    Path(url.database).parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise RegistryError(
                        f"cannot create the folder of the registry database {url.database}: {exc}",
                        hint="check the [registry] url in fsql.toml and the folder's permissions",
                    ) from exc
            # The pool hands connections between threads (the server), one thread at a time.
            engine = sa.create_engine(
                url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}
            )
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    connect_args: dict[str, Any] = {}
    if "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = PG_CONNECT_TIMEOUT_S
    return sa.create_engine(url, pool_pre_ping=True, connect_args=connect_args)


# The newest migration. Checked against the migration scripts by a test, so the fast path of
# ``Registry.open`` can compare it with the database without importing Alembic (a quarter second).
HEAD_REVISION = "0004"
VERSION_TABLE = "alembic_version"


@cache
def _script_revisions() -> tuple[frozenset[str], frozenset[str]]:
    """(all revisions, heads) of the shipped migrations, loaded once per process."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(MIGRATIONS_DIR))
    return frozenset(s.revision for s in script.walk_revisions()), frozenset(script.get_heads())


# Linux's PID namespace of the host itself (PROC_PID_INIT_INO): processes outside it are in a container.
_INIT_PID_NAMESPACE = 0xEFFFFFFC


def this_host() -> str:
    """Where a run's pid means something: the host name, plus the PID namespace inside a container
    (containers may share the host's name, with host networking, but not its pids)."""
    name = socket.gethostname()
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return name  # not Linux: one namespace per host
    return name if namespace == _INIT_PID_NAMESPACE else f"{name} (pid namespace {namespace})"


def _process_alive(pid: int, since: datetime) -> bool:
    """Whether process ``pid`` of this host exists, is not a zombie, and is the one that was running at
    ``since`` (a pid reused by a process started later is another process)."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        # Start times derive from the boot time, which moves when the wall clock is stepped: a few
        # seconds of slack err towards leaving a live run alone (a pid is seldom reused that fast).
        return process.create_time() <= since.timestamp() + 5.0
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True  # it exists but cannot be inspected (another user's): assume it lives


def _chunks(items: Sequence[_T], size: int = 400) -> Iterator[Sequence[_T]]:
    # Bounded IN lists: old SQLite builds allow 999 bound parameters per statement.
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _now() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------------------------------
# The registry


# Write transactions committed by this process, per registry database: a reader that caches the
# registry (the online FeatureReader) sees a build made through any Store of this process at once,
# and one made by another process within its cache's age.
_LOCAL_WRITES: dict[str, int] = {}


class Registry:
    """A registry database. Create with ``Registry.open(url)``; safe to share between threads."""

    def __init__(self, engine: Engine, url: str) -> None:
        self._engine = engine
        self._database = engine.url.render_as_string(hide_password=False)  # never shown
        self.url = url  # for messages: the password is masked
        self.dialect = engine.dialect.name
        self._pg_schema: str | None = None
        database = engine.url.database
        # a SQLite file can say it changed without a query (see `change_counter`)
        self._sqlite_file = (
            Path(database) if self.dialect == "sqlite" and database and database != ":memory:"
            and not database.startswith("file:") else None
        )
        self.migrated = False  # whether open() applied migrations

    @classmethod
    def open(cls, url: str = DEFAULT_URL, *, base_dir: str | Path | None = None) -> Registry:
        """Open (creating if needed) the registry at ``url`` and bring its schema up to date.

        A relative SQLite path is resolved against ``base_dir`` (the project root) when given, else the
        working directory. ``postgresql://`` URLs use psycopg 3; a schema is chosen with
        ``?options=-csearch_path%3D<schema>`` and created if missing.
        """
        sa_url = _normalize_url(url, base_dir)
        if sa_url.drivername == "postgresql+psycopg":
            require_extra("psycopg", "postgres")
        # Messages name the URL as the user wrote it (driver rewrite undone), every secret masked:
        # SQLAlchemy's hide_password misses ?password= and other secret query parameters.
        shown = redact_url(sa_url.set(drivername=sa.make_url(url).drivername).render_as_string(hide_password=False))
        try:
            engine = _create_engine(sa_url)
        except ImportError as exc:
            raise RegistryError(
                f"the registry {shown} needs a database driver that is not installed: {exc}",
                hint="install fsql with PostgreSQL support: pip install 'fsql[postgres]'",
            ) from exc
        registry = cls(engine, shown)
        try:
            registry._migrate()
        except BaseException:
            engine.dispose()
            raise
        return registry

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Registry({self.url!r})"

    # -- plumbing ------------------------------------------------------------------------------

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except sa.exc.DBAPIError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
            hint = None
            if "locked" in reason or "could not obtain lock" in reason:
                hint = "another fsql process is writing the registry; retry when it has finished"
            raise RegistryError(f"registry {action} failed ({self.url}): {reason}", hint=hint) from exc
        except sa.exc.SQLAlchemyError as exc:
            raise RegistryError(f"registry {action} failed ({self.url}): {exc}") from exc

    @contextmanager
    def _begin(self, *, write: bool) -> Iterator[Connection]:
        """A connection in a transaction: committed on clean exit, rolled back on any exception."""
        with self._errors("connection"):
            conn = self._engine.connect()
        try:
            if write:
                conn.execution_options(fsql_write=True)
            with self._errors("begin"):
                tx = conn.begin()
            try:
                yield conn
            except BaseException:
                # The original exception matters more than a failed rollback; the connection is
                # discarded either way.
                with suppress(sa.exc.SQLAlchemyError):
                    tx.rollback()
                raise
            with self._errors("commit"):
                tx.commit()
            if write:
                _LOCAL_WRITES[self._database] = _LOCAL_WRITES.get(self._database, 0) + 1
        finally:
            conn.close()

    def local_writes(self) -> int:
        """How many write transactions this process committed to this database (free to call)."""
        return _LOCAL_WRITES.get(self._database, 0)

    def _read(self) -> AbstractContextManager[Connection]:
        return self._begin(write=False)

    def _migrate(self) -> None:
        try:
            conn = self._engine.connect()
        except sa.exc.DBAPIError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
            if self.dialect == "sqlite":
                hint = "check the [registry] url in fsql.toml and that the file's folder is writable"
            else:
                hint = (
                    "check that PostgreSQL is running and reachable from here and that the "
                    "[registry] url in fsql.toml (host, port, database, user) is right"
                )
            raise RegistryError(
                f"cannot connect to the registry database {self.url}: {reason}", hint=hint
            ) from exc
        with self._errors("schema check"), conn:
            schema = None
            if self.dialect == "postgresql":
                schema = conn.execute(sa.text("SELECT current_schema()")).scalar()
            current = self._current_revisions(conn, schema) if schema or self.dialect == "sqlite" else None
            conn.rollback()
        if current == frozenset({HEAD_REVISION}):
            self._pg_schema = schema
            return
        if current:
            unknown = current - _script_revisions()[0]
            if unknown:
                raise RegistryError(
                    f"the registry {self.url} was migrated by a newer fsql "
                    f"(revision {', '.join(sorted(unknown))})",
                    hint="upgrade fsql to use this registry",
                )
        with self._errors("migration"), self._begin(write=True) as conn:
            if self.dialect == "postgresql":
                # One migration at a time per database; the fast path above takes no lock.
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(advisory_key("fsql.registry.migrate"))))
                schema = self._ensure_pg_schema(conn)
            # Another process may have migrated while this one waited for the lock.
            if self._current_revisions(conn, schema) != frozenset({HEAD_REVISION}):
                self._upgrade(conn, schema)
                self.migrated = True
        self._pg_schema = schema

    @staticmethod
    def _current_revisions(conn: Connection, schema: str | None) -> frozenset[str]:
        """The revisions in Alembic's version table (empty before the first migration)."""
        if not sa.inspect(conn).has_table(VERSION_TABLE, schema=schema):
            return frozenset()
        table = sa.table(VERSION_TABLE, sa.column("version_num"), schema=schema)
        return frozenset(r[0] for r in conn.execute(sa.select(table.c.version_num)))

    def _ensure_pg_schema(self, conn: Connection) -> str:
        schema = conn.execute(sa.text("SELECT current_schema()")).scalar()
        if schema is not None:
            return str(schema)
        search_path = str(conn.execute(sa.text("SHOW search_path")).scalar() or "")
        names = [n.strip() for n in search_path.split(",") if n.strip() and n.strip() != '"$user"']
        if not names:
            raise RegistryError(
                f"the registry {self.url} has an empty search_path",
                hint="choose a schema with ?options=-csearch_path%3D<schema> in the URL",
            )
        name = names[0]
        if name.startswith('"') and name.endswith('"'):
            name = name[1:-1].replace('""', '"')
        quoted = conn.dialect.identifier_preparer.quote_identifier(name)
        conn.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {quoted}"))
        return str(conn.execute(sa.text("SELECT current_schema()")).scalar())

    @staticmethod
    def _upgrade(conn: Connection, schema: str | None) -> None:
        from alembic import command
        from alembic.config import Config
        from alembic.util import CommandError

        config = Config()
        # ConfigParser interpolates '%', which a path may contain.
        config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
        config.attributes["connection"] = conn
        config.attributes["version_table_schema"] = schema
        try:
            command.upgrade(config, "head")
        except CommandError as exc:
            raise RegistryError(f"migrating the registry failed: {exc}") from exc

    def current_revision(self) -> tuple[str, ...]:
        """The Alembic revision(s) the database is at."""
        with self._errors("schema check"), self._read() as conn:
            return tuple(sorted(self._current_revisions(conn, self._pg_schema)))

    # -- definitions ---------------------------------------------------------------------------

    def snapshot(self) -> RegistrySnapshot:
        with self._errors("read"), self._read() as conn:
            return _snapshot(conn)

    def change_counter(self) -> int | None:
        """For a SQLite file in rollback-journal mode (the registry's mode), the header's file change
        counter, which every committed write increments: read without a connection or a lock (16
        microseconds against about a millisecond for `version`), so a hot path can skip the version
        query while it is unchanged. A write in progress can only show the new value early, which makes
        the caller ask `version` (under SQLite's locks). None when the database cannot tell (PostgreSQL,
        a WAL-mode file, which counts elsewhere, or an unreadable file): ask `version`."""
        if self._sqlite_file is None:
            return None
        try:
            with open(self._sqlite_file, "rb") as f:
                header = f.read(28)
        except OSError:
            return None
        if len(header) < 28 or not header.startswith(b"SQLite format 3\x00") or header[18] != 1:
            return None  # not (yet) a database file, or WAL mode (write version 2)
        return int.from_bytes(header[24:28], "big")

    def version(self) -> str:
        """A token that changes whenever what a server loads changes: definitions (a build) or the set
        of view versions ever materialized. One small query, cheap enough to poll every second."""
        tables = (t.feature_views, t.training_sets, t.models)
        ms = t.materialization_state
        probes = [sa.select(agg).select_from(table).scalar_subquery()
                  for table in tables
                  for agg in (sa.func.count(), sa.func.max(table.c.updated_at), sa.func.max(table.c.removed_at))]
        probes.append(sa.select(sa.func.count()).select_from(ms).where(ms.c.last_success_at.is_not(None))
                      .scalar_subquery())
        with self._errors("read"), self._read() as conn:
            row = conn.execute(sa.select(*probes)).one()
        return "|".join(str(v) for v in row)

    @contextmanager
    def transaction(self) -> Iterator[RegistryTransaction]:
        """A write transaction: commits on clean exit, rolls back if the block raises.

        Lets a build apply definitions, then do its warehouse work, and only then commit, so a failed
        warehouse step leaves the registry untouched. Holds the registry write lock until it ends.
        """
        with self._begin(write=True) as conn:
            tx = RegistryTransaction(self, conn)
            try:
                yield tx
            finally:
                tx._closed = True

    def apply(
        self,
        project: Project,
        *,
        compiled: Mapping[str, Mapping[str, str]] | None = None,
        lineage: Sequence[LineageEdge] = (),
        git_commit: str | None = None,
        source_locations: Mapping[str, str | None] | None = None,
    ) -> ApplyResult:
        """Make the registry match ``project`` in one transaction; see ``RegistryTransaction.apply``."""
        with self.transaction() as tx:
            return tx.apply(project, compiled=compiled, lineage=lineage, git_commit=git_commit,
                            source_locations=source_locations)

    # -- reads ---------------------------------------------------------------------------------

    def list_views(self, *, include_removed: bool = False) -> list[ViewRecord]:
        with self._errors("read"), self._read() as conn:
            return _view_records(conn, include_removed=include_removed)

    def get_view(self, name: str) -> ViewRecord:
        """The view's current version; a removed view is returned with ``removed_at`` set."""
        with self._errors("read"), self._read() as conn:
            records = _view_records(conn, name=name, include_removed=True)
            if not records:
                raise _not_found(conn, "feature view", t.feature_views, name)
            return records[0]

    def view_history(self, name: str) -> list[ViewVersion]:
        """Every version of the view ever applied, oldest first."""
        fv, vv, ms = t.feature_views, t.view_versions, t.materialization_state
        with self._errors("read"), self._read() as conn:
            current = conn.execute(sa.select(fv.c.version, fv.c.removed_at).where(fv.c.name == name)).first()
            if current is None:
                raise _not_found(conn, "feature view", fv, name)
            rows = conn.execute(
                sa.select(vv, ms.c.watermark, ms.c.last_success_at)
                .outerjoin(ms, sa.and_(ms.c.view == vv.c.view, ms.c.version == vv.c.version))
                .where(vv.c.view == name)
                .order_by(vv.c.created_at, vv.c.version)
            ).mappings()
            return [
                ViewVersion(
                    view=r["view"],
                    version=r["version"],
                    fingerprint=r["fingerprint"],
                    created_at=r["created_at"],
                    current=r["version"] == current.version and current.removed_at is None,
                    definition=from_json(FeatureView, r["definition"]),
                    compiled=dict(r["compiled"]),
                    watermark=r["watermark"],
                    last_materialized_at=r["last_success_at"],
                )
                for r in rows
            ]

    def list_training_sets(self, *, include_removed: bool = False) -> list[TrainingSetRecord]:
        with self._errors("read"), self._read() as conn:
            return _training_set_records(conn, include_removed=include_removed)

    def get_training_set(self, name: str) -> TrainingSetRecord:
        with self._errors("read"), self._read() as conn:
            records = _training_set_records(conn, name=name, include_removed=True)
            if not records:
                raise _not_found(conn, "training set", t.training_sets, name)
            return records[0]

    def lineage(self, name: str, *, kind: ObjectKind | None = None, transitive: bool = False) -> LineageGraph:
        """Upstream and downstream edges of a view, training set, source or model.

        Only current (non-removed) objects count as downstream. With ``transitive``, edges are followed
        all the way up to sources and down to models.
        """
        with self._errors("read"), self._read() as conn:
            graph = _Lineage(conn)
            node_kind, version = graph.resolve(name, kind)
            upstream = graph.walk(node_kind, name, up=True, transitive=transitive)
            downstream = graph.walk(node_kind, name, up=False, transitive=transitive)
            return LineageGraph(node_kind, name, version, upstream, downstream)

    def search(self, text: str) -> list[SearchHit]:
        """Current views, features and training sets whose name, description, tags or feature names
        contain ``text`` (case-insensitive). Name matches come first, then views, sets, features."""
        # Matched in Python rather than with SQL LIKE: SQLite's lower() only folds ASCII, and the
        # catalog is small enough to scan.
        needle = text.strip().casefold()

        def matched(*fields: tuple[str, Iterable[str | None]]) -> tuple[str, ...]:
            return tuple(
                label
                for label, values in fields
                if any(v is not None and needle in v.casefold() for v in values)
            )

        with self._errors("read"), self._read() as conn:
            views = _view_records(conn)
            sets = _training_set_records(conn)
        hits: list[SearchHit] = []
        for view in views:
            fields = matched(
                ("name", [view.name]),
                ("description", [view.description]),
                ("tags", view.tags),
                ("features", view.feature_names),
            )
            if fields:
                hits.append(SearchHit("view", view.name, view.description, fields))
            for feature in view.features:
                fields = matched(("name", [feature.name]), ("description", [feature.description]))
                if fields:
                    hits.append(
                        SearchHit("feature", f"{view.name}.{feature.name}", feature.description, fields)
                    )
        for ts in sets:
            fields = matched(
                ("name", [ts.name]),
                ("description", [ts.description]),
                ("tags", ts.tags),
                ("features", [ref.feature for ref in ts.features]),
            )
            if fields:
                hits.append(SearchHit("training_set", ts.name, ts.description, fields))
        order = {"view": 0, "training_set": 1, "feature": 2}
        return sorted(hits, key=lambda h: ("name" not in h.matched, order[h.kind], h.name))

    # -- catalog (read models in fsql.registry.catalog) ------------------------------------------

    def history(self, name: str) -> list[catalog_types.Revision]:
        """Every revision of a view or training set (metadata edits included), oldest first."""
        from fsql.registry import catalog

        with self._errors("read"), self._read() as conn:
            return catalog.history(conn, name)

    def search_ranked(self, text: str, *, owner: str | None = None, tag: str | None = None,
                      entity: str | None = None) -> list[catalog_types.RankedHit]:
        from fsql.registry import catalog

        with self._errors("read"), self._read() as conn:
            return catalog.search(conn, text, owner=owner, tag=tag, entity=entity)

    def feature_lineage(self, view: str, feature: str) -> catalog_types.FeatureLineage:
        from fsql.registry import catalog

        with self._errors("read"), self._read() as conn:
            return catalog.feature_lineage(conn, view, feature)

    def save_stats(self, view: str, version: str, scope: catalog_types.StatsScope, as_of: datetime,
                   stats: Mapping[str, Mapping[str, Any]]) -> None:
        """Replace the stored statistics of one view version and scope."""
        from fsql.registry import catalog

        with self._errors("write"), self._begin(write=True) as conn:
            catalog.save_stats(conn, view, version, scope, as_of, _now(), stats)

    def stats(self, view: str, version: str | None = None, scope: catalog_types.StatsScope | None = None
              ) -> list[catalog_types.StatsRecord]:
        from fsql.registry import catalog

        with self._errors("read"), self._read() as conn:
            return catalog.load_stats(conn, view, version, scope)

    def save_view_shape(self, view: str, version: str, shape: ViewShape) -> None:
        """Replace the stored shape of one view version (see ``ViewShape``)."""
        vs = t.view_shapes
        with self._errors("write"), self._begin(write=True) as conn:
            conn.execute(vs.delete().where(vs.c.view == view, vs.c.version == version))
            conn.execute(vs.insert().values(view=view, version=version, computed_at=_now(), shape=to_json(shape)))

    def view_shapes(self) -> dict[str, ViewShape]:
        """The stored shape of every view's current version (views never measured are absent)."""
        vs, fv = t.view_shapes, t.feature_views
        query = (sa.select(vs.c.view, vs.c.shape)
                 .join(fv, sa.and_(fv.c.name == vs.c.view, fv.c.version == vs.c.version))
                 .where(fv.c.removed_at.is_(None)))
        with self._errors("read"), self._read() as conn:
            return {r.view: from_json(ViewShape, r.shape) for r in conn.execute(query)}

    # -- materialization -----------------------------------------------------------------------

    def watermark(self, view: str, version: str) -> datetime | None:
        """The event-time watermark of the last successful materialization of this version."""
        ms = t.materialization_state
        with self._errors("read"), self._read() as conn:
            return conn.execute(
                sa.select(ms.c.watermark).where(ms.c.view == view, ms.c.version == version)
            ).scalar()

    def start_run(self, view: str, version: str, start: datetime | None, end: datetime | None) -> int:
        """Record a materialization run as 'running' and return its id."""
        vv, ms, runs = t.view_versions, t.materialization_state, t.materialization_runs
        with self._errors("write"), self._begin(write=True) as conn:
            exists = conn.execute(
                sa.select(vv.c.version).where(vv.c.view == view, vv.c.version == version)
            ).first()
            if exists is None:
                raise NotFoundError(
                    f"feature view '{view}' has no version '{version}' in the registry",
                    hint="run `fsql build` first",
                )
            conn.execute(_insert_ignore(conn, ms, {"view": view, "version": version}))
            result = conn.execute(
                runs.insert().values(
                    view=view,
                    version=version,
                    interval_start=start,
                    interval_end=end,
                    outcome="running",
                    started_at=_now(),
                    pid=os.getpid(),
                    host=this_host(),
                )
            )
            return int(result.inserted_primary_key[0])

    def finish_run(
        self,
        run_id: int,
        *,
        rows: int | None,
        outcome: Literal["success", "failed"],
        error: str | None = None,
        watermark: datetime | None = None,
        replace_watermark: bool = False,
    ) -> RunRecord:
        """Close a run. On success, advance the version's watermark to ``watermark`` if it is later.

        The advance is a conditional UPDATE (``watermark IS NULL OR watermark < :new``), so concurrent
        runs finishing in any order never move the watermark backwards.
        """
        if outcome not in ("success", "failed"):
            raise ValueError(f"outcome must be 'success' or 'failed', not {outcome!r}")
        runs, ms = t.materialization_runs, t.materialization_state
        with self._errors("write"), self._begin(write=True) as conn:
            run = conn.execute(sa.select(runs).where(runs.c.id == run_id)).mappings().first()
            if run is None:
                raise NotFoundError(f"no materialization run {run_id}")
            now = _now()
            updated = conn.execute(
                runs.update()
                .where(runs.c.id == run_id, runs.c.outcome == "running")
                .values(
                    rows=rows,
                    outcome=outcome,
                    error=error,
                    finished_at=now,
                    duration_s=(now - run["started_at"]).total_seconds(),
                )
            ).rowcount
            if updated != 1:
                raise RegistryError(f"materialization run {run_id} already finished ({run['outcome']})")
            if outcome == "success":
                where = (ms.c.view == run["view"], ms.c.version == run["version"])
                conn.execute(
                    ms.update()
                    .where(*where, sa.or_(ms.c.last_success_at.is_(None), ms.c.last_success_at < now))
                    .values(last_success_at=now)
                )
                if watermark is not None:
                    # Only forward, so concurrent runs finishing in any order never move it back; a
                    # full recompute (replace_watermark) describes exactly its end and sets it.
                    moves = sa.true() if replace_watermark else sa.or_(ms.c.watermark.is_(None),
                                                                       ms.c.watermark < watermark)
                    conn.execute(ms.update().where(*where, moves).values(watermark=watermark))
            final = conn.execute(sa.select(runs).where(runs.c.id == run_id)).mappings().one()
            return _run_record(final)

    def fail_interrupted_runs(self) -> list[RunRecord]:
        """Mark failed the runs still 'running' whose process on this host is gone (killed, crashed,
        the machine restarted), and return them.

        Only runs started on this host are judged: whether a process on another machine lives cannot
        be told from here, so those stay as they are until a command on their own host looks. A pid
        taken by a newer process counts as gone (the process started after the run did).
        """
        runs = t.materialization_runs
        host = this_host()
        with self._errors("read"), self._read() as conn:
            candidates = conn.execute(
                sa.select(runs.c.id, runs.c.pid, runs.c.started_at)
                .where(runs.c.outcome == "running", runs.c.host == host, runs.c.pid.is_not(None))
            ).all()
        gone = [(run_id, pid) for run_id, pid, started in candidates if not _process_alive(pid, started)]
        if not gone:
            return []
        failed = []
        with self._errors("write"), self._begin(write=True) as conn:
            now = _now()
            for run_id, pid in gone:
                run = conn.execute(sa.select(runs).where(runs.c.id == run_id)).mappings().one()
                updated = conn.execute(
                    runs.update()
                    .where(runs.c.id == run_id, runs.c.outcome == "running")  # another sweep may have won
                    .values(outcome="failed", error=f"interrupted: process {pid} on {host} is gone",
                            finished_at=now, duration_s=(now - run["started_at"]).total_seconds())
                ).rowcount
                if updated:
                    final = conn.execute(sa.select(runs).where(runs.c.id == run_id)).mappings().one()
                    failed.append(_run_record(final))
        return failed

    def runs(self, view: str, version: str | None = None, limit: int = 20) -> list[RunRecord]:
        """The latest runs of a view (of one version when given), newest first."""
        runs = t.materialization_runs
        query = sa.select(runs).where(runs.c.view == view)
        if version is not None:
            query = query.where(runs.c.version == version)
        with self._errors("read"), self._read() as conn:
            rows = conn.execute(query.order_by(runs.c.id.desc()).limit(limit)).mappings()
            return [_run_record(r) for r in rows]


class RegistryTransaction:
    """Writes inside ``Registry.transaction()``; unusable once the block has ended."""

    def __init__(self, registry: Registry, conn: Connection) -> None:
        self._registry = registry
        self._conn = conn
        self._closed = False

    def _connection(self) -> Connection:
        if self._closed:
            raise RegistryError("this registry transaction has already ended")
        return self._conn

    def snapshot(self) -> RegistrySnapshot:
        """The registry as this transaction sees it (including its own uncommitted writes)."""
        with self._registry._errors("read"):
            return _snapshot(self._connection())

    def apply(
        self,
        project: Project,
        *,
        compiled: Mapping[str, Mapping[str, str]] | None = None,
        lineage: Sequence[LineageEdge] = (),
        git_commit: str | None = None,
        source_locations: Mapping[str, str | None] | None = None,
    ) -> ApplyResult:
        """Make the registry's definitions match ``project``.

        Idempotent: applying the same project again writes no row. A view or training set whose
        fingerprint changed gets a new version row; old versions are kept. Objects missing from the
        project get ``removed_at`` (history stays). ``compiled`` maps view name to {dialect: SQL} and is
        merged into the current version's compiled SQL. ``lineage`` holds column-level edges of views and
        training sets; table-level edges are derived from ``depends_on``. Materialization state is never
        touched. Every view or training set whose definition differs from its last revision gets a new
        revision stamped with ``git_commit`` (the project's commit, when it is a git repository).
        ``source_locations`` records where each file source resolved (kept as it was when None).
        """
        conn = self._connection()
        _validate(project, compiled or {}, lineage)
        with self._registry._errors("apply"):
            if self._registry.dialect == "postgresql":
                # Two builds of one registry serialize here instead of failing on duplicate keys.
                key = advisory_key(f"fsql.registry.apply:{self._registry._pg_schema}")
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(key)))
            result = _apply(conn, project, compiled or {}, lineage, _now(), source_locations)
            from fsql.registry import catalog

            catalog.record_revisions(conn, project, git_commit, _now())
            return result

    def reset_watermarks(self, views: Iterable[str]) -> None:
        """Forget the watermarks of every version of ``views``, so the next materialization recomputes
        them: what the online store holds was computed from files the views no longer read."""
        ms = t.materialization_state
        names = sorted(set(views))
        if not names:
            return
        with self._registry._errors("write"):
            conn = self._connection()
            for chunk in _chunks(names):
                conn.execute(ms.update().where(ms.c.view.in_(chunk)).values(watermark=None))


# --------------------------------------------------------------------------------------------------
# apply


def _validate(
    project: Project, compiled: Mapping[str, Mapping[str, str]], lineage: Sequence[LineageEdge]
) -> None:
    groups: list[tuple[str, Mapping[str, Any]]] = [
        ("entity", project.entities),
        ("source", project.sources),
        ("feature view", project.views),
        ("training set", project.training_sets),
        ("model", project.models),
    ]
    for label, objects in groups:
        for key, obj in objects.items():
            if key != obj.name:
                raise RegistryError(f"{label} '{obj.name}' is filed under the name '{key}'")
    for obj in (*project.views.values(), *project.training_sets.values()):
        if not obj.fingerprint:
            kind = "feature view" if isinstance(obj, FeatureView) else "training set"
            raise RegistryError(
                f"{kind} '{obj.name}' has no fingerprint",
                path=obj.path,
                line=obj.line,
                hint="definitions must come from fsql.parsing, which fingerprints them",
            )
    unknown = sorted(set(compiled) - set(project.views))
    if unknown:
        raise RegistryError(f"compiled SQL given for unknown feature view(s): {', '.join(unknown)}")
    for edge in lineage:
        targets = {"view": project.views, "training_set": project.training_sets}.get(edge.downstream_kind)
        if targets is None or edge.downstream_name not in targets:
            raise RegistryError(f"lineage edge for unknown {edge.downstream_kind} '{edge.downstream_name}'")
        current = targets[edge.downstream_name].version
        if edge.downstream_version not in (None, current):
            raise RegistryError(
                f"lineage edge for {edge.downstream_kind} '{edge.downstream_name}' names version "
                f"'{edge.downstream_version}', but the project's version is '{current}'"
            )
        if edge.upstream_kind not in ("source", "view"):
            raise RegistryError(
                f"lineage edge upstream kind must be 'source' or 'view', not '{edge.upstream_kind}'"
            )


Status = Literal["added", "changed", "updated", "unchanged", "removed"]


def _apply(
    conn: Connection,
    project: Project,
    compiled: Mapping[str, Mapping[str, str]],
    lineage: Sequence[LineageEdge],
    now: datetime,
    source_locations: Mapping[str, str | None] | None = None,
) -> ApplyResult:
    _sync_project(conn, project, now)
    entities = _sync_named(
        conn,
        t.entities,
        {
            e.name: {"keys": list(e.keys), "description": e.description, "fingerprint": entity_fingerprint(e)}
            for e in project.entities.values()
        },
        now,
    )
    sources = _sync_named(
        conn,
        t.sources,
        {
            s.name: {"spec": to_json(s), "description": s.description, "fingerprint": source_fingerprint(s),
                     **({"location": source_locations.get(s.name)} if source_locations is not None else {})}
            for s in project.sources.values()
        },
        now,
    )
    views = _sync_named(
        conn,
        t.feature_views,
        {
            v.name: {
                "version": v.version,
                "fingerprint": v.fingerprint,
                "entity": v.entity,
                "owner": v.owner,
                "tags": list(v.tags),
                "description": v.description,
                "path": v.path,
                "line": v.line,
            }
            for v in project.views.values()
        },
        now,
    )
    _touch(views, _sync_view_versions(conn, list(project.views.values()), compiled, now))
    training_sets = _sync_named(
        conn,
        t.training_sets,
        {
            s.name: {
                "version": s.version,
                "fingerprint": s.fingerprint,
                "owner": s.owner,
                "tags": list(s.tags),
                "description": s.description,
                "path": s.path,
                "line": s.line,
            }
            for s in project.training_sets.values()
        },
        now,
    )
    _touch(training_sets, _sync_training_set_versions(conn, list(project.training_sets.values()), now))
    touched = _sync_lineage(conn, project, lineage)
    _touch(views, {name for kind, name in touched if kind == "view"})
    _touch(training_sets, {name for kind, name in touched if kind == "training_set"})
    models = _sync_named(
        conn,
        t.models,
        {
            m.name: {"training_set": m.training_set, "spec": to_json(m), "fingerprint": model_fingerprint(m)}
            for m in project.models.values()
        },
        now,
    )
    return ApplyResult(
        entities=_changes(entities),
        sources=_changes(sources),
        views=_changes(views),
        training_sets=_changes(training_sets),
        models=_changes(models),
    )


def _touch(statuses: dict[str, Status], names: Iterable[str]) -> None:
    for name in names:
        if statuses.get(name) == "unchanged":
            statuses[name] = "updated"


def _changes(statuses: Mapping[str, Status]) -> Changes:
    def names(status: Status) -> tuple[str, ...]:
        return tuple(sorted(n for n, s in statuses.items() if s == status))

    return Changes(
        added=names("added"),
        changed=names("changed"),
        updated=names("updated"),
        removed=names("removed"),
        unchanged=names("unchanged"),
    )


def _sync_project(conn: Connection, project: Project, now: datetime) -> None:
    p = t.projects
    rows = conn.execute(sa.select(p.c.name, p.c.dialect)).all()
    if [(r.name, r.dialect) for r in rows] == [(project.name, project.dialect)]:
        return
    # One registry holds one project; a rename replaces the row.
    conn.execute(p.delete())
    conn.execute(p.insert().values(name=project.name, dialect=project.dialect, updated_at=now))


def _sync_named(
    conn: Connection, table: sa.Table, desired: Mapping[str, Mapping[str, Any]], now: datetime
) -> dict[str, Status]:
    """Upsert one row per named object, only where something differs; mark missing ones removed."""
    existing = {r["name"]: r for r in conn.execute(sa.select(table)).mappings()}
    statuses: dict[str, Status] = {}
    for name, values in desired.items():
        row = existing.get(name)
        if row is None:
            conn.execute(
                table.insert().values(name=name, **values, created_at=now, updated_at=now, removed_at=None)
            )
            statuses[name] = "added"
        elif row["removed_at"] is not None:
            conn.execute(
                table.update().where(table.c.name == name).values(**values, updated_at=now, removed_at=None)
            )
            statuses[name] = "added"
        elif any(row[k] != v for k, v in values.items()):
            conn.execute(table.update().where(table.c.name == name).values(**values, updated_at=now))
            statuses[name] = "changed" if row["fingerprint"] != values["fingerprint"] else "updated"
        else:
            statuses[name] = "unchanged"
    for name, row in existing.items():
        if name not in desired and row["removed_at"] is None:
            conn.execute(table.update().where(table.c.name == name).values(removed_at=now, updated_at=now))
            statuses[name] = "removed"
    return statuses


def _feature_rows(view: FeatureView) -> list[dict[str, Any]]:
    return [
        {
            "view": view.name,
            "version": view.version,
            "name": c.name,
            "position": i,
            "dtype": c.dtype,
            "description": c.description,
            "owner": view.owner,
            "tags": list(view.tags),
        }
        for i, c in enumerate(view.features)
    ]


def _sync_view_versions(
    conn: Connection, views: list[FeatureView], compiled: Mapping[str, Mapping[str, str]], now: datetime
) -> set[str]:
    """Insert new versions; refresh metadata of existing ones. Returns names whose version row changed."""
    vv, ft = t.view_versions, t.features
    existing: dict[tuple[str, str], Any] = {}
    for chunk in _chunks([(v.name, v.version) for v in views]):
        query = sa.select(vv).where(sa.tuple_(vv.c.view, vv.c.version).in_(chunk))
        existing.update({(r["view"], r["version"]): r for r in conn.execute(query).mappings()})
    touched: set[str] = set()
    new_features: list[dict[str, Any]] = []
    for view in views:
        definition = to_json(view)
        sql = dict(compiled.get(view.name, {}))
        row = existing.get((view.name, view.version))
        if row is None:
            conn.execute(
                vv.insert().values(
                    view=view.name,
                    version=view.version,
                    fingerprint=view.fingerprint,
                    definition=definition,
                    compiled=sql,
                    created_at=now,
                )
            )
            new_features.extend(_feature_rows(view))
            continue
        if row["fingerprint"] != view.fingerprint:
            raise RegistryError(
                f"feature view '{view.name}': version '{view.version}' already belongs to fingerprint "
                f"{row['fingerprint']}, not {view.fingerprint}",
                path=view.path,
                line=view.line,
                hint="a 12-character hash prefix collided; change the view's SQL slightly",
            )
        # Versions are identified by fingerprint, which leaves out descriptions, owner, tags, path and
        # inferred types; those are refreshed in place so the catalog shows what the files say now.
        merged = {**row["compiled"], **sql}
        values: dict[str, Any] = {}
        if row["definition"] != definition:
            values["definition"] = definition
        if row["compiled"] != merged:
            values["compiled"] = merged
        if not values:
            continue
        conn.execute(vv.update().where(vv.c.view == view.name, vv.c.version == view.version).values(**values))
        if "definition" in values:
            conn.execute(ft.delete().where(ft.c.view == view.name, ft.c.version == view.version))
            new_features.extend(_feature_rows(view))
        touched.add(view.name)
    if new_features:
        conn.execute(ft.insert(), new_features)
    return touched


def _sync_training_set_versions(conn: Connection, sets: list[TrainingSet], now: datetime) -> set[str]:
    tv, tf = t.training_set_versions, t.training_set_features
    existing: dict[tuple[str, str], Any] = {}
    for chunk in _chunks([(s.name, s.version) for s in sets]):
        query = sa.select(tv).where(sa.tuple_(tv.c.training_set, tv.c.version).in_(chunk))
        existing.update({(r["training_set"], r["version"]): r for r in conn.execute(query).mappings()})
    touched: set[str] = set()
    new_features: list[dict[str, Any]] = []
    for ts in sets:
        definition = to_json(ts)
        features = [
            {
                "training_set": ts.name,
                "version": ts.version,
                "view": ref.view,
                "feature": ref.feature,
                "position": i,
            }
            for i, ref in enumerate(dict.fromkeys(ts.features))
        ]
        row = existing.get((ts.name, ts.version))
        if row is None:
            conn.execute(
                tv.insert().values(
                    training_set=ts.name,
                    version=ts.version,
                    fingerprint=ts.fingerprint,
                    definition=definition,
                    created_at=now,
                )
            )
            new_features.extend(features)
            continue
        if row["fingerprint"] != ts.fingerprint:
            raise RegistryError(
                f"training set '{ts.name}': version '{ts.version}' already belongs to fingerprint "
                f"{row['fingerprint']}, not {ts.fingerprint}",
                path=ts.path,
                line=ts.line,
            )
        if row["definition"] == definition:
            continue
        conn.execute(
            tv.update()
            .where(tv.c.training_set == ts.name, tv.c.version == ts.version)
            .values(definition=definition)
        )
        conn.execute(tf.delete().where(tf.c.training_set == ts.name, tf.c.version == ts.version))
        new_features.extend(features)
        touched.add(ts.name)
    if new_features:
        conn.execute(tf.insert(), new_features)
    return touched


_EdgeKey = tuple[str, str, str, str, str, str, str]
_EDGE_COLUMNS = (
    "downstream_kind",
    "downstream_name",
    "downstream_version",
    "downstream_column",
    "upstream_kind",
    "upstream_name",
    "upstream_column",
)


def _sync_lineage(conn: Connection, project: Project, lineage: Sequence[LineageEdge]) -> set[tuple[str, str]]:
    """Make the lineage of the project's current versions match; returns the (kind, name)s touched."""
    lt = t.lineage
    versions: dict[tuple[str, str], str] = {("view", v.name): v.version for v in project.views.values()}
    versions.update({("training_set", s.name): s.version for s in project.training_sets.values()})

    def upstream_kind(name: str) -> str:
        return "view" if name in project.views else "source"

    desired: set[_EdgeKey] = set()
    for obj, kind in (
        *((v, "view") for v in project.views.values()),
        *((s, "training_set") for s in project.training_sets.values()),
    ):
        for dep in obj.depends_on:
            desired.add((kind, obj.name, obj.version, "", upstream_kind(dep), dep, ""))
    for e in lineage:
        version = versions[(e.downstream_kind, e.downstream_name)]
        desired.add(
            (
                e.downstream_kind,
                e.downstream_name,
                version,
                e.downstream_column or "",
                e.upstream_kind,
                e.upstream_name,
                e.upstream_column or "",
            )
        )
    existing: set[_EdgeKey] = set()
    keys = [(kind, name, version) for (kind, name), version in versions.items()]
    for chunk in _chunks(keys, 300):
        query = sa.select(*(lt.c[c] for c in _EDGE_COLUMNS)).where(
            sa.tuple_(lt.c.downstream_kind, lt.c.downstream_name, lt.c.downstream_version).in_(chunk)
        )
        existing.update(tuple(r) for r in conn.execute(query))
    stale, missing = existing - desired, desired - existing
    for edge in stale:
        conn.execute(lt.delete().where(*(lt.c[c] == v for c, v in zip(_EDGE_COLUMNS, edge, strict=True))))
    if missing:
        conn.execute(lt.insert(), [dict(zip(_EDGE_COLUMNS, e, strict=True)) for e in sorted(missing)])
    return {(e[0], e[1]) for e in stale | missing}


def _insert_ignore(conn: Connection, table: sa.Table, values: dict[str, Any]) -> sa.Executable:
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table).values(**values).on_conflict_do_nothing()


# --------------------------------------------------------------------------------------------------
# reads


def _snapshot(conn: Connection) -> RegistrySnapshot:
    fv, vv, ts, tv = t.feature_views, t.view_versions, t.training_sets, t.training_set_versions
    project = conn.execute(sa.select(t.projects.c.name)).scalar()
    entities = {
        r["name"]: r
        for r in conn.execute(sa.select(t.entities).where(t.entities.c.removed_at.is_(None))).mappings()
    }
    sources = {
        r["name"]: r
        for r in conn.execute(sa.select(t.sources).where(t.sources.c.removed_at.is_(None))).mappings()
    }
    models = {
        r["name"]: r
        for r in conn.execute(sa.select(t.models).where(t.models.c.removed_at.is_(None))).mappings()
    }
    views = {
        r["name"]: r
        for r in conn.execute(
            sa.select(fv.c.name, fv.c.fingerprint, vv.c.definition)
            .join(vv, sa.and_(vv.c.view == fv.c.name, vv.c.version == fv.c.version))
            .where(fv.c.removed_at.is_(None))
        ).mappings()
    }
    sets = {
        r["name"]: r
        for r in conn.execute(
            sa.select(ts.c.name, ts.c.fingerprint, tv.c.definition)
            .join(tv, sa.and_(tv.c.training_set == ts.c.name, tv.c.version == ts.c.version))
            .where(ts.c.removed_at.is_(None))
        ).mappings()
    }
    return RegistrySnapshot(
        project=project,
        entities={n: r["fingerprint"] for n, r in entities.items()},
        sources={n: r["fingerprint"] for n, r in sources.items()},
        views={n: r["fingerprint"] for n, r in views.items()},
        training_sets={n: r["fingerprint"] for n, r in sets.items()},
        models={n: r["fingerprint"] for n, r in models.items()},
        entity_definitions={n: Entity(n, tuple(r["keys"]), r["description"]) for n, r in entities.items()},
        source_definitions={n: from_json(Source, r["spec"]) for n, r in sources.items()},
        view_definitions={n: from_json(FeatureView, r["definition"]) for n, r in views.items()},
        training_set_definitions={n: from_json(TrainingSet, r["definition"]) for n, r in sets.items()},
        model_definitions={n: from_json(Model, r["spec"]) for n, r in models.items()},
        source_locations={n: r["location"] for n, r in sources.items()},
    )


def _view_records(
    conn: Connection, *, name: str | None = None, include_removed: bool = False
) -> list[ViewRecord]:
    fv, vv, ms = t.feature_views, t.view_versions, t.materialization_state
    query = (
        sa.select(fv, vv.c.definition, ms.c.watermark, ms.c.last_success_at)
        .join(vv, sa.and_(vv.c.view == fv.c.name, vv.c.version == fv.c.version))
        .outerjoin(ms, sa.and_(ms.c.view == fv.c.name, ms.c.version == fv.c.version))
        .order_by(fv.c.name)
    )
    if name is not None:
        query = query.where(fv.c.name == name)
    if not include_removed:
        query = query.where(fv.c.removed_at.is_(None))
    records = []
    for r in conn.execute(query).mappings():
        view = from_json(FeatureView, r["definition"])
        records.append(
            ViewRecord(
                name=r["name"],
                version=r["version"],
                fingerprint=r["fingerprint"],
                entity=r["entity"],
                entity_keys=view.entity_keys,
                timestamp=view.timestamp,
                created=view.created,
                features=tuple(FeatureRecord(c.name, c.dtype, c.description) for c in view.features),
                owner=r["owner"],
                tags=tuple(r["tags"]),
                ttl=view.ttl,
                description=r["description"],
                path=r["path"],
                line=r["line"],
                depends_on=view.depends_on,
                created_at=r["created_at"],
                updated_at=r["updated_at"],
                removed_at=r["removed_at"],
                last_materialized_at=r["last_success_at"],
                watermark=r["watermark"],
            )
        )
    return records


def _training_set_records(
    conn: Connection, *, name: str | None = None, include_removed: bool = False
) -> list[TrainingSetRecord]:
    ts, tv, md = t.training_sets, t.training_set_versions, t.models
    query = (
        sa.select(ts, tv.c.definition)
        .join(tv, sa.and_(tv.c.training_set == ts.c.name, tv.c.version == ts.c.version))
        .order_by(ts.c.name)
    )
    if name is not None:
        query = query.where(ts.c.name == name)
    if not include_removed:
        query = query.where(ts.c.removed_at.is_(None))
    rows = list(conn.execute(query).mappings())
    bound: dict[str, list[str]] = {}
    for m in conn.execute(
        sa.select(md.c.name, md.c.training_set).where(md.c.removed_at.is_(None)).order_by(md.c.name)
    ):
        bound.setdefault(m.training_set, []).append(m.name)
    records = []
    for r in rows:
        definition = from_json(TrainingSet, r["definition"])
        records.append(
            TrainingSetRecord(
                name=r["name"],
                version=r["version"],
                fingerprint=r["fingerprint"],
                timestamp=definition.timestamp,
                features=definition.features,
                owner=r["owner"],
                tags=tuple(r["tags"]),
                description=r["description"],
                path=r["path"],
                line=r["line"],
                depends_on=definition.depends_on,
                models=tuple(bound.get(r["name"], ())),
                created_at=r["created_at"],
                updated_at=r["updated_at"],
                removed_at=r["removed_at"],
            )
        )
    return records


def _not_found(conn: Connection, label: str, table: sa.Table, name: str) -> NotFoundError:
    names = [r[0] for r in conn.execute(sa.select(table.c.name).where(table.c.removed_at.is_(None)))]
    return NotFoundError(f"no {label} named '{name}' in the registry", hint=did_you_mean(name, names))


def _run_record(r: Mapping[str, Any]) -> RunRecord:
    return RunRecord(
        id=r["id"],
        view=r["view"],
        version=r["version"],
        interval_start=r["interval_start"],
        interval_end=r["interval_end"],
        rows=r["rows"],
        duration_s=r["duration_s"],
        outcome=r["outcome"],
        error=r["error"],
        started_at=r["started_at"],
        finished_at=r["finished_at"],
        pid=r["pid"],
        host=r["host"],
    )


def _edge(row: Mapping[str, Any]) -> LineageEdge:
    return LineageEdge(
        downstream_kind=row["downstream_kind"],
        downstream_name=row["downstream_name"],
        downstream_version=row["downstream_version"],
        downstream_column=row["downstream_column"] or None,
        upstream_kind=row["upstream_kind"],
        upstream_name=row["upstream_name"],
        upstream_column=row["upstream_column"] or None,
    )


@dataclass
class _Lineage:
    """Lineage over current objects: the lineage table plus training-set features and models."""

    conn: Connection
    _current: dict[tuple[str, str], str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for kind, table in (("view", t.feature_views), ("training_set", t.training_sets)):
            for r in self.conn.execute(
                sa.select(table.c.name, table.c.version).where(table.c.removed_at.is_(None))
            ):
                self._current[(kind, r.name)] = r.version

    def resolve(self, name: str, kind: ObjectKind | None) -> tuple[ObjectKind, str | None]:
        order: tuple[ObjectKind, ...] = (kind,) if kind else ("view", "training_set", "source", "model")
        for candidate in order:
            if candidate in ("view", "training_set") and (candidate, name) in self._current:
                return candidate, self._current[(candidate, name)]
            if candidate in ("source", "model", "entity"):
                table = {"source": t.sources, "model": t.models, "entity": t.entities}[candidate]
                found = self.conn.execute(
                    sa.select(table.c.name, table.c.fingerprint).where(table.c.name == name,
                                                                       table.c.removed_at.is_(None))
                ).first()
                if found is not None:
                    # A model's version is its registered spec's (`fsql ls`); sources and entities have none.
                    return candidate, found.fingerprint[:12] if candidate == "model" else None
        names = {n for _, n in self._current}
        for table in (t.sources, t.models):
            names.update(
                r[0] for r in self.conn.execute(sa.select(table.c.name).where(table.c.removed_at.is_(None)))
            )
        label = kind.replace("_", " ") if kind else "view, training set, source or model"
        raise NotFoundError(f"no {label} named '{name}' in the registry", hint=did_you_mean(name, names))

    def direct(self, kind: str, name: str, *, up: bool) -> list[LineageEdge]:
        lt, tf, md = t.lineage, t.training_set_features, t.models
        edges: list[LineageEdge] = []
        version = self._current.get((kind, name))
        if up:
            if version is not None:
                query = sa.select(lt).where(
                    lt.c.downstream_kind == kind,
                    lt.c.downstream_name == name,
                    lt.c.downstream_version == version,
                )
                edges.extend(_edge(r) for r in self.conn.execute(query).mappings())
            if kind == "training_set" and version is not None:
                query = (
                    sa.select(tf.c.view, tf.c.feature)
                    .where(tf.c.training_set == name, tf.c.version == version)
                    .order_by(tf.c.position)
                )
                edges.extend(
                    LineageEdge(
                        downstream_kind="training_set",
                        downstream_name=name,
                        downstream_version=version,
                        downstream_column=r.feature,
                        upstream_kind="view",
                        upstream_name=r.view,
                        upstream_column=r.feature,
                    )
                    for r in self.conn.execute(query)
                )
            if kind == "model":
                row = self.conn.execute(sa.select(md.c.training_set).where(md.c.name == name)).first()
                if row is not None:
                    edges.append(
                        LineageEdge(
                            downstream_kind="model",
                            downstream_name=name,
                            upstream_kind="training_set",
                            upstream_name=row.training_set,
                        )
                    )
            return edges
        if kind in ("source", "view"):
            query = sa.select(lt).where(lt.c.upstream_kind == kind, lt.c.upstream_name == name)
            for r in self.conn.execute(query).mappings():
                if self._current.get((r["downstream_kind"], r["downstream_name"])) == r["downstream_version"]:
                    edges.append(_edge(r))
        if kind == "view":
            query = sa.select(tf.c.training_set, tf.c.version, tf.c.feature).where(tf.c.view == name)
            for r in self.conn.execute(query):
                if self._current.get(("training_set", r.training_set)) == r.version:
                    edges.append(
                        LineageEdge(
                            downstream_kind="training_set",
                            downstream_name=r.training_set,
                            downstream_version=r.version,
                            downstream_column=r.feature,
                            upstream_kind="view",
                            upstream_name=name,
                            upstream_column=r.feature,
                        )
                    )
        if kind == "training_set":
            query = sa.select(md.c.name).where(md.c.training_set == name, md.c.removed_at.is_(None))
            edges.extend(
                LineageEdge(
                    downstream_kind="model",
                    downstream_name=r.name,
                    upstream_kind="training_set",
                    upstream_name=name,
                )
                for r in self.conn.execute(query)
            )
        return edges

    def walk(self, kind: str, name: str, *, up: bool, transitive: bool) -> tuple[LineageEdge, ...]:
        seen_nodes = {(kind, name)}
        queue = [(kind, name)]
        edges: dict[LineageEdge, None] = {}
        while queue:
            node = queue.pop(0)
            for edge in self.direct(*node, up=up):
                edges.setdefault(edge, None)
                nxt = (
                    (edge.upstream_kind, edge.upstream_name)
                    if up
                    else (edge.downstream_kind, edge.downstream_name)
                )
                if transitive and nxt not in seen_nodes:
                    seen_nodes.add(nxt)
                    queue.append(nxt)
        return tuple(edges)
