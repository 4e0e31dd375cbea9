"""The newer-wins order of stored rows: the whole PIT tie order (DESIGN.md section 3, rule 4).

A stored row is ``header + payload`` (see ``encoding``). Rows compare first by the 17-byte header,
whose byte order is ``(event_ts, created with NULL lowest)``, then, on a header tie, by the feature
values in ``OnlineTable.features`` order, which is the view's declared feature order and so the order
of the offline tie-break (``fsql.compiler.pit._tie_columns``). Each value compares like the offline
``ORDER BY v DESC NULLS LAST`` of ``fsql.compiler.dialects.value_sort_keys``:

- NULL lowest; inside a list a NULL element ranks above every value (DuckDB and PostgreSQL do that);
- integers exactly (int64 and uint64 limits included), temporal types by their integer value;
- floats numerically, NaN above +Infinity, every NaN equal, -0.0 equal to 0.0;
- strings and binaries by their bytes (UTF-8 byte order is code point order);
- booleans false < true; decimals by value (``encoding`` stores them as an ordered msgpack ext);
- lists element by element, a proper prefix first.

The values are not stored twice: the stores compare the msgpack payload itself, which costs nothing on
the common path (the headers differ) and adds no byte per entity. ``compare_payloads`` is the Python
comparator (the SQLite store registers it as a SQL function); ``LUA_COMPARE`` is the same comparator
for the Redis script. Both walk msgpack without decoding numbers to doubles: Lua 5.1 numbers cannot
hold int64 exactly, so integers compare as 9-byte keys, and bytes compare one by one because Lua's
``<`` on strings uses strcoll, whose order depends on the server's locale.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack

# Families in the order two values of different families compare. A column holds one family (and
# NULL), so only NULL's place matters; the rest just keeps the order total.
_NIL, _BOOL, _INT, _FLOAT, _BYTES, _EXT, _ARRAY = range(7)


def _key(value: Any, nested: bool) -> tuple:
    if value is None:
        return (_ARRAY + 1,) if nested else (_NIL,)
    if isinstance(value, bool):
        return (_BOOL, value)
    if isinstance(value, int):
        return (_INT, value)
    if isinstance(value, float):
        return (_FLOAT, 1, 0.0) if math.isnan(value) else (_FLOAT, 0, value + 0.0)
    if isinstance(value, bytes):
        return (_BYTES, value)
    if isinstance(value, msgpack.ExtType):
        return (_EXT, value.code & 0xFF, value.data)  # Lua sees the code as an unsigned byte
    if isinstance(value, list):
        return (_ARRAY, tuple(_key(v, True) for v in value))
    raise TypeError(f"no tie order for a stored {type(value).__name__}")


def payload_key(payload: bytes) -> tuple:
    """A Python sort key of a payload: equal keys = tied rows, greater key = ranks higher."""
    # raw=True: str and bin both come back as bytes, compared by their bytes like Lua does.
    values = msgpack.unpackb(payload, raw=True, use_list=True, strict_map_key=False)
    return tuple(_key(v, False) for v in values)


def compare_payloads(a: bytes, b: bytes) -> int:
    """-1, 0 or 1 as payload ``a`` ranks below, level with or above ``b`` (same OnlineTable)."""
    if a == b:
        return 0
    ka, kb = payload_key(a), payload_key(b)
    return (ka > kb) - (ka < kb)


def payload_ranks_higher(new: bytes, old: bytes) -> bool:
    """Whether a row with payload ``new`` replaces a stored row with the same header and ``old``."""
    return new != old and payload_key(new) > payload_key(old)


# --- order-preserving integers (decimals) ------------------------------------------------------------


def ordered_int(n: int) -> bytes:
    """Bytes whose byte order is the order of the integers: a length code, then the magnitude.

    ``0x80`` is zero, ``0x80 + k`` a positive of k bytes, ``0x80 - k`` a negative of k bytes stored
    as ``2**(8k) - 1 - |n|``, so more bytes means further from zero. Up to 127 bytes.
    """
    if n == 0:
        return b"\x80"
    magnitude = -n if n < 0 else n
    k = (magnitude.bit_length() + 7) // 8
    if n > 0:
        return bytes((0x80 + k,)) + n.to_bytes(k, "big")
    return bytes((0x80 - k,)) + ((1 << (8 * k)) - 1 - magnitude).to_bytes(k, "big")


def ordered_int_value(data: bytes) -> int:
    code = data[0]
    if code == 0x80:
        return 0
    if code > 0x80:
        return int.from_bytes(data[1 : 1 + code - 0x80], "big")
    k = 0x80 - code
    return -((1 << (8 * k)) - 1 - int.from_bytes(data[1 : 1 + k], "big"))


# --- the same comparator in Lua (Redis) -----------------------------------------------------------------

# compare(a, pa, b, pb, nested) compares the msgpack values at positions pa of a and pb of b and
# returns (-1|0|1, next pa, next pb); the positions are only meaningful when the values are equal.
LUA_COMPARE = r"""
local byte, sub, rep, char = string.byte, string.sub, string.rep, string.char
local sunpack = struct.unpack

