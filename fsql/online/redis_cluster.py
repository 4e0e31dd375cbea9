"""The Redis Cluster online store: the single-node store's keys, values and Lua upsert, spread over
``buckets`` hash slots per view version so that a version's rows are spread over the masters.

Key layout of bucket ``b`` of one view version, ``ns_b = {prefix}:{view}:{{version}.{b}}:`` (the hash
tag ``{version.b}`` puts every key of the bucket in one slot):

- ``{prefix}:{view}:{{version}.{b}}`` (``ns_b`` without its colon): the bucket's copy of the version's
  **state**, in the single-node format (``redis_scripts``): marker, next generation number, active
  generation and generations being built. A generation being switched to is written ``g7@<as_of>!``.
- ``{ns_b}{key_text}`` (base generation) and ``{ns_b}%{generation}:{key_text}``: one string per entity,
  the 17-byte ordering header and the msgpack payload, exactly as on one node. An entity's bucket is
  ``crc32(key_text) % buckets``; ``buckets`` must not change for stored data.

**Writes** are the single-node upsert script, run per bucket: each call carries keys of one bucket and
that bucket's state, so newer-wins and "never into a freed generation" hold per call as on one node.
Calls for every bucket go in one cluster pipeline, which redis-py sends to all masters at once.

**State changes** (begin, commit, abort, markers) are decided once, in Python, on the state every
bucket agrees on, under a lock key of the version (``{prefix}:{view}:{{version}.lock}``, redis-py's
``Lock``), and then written to every bucket. A commit is two steps over all buckets: first every
bucket marks the new generation as being switched to (its data is complete: the run finished
writing), then every bucket makes it active; the old generation is freed only after both.

**Reads** send one ``MGET`` per bucket touched (the bucket's state and its entity keys) in one cluster
pipeline: one round trip to each master involved, in parallel. A read is served from one generation
G such that every bucket read names G as active or as being switched to, in the same atomic MGET as
its values; otherwise it is re-sent with the generation the states name. So each read sees one
generation, complete, never a mix, also during a commit. Two reads that touch different buckets
may, during the few milliseconds of a commit, see the old generation in one and the new in the other.

**Restarts and failovers.** ``instance_id`` is the run ids of all masters; the marker and the commit
check, atomically per bucket, that the bucket's master is one of them. A master restarted or failed
over during a run (its run id changes) fails the run; the commit then restores the previous state
with the marker cleared. A restarted master without persistence lost its buckets' states: the marker
is set only when every bucket holds it, so the next run recomputes everything. Lost or half-done
state changes (a client that died between buckets) are repaired under the lock by the next state
change: a switch that began is completed, generations not known to every bucket are freed.

With replicas, an unplanned failover may lose the last writes the old master acknowledged (Redis
replication is asynchronous). During a run, the changed run id fails the run and the next run writes
its window again. Just after a run completed, the loss is not detected (a bucket's state and its
rows share a master and its replication stream, so a bucket can fall back to an older marker with
older rows, but the watermark has moved on): run ``fsql materialize --full`` after an unplanned
failover. A planned one (``CLUSTER FAILOVER``) waits for the replica and loses nothing.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import pyarrow as pa
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from fsql.config import DEFAULT_REDIS_URL
from fsql.errors import OnlineStoreError, redact_url
from fsql.online import redis_scripts as scripts
from fsql.online.base import CommitOutcome, OnlineRow, OnlineTable, as_of_micros, not_building
from fsql.online.encoding import CodecCache, key_text

DEFAULT_BUCKETS = 16
_BASE = "-"
_MAX_STALE = 20
_ERRORS = (RedisError, RedisClusterException)


# --- the state, as the Lua scripts of one node write it --------------------------------------------


@dataclass
class _Gen:
    name: str
    as_of: int = 0
    switching: bool = False  # being made the active generation by a commit

    @property
    def number(self) -> int:
        return int(self.name[1:]) if self.name[1:].isdigit() else 0

    def token(self) -> str:
        return f"{self.name}@{self.as_of}{'!' if self.switching else ''}"


def _parse_gen(token: str) -> _Gen:
    switching = token.endswith("!")
    name, _, as_of = token.rstrip("!").partition("@")
    try:
        return _Gen(name, int(as_of or 0), switching)
    except ValueError:
        return _Gen(name, 0, switching)


def _older(a: _Gen, b: _Gen) -> bool:
    """As the Lua ``older``: as of an earlier time, or as of the same time and begun first."""
    return a.as_of < b.as_of if a.as_of != b.as_of else a.number < b.number


@dataclass
class _State:
    exists: bool = False
    done: bool = False
    next: int = 1
    active: _Gen = field(default_factory=lambda: _Gen(_BASE))
    building: list[_Gen] = field(default_factory=list)

    @classmethod
    def parse(cls, raw: bytes | None) -> _State:
        if raw is None:
            return cls()
        words = raw.decode().split()
        state = cls(exists=True, done=bool(words) and words[0] == "1")
        if len(words) >= 3:
            state.next = int(words[1]) if words[1].isdigit() else 1
            state.active = _parse_gen(words[2])
            state.building = [_parse_gen(w) for w in words[3:]]
        return state

    def dump(self) -> str:
        words = ["1" if self.done else "0", str(self.next), self.active.token()]
        return " ".join(words + [g.token() for g in self.building])

    def copy(self) -> _State:
        return replace(self, active=replace(self.active), building=[replace(g) for g in self.building])

    def find(self, name: str) -> _Gen | None:
        return next((g for g in self.building if g.name == name), None)

    def switching(self) -> _Gen | None:
        return next((g for g in self.building if g.switching), None)

    def readable(self) -> tuple[str, ...]:
        """The generations a reader may take from this bucket: the active one, and one whose switch
        began (complete: its run finished writing; freed only after every bucket switched)."""
        target = self.switching()
        return (self.active.name,) if target is None else (target.name, self.active.name)

    def targets(self) -> list[str]:
        return [self.active.name, *(g.name for g in self.building)]


def _agreed(states: list[_State]) -> tuple[_State, list[str]]:
    """The state every bucket should hold, from bucket states that may disagree (a state change
    interrupted between buckets, a master that lost its keys), and the generations to free."""
    existing = [s for s in states if s.exists]
    if not existing:
        return _State(), []
    switching = [g for s in existing for g in s.building if g.switching]
    agreed = max(existing, key=lambda s: s.next).copy()
    agreed.next = max(s.next for s in existing)
    agreed.done = len(existing) == len(states) and all(s.done for s in existing)
    if switching:  # a commit began: its generation is complete, so finish the switch
        target = max(switching, key=lambda g: (g.as_of, g.number))
        agreed.active = _Gen(target.name, target.as_of)
    known = set.intersection(*({g.name for g in s.building} for s in existing))
    agreed.building = [replace(g, switching=False) for g in agreed.building
                       if g.name in known and g.name != agreed.active.name]
    everything = {s.active.name for s in existing} | {g.name for s in existing for g in s.building}
    keep = {agreed.active.name, *(g.name for g in agreed.building)}
    return agreed, sorted(everything - keep)


def bucket_of(text: str, buckets: int = DEFAULT_BUCKETS) -> int:
    """The bucket of an entity's key text (``encoding.key_text``)."""
    return zlib.crc32(text.encode()) % buckets


