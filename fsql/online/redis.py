"""The Redis online store.

Key layout: one Redis string per entity, ``{prefix}:{view}:{version}:{key_text}`` (see
``encoding.key_text``; e.g. ``fsql:customer_spend:3f2a9c1b0d4e:42``). The value is the 17-byte ordering
header followed by the msgpack payload (``encoding``). Because the version is in every key, a changed
definition never reads the old version's values, and ``drop`` deletes one version's keys only.

Writes go through one Lua script (``_UPSERT``) that, for each key, reads the stored header with
GETRANGE and SETs the new value only if its header is byte-wise greater: newer-wins is decided on the
server, atomically per script call, so concurrent writers never make a value regress. The script
handles ``keys_per_call`` keys per EVALSHA, and ``calls_per_pipeline`` calls go in one pipelined round
trip (measured in ``bench/online_store.py``: a few hundred keys per call is several times faster than
one call per key and keeps each script short, so reads from other clients are not held up).

Reads are one MGET for every key of every request: one round trip.

Redis Cluster would need keys grouped by hash slot per script call and per MGET; not supported yet.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import redis
from redis.exceptions import NoScriptError, RedisError

from fsql.config import DEFAULT_REDIS_URL
from fsql.errors import OnlineStoreError, redact_url
from fsql.online.base import OnlineRow, OnlineTable, namespace
from fsql.online.encoding import (
    HEADER_SIZE,
    CodecCache,
    RowCodec,
    encode_headers,
    encode_keys,
    encode_times,
    key_text,
)

DEFAULT_URL = DEFAULT_REDIS_URL

# KEYS: entity keys. ARGV[1]: EXPIRE seconds (0 = none); ARGV[1 + i]: the new value for KEYS[i].
# Headers are compared byte by byte: Lua's `<` on strings uses strcoll, and Redis sets LC_COLLATE from
# the environment, so it is not a reliable byte order.
_UPSERT = f"""
local ttl = tonumber(ARGV[1])
local size = {HEADER_SIZE}
local byte = string.byte
local written = 0
for i = 1, #KEYS do
  local key = KEYS[i]
  local new = ARGV[i + 1]
  local old = redis.call('GETRANGE', key, 0, size - 1)
  local replace = #old < size
  if not replace and old ~= string.sub(new, 1, size) then
    for j = 1, size do
      local a, b = byte(new, j), byte(old, j)
      if a ~= b then
        replace = a > b
        break
      end
    end
  end
  if replace then
    if ttl > 0 then
      redis.call('SET', key, new, 'EX', ttl)
    else
      redis.call('SET', key, new)
    end
    written = written + 1
  elseif ttl > 0 then
    redis.call('EXPIRE', key, ttl)
  end
