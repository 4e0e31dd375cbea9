"""The Lua scripts of the Redis store (see ``redis.py`` for the key layout they work on).

Every script touches one version's keys only: its state key (``KEYS[1]``) and entity keys of that
version, all passed in ``KEYS``, so the Redis Cluster store (``redis_cluster``) runs the upsert
unchanged on each bucket, whose keys share a hash slot. Header bytes are compared one by one:
Lua's ``<`` on strings uses strcoll, whose order depends on the server's locale.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa
from redis.exceptions import NoScriptError

from fsql.online.base import OnlineTable
from fsql.online.encoding import HEADER_SIZE, RowCodec, encode_headers, encode_keys, encode_times
from fsql.online.order import LUA_COMPARE

# The state string: "<done> <next> <active> [<building> ...]". done is 1 once a run completed since
# the data was (re)created; next numbers the next generation; each generation is "<name>@<as_of>",
# as_of being the µs instant its rows are the latest as of (0 = unknown), and the active one is
# named "-" for the base generation. A bare "1" is the marker of older versions: done, base active.
_STATE = r"""
local function parse_gen(token)
  local name, as_of = string.match(token, '^([^@]+)@?(%-?%d*)$')
  name = name or token
  return {name = name, as_of = tonumber(as_of) or 0, number = tonumber(string.sub(name, 2)) or 0}
end

local function gen_token(g)
  return g.name .. '@' .. string.format('%d', g.as_of)
end

