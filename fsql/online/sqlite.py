"""The SQLite online store: the embedded default, one file, no server.

Tables of one view version, ``base = {prefix}:{view}:{version}`` (quoted):

- ``{base}``: the active generation, the one readers see;
- ``{base}%g<id>``: generations being built (``begin_generation``); ``commit_generation`` drops the
  active table and renames the new one in its place, in one transaction, so readers see the old or
  the new generation and nothing in between; an id is the as-of instant, the begin time and a random
  suffix, in hex, so ids sort from older to newer;
- ``{base}%done@<as-of>``: the completion marker, an empty table created only by ``set_marker`` and
  ``commit_generation`` (a write creates the data table, never the marker, so a store that lost its
  file and then crashed mid-run is not mistaken for a complete one); its name carries the active
  generation's as-of instant.

Every data table::

    k         TEXT PRIMARY KEY  -- encoding.key_text of the entity key tuple
    event_ts  INTEGER NOT NULL  -- µs since the epoch, UTC
    created   INTEGER           -- µs since the epoch, UTC; NULL ranks lowest
    payload   BLOB NOT NULL     -- msgpack of the feature values (encoding.RowCodec)

Values live in the msgpack payload rather than in typed columns because SQLite stores NaN as NULL and
has no exact decimal or timestamp types. Newer-wins is one ``INSERT ... ON CONFLICT DO UPDATE ... WHERE``
statement per row, inside one ``BEGIN IMMEDIATE`` transaction per batch: the write lock is taken up
front, so two processes writing at once queue on ``busy_timeout`` instead of failing on a lock upgrade.
The WHERE compares ``(event_ts, created)`` in SQL and, on a tie only, the payload values with
``order.payload_ranks_higher``, registered as a SQL function on each connection.
The file runs in WAL mode, so readers are not blocked by a writer.
"""

from __future__ import annotations

import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from datetime import datetime
from operator import itemgetter
from pathlib import Path
from typing import Any

import pyarrow as pa

from fsql.config import DEFAULT_ONLINE_PATH
from fsql.errors import OnlineStoreError
from fsql.online.base import CommitOutcome, OnlineRow, OnlineTable, as_of_micros, namespace, not_building
from fsql.online.encoding import CodecCache, encode_keys, encode_times, key_text, micros_to_datetime
from fsql.online.order import payload_ranks_higher

DEFAULT_PATH = DEFAULT_ONLINE_PATH
_MAX_VARIABLES = 10_000  # SQLite >= 3.32 allows 32766 host parameters per statement

_CREATE = """
CREATE TABLE IF NOT EXISTS {t} (
    k TEXT PRIMARY KEY NOT NULL,
    event_ts INTEGER NOT NULL,
    created INTEGER,
    payload BLOB NOT NULL
) WITHOUT ROWID
"""

_UPSERT = """
INSERT INTO {t} (k, event_ts, created, payload) VALUES (?, ?, ?, ?)
ON CONFLICT (k) DO UPDATE SET
    event_ts = excluded.event_ts, created = excluded.created, payload = excluded.payload
WHERE excluded.event_ts > {t}.event_ts
   OR (excluded.event_ts = {t}.event_ts AND (
       (excluded.created IS NOT NULL AND ({t}.created IS NULL OR excluded.created > {t}.created))
       OR (excluded.created IS {t}.created AND fsql_ranks_higher(excluded.payload, {t}.payload))))
"""

_GENERATION = re.compile(r"g[0-9a-f]{36}")


