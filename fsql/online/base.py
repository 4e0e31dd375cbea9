"""The online-store protocol: one small interface, implemented by ``redis.py`` and ``sqlite.py``.

Semantics every store guarantees (DESIGN.md section 4):

- **Newer-wins on the whole PIT tie order, atomically in the store.** A written row replaces the stored
  row of the same entity only if it ranks strictly higher in the order of DESIGN.md section 3 rule 4:
  ``event_ts``, then ``created`` (NULL lowest), then each feature value in ``OnlineTable.features``
  order (see ``order``). Rows that rank level or lower leave the stored row as it is, so re-writing is
  idempotent and concurrent writers of the same keys never make a value regress.
- **Namespaced by view version.** Rows of ``OnlineTable(view, version=A)`` are never read through
  ``version=B``; ``drop`` removes one version only.
- **Generations.** A version's keyspace has one *active* generation, the one readers see, and any
  number of generations being built. A full recompute writes a fresh generation (``begin_generation``,
  ``write_batch(..., generation=g)``) and ``commit_generation`` switches readers to it atomically and
  frees the old one: readers never see a half-written generation, and entities the recompute did not
  write are no longer served. ``write_batch`` without a generation (incremental runs) writes
  newer-wins into the active generation *and* every generation being built, so a recompute running
  beside it does not lose its rows. Committing generation g also frees every generation begun before
  g that is still being built (a slower or crashed recompute of older data): writing to or committing
  a freed generation raises ``OnlineStoreError``.
- **Completion marker.** ``has_marker`` is true only after ``set_marker`` or ``commit_generation``
  succeeded since the store last lost its data (writes alone never create it). Both accept the
  ``instance_id()`` read at the start of the run and then act only if the server is still that
  instance, atomically, so a restart that lost the run's rows can never leave a marker behind.
- **A run's call order** (so that a restart of the store between the last write and the marker is
  always caught, issue 9.6): ``instance = instance_id()``; for a full recompute ``g =
  begin_generation(t)``; ``write_batch(t, b, generation=g)`` for every batch; then the marker FIRST,
  ``commit_generation(t, g, instance=instance)`` or, incremental, ``set_marker(t, instance=instance)``;
  THEN verify ``instance_id() == instance``. A False from the marker call or a changed instance fails
  the run (``clear_marker``, watermark kept); any failure of a full recompute ``abort_generation``.
- **Exact values.** ``read`` returns Python objects of the features' Arrow types: int64 exact, NaN stays
  NaN, '' stays '', NULL is None, timestamps with a time zone come back as tz-aware UTC datetimes
  (naive timestamp types as naive datetimes), date32 as ``date``, decimals as ``Decimal``.
- **Freshness is not the store's job.** ``OnlineTable.ttl`` only lets Redis free memory (EXPIRE, refreshed
  on every write); callers check freshness against ``OnlineRow.event_ts`` at read time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import pyarrow as pa

from fsql.errors import OnlineStoreError

EVENT_TS = "__fsql_event_ts"
CREATED = "__fsql_created"


@dataclass(frozen=True)
class OnlineTable:
    """The keyspace of one feature view version."""

    view: str
    version: str
    entity_keys: tuple[str, ...]
    features: tuple[str, ...]
    feature_types: tuple[pa.DataType, ...]
    ttl: timedelta | None = None  # only for memory reclaim (EXPIRE); freshness is checked at read time


@dataclass(frozen=True)
class OnlineRow:
    event_ts: datetime  # tz-aware UTC
    created: datetime | None  # tz-aware UTC
    values: tuple[Any, ...]  # in OnlineTable.features order


def namespace(prefix: str, table: OnlineTable) -> str:
    """``{prefix}:{view}:{version}:``, the key prefix (Redis) or table name stem (SQLite) of a version."""
    return f"{prefix}:{table.view}:{table.version}:"


class GenerationNotBuilding(OnlineStoreError):
    """A write or commit named a generation that is no longer being built: it was committed, aborted,
    lost when the store restarted, or superseded by a full recompute begun later. The run writing it
    must stop; a caller can tell a restart (``instance_id`` changed) from a superseded run."""


def not_building(table: OnlineTable, generation: str) -> GenerationNotBuilding:
    return GenerationNotBuilding(
        f"generation {generation} of {table.view} (version {table.version}) is not being built: it was "
        "committed, aborted, lost when the store restarted or lost its data, or superseded by a full "
        "recompute begun later",
        hint="run the full recompute again",
    )


class OnlineStore(Protocol):
    def write_batch(self, table: OnlineTable, batch: pa.RecordBatch, *, generation: str | None = None) -> int:
        """Upsert ``batch`` newer-wins; return how many rows changed the store (inserted or replaced).

        ``batch`` holds the entity key columns, ``EVENT_TS`` (never NULL), ``CREATED`` (nullable) and the
        feature columns; other columns are ignored. Rows with a NULL key part are skipped (a NULL key
        never matches). Rows that lost to the stored row are not counted, so a re-write returns 0.
        ``generation`` None writes the active generation (counted) and every generation being built;
        a generation from ``begin_generation`` writes that one only, and raises ``OnlineStoreError`` if
        it was committed, aborted or superseded.
        Raises ``OnlineStoreError`` if the store fails; the rows written before the failure stay, and
        re-running the whole batch is safe (idempotent).
        """
        ...

    def read(
        self, requests: Sequence[tuple[OnlineTable, Sequence[tuple[Any, ...]]]]
    ) -> list[list[OnlineRow | None]]:
        """For each ``(table, keys)`` request, the stored row per key tuple (None when missing).

        Reads the active generation. All requests are served in one round trip to the store (one more
        right after a generation switch). Key tuples hold Python values of the key columns' types, in
        ``table.entity_keys`` order.
        """
        ...

    def drop(self, table: OnlineTable) -> None:
        """Delete every row of this view version, every generation, and its marker."""
        ...

    def instance_id(self) -> str | None:
        """An id that changes when the store restarts and may have lost data; None if it cannot."""
        ...

    def has_marker(self, table: OnlineTable) -> bool:
        """Whether a run completed (``set_marker`` / ``commit_generation``) since the store lost data."""
        ...

    def set_marker(self, table: OnlineTable, *, instance: str | None = None) -> bool:
        """Record that a run completed into the active generation; return whether it was recorded.

        With ``instance`` (the run's first ``instance_id()``), the marker is set only if the store is
        still that instance, checked atomically with the write: False means the store restarted during
        the run and may have lost its rows, so the run must fail and keep its old watermark.
        """
        ...

    def clear_marker(self, table: OnlineTable) -> None:
        """Forget the marker, so the next run recomputes everything."""
        ...

    def begin_generation(self, table: OnlineTable) -> str:
        """Start a new, empty generation of this version; readers keep seeing the active one."""
        ...

    def commit_generation(self, table: OnlineTable, generation: str, *, instance: str | None = None) -> bool:
        """Atomically make ``generation`` the active one and set the marker; free the old generation.

        With ``instance``, only if the store is still that instance (False otherwise: nothing changed,
        abort the generation). Raises ``OnlineStoreError`` if the generation is not being built
        (aborted, superseded by a newer commit, or lost).
        """
        ...

    def abort_generation(self, table: OnlineTable, generation: str) -> None:
        """Free a generation being built; a no-op if it is already gone."""
        ...

    def close(self) -> None: ...
