"""The online-store protocol: one small interface, implemented by ``redis.py`` and ``sqlite.py``.

Semantics every store guarantees (DESIGN.md section 4):

- **Newer-wins, atomically in the store.** A written row replaces the stored row of the same entity only
  if its ``(event_ts, created)`` is strictly greater, with a NULL ``created`` ranking lowest. Equal or
  older rows leave the stored row as it is, so re-writing is idempotent and concurrent writers of the
  same keys never make a value regress.
- **Namespaced by view version.** Rows of ``OnlineTable(view, version=A)`` are never read through
  ``version=B``; ``drop`` removes one version only.
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

from fsql.definitions import FeatureView, arrow_type

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


class OnlineStore(Protocol):
    def write_batch(self, table: OnlineTable, batch: pa.RecordBatch) -> int:
        """Upsert ``batch`` newer-wins; return how many rows changed the store (inserted or replaced).

        ``batch`` holds the entity key columns, ``EVENT_TS`` (never NULL), ``CREATED`` (nullable) and the
        feature columns; other columns are ignored. Rows with a NULL key part are skipped (a NULL key
        never matches). Rows that lost to the stored row are not counted, so a re-write returns 0.
        Raises ``OnlineStoreError`` if the store fails; the rows written before the failure stay, and
        re-running the whole batch is safe (idempotent).
        """
        ...

    def read(
        self, requests: Sequence[tuple[OnlineTable, Sequence[tuple[Any, ...]]]]
    ) -> list[list[OnlineRow | None]]:
        """For each ``(table, keys)`` request, the stored row per key tuple (None when missing).

        All requests are served in one round trip to the store. Key tuples hold Python values of the
        key columns' types, in ``table.entity_keys`` order.
        """
        ...

    def drop(self, table: OnlineTable) -> None:
        """Delete every row of this view version (other versions are untouched)."""
        ...

    def instance_id(self) -> str | None:
        """An id that changes when the store restarts and may have lost data; None if it cannot."""
        ...

    def has_marker(self, table: OnlineTable) -> bool:
        """Whether ``set_marker`` was called for this version since the store last lost its data."""
        ...

    def set_marker(self, table: OnlineTable) -> None:
        """Record that a run completed into this version's keyspace."""
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
