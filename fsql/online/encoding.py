"""The online value and key encodings shared by every online store.

A stored row is two parts:

- an ordering **header** of ``HEADER_SIZE`` (17) bytes whose plain byte order is the newer-wins order,
  so a store compares rows without decoding them (Redis Lua compares bytes, SQLite compares integers
  taken from the same numbers)::

      event_ts   8 bytes  big-endian, microseconds since the epoch with the sign bit flipped
      has_created 1 byte  0 = created is NULL (ranks lowest), 1 = present
      created    8 bytes  like event_ts; zero bytes when NULL

- a **payload**: msgpack of the feature values as one array in ``OnlineTable.features`` order. Feature
  names are never repeated per entity: the schema lives in ``OnlineTable``. Values are msgpack-native
  where that is exact (int, float incl. NaN, str, bool, bytes, nil for NULL); temporal types are stored
  as integers in their Arrow unit (date32: days, timestamp[us]: microseconds ...) and decimals as a
  msgpack ext (code ``DECIMAL_EXT``) holding ``order.ordered_int`` of the unscaled integer, so the
  stores can rank rows on them (``order``) without knowing the schema; decoded back to Python objects
  from ``OnlineTable.feature_types`` (a decimal stored as its string by older versions still reads).

On an ``(event_ts, created)`` tie, the stores rank rows on the payload values (``order``): the whole
PIT tie order, with no byte stored twice.

Entity keys are encoded to one canonical text per key tuple (``key_text``): ints in decimal, bools
``true``/``false``, strings with ``%`` and ``:`` percent-escaped, parts joined by ``:``. The batch path
(``encode_keys``, vectorised over Arrow columns) and the read path (``key_text`` on Python values) give
the same text, so a key written from an Arrow int64 is found with a Python int.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from numbers import Integral
from typing import Any

import msgpack
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fsql.errors import OnlineStoreError
from fsql.online.base import CREATED, EVENT_TS, OnlineRow, OnlineTable
from fsql.online.order import ordered_int, ordered_int_value

HEADER_SIZE = 17
DECIMAL_EXT = 1
_HEADER = struct.Struct(">QBQ")
_SIGN = 1 << 63
_TS_US = pa.timestamp("us", tz="UTC")
_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = datetime(1970, 1, 1)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_TS_UNIT = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": None}


# --- keys -------------------------------------------------------------------------------------------


def _escape(text: str) -> str:
    if "%" in text:
        text = text.replace("%", "%25")
    if ":" in text:
        text = text.replace(":", "%3A")
    return text


def key_part(value: Any) -> str:
    """Canonical text of one key value (the Python value of the key column's Arrow type)."""
    if isinstance(value, str):
        return _escape(value)
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, Integral):
        return str(int(value))
    if isinstance(value, datetime):
        # An instant: microseconds since the epoch, so any time zone of the same instant matches.
        base = _EPOCH_NAIVE if value.tzinfo is None else _EPOCH_UTC
        return str((value - base) // timedelta(microseconds=1))
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bytes):
        return "x" + value.hex()
    if isinstance(value, Decimal | float):
        return _escape(str(value))
    raise OnlineStoreError(
        f"unsupported entity key value {value!r} of type {type(value).__name__}",
        hint="entity keys must be int, str, bool, date, datetime, bytes or Decimal",
    )


def key_text(key: Sequence[Any]) -> str | None:
    """Canonical text of a key tuple, or None when a part is NULL (a NULL key never matches)."""
    if len(key) == 1:
        return None if key[0] is None else key_part(key[0])
    if any(v is None for v in key):
        return None
    return ":".join(map(key_part, key))


def _key_column_texts(column: pa.Array) -> list[str | None]:
    t = column.type
    # Vectorised fast paths; each must agree with key_part (tests check both sides).
    if pa.types.is_integer(t):
        return pc.cast(column, pa.string()).to_pylist()
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        escaped = pc.replace_substring(pc.replace_substring(column, "%", "%25"), ":", "%3A")
        return escaped.to_pylist()
    if pa.types.is_dictionary(t):
        return _key_column_texts(column.dictionary_decode())
    return [None if v is None else key_part(v) for v in column.to_pylist()]


def encode_keys(table: OnlineTable, batch: pa.RecordBatch) -> list[str | None]:
    """Canonical key text per row of ``batch`` (None where a key column is NULL)."""
    parts = [_key_column_texts(_column(batch, name)) for name in table.entity_keys]
    if len(parts) == 1:
        return parts[0]
    return [None if None in row else ":".join(row) for row in zip(*parts, strict=True)]


# --- headers ----------------------------------------------------------------------------------------


def _micros(batch: pa.RecordBatch, name: str) -> pa.Array:
    column = _column(batch, name)
    if not pa.types.is_timestamp(column.type):
        raise OnlineStoreError(f"column {name} must be a timestamp, got {column.type}")
    if column.type.unit != "us" or column.type.tz is None:
        try:
            column = pc.cast(column, _TS_US)
        except pa.ArrowInvalid as exc:
            raise OnlineStoreError(f"cannot convert {name} to timestamp[us, UTC]: {exc}") from exc
    return column.cast(pa.int64())