def _segment(generation: str) -> str:
    return "" if generation == _BASE else f"%{generation}:"


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def seed_urls(url: str) -> list[str]:
    """The seed node URLs of an ``[online] url``: comma-separated, ``redis://`` optional."""
    return [u.strip() if "://" in u else f"redis://{u.strip()}" for u in url.split(",") if u.strip()]


class RedisClusterOnlineStore:
    """Online store on a Redis Cluster (>= 6): ``url`` names one or more seed nodes, comma-separated."""

    def __init__(
        self,
        url: str | None = None,
        *,
        prefix: str = "fsql",
        buckets: int = DEFAULT_BUCKETS,
        keys_per_call: int = 250,
        calls_per_pipeline: int = 64,
        socket_timeout: float = 30.0,
        connect_timeout: float = 5.0,
        lock_timeout: float = 30.0,
    ) -> None:
        self.url = url or os.environ.get("FSQL_REDIS_URL") or DEFAULT_REDIS_URL
        self.prefix = prefix
        self.buckets = buckets
        self.keys_per_call = keys_per_call
        self.calls_per_pipeline = calls_per_pipeline
        self.lock_timeout = lock_timeout
        self._codecs = CodecCache()
        self._states: dict[str, bytes | None] = {}  # bucket state key -> raw state last seen
        self._names: dict[tuple[str, str], tuple[list[str], str]] = {}
        self._parsed_states: dict[bytes | None, _State] = {}  # raw state -> parsed, for reads (never mutated)
        if "{" in prefix or "}" in prefix:
            raise OnlineStoreError(f"the Redis Cluster key prefix {prefix!r} contains '{{' or '}}'",
                                   hint="braces pick the hash slot of a key in a cluster: use another [online] prefix")
        seeds = seed_urls(self.url)
        try:
            others = [ClusterNode(*self._host_port(s)) for s in seeds[1:]]
            self.client = RedisCluster(url=seeds[0], startup_nodes=others, socket_timeout=socket_timeout,
                                       socket_connect_timeout=connect_timeout)
            self._sha = self.client.script_load(scripts.UPSERT)
        except (*_ERRORS, ValueError, IndexError) as exc:
            raise OnlineStoreError(
                f"cannot reach the Redis Cluster at {self._shown_url()}: {_first_line(exc)}",
                hint="are the cluster's nodes running? set FSQL_REDIS_URL or the [online] url in fsql.toml "
                "(one or more nodes, comma-separated)",
            ) from exc

    @staticmethod
    def _host_port(seed: str) -> tuple[str, int]:
        from redis.connection import parse_url

        options = parse_url(seed)
        return options.get("host", "127.0.0.1"), int(options.get("port", 6379))

    def _shown_url(self) -> str:
        return ",".join(redact_url(s) for s in seed_urls(self.url)) or self.url

    def _fail(self, action: str, exc: Exception, hint: str | None = None) -> OnlineStoreError:
        hint = hint or "are all the cluster's masters running and is cluster_state ok? check FSQL_REDIS_URL"
        return OnlineStoreError(f"Redis Cluster at {self._shown_url()} failed while {action}: {_first_line(exc)}",
                                hint=hint)

    # --- names ---------------------------------------------------------------------------------------

    def _layout(self, table: OnlineTable) -> tuple[list[str], str]:
        """(``ns_b`` per bucket, the lock key) of a version."""
        key = (table.view, table.version)
        found = self._names.get(key)
        if found is None:
            if any(c in f"{table.view}{table.version}" for c in "{}"):
                raise OnlineStoreError(f"view {table.view!r} or version {table.version!r} contains a brace")
            base = f"{self.prefix}:{table.view}:{{{table.version}."
            found = ([f"{base}{b}}}:" for b in range(self.buckets)], f"{base}lock}}")
            self._names[key] = found
        return found

    def _node(self, state_key: str) -> Any:
        """The master of a bucket, from the slot of its (short) state key: naming it spares redis-py
        from hashing every key of a call to check they share a slot (they do: the hash tag). A
        MOVED reply still re-routes the command by its keys."""
        return self.client.get_node_from_key(state_key)

    def _bucket(self, text: str) -> int:
        return bucket_of(text, self.buckets)

    def _fetch_states(self, keys: list[str]) -> list[bytes | None]:
        raw = self.client.mget_nonatomic(keys)
        self._states.update(zip(keys, raw, strict=True))
        return raw

    # --- writes --------------------------------------------------------------------------------------

    def write_batch(self, table: OnlineTable, batch: pa.RecordBatch, *, generation: str | None = None) -> int:
        """Upsert newer-wins; returns the number of rows that were inserted or replaced."""
        if batch.num_rows == 0:
            return 0
        per_bucket: list[tuple[list[str], list[bytes]]] = [([], []) for _ in range(self.buckets)]
        crc, n = zlib.crc32, self.buckets
        for text, value in scripts.encoded_rows(table, self._codecs.get(table), batch):
            texts, values = per_bucket[crc(text.encode()) % n]
            texts.append(text)
            values.append(value)
        ttl = scripts.ttl_seconds(table)
        spaces, _ = self._layout(table)
        per_call = self.keys_per_call
        calls = [(b, i, min(i + per_call, len(texts)))
                 for b, (texts, _) in enumerate(per_bucket) for i in range(0, len(texts), per_call)]
        written = sent = 0
        try:
            used = sorted({b for b, _, _ in calls})
            missing = [spaces[b][:-1] for b in used if spaces[b][:-1] not in self._states]
            if missing:
                self._fetch_states(missing)
            if generation is not None:
                stale = [spaces[b][:-1] for b in used
                         if _State.parse(self._states[spaces[b][:-1]]).find(generation) is None]
                if stale:
                    self._fetch_states(stale)  # begun since this client last looked
            for start in range(0, len(calls), self.calls_per_pipeline):
                pending = calls[start : start + self.calls_per_pipeline]
                for _ in range(_MAX_STALE):
                    results = self._run_calls(table, spaces, per_bucket, pending, ttl, generation)
                    written += sum(r for r in results if r >= 0)
                    pending = [call for call, r in zip(pending, results, strict=True) if r < 0]
                    if not pending:
                        break
                    self._fetch_states(sorted({spaces[b][:-1] for b, _, _ in pending}))
                else:
                    raise OnlineStoreError(
                        f"the generations of {table.view} (version {table.version}) kept changing while "
                        "writing", hint="re-run the write"
                    )
                sent += sum(hi - lo for _, lo, hi in calls[start : start + self.calls_per_pipeline])
        except _ERRORS as exc:
            total = sum(len(t) for t, _ in per_bucket)
            raise self._fail(
                f"writing {table.view} (version {table.version}): {sent} of {total} rows were written "
                "before the failure", exc, hint="the write is idempotent: re-run it once every master is back",
            ) from exc
        return written

    def _run_calls(
        self,
        table: OnlineTable,
        spaces: list[str],
        per_bucket: list[tuple[list[str], list[bytes]]],
        calls: list[tuple[int, int, int]],
        ttl: int,
        generation: str | None,
    ) -> list[int]:
        """One cluster pipeline of upsert calls (to every master at once); per call, rows written
        or -1 (the bucket's state changed since it was read)."""

        def queue(pipe: Any, index: int, sha: str) -> None:
            b, lo, hi = calls[index]
            ns, state_key = spaces[b], spaces[b][:-1]
            state = self._states.get(state_key)
            if generation is None:
                targets = [_segment(g) for g in _State.parse(state).targets()]
            elif _State.parse(state).find(generation) is None:
                raise not_building(table, generation)
            else:
                targets = [_segment(generation)]
            texts, values = per_bucket[b]
            keys = [state_key, *(ns + seg + text for seg in targets for text in texts[lo:hi])]
            pipe.execute_command("EVALSHA", sha, len(keys), *keys, state or b"", ttl, len(targets),
                                 *values[lo:hi], target_nodes=self._node(state_key))

        # script_load on a cluster client loads the script on every master.
        results, self._sha = scripts.pipelined_upserts(
            self.client.pipeline, queue, len(calls), self._sha, lambda: self.client.script_load(scripts.UPSERT))
        return results

    # --- reads ---------------------------------------------------------------------------------------

    def read(
        self, requests: Sequence[tuple[OnlineTable, Sequence[tuple[Any, ...]]]]
    ) -> list[list[OnlineRow | None]]:
        if not requests:
            return []
        prepared = []
        for table, entity_keys in requests:
            spaces, _ = self._layout(table)
            texts = [key_text(key) for key in entity_keys]
            groups: dict[int, list[int]] = {}
            for i, text in enumerate(texts):
                if text is not None:
                    groups.setdefault(self._bucket(text), []).append(i)
            prepared.append((self._codecs.get(table), spaces, texts, groups))
        for _ in range(_MAX_STALE):
            commands: list[list[str]] = []
            sent: list[tuple[int, int, str]] = []  # (request, bucket, generation read)
            for r, (_, spaces, texts, groups) in enumerate(prepared):
                chosen = self._choose([self._parsed(spaces[b][:-1]) for b in groups])
                for (b, positions), generation in zip(groups.items(), chosen, strict=True):
                    ns = spaces[b] + _segment(generation)
                    commands.append(["MGET", spaces[b][:-1], *(ns + texts[i] for i in positions)])
                    sent.append((r, b, generation))
            try:
                if len(commands) == 1:  # one bucket: a plain command skips the pipeline's bookkeeping
                    raw = [self.client.execute_command(*commands[0], target_nodes=self._node(commands[0][1]))]
                else:
                    pipe = self.client.pipeline()
                    for command in commands:
                        pipe.execute_command(*command, target_nodes=self._node(command[1]))
                    raw = pipe.execute() if commands else []
            except _ERRORS as exc:
                raise self._fail(f"reading {sum(len(p[2]) for p in prepared)} keys", exc) from exc
            stale = False
            for (r, b, _), values in zip(sent, raw, strict=True):
                self._states[prepared[r][1][b][:-1]] = values[0]
            for r, (_, spaces, _, groups) in enumerate(prepared):
                chosen = self._choose([self._parsed(spaces[b][:-1]) for b in groups])
                used = [g for (req, _, g) in sent if req == r]
                stale = stale or chosen != used
            if not stale:
                break
        else:
            raise OnlineStoreError("the active generation kept changing during the read", hint="read again")
        out: list[list[OnlineRow | None]] = [[None] * len(p[2]) for p in prepared]
        for (r, b, _), values in zip(sent, raw, strict=True):
            codec, rows = prepared[r][0], out[r]
            for i, value in zip(prepared[r][3][b], values[1:], strict=True):
                if value is not None:
                    rows[i] = codec.decode_row(value)
        return out

    def _parsed(self, state_key: str) -> _State:
        raw = self._states.get(state_key)
        state = self._parsed_states.get(raw)
        if state is None:
            if len(self._parsed_states) > 1000:
                self._parsed_states.clear()
            state = self._parsed_states[raw] = _State.parse(raw)
        return state

    @staticmethod
    def _choose(states: list[_State]) -> list[str]:
        """The generation to read in each bucket: one that every bucket may serve (the one being
        switched to, if every bucket may serve it), else, when the buckets lost their agreement
        (a master lost its keys), each bucket's own."""
        if not states:
            return []
        common = set(states[0].readable()).intersection(*(s.readable() for s in states[1:]))
        if common:
            for s in states:
                target = s.switching()
                if target is not None and target.name in common:
                    return [target.name] * len(states)
            return [next(iter(common))] * len(states)
        return [s.readable()[0] for s in states]

    # --- markers and generations ---------------------------------------------------------------------

    def instance_id(self) -> str | None:
        """The run ids of every master: one changes when its master restarts or fails over."""
        try:
            ids = [str(self.client.get_redis_connection(node).info("server")["run_id"])
                   for node in self.client.get_primaries()]
        except _ERRORS as exc:
            raise self._fail("asking its masters for their run ids", exc) from exc
        return ",".join(sorted(ids))

    def has_marker(self, table: OnlineTable) -> bool:
        """Whether a run completed into this keyspace since any master last lost its data."""
        spaces, _ = self._layout(table)
        try:
            raw = self._fetch_states([ns[:-1] for ns in spaces])
        except _ERRORS as exc:
            raise self._fail("checking the marker", exc) from exc
        return all(_State.parse(r).done for r in raw)

    def _change(
        self, table: OnlineTable, action: str, change: Callable[[_State, list[str], list[str]], Any]
    ) -> Any:
        """Run ``change(agreed state, state keys, generations to free)`` under the version's lock,
        after repairing the buckets' states if they disagree; then free those generations (outside
        the lock: a SCAN of every master may take a while)."""
        spaces, lock_key = self._layout(table)
        keys = [ns[:-1] for ns in spaces]
        try:
            with self.client.lock(lock_key, timeout=self.lock_timeout, blocking_timeout=self.lock_timeout):
                raw = self._fetch_states(keys)
                agreed, free = _agreed([_State.parse(r) for r in raw])
                if agreed.exists and any(r != agreed.dump().encode() for r in raw):
                    self._write_all(keys, agreed)
                result = change(agreed, keys, free)
            for generation in free:
                self._free(table, generation)
            return result
        except OnlineStoreError:
            raise
        except _ERRORS as exc:
            raise self._fail(action, exc) from exc

    def _write_all(self, keys: list[str], state: _State, instance: str | None = None) -> bool:
        """Write ``state`` to every bucket; False if some bucket's master is not one of ``instance``
        (checked atomically with the write; the other buckets were written)."""
        state.exists = True
        value = state.dump()
        pipe = self.client.pipeline()
        for key in keys:
            # EVAL, not EVALSHA: state changes are rare, and a restarted master has no script cache.
            pipe.execute_command("EVAL", scripts.SET_STATE, 1, key, instance or "", value)
        results = pipe.execute()
        for key in keys:
            self._states.pop(key, None)
        return all(r == 1 for r in results)

    def set_marker(
        self, table: OnlineTable, *, instance: str | None = None, as_of: datetime | None = None
    ) -> bool:
        def change(state: _State, keys: list[str], free: list[str]) -> bool:
            new = state.copy()
            new.done = True
            new.active.as_of = max(new.active.as_of, as_of_micros(as_of))
            if self._write_all(keys, new, instance):
                return True
            state.done = False  # a master restarted: no bucket may claim a completed run
            self._write_all(keys, state)
            return False

        return self._change(table, "setting the marker", change)

    def clear_marker(self, table: OnlineTable) -> None:
        def change(state: _State, keys: list[str], free: list[str]) -> None:
            if state.exists:
                state.done = False
                self._write_all(keys, state)

        self._change(table, "clearing the marker", change)

    def begin_generation(self, table: OnlineTable, *, as_of: datetime | None = None) -> str:
        def change(state: _State, keys: list[str], free: list[str]) -> str:
            generation = _Gen(f"g{state.next}", as_of_micros(as_of))
            state.next += 1
            state.building.append(generation)
            self._write_all(keys, state)
            return generation.name

        return self._change(table, f"starting a generation of {table.view} (version {table.version})", change)

    def commit_generation(
        self, table: OnlineTable, generation: str, *, instance: str | None = None
    ) -> CommitOutcome:
        action = f"switching {table.view} (version {table.version}) to generation {generation}"

        def change(state: _State, keys: list[str], free: list[str]) -> CommitOutcome:
            gen = state.find(generation)
            if gen is None:
                raise not_building(table, generation)
            if state.active.as_of > gen.as_of:
                state.building.remove(gen)
                self._write_all(keys, state)
                free.append(generation)
                return "superseded"
            switching = state.copy()
            switching.find(generation).switching = True  # type: ignore[union-attr]
            done = state.copy()
            done.active = _Gen(gen.name, gen.as_of)
            done.building = [g for g in state.building if g is not gen and not _older(g, gen)]
            done.done = True
            freed = [state.active.name, *(g.name for g in state.building if g is not gen and _older(g, gen))]
            if not (self._write_all(keys, switching, instance) and self._write_all(keys, done, instance)):
                # A master is another instance: put every bucket back as it was, without the marker.
                state.done = False
                self._write_all(keys, state)
                return "restarted"
            free.extend(freed)
            return "committed"

        return self._change(table, action, change)

    def abort_generation(self, table: OnlineTable, generation: str) -> None:
        def change(state: _State, keys: list[str], free: list[str]) -> None:
            gen = state.find(generation)
            if gen is not None:
                state.building.remove(gen)
                self._write_all(keys, state)
            if generation != state.active.name:
                free.append(generation)

        self._change(table, f"aborting generation {generation} of {table.view} (version {table.version})", change)

    def _free(self, table: OnlineTable, generation: str) -> None:
        """Unlink every key of a generation that no reader or writer can reach any more (SCAN on every
        master)."""
        base = _glob_escape(f"{self.prefix}:{table.view}:{{{table.version}.") + "*}:"
        if generation == _BASE:
            self._unlink_matching(base + "*", skip=b"}:%g")
        else:
            self._unlink_matching(base + _glob_escape(_segment(generation)) + "*")

    def _unlink_matching(self, pattern: str, skip: bytes | None = None) -> None:
        batch: list[bytes] = []
        for key in self.client.scan_iter(match=pattern, count=1000):
            if skip is not None and skip in key:
                continue
            batch.append(key)
            if len(batch) >= 1000:
                self.client.unlink(*batch)
                batch.clear()
        if batch:
            self.client.unlink(*batch)

    def drop(self, table: OnlineTable) -> None:
        spaces, lock_key = self._layout(table)
        try:
            self.client.unlink(*(ns[:-1] for ns in spaces))
            for ns in spaces:
                self._states.pop(ns[:-1], None)
            base = _glob_escape(f"{self.prefix}:{table.view}:{{{table.version}.") + "*}:*"
            self._unlink_matching(base)
            self.client.unlink(lock_key)
        except _ERRORS as exc:
            raise self._fail(f"dropping {table.view} (version {table.version})", exc) from exc

    def close(self) -> None:
        self.client.close()
