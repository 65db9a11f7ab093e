"""What the producer client sends: events checked on the caller's thread, gathered into an open
batch, sealed into the exact request that every retry, failover and spool replay resends.

Guarantees:

- ``check_event`` and ``conform`` refuse an event that breaks the event contract (DESIGN.md,
  "The event") with ``InvalidEvent`` naming the field, before anything of it is queued; what they
  return is the event in EVENT_SCHEMA's types.
- ``seal`` gives a batch its Idempotency-Key (uuid4 hex) and its final body once: Arrow IPC stream
  or JSON array, zstd-compressed when it is at least ``compress_min_bytes`` long and zstd saves
  over 10 %. Nothing changes them later.

Like the rest of the client, imports nothing of the server but ``storage.schema`` (and
``ingest.timestamp``, the standard-library-only RFC 3339 parser the node uses too).
"""

from __future__ import annotations

import json
import numbers
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import zstandard

from ingest.spool import SpoolEntry
from ingest.timestamp import parse_rfc3339_ns
from storage.schema import CATEGORY_MAX_BYTES, EVENT_SCHEMA, PRODUCER_MAX_BYTES

__all__ = [
    "ARROW_STREAM",
    "Batch",
    "InvalidEvent",
    "OpenBatch",
    "ProducerError",
    "check_event",
    "conform",
    "seal",
]