local function load_state(raw)
  local st = {done = '0', next = 1, active = parse_gen('-'), building = {}}
  if not raw then return st end
  local words = {}
  for w in string.gmatch(raw, '%S+') do words[#words + 1] = w end
  if words[1] == '1' then st.done = '1' end
  if #words >= 3 then
    st.next = tonumber(words[2]) or 1
    st.active = parse_gen(words[3])
    for i = 4, #words do st.building[#st.building + 1] = parse_gen(words[i]) end
  end
  return st
end

local function save_state(key, st)
  local parts = {st.done, string.format('%d', st.next), gen_token(st.active)}
  for _, g in ipairs(st.building) do parts[#parts + 1] = gen_token(g) end
  redis.call('SET', key, table.concat(parts, ' '))
end

-- Whether generation a is older than b: as of an earlier time, or as of the same time and begun first.
local function older(a, b)
  if a.as_of ~= b.as_of then return a.as_of < b.as_of end
  return a.number < b.number
end

-- The same check as RedisOnlineStore.instance_id, inside the script so that it is atomic with the
-- write that depends on it ('' = no check).
local function same_instance(expected)
  if expected == '' then return true end
  local info = redis.call('INFO', 'server')
  return string.match(info, 'run_id:(%x+)') == expected
end
"""

# KEYS[1]: the state key; KEYS[2..]: entity keys, one block of n keys per target generation.
# ARGV[1]: the state the client built the keys from ('' = no state key); ARGV[2]: EXPIRE seconds
# (0 = none); ARGV[3]: number of targets; ARGV[3 + i]: the new value of entity i.
# Returns the rows that changed the first target, or -1 when the state changed (the client re-reads it
# and re-sends): a write never lands in a generation that was committed over, aborted or freed.
UPSERT = (
    LUA_COMPARE
    + f"""
local size = {HEADER_SIZE}

local function compare_rows(a, b)
  local _, _, na, pa = item(a, size + 1)
  local _, _, nb, pb = item(b, size + 1)
  local n = na
  if nb < n then n = nb end
  for _ = 1, n do
    local c
    c, pa, pb = compare(a, pa, b, pb, false)
    if c ~= 0 then return c end
  end
  if na < nb then return -1 elseif na > nb then return 1 end
  return 0
end

if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then return -1 end
local ttl = tonumber(ARGV[2])
local targets = tonumber(ARGV[3])
local n = #ARGV - 3
local written = 0
for t = 0, targets - 1 do
  for i = 1, n do
    local key = KEYS[1 + t * n + i]
    local new = ARGV[3 + i]
    local old = redis.call('GETRANGE', key, 0, size - 1)
    local c = 1
    if #old >= size then
      c = cmp_bytes(sub(new, 1, size), old)
      if c == 0 then
        local stored = redis.call('GET', key)
        if stored == new then c = 0 else c = compare_rows(new, stored) end  -- a re-write: no walk
      end
    end
    if c > 0 then
      if ttl > 0 then
        redis.call('SET', key, new, 'EX', ttl)
      else
        redis.call('SET', key, new)
      end
      if t == 0 then written = written + 1 end
    elseif ttl > 0 then
      redis.call('EXPIRE', key, ttl)
    end
  end
end
return written
"""
)

# ARGV[1]: instance ('' = no check), ARGV[2]: the run's as-of (µs). 1 = marker set (and the active
# generation now counts as of at least ARGV[2]: an incremental run merged that much into it),
# 0 = the server is another instance.
SET_MARKER = (
    _STATE
    + """
if not same_instance(ARGV[1]) then return 0 end
local st = load_state(redis.call('GET', KEYS[1]))
st.done = '1'
local as_of = tonumber(ARGV[2]) or 0
if as_of > st.active.as_of then st.active.as_of = as_of end
save_state(KEYS[1], st)
return 1
"""
)

CLEAR_MARKER = (
    _STATE
    + """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local st = load_state(raw)
st.done = '0'
save_state(KEYS[1], st)
return 1
"""
)

# ARGV[1]: as-of (µs). Returns the new generation's name.
BEGIN = (
    _STATE
    + """
local st = load_state(redis.call('GET', KEYS[1]))
local gen = parse_gen('g' .. string.format('%d', st.next) .. '@' .. ARGV[1])
st.next = st.next + 1
st.building[#st.building + 1] = gen
save_state(KEYS[1], st)
return gen.name
"""
)

# ARGV[1]: generation, ARGV[2]: instance. Returns {0} (another instance: nothing changed), {-1} (not
# being built), {2, ARGV[1]} (superseded: the active generation is as of a later time; the caller
# frees ARGV[1]) or {1, generations to free...}: the old active one and those older than ARGV[1].
COMMIT = (
    _STATE
    + """
if not same_instance(ARGV[2]) then return {0} end
local st = load_state(redis.call('GET', KEYS[1]))
local gen = nil
for _, g in ipairs(st.building) do
  if g.name == ARGV[1] then gen = g end
end
if not gen then return {-1} end
local keep, free = {}, {}
if st.active.as_of > gen.as_of then
  for _, g in ipairs(st.building) do
    if g ~= gen then keep[#keep + 1] = g end
  end
  st.building = keep
  save_state(KEYS[1], st)
  return {2, gen.name}
end
free[1] = st.active.name
for _, g in ipairs(st.building) do
  if g == gen then
  elseif older(g, gen) then
    free[#free + 1] = g.name
  else
    keep[#keep + 1] = g
  end
end
st.active, st.building, st.done = gen, keep, '1'
save_state(KEYS[1], st)
return {1, unpack(free)}
"""
)

# ARGV[1]: generation. Returns 1 if it was being built.
ABORT = (
    _STATE
    + """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local st = load_state(raw)
local keep, found = {}, 0
for _, g in ipairs(st.building) do
  if g.name == ARGV[1] then found = 1 else keep[#keep + 1] = g end
end
if found == 1 then
  st.building = keep
  save_state(KEYS[1], st)
end
return found
"""
)

# Redis Cluster (``redis_cluster``): KEYS[1]: a bucket's state key, ARGV[1]: the run ids of the masters
# the run started on (',' separated; '' = no check), ARGV[2]: the new state. 1 = written, 0 = this
# bucket's master is none of them (restarted or failed over): nothing written.
SET_STATE = r"""
if ARGV[1] ~= '' then
  local id = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
  if not id or not string.find(',' .. ARGV[1] .. ',', ',' .. id .. ',', 1, true) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""

# For tests: -1, 0 or 1 as stored value ARGV[1] ranks below, level with or above ARGV[2], exactly as
# the upsert decides.
COMPARE_VALUES = UPSERT[: UPSERT.index("if (redis.call('GET', KEYS[1])")] + """
local c = cmp_bytes(sub(ARGV[1], 1, size), sub(ARGV[2], 1, size))
if c == 0 then c = compare_rows(ARGV[1], ARGV[2]) end
return c
"""


def encoded_rows(table: OnlineTable, codec: RowCodec, batch: pa.RecordBatch) -> Iterator[tuple[str, bytes]]:
    """(entity key text, stored value) per row of ``batch``, the value being the header the upsert
    script compares and the payload; rows with a NULL key are skipped (never served)."""
    headers = encode_headers(*encode_times(batch))
    payloads = codec.encode_payloads(batch)
    for text, header, payload in zip(encode_keys(table, batch), headers, payloads, strict=True):
        if text is not None:
            yield text, header + payload


def ttl_seconds(table: OnlineTable) -> int:
    """The expiry the upsert script sets on each key: the view's TTL rounded up to whole seconds
    (at least one), or 0 for none."""
    return max(1, math.ceil(table.ttl.total_seconds())) if table.ttl else 0


def pipelined_upserts(
    new_pipeline: Callable[[], Any],
    queue: Callable[[Any, int, str], None],
    count: int,
    sha: str,
    load_script: Callable[[], str],
) -> tuple[list[Any], str]:
    """Send ``count`` upsert calls in one pipeline (``queue(pipe, index, sha)`` adds call ``index``);
    the results per call and the script's sha. A server that lost its script cache (restart,
    SCRIPT FLUSH) gets the script again and only the calls that did not run are re-sent, once."""
    results: list[Any] = [None] * count
    todo = list(range(count))
    for attempt in range(2):
        pipe = new_pipeline()
        for index in todo:
            queue(pipe, index, sha)
        for index, result in zip(todo, pipe.execute(raise_on_error=False), strict=True):
            results[index] = result
        errors = [r for r in results if isinstance(r, Exception)]
        if not errors:
            return results, sha
        if attempt == 0 and all(isinstance(e, NoScriptError) for e in errors):
            sha = load_script()
            todo = [i for i, r in enumerate(results) if isinstance(r, Exception)]
            continue
        raise errors[0]
    raise AssertionError("unreachable")
