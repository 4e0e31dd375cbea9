"""The online-store protocol. INTERFACE STUB: to be implemented."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import pyarrow as pa

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
    created: datetime | None
    values: tuple[Any, ...]  # in OnlineTable.features order


class OnlineStore(Protocol):
    def write_batch(self, table: OnlineTable, batch: pa.RecordBatch) -> int: ...

    def read(
        self, requests: Sequence[tuple[OnlineTable, Sequence[tuple[Any, ...]]]]
    ) -> list[list[OnlineRow | None]]: ...

    def drop(self, table: OnlineTable) -> None: ...

    def close(self) -> None: ...