ARROW_STREAM = "application/vnd.apache.arrow.stream"
_JSON = "application/json"
_INT64 = (-(1 << 63), (1 << 63) - 1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ProducerError(Exception):
    """Root of the producer client's errors."""


class InvalidEvent(ProducerError, ValueError):
    """The event breaks the event contract (DESIGN.md, "The event"); nothing of it was queued.
    ``field`` names the offending field."""

    def __init__(self, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.field = field


@dataclass
class OpenBatch:
    """Events gathered since the last batch was sealed: single events column by column, tables
    as they came. Not thread-safe: the producer guards it with its lock."""

    ts: list[int] = field(default_factory=list)
    cat: list[str] = field(default_factory=list)
    val: list[int] = field(default_factory=list)
    pid: list[str] = field(default_factory=list)
    tables: list[pa.Table] = field(default_factory=list)
    events: int = 0
    nbytes: int = 0
    started: float = 0.0


@dataclass(eq=False)
class Batch:
    """A sealed batch: ``key``, ``body``, ``content_type`` and ``content_encoding`` are what goes on
    the wire, every time. The rest is delivery bookkeeping (``entry`` when it came from the spool)."""

    key: str
    body: bytes
    content_type: str
    content_encoding: str | None
    events: int
    mem_bytes: int
    entry: SpoolEntry | None = None
    attempts: int = 0
    first_attempt: float | None = None
    not_before: float = 0.0
    url: str | None = None


def seal(o: OpenBatch, fmt: Literal["arrow", "json"], compress_min_bytes: int, compress_level: int) -> Batch:
    """The request for the events of ``o``, in the order they were sent, with a fresh key."""
    parts = [b for t in o.tables for b in t.to_batches()]
    if o.ts:
        cols = [
            pa.array(o.ts, pa.int64()),
            pa.array(o.cat, pa.string()),
            pa.array(o.val, pa.int64()),
            pa.array(o.pid, pa.string()),
        ]
        parts.append(pa.RecordBatch.from_arrays(cols, schema=EVENT_SCHEMA))
    table = pa.Table.from_batches(parts, schema=EVENT_SCHEMA)
    if fmt == "arrow":
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, EVENT_SCHEMA) as writer:
            writer.write_table(table)
        body, ctype = sink.getvalue().to_pybytes(), ARROW_STREAM
    else:
        body, ctype = json.dumps(table.to_pylist(), separators=(",", ":")).encode(), _JSON
    encoding = None
    if len(body) >= compress_min_bytes:
        packed = zstandard.ZstdCompressor(level=compress_level).compress(body)
        if len(packed) < 0.9 * len(body):
            body, encoding = packed, "zstd"
    return Batch(uuid.uuid4().hex, body, ctype, encoding, o.events, o.nbytes)


def check_event(event: Mapping[str, Any]) -> tuple[int, str, int, str, int]:
    """``(timestamp, category, value, producer_id, estimated bytes)`` of a valid event."""
    if not isinstance(event, Mapping):
        raise InvalidEvent("an event is a mapping")
    ts = event.get("timestamp")
    if isinstance(ts, str):
        ts = _parse_rfc3339(ts)
    elif isinstance(ts, datetime):
        if ts.tzinfo is None:
            raise InvalidEvent("timestamp datetime must be timezone-aware", "timestamp")
        ts = _ns_of(ts)
    ts = _int64(ts)
    if ts is None:
        raise InvalidEvent("timestamp must be int64 Unix ns, an aware datetime or RFC 3339", "timestamp")
    if ts < 0:  # the node refuses these; refusing here keeps one event from sinking its whole batch
        raise InvalidEvent("timestamp must not be before 1970", "timestamp")
    value = _int64(event.get("value"))
    if value is None:
        raise InvalidEvent("value must be an int64 integer", "value")
    cat = _text(event, "category", CATEGORY_MAX_BYTES)
    pid = _text(event, "producer_id", PRODUCER_MAX_BYTES)
    return ts, cat, value, pid, 32 + len(cat) + len(pid)


def conform(data: pa.Table | pa.RecordBatch) -> pa.Table:
    """The data as an EVENT_SCHEMA table, or InvalidEvent naming the first bad column."""
    table = pa.Table.from_batches([data]) if isinstance(data, pa.RecordBatch) else data
    cols = []
    for f in EVENT_SCHEMA:
        if f.name not in table.column_names:
            raise InvalidEvent(f"column {f.name} is missing", f.name)
        col = table.column(f.name)
        if col.null_count:
            raise InvalidEvent(f"column {f.name} has nulls", f.name)
        if not col.type.equals(f.type):
            try:
                col = col.cast(pa.int64()) if pa.types.is_timestamp(col.type) else col.cast(f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise InvalidEvent(f"column {f.name}: {e}", f.name) from e
        cols.append(col)
    out = pa.Table.from_arrays(cols, schema=EVENT_SCHEMA)
    for name, limit in (("category", CATEGORY_MAX_BYTES), ("producer_id", PRODUCER_MAX_BYTES)):
        if out.num_rows:
            lo, hi = pc.min_max(pc.binary_length(out.column(name))).values()
            if lo.as_py() < 1 or hi.as_py() > limit:
                raise InvalidEvent(f"{name} must be 1..{limit} UTF-8 bytes", name)
            if pc.any(pc.match_substring(out.column(name), "\x00")).as_py():
                raise InvalidEvent(f"{name} must not contain NUL characters", name)
    if out.num_rows and pc.min(out.column("timestamp")).as_py() < 0:
        raise InvalidEvent("timestamp must not be before 1970", "timestamp")
    return out


def _text(event: Mapping[str, Any], name: str, limit: int) -> str:
    s = event.get(name)
    if not isinstance(s, str) or not s:
        raise InvalidEvent(f"{name} must be a non-empty string", name)
    if len(s) * 4 > limit and len(s.encode()) > limit:
        raise InvalidEvent(f"{name} is longer than {limit} UTF-8 bytes", name)
    if "\x00" in s:
        raise InvalidEvent(f"{name} must not contain NUL characters", name)
    return s


def _int64(x: object) -> int | None:
    """``x`` as a Python int when it is an integer (numpy's too, bool not) within int64."""
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        return None
    i = int(x)
    return i if _INT64[0] <= i <= _INT64[1] else None


def _ns_of(dt: datetime) -> int:
    """Exact integer nanoseconds (no float on the way)."""
    return (dt - _EPOCH) // timedelta(microseconds=1) * 1000


def _parse_rfc3339(s: str) -> int:
    # The server's own parser: what the client accepts here, the node accepts too.
    try:
        return parse_rfc3339_ns(s)
    except ValueError as e:
        raise InvalidEvent(f"timestamp {e}", "timestamp") from e