def encode_times(batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(event_ts µs int64, created µs int64 with 0 where NULL, created-present bool) per row."""
    event = _micros(batch, EVENT_TS)
    if event.null_count:
        raise OnlineStoreError(
            f"{event.null_count} rows have a NULL {EVENT_TS}",
            hint="rows with a NULL event timestamp never qualify; filter them out before writing",
        )
    created = _micros(batch, CREATED)
    present = created.is_valid().to_numpy(zero_copy_only=False)
    return (
        event.to_numpy(),
        created.fill_null(0).to_numpy(),
        present,
    )


def encode_headers(event_us: np.ndarray, created_us: np.ndarray, present: np.ndarray) -> list[bytes]:
    """The 17-byte ordering header per row, built in one vectorised pass."""
    n = len(event_us)
    rec = np.empty(n, dtype=np.dtype([("e", ">u8"), ("f", "u1"), ("c", ">u8")]))
    rec["e"] = event_us.view(np.uint64) ^ np.uint64(_SIGN)
    rec["f"] = present
    rec["c"] = np.where(present, created_us.view(np.uint64) ^ np.uint64(_SIGN), np.uint64(0))
    buf = rec.tobytes()
    return [buf[i : i + HEADER_SIZE] for i in range(0, n * HEADER_SIZE, HEADER_SIZE)]


def decode_header(raw: bytes) -> tuple[datetime, datetime | None]:
    event, has_created, created = _HEADER.unpack_from(raw)
    event_ts = _EPOCH_UTC + timedelta(microseconds=event - _SIGN)
    if not has_created:
        return event_ts, None
    return event_ts, _EPOCH_UTC + timedelta(microseconds=created - _SIGN)


def micros_to_datetime(us: int) -> datetime:
    return _EPOCH_UTC + timedelta(microseconds=us)


# --- feature values ---------------------------------------------------------------------------------


def _plain(column: pa.Array) -> list[Any]:
    # numpy's tolist is the fastest exact Arrow → Python path for primitive columns without NULLs.
    if column.null_count == 0 and (
        pa.types.is_integer(column.type)
        or pa.types.is_floating(column.type)
        or pa.types.is_boolean(column.type)
    ):
        return column.to_numpy(zero_copy_only=False).tolist()
    return column.to_pylist()


def _as_ints(column: pa.Array, int_type: pa.DataType) -> list[Any]:
    return _plain(
        column.view(int_type) if column.type.bit_width == int_type.bit_width else column.cast(int_type)
    )


def _is_plain_list_value(t: pa.DataType) -> bool:
    return (
        pa.types.is_integer(t)
        or pa.types.is_float32(t)
        or pa.types.is_float64(t)
        or pa.types.is_boolean(t)
        or pa.types.is_string(t)
        or pa.types.is_large_string(t)
    )


def _encoder(t: pa.DataType) -> Callable[[pa.Array], list[Any]] | None:
    if (
        pa.types.is_integer(t)
        or pa.types.is_float32(t)
        or pa.types.is_float64(t)
        or pa.types.is_boolean(t)
        or pa.types.is_null(t)
        or pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_fixed_size_binary(t)
    ):
        return _plain
    if pa.types.is_timestamp(t) or pa.types.is_date64(t) or pa.types.is_time64(t) or pa.types.is_duration(t):
        return lambda c: _as_ints(c, pa.int64())
    if pa.types.is_date32(t) or pa.types.is_time32(t):
        return lambda c: _as_ints(c, pa.int32())
    if pa.types.is_decimal(t):
        return lambda c: [None if v is None else _decimal_ext(v, t.scale) for v in c.to_pylist()]
    if pa.types.is_dictionary(t):
        inner = _encoder(t.value_type)
        return None if inner is None else lambda c: inner(c.dictionary_decode())
    if (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)) and (
        _is_plain_list_value(t.value_type)
    ):
        return lambda c: c.to_pylist()
    return None


def _decoder(t: pa.DataType) -> Callable[[Any], Any] | None:
    """Stored value → Python value of the Arrow type; None when the stored value already is one."""
    if pa.types.is_timestamp(t):
        epoch = _EPOCH_NAIVE if t.tz is None else _EPOCH_UTC
        scale = _TS_UNIT[t.unit]
        if scale is None:  # ns: Python datetimes hold µs; truncate toward the past like floor division
            return lambda v: epoch + timedelta(microseconds=v // 1000)
        return lambda v: epoch + timedelta(microseconds=v * scale)
    if pa.types.is_date32(t):
        return lambda v: date.fromordinal(_EPOCH_ORDINAL + v)
    if pa.types.is_date64(t):
        return lambda v: date.fromordinal(_EPOCH_ORDINAL + v // 86_400_000)
    if pa.types.is_time32(t) or pa.types.is_time64(t):
        per_us = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": None}[t.unit]

        def to_time(v: int) -> time:
            us = v // 1000 if per_us is None else v * per_us
            return (datetime.min + timedelta(microseconds=us)).time()

        return to_time
    if pa.types.is_duration(t):
        per_us = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": None}[t.unit]
        return lambda v: timedelta(microseconds=v // 1000 if per_us is None else v * per_us)
    if pa.types.is_decimal(t):
        scale = t.scale
        return lambda v: Decimal(v) if isinstance(v, str) else _decimal_value(v, scale)
    if pa.types.is_dictionary(t):
        return _decoder(t.value_type)
    return None


def _decimal_ext(value: Decimal, scale: int) -> msgpack.ExtType:
    sign, digits, exponent = value.as_tuple()
    # Arrow gives every value of a decimal(p, s) column the exponent -s; the int arithmetic is exact
    # where Decimal.scaleb would round to the context's 28 digits.
    unscaled = int("".join(map(str, digits))) * 10 ** (exponent + scale)  # type: ignore[operator]
    return msgpack.ExtType(DECIMAL_EXT, ordered_int(-unscaled if sign else unscaled))


def _decimal_value(ext: msgpack.ExtType, scale: int) -> Decimal:
    unscaled = ordered_int_value(ext.data)
    digits = tuple(int(d) for d in str(abs(unscaled)))
    return Decimal((1 if unscaled < 0 else 0, digits, -scale))


class RowCodec:
    """Encodes Arrow batches to payloads and decodes stored rows for one ``OnlineTable``."""

    def __init__(self, table: OnlineTable) -> None:
        if len(table.features) != len(table.feature_types):
            raise OnlineStoreError(
                f"online table {table.view}: {len(table.features)} features but "
                f"{len(table.feature_types)} feature types"
            )
        self.table = table
        encoders = []
        for name, t in zip(table.features, table.feature_types, strict=True):
            encoder = _encoder(t)
            if encoder is None:
                raise OnlineStoreError(
                    f"feature {table.view}.{name} has type {t}, which the online store cannot hold",
                    hint="cast it to a scalar type (int, float, string, bool, date, timestamp, decimal) "
                    "or a list of numbers/strings in the view's SELECT",
                )
            encoders.append(encoder)
        self._encoders = encoders
        self._decoders = [
            (i, d) for i, d in enumerate(_decoder(t) for t in table.feature_types) if d is not None
        ]

    def encode_payloads(self, batch: pa.RecordBatch) -> list[bytes]:
        """msgpack of the feature values per row, in ``table.features`` order."""
        columns = []
        for name, t, encode in zip(
            self.table.features, self.table.feature_types, self._encoders, strict=True
        ):
            column = _column(batch, name)
            if column.type != t:
                try:
                    column = column.cast(t)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise OnlineStoreError(
                        f"feature {self.table.view}.{name}: batch column is {column.type}, "
                        f"online table says {t}: {exc}"
                    ) from exc
            columns.append(encode(column))
        pack = msgpack.Packer(use_bin_type=True).pack
        if not columns:
            return [pack(())] * batch.num_rows
        return [pack(row) for row in zip(*columns, strict=True)]

    def decode_values(self, payload: bytes) -> tuple[Any, ...]:
        values = msgpack.unpackb(payload, raw=False, use_list=True, strict_map_key=False)
        for i, decode in self._decoders:
            if values[i] is not None:
                values[i] = decode(values[i])
        return tuple(values)

    def decode_row(self, raw: bytes) -> OnlineRow:
        """A stored ``header + payload`` value → OnlineRow."""
        event_ts, created = decode_header(raw)
        return OnlineRow(event_ts, created, self.decode_values(raw[HEADER_SIZE:]))


class CodecCache:
    """RowCodec per OnlineTable. Looked up by identity first: hashing an OnlineTable hashes its Arrow
    types, which costs microseconds on every read."""

    def __init__(self) -> None:
        self._by_id: dict[int, tuple[OnlineTable, RowCodec]] = {}
        self._by_value: dict[OnlineTable, RowCodec] = {}

    def get(self, table: OnlineTable) -> RowCodec:
        hit = self._by_id.get(id(table))
        if hit is not None and hit[0] is table:
            return hit[1]
        codec = self._by_value.get(table)
        if codec is None:
            codec = self._by_value[table] = RowCodec(table)
        if len(self._by_id) > 1024:  # callers building a new OnlineTable per request: stay bounded
            self._by_id.clear()
        self._by_id[id(table)] = (table, codec)  # holding `table` keeps its id from being reused
        return codec


def _column(batch: pa.RecordBatch, name: str) -> pa.Array:
    index = batch.schema.get_field_index(name)
    if index < 0:
        raise OnlineStoreError(
            f"batch has no column {name!r} (columns: {', '.join(batch.schema.names)})",
            hint="a batch holds the entity keys, __fsql_event_ts, __fsql_created and the features",
        )
    return batch.column(index)
