"""The Redis online store.

Key layout of one view version, ``ns = {prefix}:{view}:{version}:``:

- ``{prefix}:{view}:{version}`` (``ns`` without its colon, so never an entity key): the **state**, a
  short string ``"<done> <next> <active> [<building> ...]"`` (see ``redis_scripts``): the completion
  marker, the active generation and the generations being built, each with the instant it is as of.
  Older versions stored ``"1"`` here, which still reads as "marker set, base generation".
- one Redis string per entity and generation: ``{ns}{key_text}`` in the base generation (e.g.
  ``fsql:customer_spend:3f2a9c1b0d4e:42``) and ``{ns}%{generation}:{key_text}`` in generation ``g7``.
  A key text starts with ``%`` only as ``%25`` or ``%3A`` (``encoding.key_text``), so ``%g`` never
  collides with an entity. The value is the 17-byte ordering header followed by the msgpack payload
  (``encoding``).

Writes go through one Lua script (``redis_scripts.UPSERT``) that checks the state the client built
its keys from, then for each key reads the stored header with GETRANGE and SETs the new value only if
it ranks strictly higher: header bytes first, then, on a header tie only, the payload values
(``order``). Newer-wins is decided on the server, atomically per script call, so concurrent writers
never make a value regress. The script handles ``keys_per_call`` keys per EVALSHA, and
``calls_per_pipeline`` calls go in one pipelined round trip (measured in ``bench/online_store.py``).

Reads are one MGET of the state key and the entity keys under the active generation the client last
saw: MGET is atomic, so if the state still names that generation, the values are from it (a
generation is freed only after the state stops naming it). Otherwise the client re-reads with the new
generation: one round trip per read, two for the first read after a switch. A generation switch is a
SET of the state by ``redis_scripts.COMMIT``; the old generation's keys are then unlinked with SCAN.

Redis Cluster: ``redis_cluster`` runs the same scripts and values per bucket of hash-tagged keys.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pyarrow as pa
import redis
from redis.exceptions import RedisError

from fsql.config import DEFAULT_REDIS_URL
from fsql.errors import OnlineStoreError, redact_url
from fsql.online import redis_scripts as scripts
from fsql.online.base import CommitOutcome, OnlineRow, OnlineTable, as_of_micros, namespace, not_building
from fsql.online.encoding import CodecCache, key_text

DEFAULT_URL = DEFAULT_REDIS_URL
_BASE = "-"
_GEN_MARK = "%g"  # the start of every generation segment; never the start of a key text
_MAX_STALE = 20  # state changes tolerated during one call before giving up


def _parse_state(raw: bytes | None) -> tuple[bool, str, tuple[str, ...]]:
    """(marker set, active generation, generations being built) of a raw state value."""
    if raw is None:
        return False, _BASE, ()
    words = raw.decode().split()
    done = bool(words) and words[0] == "1"
    if len(words) < 3:
        return done, _BASE, ()
    return done, words[2].partition("@")[0], tuple(w.partition("@")[0] for w in words[3:])


def _segment(generation: str) -> str:
    return "" if generation == _BASE else f"%{generation}:"


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
        # state key -> the raw state last seen (None: no state key), for building keys without asking
        self._states: dict[str, bytes | None] = {}
        try:
            self.client = redis.Redis.from_url(
                self.url, socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout
            )
            self._sha = self.client.script_load(scripts.UPSERT)
        except (RedisError, ValueError) as exc:
            raise OnlineStoreError(
                f"cannot reach Redis at {redact_url(self.url)}: {exc}",
                hint="is redis-server running? set FSQL_REDIS_URL or the [online] url in fsql.toml",
            ) from exc
        self._set_marker = self.client.register_script(scripts.SET_MARKER)
        self._clear_marker = self.client.register_script(scripts.CLEAR_MARKER)
        self._begin = self.client.register_script(scripts.BEGIN)
        self._commit = self.client.register_script(scripts.COMMIT)
        self._abort = self.client.register_script(scripts.ABORT)

    def _fail(self, action: str, exc: Exception, hint: str | None = None) -> OnlineStoreError:
        if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
            hint = hint or "is redis-server running and reachable? check FSQL_REDIS_URL"
        return OnlineStoreError(f"Redis at {redact_url(self.url)} failed while {action}: {exc}", hint=hint)

    def _state_key_for_update(self, table: OnlineTable) -> str:
        # The namespace without its trailing ':' can never be an entity key, which always has it.
        key = namespace(self.prefix, table).rstrip(":")
        self._states.pop(key, None)  # every caller is about to change or re-read the state
        return key

    def _fetch_state(self, state_key: str) -> bytes | None:
        raw = self.client.get(state_key)
        self._states[state_key] = raw
        return raw

    # --- writes --------------------------------------------------------------------------------------

    def write_batch(self, table: OnlineTable, batch: pa.RecordBatch, *, generation: str | None = None) -> int:
        """Upsert newer-wins; returns the number of rows that were inserted or replaced."""
        if batch.num_rows == 0:
            return 0
        texts: list[str] = []
        values: list[bytes] = []
        for text, value in scripts.encoded_rows(table, self._codecs.get(table), batch):
            texts.append(text)
            values.append(value)
        ttl = scripts.ttl_seconds(table)
        ns = namespace(self.prefix, table)
        state_key = ns[:-1]
        per_call = self.keys_per_call
        calls = [(i, min(i + per_call, len(texts))) for i in range(0, len(texts), per_call)]
        per_pipe = self.calls_per_pipeline
        written = start = 0
        try:
            state = self._states[state_key] if state_key in self._states else self._fetch_state(state_key)
            if generation is not None and generation not in _parse_state(state)[2]:
                state = self._fetch_state(state_key)  # begun since this client last looked
            for start in range(0, len(calls), per_pipe):
                pending = calls[start : start + per_pipe]
                for _ in range(_MAX_STALE):
                    targets = self._targets(table, state, generation)
                    results = self._run_calls(state_key, ns, targets, state, texts, values, pending, ttl)
                    written += sum(r for r in results if r >= 0)
                    pending = [call for call, r in zip(pending, results, strict=True) if r < 0]
                    if not pending:
                        break
                    state = self._fetch_state(state_key)
                else:
                    raise OnlineStoreError(
                        f"the generations of {table.view} (version {table.version}) kept changing while "
                        "writing", hint="re-run the write"
                    )
        except RedisError as exc:
            sent = calls[start][0] if calls else 0
            raise self._fail(
                f"writing {table.view} (version {table.version}): {sent} of {len(texts)} rows were "
                "sent before the failure",
                exc,
                hint="the write is idempotent: re-run it once Redis is back",
            ) from exc
        return written

    def _targets(self, table: OnlineTable, state: bytes | None, generation: str | None) -> list[str]:
        """The key segments a write goes to: the active generation and those being built, or one."""
        _, active, building = _parse_state(state)
        if generation is None:
            return [_segment(active), *(_segment(g) for g in building)]
        if generation not in building:
            raise not_building(table, generation)
        return [_segment(generation)]

    def _run_calls(
        self,
        state_key: str,
        ns: str,
        targets: list[str],
        state: bytes | None,
        texts: list[str],
        values: list[bytes],
        calls: list[tuple[int, int]],
        ttl: int,
    ) -> list[int]:
        """One pipelined round trip of upsert calls; per call, rows written or -1 (stale state)."""
        expected = b"" if state is None else state

        def queue(pipe: Any, index: int, sha: str) -> None:
            lo, hi = calls[index]
            keys = [state_key, *(ns + seg + text for seg in targets for text in texts[lo:hi])]
            pipe.execute_command("EVALSHA", sha, len(keys), *keys, expected, ttl, len(targets), *values[lo:hi])

        results, self._sha = scripts.pipelined_upserts(
            lambda: self.client.pipeline(transaction=False), queue, len(calls), self._sha,
            lambda: self.client.script_load(scripts.UPSERT))
        return results

    # --- reads ---------------------------------------------------------------------------------------

    def read(
        self, requests: Sequence[tuple[OnlineTable, Sequence[tuple[Any, ...]]]]
    ) -> list[list[OnlineRow | None]]:
        if not requests:
            return []
        prepared = []
        for table, entity_keys in requests:
            ns = namespace(self.prefix, table)
            prepared.append((self._codecs.get(table), ns, [key_text(key) for key in entity_keys]))
        for _ in range(_MAX_STALE):
            keys: list[str] = []
            slots: list[tuple[str, str, int, list[int | None]]] = []
            for _codec, ns, texts in prepared:
                state_key = ns[:-1]
                active = _parse_state(self._states.get(state_key))[1]
                state_at = len(keys)
                keys.append(state_key)
                positions: list[int | None] = []
                for text in texts:
                    if text is None:
                        positions.append(None)
                    else:
                        positions.append(len(keys))
                        keys.append(ns + _segment(active) + text)
                slots.append((state_key, active, state_at, positions))
            try:
                raw = self.client.execute_command("MGET", *keys)
            except RedisError as exc:
                raise self._fail(f"reading {len(keys) - len(prepared)} keys", exc) from exc
            stale = False
            for state_key, active, state_at, _ in slots:
                self._states[state_key] = raw[state_at]
                stale = stale or _parse_state(raw[state_at])[1] != active
            if not stale:
                break
        else:
            raise OnlineStoreError("the active generation kept changing during the read", hint="read again")
        out: list[list[OnlineRow | None]] = []
        for (codec, _, _), (_, _, _, positions) in zip(prepared, slots, strict=True):
            rows: list[OnlineRow | None] = []
            for pos in positions:
                value = None if pos is None else raw[pos]
                rows.append(None if value is None else codec.decode_row(value))
            out.append(rows)
        return out

    # --- markers and generations ---------------------------------------------------------------------

    def instance_id(self) -> str | None:
        """The server's run id: it changes when Redis restarts (and, without persistence, forgets)."""
        try:
            return str(self.client.info("server").get("run_id"))
        except RedisError as exc:
            raise self._fail("asking for its run id", exc) from exc

    def has_marker(self, table: OnlineTable) -> bool:
        """Whether a run completed into this keyspace since the server last lost its data."""
        try:
            return _parse_state(self._fetch_state(self._state_key_for_update(table)))[0]
        except RedisError as exc:
            raise self._fail("checking the marker", exc) from exc

    def set_marker(
        self, table: OnlineTable, *, instance: str | None = None, as_of: datetime | None = None
    ) -> bool:
        key = self._state_key_for_update(table)
        try:
            return bool(self._set_marker(keys=[key], args=[instance or "", as_of_micros(as_of)]))
        except RedisError as exc:
            raise self._fail("setting the marker", exc) from exc

    def clear_marker(self, table: OnlineTable) -> None:
        try:
            self._clear_marker(keys=[self._state_key_for_update(table)])
        except RedisError as exc:
            raise self._fail("clearing the marker", exc) from exc

    def begin_generation(self, table: OnlineTable, *, as_of: datetime | None = None) -> str:
        try:
            return self._begin(keys=[self._state_key_for_update(table)], args=[as_of_micros(as_of)]).decode()
        except RedisError as exc:
            raise self._fail(f"starting a generation of {table.view} (version {table.version})", exc) from exc

    def commit_generation(
        self, table: OnlineTable, generation: str, *, instance: str | None = None
    ) -> CommitOutcome:
        action = f"switching {table.view} (version {table.version}) to generation {generation}"
        key = self._state_key_for_update(table)
        try:
            result = self._commit(keys=[key], args=[generation, instance or ""])
        except RedisError as exc:
            raise self._fail(action, exc) from exc
        if result[0] == 0:
            return "restarted"
        if result[0] < 0:
            raise not_building(table, generation)
        for old in result[1:]:
            self._free(table, old.decode(), action)
        return "superseded" if result[0] == 2 else "committed"

    def abort_generation(self, table: OnlineTable, generation: str) -> None:
        action = f"aborting generation {generation} of {table.view} (version {table.version})"
        try:
            self._abort(keys=[self._state_key_for_update(table)], args=[generation])
        except RedisError as exc:
            raise self._fail(action, exc) from exc
        self._free(table, generation, action)

    def _free(self, table: OnlineTable, generation: str, action: str) -> None:
        """Unlink every key of a generation that no reader or writer can reach any more."""
        ns = namespace(self.prefix, table)
        if generation == _BASE:
            pattern = _glob_escape(ns) + "*"
            skip = (ns + _GEN_MARK).encode()
        else:
            pattern = _glob_escape(ns + _segment(generation)) + "*"
            skip = None
        try:
            self._unlink_matching(pattern, skip)
        except RedisError as exc:
            raise self._fail(f"{action}: freeing generation {generation}", exc) from exc

    def _unlink_matching(self, pattern: str, skip: bytes | None = None) -> None:
        batch: list[bytes] = []
        for key in self.client.scan_iter(match=pattern, count=1000):
            if skip is not None and key.startswith(skip):
                continue
            batch.append(key)
            if len(batch) >= 1000:
                self.client.unlink(*batch)
                batch.clear()
        if batch:
            self.client.unlink(*batch)

    def drop(self, table: OnlineTable) -> None:
        state_key = self._state_key_for_update(table)
        try:
            self.client.unlink(state_key)
            self._states.pop(state_key, None)
            self._unlink_matching(_glob_escape(namespace(self.prefix, table)) + "*")
        except RedisError as exc:
            raise self._fail(f"dropping {table.view} (version {table.version})", exc) from exc

    def close(self) -> None:
        self.client.close()


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