end
return written
"""


class RedisOnlineStore:
    """Online store on a standalone Redis server (>= 6)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        prefix: str = "fsql",
        keys_per_call: int = 250,
        calls_per_pipeline: int = 20,
        socket_timeout: float = 30.0,
        connect_timeout: float = 5.0,
    ) -> None:
        self.url = url or os.environ.get("FSQL_REDIS_URL") or DEFAULT_URL
        self.prefix = prefix
        self.keys_per_call = keys_per_call
        self.calls_per_pipeline = calls_per_pipeline
        self._codecs = CodecCache()
        try:
            self.client = redis.Redis.from_url(
                self.url, socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout
            )
            self._sha = self.client.script_load(_UPSERT)
        except (RedisError, ValueError) as exc:
            raise OnlineStoreError(
                f"cannot reach Redis at {redact_url(self.url)}: {exc}",
                hint="is redis-server running? set FSQL_REDIS_URL or the [online] url in fsql.toml",
            ) from exc

    def _fail(self, action: str, exc: Exception, hint: str | None = None) -> OnlineStoreError:
        if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
            hint = hint or "is redis-server running and reachable? check FSQL_REDIS_URL"
        return OnlineStoreError(f"Redis at {redact_url(self.url)} failed while {action}: {exc}", hint=hint)

    def write_batch(self, table: OnlineTable, batch: pa.RecordBatch) -> int:
        """Upsert newer-wins; returns the number of rows that were inserted or replaced."""
        if batch.num_rows == 0:
            return 0
        codec = self._codecs.get(table)
        texts = encode_keys(table, batch)
        headers = encode_headers(*encode_times(batch))
        payloads = codec.encode_payloads(batch)
        ns = namespace(self.prefix, table)
        keys: list[str] = []
        values: list[bytes] = []
        for text, header, payload in zip(texts, headers, payloads, strict=True):
            if text is not None:
                keys.append(ns + text)
                values.append(header + payload)
        ttl = max(1, math.ceil(table.ttl.total_seconds())) if table.ttl else 0

        per_call = self.keys_per_call
        per_pipe = per_call * self.calls_per_pipeline
        written = 0
        for start in range(0, len(keys), per_pipe):
            chunk_keys = keys[start : start + per_pipe]
            chunk_values = values[start : start + per_pipe]
            try:
                written += self._run_chunk(chunk_keys, chunk_values, ttl)
            except RedisError as exc:
                raise self._fail(
                    f"writing {table.view} (version {table.version}): {start} of {len(keys)} rows were "
                    "sent before the failure",
                    exc,
                    hint="the write is idempotent: re-run it once Redis is back",
                ) from exc
        return written

    def _run_chunk(self, keys: list[str], values: list[bytes], ttl: int) -> int:
        per_call = self.keys_per_call
        for attempt in range(2):
            pipe = self.client.pipeline(transaction=False)
            for i in range(0, len(keys), per_call):
                ks = keys[i : i + per_call]
                pipe.execute_command("EVALSHA", self._sha, len(ks), *ks, ttl, *values[i : i + per_call])
            results = pipe.execute(raise_on_error=False)
            errors = [r for r in results if isinstance(r, Exception)]
            if not errors:
                return sum(results)
            if attempt == 0 and all(isinstance(e, NoScriptError) for e in errors):
                # The server lost its script cache (restart, SCRIPT FLUSH): reload and re-send the
                # whole chunk; calls that did run are idempotent.
                self._sha = self.client.script_load(_UPSERT)
                continue
            raise errors[0]
        raise AssertionError("unreachable")

    def read(
        self, requests: Sequence[tuple[OnlineTable, Sequence[tuple[Any, ...]]]]
    ) -> list[list[OnlineRow | None]]:
        keys: list[str] = []
        slots: list[tuple[RowCodec, list[int | None]]] = []
        for table, entity_keys in requests:
            ns = namespace(self.prefix, table)
            positions: list[int | None] = []
            for key in entity_keys:
                text = key_text(key)
                if text is None:
                    positions.append(None)
                else:
                    positions.append(len(keys))
                    keys.append(ns + text)
            slots.append((self._codecs.get(table), positions))
        if keys:
            try:
                raw = self.client.execute_command("MGET", *keys)
            except RedisError as exc:
                raise self._fail(f"reading {len(keys)} keys", exc) from exc
        else:
            raw = []
        out: list[list[OnlineRow | None]] = []
        for codec, positions in slots:
            rows: list[OnlineRow | None] = []
            for pos in positions:
                value = None if pos is None else raw[pos]
                rows.append(None if value is None else codec.decode_row(value))
            out.append(rows)
        return out

    def instance_id(self) -> str | None:
        """The server's run id: it changes when Redis restarts (and, without persistence, forgets)."""
        try:
            return str(self.client.info("server").get("run_id"))
        except RedisError as exc:
            raise self._fail("asking for its run id", exc) from exc

    def _marker(self, table: OnlineTable) -> str:
        # The namespace without its trailing ':' can never be an entity key, which always has it.
        return namespace(self.prefix, table).rstrip(":")

    def has_marker(self, table: OnlineTable) -> bool:
        """Whether a run completed into this keyspace since the server last lost its data."""
        try:
            return bool(self.client.exists(self._marker(table)))
        except RedisError as exc:
            raise self._fail("checking the marker", exc) from exc

    def set_marker(self, table: OnlineTable) -> None:
        try:
            self.client.set(self._marker(table), b"1")
        except RedisError as exc:
            raise self._fail("setting the marker", exc) from exc

    def drop(self, table: OnlineTable) -> None:
        pattern = _glob_escape(namespace(self.prefix, table)) + "*"
        try:
            self.client.unlink(self._marker(table))
            batch: list[bytes] = []
            for key in self.client.scan_iter(match=pattern, count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    self.client.unlink(*batch)
                    batch.clear()
            if batch:
                self.client.unlink(*batch)
        except RedisError as exc:
            raise self._fail(f"dropping {table.view} (version {table.version})", exc) from exc

    def close(self) -> None:
        self.client.close()


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
