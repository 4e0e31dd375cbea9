"""The served-feature log, written off the request path.

A request hands its rows to a bounded queue and returns; a writer thread appends them as Parquet files
under ``.fsql/logs/<model>/date=YYYY-MM-DD/`` (and ``.fsql/logs/features/`` for feature reads). A full
queue drops the rows and counts them: logging never slows or blocks serving.
"""

from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

Schema = Mapping[str, pl.DataType]
# model (or "features"), columns, row count, and the columns' types when the rows bring their own
Rows = tuple[str, dict[str, list[Any]], int, Schema | None]


class FeatureLog:
    def __init__(self, root: Path, *, capacity: int, schema: Callable[[str], Mapping[str, pl.DataType]],
                 on_drop: Callable[[str, int], None], on_write: Callable[[str, int], None],
                 flush_rows: int = 20_000, flush_s: float = 1.0) -> None:
        self.root = root
        self.schema = schema
        self.on_drop, self.on_write = on_drop, on_write
        self.flush_rows, self.flush_s = flush_rows, flush_s
        self._queue: queue.Queue[Rows | None] = queue.Queue(maxsize=capacity)
        self._thread = threading.Thread(target=self._run, name="fsql-log", daemon=True)
        self._thread.start()

    def offer(self, model: str, columns: dict[str, list[Any]], count: int, schema: Schema | None = None) -> None:
        try:
            self._queue.put_nowait((model, columns, count, schema))
        except queue.Full:
            self.on_drop(model, count)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        buffers: dict[str, list[tuple[dict[str, list[Any]], Schema | None]]] = {}
        sizes: dict[str, int] = {}
        done = False
        while not done:
            try:
                item = self._queue.get(timeout=self.flush_s)
            except queue.Empty:
                item = ...
            if item is None:
                done = True
            elif item is not ...:
                model, columns, count, schema = item  # type: ignore[misc]
                buffers.setdefault(model, []).append((columns, schema))
                sizes[model] = sizes.get(model, 0) + count
                if sizes[model] < self.flush_rows:
                    continue
            for model in list(buffers):
                self._write(model, buffers.pop(model), sizes.pop(model))

    def _write(self, model: str, parts: list[tuple[dict[str, list[Any]], Schema | None]], count: int) -> None:
        try:
            shared = None
            frames = []
            for columns, own in parts:
                if own is None:
                    shared = dict(self.schema(model)) if shared is None else shared
                schema = own if own is not None else shared
                assert schema is not None
                frames.append(pl.DataFrame(columns, schema={k: schema.get(k) for k in columns}, strict=False))
            frame = pl.concat(frames, how="diagonal_relaxed")
            day = datetime.now(UTC).date().isoformat()
            folder = self.root / model / f"date={day}"
            folder.mkdir(parents=True, exist_ok=True)
            stamp = datetime.now(UTC).strftime("%H%M%S%f")
            tmp = folder / f".{stamp}-{uuid.uuid4().hex[:8]}.tmp"
            frame.write_parquet(tmp)
            # Readers glob *.parquet: a file appears whole or not at all.
            tmp.rename(tmp.with_name(tmp.name[1:-4] + ".parquet"))
            self.on_write(model, count)
        except Exception:  # noqa: BLE001 - a failed log write must never take the server down
            self.on_drop(model, count)
