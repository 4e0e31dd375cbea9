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
  beside it does not lose its rows. Every generation is *as of* an instant (the run's end): a commit
  never replaces a generation as of a later time, and frees the older generations still being built
  (stale or crashed recomputes), so served values never go back in time. Writing to or committing a
  freed generation raises ``GenerationNotBuilding``.
- **Completion marker.** ``has_marker`` is true only after ``set_marker`` or ``commit_generation``
  succeeded since the store last lost its data (writes alone never create it). Both accept the
  ``instance_id()`` read at the start of the run and then act only if the server is still that
  instance, atomically, so a restart that lost the run's rows can never leave a marker behind.
- **A run's call order** (so that a restart of the store between the last write and the marker is
  always caught, issue 9.6): ``instance = instance_id()``; a full recompute ``g =
  begin_generation(t, as_of=end)``; ``write_batch(t, b, generation=g)`` (None when incremental) for
  every batch; then the marker FIRST: ``commit_generation(t, g, instance=instance)``, or
  ``set_marker(t, instance=instance, as_of=end)``; THEN verify ``instance_id() == instance``. False,
  ``"restarted"`` or a changed instance fail the run (``clear_marker``, watermark kept); any failure
  of a full recompute ``abort_generation``s it.
- **Exact values.** ``read`` returns Python objects of the features' Arrow types: int64 exact, NaN stays
  NaN, '' stays '', NULL is None, timestamps with a time zone come back as tz-aware UTC datetimes
  (naive timestamp types as naive datetimes), date32 as ``date``, decimals as ``Decimal``.
- **Freshness is not the store's job.** ``OnlineTable.ttl`` only lets Redis free memory (EXPIRE, refreshed
  on every write); callers check freshness against ``OnlineRow.event_ts`` at read time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

import pyarrow as pa

from fsql.definitions import FeatureView, arrow_type
from fsql.errors import OnlineStoreError

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
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


CommitOutcome = Literal["committed", "restarted", "superseded"]


def as_of_micros(as_of: datetime | None) -> int:
    """µs since the epoch of an as-of instant (naive = UTC); 0 when unknown."""
    if as_of is None:
        return 0
    if as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=UTC)
    return (as_of - _EPOCH) // timedelta(microseconds=1)


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

    def set_marker(
        self, table: OnlineTable, *, instance: str | None = None, as_of: datetime | None = None
    ) -> bool:
        """Record that a run completed into the active generation; return whether it was recorded.

        With ``instance`` (the run's first ``instance_id()``), the marker is set only if the store is
        still that instance, checked atomically with the write: False means the store restarted during
        the run and may have lost its rows, so the run must fail and keep its old watermark.
        ``as_of`` (the run's end) raises the active generation's as-of instant to at least that: the
        incremental run merged every row eligible up to it.
        """
        ...

    def clear_marker(self, table: OnlineTable) -> None:
        """Forget the marker, so the next run recomputes everything."""
        ...

    def begin_generation(self, table: OnlineTable, *, as_of: datetime | None = None) -> str:
        """Start a new, empty generation of this version; readers keep seeing the active one.

        ``as_of`` is the instant the recompute computes the latest rows as of (its ``end``): a
        generation never replaces one as of a later time, so concurrent or late full runs cannot make
        served values go back in time.
        """
        ...

    def commit_generation(
        self, table: OnlineTable, generation: str, *, instance: str | None = None
    ) -> CommitOutcome:
        """Atomically make ``generation`` the active one and set the marker; free the old generation
        and every generation being built that is older (as of an earlier time, or as of the same time
        and begun earlier: a stale or crashed recompute).

        ``"committed"``: done. ``"restarted"``: the store is not ``instance`` any more; nothing changed,
        the run fails (abort the generation). ``"superseded"``: the active generation is as of a later
        time; this one was freed and nothing changed. Raises ``GenerationNotBuilding`` if the
        generation is not being built (aborted, freed by a newer commit, or lost).
        """
        ...

    def abort_generation(self, table: OnlineTable, generation: str) -> None:
        """Free a generation being built; a no-op if it is already gone."""
        ...

    def close(self) -> None: ...


def online_table_of(view: FeatureView) -> OnlineTable:
    """The online keyspace of a registered feature view's current version."""
    return OnlineTable(
        view=view.name,
        version=view.version,
        entity_keys=view.entity_keys,
        features=view.feature_names,
        feature_types=tuple(arrow_type(c.dtype) for c in view.features),
        ttl=view.ttl,
    )
