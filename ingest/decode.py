"""Decoding and validation of an ingest body into an Arrow table of events.

``decode_events`` turns the bytes of one ``POST /v1/events`` request into a table with exactly
``storage.schema.EVENT_SCHEMA``, or refuses the whole batch with a ``BatchRejected`` subclass that
names the first offending row and field. Nothing else escapes it, whatever the bytes.

Rules beyond DESIGN.md's table, decided here:

- JSON is a top-level array of objects. NDJSON is a sequence of JSON objects separated by newlines
  (any JSON whitespace is tolerated between them); blank lines are ignored and ``row`` counts
  objects, not lines. A UTF-8 byte order mark before either is skipped.
- Unknown extra fields in an event are ignored, so producers can send more than we store.
- ``value`` and an integer ``timestamp`` must be written as JSON integers: anything with a fraction
  or an exponent (``1.5``, ``1.0``, ``1e3``) is refused, as are booleans and numbers outside int64.
- A string ``timestamp`` is RFC 3339 (``T``, ``t`` or a space between date and time; ``Z`` or a
  ``±HH:MM`` offset; up to 9 fractional digits), converted exactly to Unix ns; leap seconds are
  refused (``ingest.timestamp``).
- A JSON string escaping a lone UTF-16 surrogate cannot be UTF-8 and makes the body malformed.
- Arrow input may carry extra columns (ignored) and compatible types: ``timestamp`` int64 (Unix ns)
  or an Arrow timestamp of any unit (and any time zone, whose epoch values are UTC); ``value`` any
  integer type; strings as string, large_string, string_view or dictionary of those. Buffers
  compressed inside the stream (IPC lz4/zstd) count against ``max_decompressed_bytes`` too.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from ingest.arrowipc import declared_inflation
from ingest.compression import content_coding, inflate
from ingest.errors import BatchRejected, MalformedBody, PayloadTooLarge, UnsupportedMediaType
from ingest.timestamp import parse_rfc3339_ns
from storage.schema import CATEGORY_MAX_BYTES, EVENT_SCHEMA, PRODUCER_MAX_BYTES

__all__ = ["MEDIA_TYPES", "DecodeConfig", "decode_events", "parse_rfc3339_ns"]

JSON, NDJSON, ARROW = "application/json", "application/x-ndjson", "application/vnd.apache.arrow.stream"
MEDIA_TYPES = {JSON: JSON, NDJSON: NDJSON, "application/ndjson": NDJSON, ARROW: ARROW}

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_FIELDS = ("timestamp", "category", "value", "producer_id")
_STRING_LIMITS = {"category": CATEGORY_MAX_BYTES, "producer_id": PRODUCER_MAX_BYTES}
_UNIT_NS = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}


@dataclass(frozen=True)
class DecodeConfig:
    """Limits of one ingest body. Timestamps outside ``[now - retention_ns, now + max_future_ns]``
    (and any before 1970) are refused; ``retention_ns=None`` accepts any past timestamp."""

    max_body_bytes: int = 64 << 20
    max_decompressed_bytes: int = 256 << 20
    max_rows: int = 1_000_000
    max_future_ns: int = 86_400 * 10**9
    retention_ns: int | None = None


def decode_events(
    body: bytes,
    content_type: str | None,
    content_encoding: str | None,
    *,
    now_ns: int,
    config: DecodeConfig = DecodeConfig(),
) -> pa.Table:
    """Decode and validate one batch. Returns a non-empty table with exactly ``EVENT_SCHEMA``
    whose every row passed every rule, or raises a ``BatchRejected`` subclass (and nothing else):
    ``UnsupportedMediaType``, ``PayloadTooLarge``, ``MalformedBody``, or plain ``BatchRejected``
    for an invalid event, with ``row``/``field`` naming the first offending event."""
    media = _media_type(content_type)
    coding = content_coding(content_encoding)
    if len(body) > config.max_body_bytes:
        raise PayloadTooLarge(f"body is {len(body)} bytes, over the limit of {config.max_body_bytes}")
    data = inflate(body, coding, config.max_decompressed_bytes)
    lo = 0 if config.retention_ns is None else max(0, now_ns - config.retention_ns)
    window = (lo, now_ns + config.max_future_ns)
    if media == ARROW:
        return _decode_arrow(data, config, window)
    return _decode_json(data, media == NDJSON, config, window)


def _media_type(content_type: str | None) -> str:
    if not content_type:
        raise UnsupportedMediaType("missing Content-Type; use one of " + ", ".join(MEDIA_TYPES))
    essence, *params = content_type.split(";")
    media = MEDIA_TYPES.get(essence.strip().lower())
    if media is None:
        raise UnsupportedMediaType(f"unsupported Content-Type {essence.strip()!r}")
    for param in params:
        name, _, val = param.partition("=")
        charset = val.strip().strip('"').lower()
        if name.strip().lower() == "charset" and media != ARROW and charset not in ("utf-8", "utf8"):
            raise UnsupportedMediaType(f"unsupported charset {charset!r}; send UTF-8")
    return media


# ---------------------------------------------------------------- per-value rules (slow path)


def _timestamp_problem(ns: int, window: tuple[int, int]) -> str | None:
    if ns < 0:
        return f"{ns} is before 1970-01-01 (negative Unix ns)"
    if ns < window[0]:
        return f"{ns} is older than the retention window (earliest accepted: {window[0]})"
    if ns > window[1]:
        return f"{ns} is too far in the future (latest accepted: {window[1]})"
    return None


def _integer_problem(v: object) -> str | None:
    if isinstance(v, bool) or not isinstance(v, int):
        kind = "null" if v is None else type(v).__name__
        extra = " (numbers written with a fraction or exponent are refused)" if kind == "float" else ""
        return f"must be an integer{extra}, got {kind} {str(v)[:40]}"
    if not _INT64_MIN <= v <= _INT64_MAX:
        return f"{v} is outside the int64 range"
    return None


def _string_problem(v: object, field: str) -> str | None:
    if not isinstance(v, str):
        return f"must be a string, got {'null' if v is None else type(v).__name__}"
    n = len(v.encode())
    if not 1 <= n <= _STRING_LIMITS[field]:
        return f"must be 1..{_STRING_LIMITS[field]} UTF-8 bytes, got {n}"
    if "\x00" in v:
        return "must not contain NUL characters"
    return None


def _event_problem(event: object, window: tuple[int, int]) -> tuple[str | None, str] | None:
    """The first (field, problem) of one decoded JSON value, or None if it is a valid event."""
    if not isinstance(event, dict):
        return None, f"must be a JSON object, got {type(event).__name__}"
    for field in _FIELDS:
        if field not in event:
            return field, "is missing"
        v = event[field]
        if v is None:
            return field, "is null"
        if field == "timestamp":
            if isinstance(v, str):
                try:
                    v = parse_rfc3339_ns(v)
                except ValueError as e:
                    return field, str(e)
            problem = _integer_problem(v) or _timestamp_problem(v, window)
        elif field == "value":
            problem = _integer_problem(v)
        else:
            problem = _string_problem(v, field)
        if problem:
            return field, problem
    return None


def _reject(row: int, field: str | None, problem: str) -> BatchRejected:
    where = f"event {row}" if field is None else f"event {row}: {field}"
    return BatchRejected(f"{where} {problem}", row=row, field=field)


# ---------------------------------------------------------------- JSON and NDJSON


class _Event(msgspec.Struct, gc=False):
    timestamp: int | str
    category: str
    value: int
    producer_id: str


_ARRAY = msgspec.json.Decoder(list[_Event])
_LINE = msgspec.json.Decoder(_Event)
_ANY = msgspec.json.Decoder()
_BYTE_AT = re.compile(r"\(byte (\d+)\)")
_TIMESTAMP, _CATEGORY = attrgetter("timestamp"), attrgetter("category")
_VALUE, _PRODUCER = attrgetter("value"), attrgetter("producer_id")


def _decode_json(data: bytes | bytearray, ndjson: bool, config: DecodeConfig, window: tuple[int, int]) -> pa.Table:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        events = _LINE.decode_lines(data) if ndjson else _ARRAY.decode(data)
    except msgspec.ValidationError:
        raise _json_slow_path(data, ndjson, config, window) from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as e:  # too deep a nesting
        raise _malformed_json(data, ndjson, e) from e
    n = len(events)
    _check_count(n, config)
    try:
        try:
            ts = pa.array(map(_TIMESTAMP, events), pa.int64(), size=n)
        except pa.ArrowException:  # some timestamps are RFC 3339 strings
            ts = pa.array([t if type(t) is int else parse_rfc3339_ns(t) for t in map(_TIMESTAMP, events)])
        value = pa.array(map(_VALUE, events), pa.int64(), size=n)
    except (ValueError, OverflowError, pa.ArrowException):  # a bad date-time or an integer outside int64
        raise _json_slow_path(data, ndjson, config, window) from None
    category = pa.array(map(_CATEGORY, events), pa.string(), size=n)
    producer = pa.array(map(_PRODUCER, events), pa.string(), size=n)
    # JSON strings cannot hold a raw NUL, so only a \u0000 escape can put one there.
    _check_columns([ts, category, value, producer], 1, window, check_nul=b"\\u0000" in data)
    return pa.Table.from_arrays([ts, category, value, producer], schema=EVENT_SCHEMA)


def _json_slow_path(
    data: bytes | bytearray, ndjson: bool, config: DecodeConfig, window: tuple[int, int]
) -> BatchRejected:
    """Runs only when the typed decode failed: decodes untyped and walks every event in Python to
    find the first offending one exactly."""
    try:
        events = _ANY.decode_lines(data) if ndjson else _ANY.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as e:  # too deep a nesting
        return _malformed_json(data, ndjson, e)
    if not isinstance(events, list):
        return MalformedBody(f"a JSON body must be an array of events, got {type(events).__name__}")
    _check_count(len(events), config)
    for row, event in enumerate(events):
        found = _event_problem(event, window)
        if found is not None:
            return _reject(row, *found)
    return BatchRejected("invalid batch")  # unreachable: the typed decode and the walk agree


def _malformed_json(data: bytes | bytearray, ndjson: bool, error: Exception) -> MalformedBody:
    what = "NDJSON" if ndjson else "JSON"
    m = _BYTE_AT.search(str(error))
    if ndjson and m:
        line = data.count(b"\n", 0, int(m[1])) + 1
        return MalformedBody(f"malformed {what} on line {line}: {error}")
    return MalformedBody(f"malformed {what}: {error}")


def _check_count(rows: int, config: DecodeConfig) -> None:
    if rows == 0:
        raise BatchRejected("empty batch")
    if rows > config.max_rows:
        raise PayloadTooLarge(f"batch has {rows} events, over the limit of {config.max_rows}")


# ---------------------------------------------------------------- Arrow IPC stream


def _decode_arrow(data: bytes | bytearray, config: DecodeConfig, window: tuple[int, int]) -> pa.Table:
    batches = []
    rows = 0
    try:
        if len(data) + declared_inflation(data) > config.max_decompressed_bytes:
            raise PayloadTooLarge(f"Arrow buffers inflate past the limit of {config.max_decompressed_bytes} bytes")
        reader = pa.ipc.open_stream(pa.py_buffer(data))  # reads in place: no copy of the body
        schema = reader.schema
        for batch in reader:
            rows += batch.num_rows
            if rows > config.max_rows:
                raise PayloadTooLarge(f"batch has over {config.max_rows} events, the limit")
            batches.append(batch)
    except (pa.ArrowException, OSError, ValueError, struct.error, IndexError) as e:
        raise MalformedBody(f"corrupt Arrow IPC stream: {e}") from e
    factor = _check_arrow_schema(schema)
    if rows == 0:
        raise BatchRejected("empty batch")
    table = pa.Table.from_batches(batches, schema)
    cols = []
    for name in _FIELDS:
        col = table.column(name)
        try:
            col.validate(full=True)  # the IPC reader checks structure only, not UTF-8
        except pa.ArrowInvalid as e:
            raise _invalid_arrow_column(name, col, e) from e
        if name in _STRING_LIMITS and col.type != pa.string():
            col = col.cast(pa.string())
        elif name == "timestamp" and factor:
            col = col.cast(pa.int64())  # the same epoch values, still in the stream's unit
        cols.append(col)
    _check_columns(cols, factor or 1, window, check_nul=True)
    ts, category, value, producer = cols
    if factor > 1:
        ts = pc.multiply(ts, factor)  # cannot overflow: the window check bounded it
    return pa.Table.from_arrays([ts, category, value.cast(pa.int64()), producer], schema=EVENT_SCHEMA)


def _check_arrow_schema(schema: pa.Schema) -> int:
    """Refuses missing or incompatible columns; returns the ns-per-unit factor of ``timestamp``
    (0 for a plain int64 column)."""
    factor = 0
    for name in _FIELDS:
        matches = schema.get_all_field_indices(name)
        if len(matches) != 1:
            raise BatchRejected(f"Arrow schema must have exactly one {name!r} column", field=name)
        t = schema.field(matches[0]).type
        if name == "timestamp":
            if pa.types.is_timestamp(t):
                factor = _UNIT_NS[t.unit]
            elif not pa.types.is_int64(t):
                raise BatchRejected(f"timestamp must be int64 or an Arrow timestamp, got {t}", field=name)
        elif name == "value":
            if not pa.types.is_integer(t):
                raise BatchRejected(f"value must be an integer type, got {t}", field=name)
        elif not _is_text(t.value_type if pa.types.is_dictionary(t) else t):
            raise BatchRejected(f"{name} must be a string type, got {t}", field=name)
    return factor


def _is_text(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t))


_AS_BINARY = {
    pa.string(): pa.binary(),
    pa.large_string(): pa.large_binary(),
    pa.string_view(): pa.binary_view(),
}


def _invalid_arrow_column(name: str, col: pa.ChunkedArray, error: Exception) -> MalformedBody:
    """A column failed full validation: name the row when it holds invalid UTF-8 (a Python loop,
    but only on this failure path), else call the stream corrupt."""
    # Arrow checks UTF-8 only once the offsets are known sound, so reading the values is then safe.
    if name in _STRING_LIMITS and "UTF8" in str(error):
        try:
            row = 0
            for chunk in col.chunks:
                if pa.types.is_dictionary(chunk.type):
                    words = chunk.dictionary.view(_AS_BINARY[chunk.dictionary.type]).to_pylist()
                    values = [None if i is None else words[i] for i in chunk.indices.to_pylist()]
                else:
                    values = chunk.view(_AS_BINARY[chunk.type]).to_pylist()
                for v in values:
                    if v is not None:
                        v.decode()
                    row += 1
        except UnicodeDecodeError:
            return MalformedBody(f"event {row}: {name} is not valid UTF-8", row=row, field=name)
        except (pa.ArrowException, IndexError, KeyError, ValueError, SystemError):
            pass
    return MalformedBody(f"corrupt Arrow data in column {name!r}: {error}", field=name)


# ---------------------------------------------------------------- vectorised checks (all formats)


def _check_columns(cols: list[Any], factor: int, window: tuple[int, int], *, check_nul: bool) -> None:
    """Refuses the batch if any row breaks a rule, naming the first such row, with Arrow compute
    kernels only (no per-row Python). ``cols`` are timestamp (int64 in units of ``factor`` ns),
    category, value (any integer type), producer_id (string); nulls are allowed in and refused."""
    ts, category, value, producer = cols
    lo, hi = -(-window[0] // factor), window[1] // factor  # the ns window in the column's unit
    lengths = [pc.binary_length(category), pc.binary_length(producer)]
    wide = pa.types.is_uint64(value.type)
    bad = any(c.null_count for c in cols)
    if not bad:
        mm = pc.min_max(ts).as_py()
        bad = mm["min"] < lo or mm["max"] > hi
    for name, n in zip(_STRING_LIMITS, lengths, strict=True):
        mm = pc.min_max(n).as_py()
        bad = bad or mm["min"] < 1 or mm["max"] > _STRING_LIMITS[name]
    if not bad and wide:
        bad = pc.max(value).as_py() > _INT64_MAX
    if not bad and check_nul:
        bad = _may_hold_nul(category) or _may_hold_nul(producer)
    if not bad:
        return
    masks = {
        "timestamp": pc.or_(pc.less(ts, lo), pc.greater(ts, hi)),
        "category": _string_mask(category, lengths[0], CATEGORY_MAX_BYTES),
        "value": pc.greater(value, pa.scalar(_INT64_MAX, pa.uint64())) if wide else pc.is_null(value),
        "producer_id": _string_mask(producer, lengths[1], PRODUCER_MAX_BYTES),
    }
    masks = {name: pc.fill_null(m, True) for name, m in masks.items()}  # a null is always bad
    any_bad = masks["timestamp"]
    for m in list(masks.values())[1:]:
        any_bad = pc.or_(any_bad, m)
    row = pc.index(any_bad, True).as_py()
    if row < 0:
        return  # the cheap checks above over-approximate (a NUL in a buffer's unused bytes)
    for name, col in zip(_FIELDS, cols, strict=True):
        if masks[name][row].as_py():
            v = col[row].as_py()
            if v is None:
                problem: str | None = "is null"
            elif name == "timestamp":
                problem = _timestamp_problem(v * factor, window)
            else:
                problem = _integer_problem(v) if name == "value" else _string_problem(v, name)
            raise _reject(row, name, problem or "is invalid")
    raise BatchRejected("invalid batch")  # unreachable: some mask was true at `row`


def _may_hold_nul(col: Any) -> bool:
    """True if a NUL byte is anywhere in the string data (a memchr; far cheaper than a
    per-row substring kernel), including bytes no row refers to."""
    if not isinstance(col, pa.ChunkedArray):
        col = pa.chunked_array([col])
    return any(b"\x00" in c.buffers()[2].to_pybytes() for c in col.chunks if c.buffers()[2] is not None)


def _string_mask(col: Any, lengths: Any, limit: int) -> Any:
    mask = pc.or_(pc.less(lengths, 1), pc.greater(lengths, limit))
    return pc.or_(mask, pc.match_substring(col, "\x00"))