def _as_of_hex(as_of: datetime | None) -> str:
    """An as-of instant as 16 hex digits that sort like the instants (0 = unknown sorts first)."""
    return f"{as_of_micros(as_of) + (1 << 63):016x}"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class SqliteOnlineStore:
    """Online store in one SQLite file; safe for several threads and processes at once."""

    def __init__(
        self, path: str | Path | None = None, *, prefix: str = "fsql", busy_timeout: float = 30.0
    ) -> None:
        self.path = str(path or DEFAULT_PATH)
        self.prefix = prefix
        self.busy_timeout = busy_timeout
        self._memory = self.path == ":memory:"
        # A file gets one connection per thread (WAL lets readers run beside a writer); an in-memory
        # database exists only in its one connection, so it is shared behind a lock.
        self._lock = threading.RLock() if self._memory else nullcontext()
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._codecs = CodecCache()
        self._shared = self._connect() if self._memory else None
        if not self._memory:
            self._local.con = self._connect()

    def _connect(self) -> sqlite3.Connection:
        try:
            if not self._memory:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            con = sqlite3.connect(
                self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
            )
            con.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            con.create_function("fsql_ranks_higher", 2, payload_ranks_higher, deterministic=True)
            if not self._memory:
                self._enable_wal(con)
                # With WAL, NORMAL only risks the last transactions on power loss, never corruption;
                # materialize re-runs are idempotent.
                con.execute("PRAGMA synchronous = NORMAL")
        except (sqlite3.Error, OSError) as exc:
            raise OnlineStoreError(
                f"cannot open the SQLite online store at {self.path}: {exc}",
                hint="check that the directory exists and is writable, or set [online] path in fsql.toml",
            ) from exc
        with self._connections_lock:
            self._connections.append(con)
        return con

    def _enable_wal(self, con: sqlite3.Connection) -> None:
        # Switching a new file to WAL needs an exclusive lock, and SQLite reports BUSY for it without
        # calling the busy handler, so two processes opening a new file at once must retry by hand.
        # WAL is persistent: once one connection has switched the file, the others only read it.
        deadline = time.monotonic() + self.busy_timeout
        delay = 0.001
        while True:
            try:
                con.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.1)

    @property
    def _con(self) -> sqlite3.Connection:
        if self._shared is not None:
            return self._shared
        con = getattr(self._local, "con", None)
        if con is None:
            con = self._local.con = self._connect()
        return con

    def _table(self, table: OnlineTable) -> str:
        return _quote(namespace(self.prefix, table).rstrip(":"))

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            hint = None
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                hint = "another process held the write lock longer than busy_timeout; retry the write"
            raise OnlineStoreError(
                f"SQLite online store {self.path} failed while {action}: {exc}", hint=hint
            ) from exc

    def write_batch(self, table: OnlineTable, batch: pa.RecordBatch, *, generation: str | None = None) -> int:
        """Upsert newer-wins in one transaction; returns the number of rows inserted or replaced."""
        if batch.num_rows == 0:
            return 0
        codec = self._codecs.get(table)
        texts = encode_keys(table, batch)
        event_us, created_us, present = encode_times(batch)
        payloads = codec.encode_payloads(batch)
        rows = [
            (text, ev, cr if has else None, payload)
            for text, ev, cr, has, payload in zip(
                texts, event_us.tolist(), created_us.tolist(), present.tolist(), payloads, strict=True
            )
            if text is not None
        ]
        # Key order makes the B-tree inserts sequential: ~3x faster than arrival order on large batches.
        # The sort is stable, so rows of one key (should a batch repeat one) keep their order.
        rows.sort(key=itemgetter(0))
        with self._transaction(f"writing {table.view} (version {table.version})") as con:
            if generation is None:
                # Every time, not cached: another process may have dropped the table since.
                con.execute(_CREATE.format(t=self._table(table)))
                targets = [self._base(table), *self._building(con, table)]
            elif self._generation_exists(con, table, generation):
                targets = [self._base(table) + "%" + generation]
            else:
                raise not_building(table, generation)
            written = 0
            for i, name in enumerate(targets):
                before = con.total_changes
                con.executemany(_UPSERT.format(t=_quote(name)), rows)
                if i == 0:
                    written = con.total_changes - before
        return written

    def read(
        self, requests: Sequence[tuple[OnlineTable, Sequence[tuple[Any, ...]]]]
    ) -> list[list[OnlineRow | None]]:
        out: list[list[OnlineRow | None]] = []
        with self._lock, self._errors("reading"):
            con = self._con
            if len(requests) == 1:  # one SELECT is already one snapshot
                table, entity_keys = requests[0]
                return [self._read_table(con, table, entity_keys)]
            # One read transaction: every table is read from the same snapshot.
            con.execute("BEGIN")
            try:
                for table, entity_keys in requests:
                    out.append(self._read_table(con, table, entity_keys))
            finally:
                con.execute("COMMIT")
        return out

    def _read_table(
        self, con: sqlite3.Connection, table: OnlineTable, entity_keys: Sequence[tuple[Any, ...]]
    ) -> list[OnlineRow | None]:
        texts = [key_text(key) for key in entity_keys]
        wanted = list({t for t in texts if t is not None})
        found: dict[str, tuple[int, int | None, bytes]] = {}
        name = self._table(table)
        try:
            for i in range(0, len(wanted), _MAX_VARIABLES):
                part = wanted[i : i + _MAX_VARIABLES]
                sql = f"SELECT k, event_ts, created, payload FROM {name} WHERE k IN ({','.join('?' * len(part))})"
                for k, ev, cr, payload in con.execute(sql, part):
                    found[k] = (ev, cr, payload)
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return [None] * len(texts)  # nothing materialized for this version yet
            raise
        codec = self._codecs.get(table)
        rows: list[OnlineRow | None] = []
        for text in texts:
            hit = None if text is None else found.get(text)
            if hit is None:
                rows.append(None)
            else:
                ev, cr, payload = hit
                rows.append(
                    OnlineRow(
                        micros_to_datetime(ev),
                        None if cr is None else micros_to_datetime(cr),
                        codec.decode_values(payload),
                    )
                )
        return rows

    def instance_id(self) -> str | None:
        return None  # a file does not lose data behind the store's back

    def _base(self, table: OnlineTable) -> str:
        return namespace(self.prefix, table).rstrip(":")

    def _tables(self, con: sqlite3.Connection, table: OnlineTable, suffix: str) -> list[str]:
        """Names of the tables ``{base}{suffix}...``, sorted."""
        start = self._base(table) + suffix
        rows = con.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND substr(name, 1, ?) = ? ORDER BY name",
            (len(start), start),
        )
        return [name for (name,) in rows]

    def _building(self, con: sqlite3.Connection, table: OnlineTable) -> list[str]:
        return self._tables(con, table, "%g")

    def _exists(self, con: sqlite3.Connection, name: str) -> bool:
        row = con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone()
        return row is not None

    def _generation_exists(self, con: sqlite3.Connection, table: OnlineTable, generation: str) -> bool:
        return bool(_GENERATION.fullmatch(generation)) and self._exists(
            con, self._base(table) + "%" + generation
        )

    @contextmanager
    def _transaction(self, action: str) -> Iterator[sqlite3.Connection]:
        with self._lock, self._errors(action):
            con = self._con
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def _marker_tables(self, con: sqlite3.Connection, table: OnlineTable) -> list[str]:
        return self._tables(con, table, "%done")

    def _active_as_of(self, con: sqlite3.Connection, table: OnlineTable) -> str:
        """The active generation's as-of, as the 16 hex digits of ``_as_of_hex`` (0 when unknown)."""
        found = [name.partition("%done@")[2] for name in self._marker_tables(con, table)]
        return max(found, default="") or _as_of_hex(None)

    def _mark(self, con: sqlite3.Connection, table: OnlineTable, as_of: str) -> None:
        for name in self._marker_tables(con, table):
            con.execute(f"DROP TABLE {_quote(name)}")
        con.execute(_CREATE.format(t=_quote(f"{self._base(table)}%done@{as_of}")))

    def has_marker(self, table: OnlineTable) -> bool:
        """Whether a run completed into this version since the file was (re)created."""
        with self._lock, self._errors("checking the marker"):
            return bool(self._marker_tables(self._con, table))

    def set_marker(
        self, table: OnlineTable, *, instance: str | None = None, as_of: datetime | None = None
    ) -> bool:
        with self._transaction("setting the marker") as con:
            self._mark(con, table, max(self._active_as_of(con, table), _as_of_hex(as_of)))
        return True

    def clear_marker(self, table: OnlineTable) -> None:
        with self._transaction("clearing the marker") as con:
            for name in self._marker_tables(con, table):
                con.execute(f"DROP TABLE {_quote(name)}")

    def begin_generation(self, table: OnlineTable, *, as_of: datetime | None = None) -> str:
        # Names sort by (as-of, begin time) and never repeat, so "older" is a string comparison and a
        # slow writer of a freed generation cannot write into a newer one.
        generation = f"g{_as_of_hex(as_of)}{time.time_ns() // 1000:016x}{secrets.randbits(16):04x}"
        with self._lock, self._errors(f"starting a generation of {table.view} (version {table.version})"):
            self._con.execute(_CREATE.format(t=_quote(self._base(table) + "%" + generation)))
        return generation

    def commit_generation(
        self, table: OnlineTable, generation: str, *, instance: str | None = None
    ) -> CommitOutcome:
        base = self._base(table)
        name = base + "%" + generation
        action = f"switching {table.view} (version {table.version}) to generation {generation}"
        with self._transaction(action) as con:
            if not self._generation_exists(con, table, generation):
                raise not_building(table, generation)
            as_of = generation[1:17]
            if self._active_as_of(con, table) > as_of:
                con.execute(f"DROP TABLE {_quote(name)}")
                return "superseded"
            con.execute(f"DROP TABLE IF EXISTS {_quote(base)}")
            con.execute(f"ALTER TABLE {_quote(name)} RENAME TO {_quote(base)}")
            for other in self._building(con, table):
                if other < name:  # older: as of an earlier time, or begun earlier
                    con.execute(f"DROP TABLE {_quote(other)}")
            self._mark(con, table, as_of)
        return "committed"

    def abort_generation(self, table: OnlineTable, generation: str) -> None:
        if not _GENERATION.fullmatch(generation):
            return
        name = _quote(self._base(table) + "%" + generation)
        with self._lock, self._errors(f"aborting generation {generation} of {table.view}"):
            self._con.execute(f"DROP TABLE IF EXISTS {name}")

    def drop(self, table: OnlineTable) -> None:
        action = f"dropping {table.view} (version {table.version})"
        with self._transaction(action) as con:
            for name in [self._base(table), *self._tables(con, table, "%")]:
                con.execute(f"DROP TABLE IF EXISTS {_quote(name)}")

    def close(self) -> None:
        with self._connections_lock:
            for con in self._connections:
                con.close()
            self._connections.clear()
        self._local = threading.local()
        self._shared = None