local function cmp_bytes(a, b)
  if a == b then return 0 end
  local n = #a
  if #b < n then n = #b end
  for i = 1, n do
    local x, y = byte(a, i), byte(b, i)
    if x ~= y then
      if x < y then return -1 end
      return 1
    end
  end
  if #a < #b then return -1 end
  return 1
end

local function len_at(s, p, w)
  local n = 0
  for i = p, p + w - 1 do n = n * 256 + byte(s, i) end
  return n
end

local function int_key(raw, signed)
  local w = #raw
  if signed and byte(raw, 1) >= 128 then return '\0' .. rep('\255', 8 - w) .. raw end
  return '\1' .. rep('\0', 8 - w) .. raw
end

-- family, sort key, element count (arrays), next position
local function item(s, p)
  local t = byte(s, p)
  if t <= 0x7f then return 2, int_key(char(t), false), nil, p + 1 end
  if t >= 0xe0 then return 2, int_key(char(t), true), nil, p + 1 end
  if t >= 0xa0 and t <= 0xbf then return 4, sub(s, p + 1, p + t - 0xa0), nil, p + 1 + t - 0xa0 end
  if t >= 0x90 and t <= 0x9f then return 6, nil, t - 0x90, p + 1 end
  if t == 0xc0 then return 0, nil, nil, p + 1 end
  if t == 0xc2 then return 1, 0, nil, p + 1 end
  if t == 0xc3 then return 1, 1, nil, p + 1 end
  if t >= 0xcc and t <= 0xcf then
    local w = 2 ^ (t - 0xcc)
    return 2, int_key(sub(s, p + 1, p + w), false), nil, p + 1 + w
  end
  if t >= 0xd0 and t <= 0xd3 then
    local w = 2 ^ (t - 0xd0)
    return 2, int_key(sub(s, p + 1, p + w), true), nil, p + 1 + w
  end
  if t == 0xca then return 3, (sunpack('>f', s, p + 1)), nil, p + 5 end
  if t == 0xcb then return 3, (sunpack('>d', s, p + 1)), nil, p + 9 end
  if t == 0xd9 or t == 0xda or t == 0xdb or t == 0xc4 or t == 0xc5 or t == 0xc6 then
    local w = (t >= 0xd9) and 2 ^ (t - 0xd9) or 2 ^ (t - 0xc4)
    local n = len_at(s, p + 1, w)
    return 4, sub(s, p + 1 + w, p + w + n), nil, p + 1 + w + n
  end
  if t >= 0xd4 and t <= 0xd8 then
    local n = 2 ^ (t - 0xd4)
    return 5, sub(s, p + 1, p + 1 + n), nil, p + 2 + n
  end
  if t >= 0xc7 and t <= 0xc9 then
    local w = 2 ^ (t - 0xc7)
    local n = len_at(s, p + 1, w)
    return 5, sub(s, p + 1 + w, p + 1 + w + n), nil, p + 2 + w + n
  end
  if t == 0xdc or t == 0xdd then
    local w = (t == 0xdc) and 2 or 4
    return 6, nil, len_at(s, p + 1, w), p + 1 + w
  end
  error('fsql: unexpected msgpack type ' .. t .. ' in a stored row')
end

local function compare(a, pa, b, pb, nested)
  local fa, ka, na, qa = item(a, pa)
  local fb, kb, nb, qb = item(b, pb)
  if nested then  -- a NULL list element ranks above every value
    if fa == 0 then fa = 7 end
    if fb == 0 then fb = 7 end
  end
  if fa ~= fb then
    if fa < fb then return -1 end
    return 1
  end
  if fa == 0 or fa == 7 then return 0, qa, qb end
  if fa == 6 then
    local n = na
    if nb < n then n = nb end
    for _ = 1, n do
      local c
      c, qa, qb = compare(a, qa, b, qb, true)
      if c ~= 0 then return c end
    end
    if na ~= nb then
      if na < nb then return -1 end
      return 1
    end
    return 0, qa, qb
  end
  local c
  if fa == 3 then  -- NaN above everything, NaNs equal; -0.0 == 0.0 already
    local xa, xb = ka ~= ka, kb ~= kb
    if xa or xb then
      c = (xa and 1 or 0) - (xb and 1 or 0)
    elseif ka < kb then c = -1
    elseif ka > kb then c = 1
    else c = 0 end
  elseif fa == 1 then
    c = ka - kb
  else
    c = cmp_bytes(ka, kb)
  end
  return c, qa, qb
end
"""
