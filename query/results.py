"""A SQL result on the wire: JSON for people and pages; Arrow IPC, CSV and Parquet for tools.

JSON keeps every value exact: integers of any width stay JSON integers (never floats), decimals
are written as the number they are, NULL, NaN and infinities become ``null``, times are ISO 8601
strings (nanoseconds kept), binary is base64. The file formats are written batch by batch, so an
export never holds more than a row group in memory.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO, Protocol

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from query.sandbox import SqlResult

__all__ = [
    "FILE_EXTENSIONS",
    "FORMATS",
    "MEDIA_TYPES",
    "encode_batches",
    "json_values",
    "to_json",
    "write_batches",
]

FORMATS = ("json", "arrow", "csv", "parquet")
MEDIA_TYPES = {
    "json": "application/json",
    "arrow": "application/vnd.apache.arrow.stream",
    "csv": "text/csv; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
}
FILE_EXTENSIONS = {"json": "json", "arrow": "arrows", "csv": "csv", "parquet": "parquet"}

_ENCODER = msgspec.json.Encoder(decimal_format="number")  # a HUGEINT arrives as a Decimal: an integer
_ROW_GROUP_ROWS = 128 * 1024


# -- JSON -------------------------------------------------------------------------------------


def to_json(result: SqlResult) -> bytes:
    """``{"columns": [{"name", "type"}], "rows": [[…]], "row_count", "truncated", "took_ms",
    "query_id"}`` with each value exact (see the module docstring)."""
    table = result.table
    columns = [json_values(col) for col in table.columns]
    body = {
        "columns": [{"name": n, "type": t} for n, t in zip(table.column_names, result.column_types, strict=True)],
        "rows": [list(r) for r in zip(*columns, strict=True)] if columns else [],
        "row_count": table.num_rows,
        "truncated": result.truncated,
        "took_ms": result.took_ms,
        "query_id": result.query_id,
    }
    return _ENCODER.encode(body)


def json_values(array: pa.Array | pa.ChunkedArray) -> list[Any]:
    """The values of ``array`` as Python objects that ``msgspec`` encodes to exact JSON."""
    if isinstance(array, pa.ChunkedArray):
        out: list[Any] = []
        for chunk in array.chunks:
            out.extend(json_values(chunk))
        return out
    t = array.type
    if isinstance(t, pa.BaseExtensionType):
        return json_values(array.storage)
    if pa.types.is_dictionary(t):
        return json_values(array.dictionary_decode())
    if pa.types.is_floating(t):
        return [None if v is None or not math.isfinite(v) else v for v in array.to_pylist()]
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return [None if v is None else base64.b64encode(v).decode() for v in array.to_pylist()]
    if pa.types.is_timestamp(t):
        # "2024-01-02 03:04:05.000000001" -> ISO "2024-01-02T03:04:05.000000001"; Arrow's text for a
        # value past its calendar ("<value out of range: …>", e.g. DuckDB's infinity) is left as is
        text = pc.replace_substring_regex(pc.cast(array, pa.string()), r"^(-?\d+-\d\d-\d\d) ", r"\1T")
        if t.tz is not None:  # "+0100" -> "+01:00"; "Z" stays
            text = pc.replace_substring_regex(text, r"([+-]\d\d)(\d\d)$", r"\1:\2")
        return list(text.to_pylist())
    if pa.types.is_date(t) or pa.types.is_time(t):
        return list(pc.cast(array, pa.string()).to_pylist())
    if pa.types.is_duration(t):
        per_s = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[t.unit]
        ints = pc.cast(array, pa.int64()).to_pylist()
        return [None if v is None else _iso_duration(0, 0, v * (10**9 // per_s)) for v in ints]
    if t == pa.month_day_nano_interval():
        return [None if v is None else _iso_duration(v.months, v.days, v.nanoseconds) for v in array.to_pylist()]
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_map(t):
        return _lists(array)
    if pa.types.is_fixed_size_list(t):
        size = t.list_size
        values = json_values(array.flatten())
        valid = array.is_valid().to_pylist()
        return [values[i * size : (i + 1) * size] if ok else None for i, ok in enumerate(valid)]
    if pa.types.is_struct(t):
        names = [t.field(i).name for i in range(t.num_fields)]
        fields = [json_values(child) for child in array.flatten()]
        valid = array.is_valid().to_pylist()
        return [dict(zip(names, vals, strict=True)) if ok else None for ok, *vals in zip(valid, *fields, strict=True)]
    if pa.types.is_null(t):
        return [None] * len(array)
    if pa.types.is_decimal(t) and t.scale > 0:  # exact, in plain notation: -0.000000001, not -1E-9
        return [None if v is None else msgspec.Raw(format(v, "f").encode()) for v in array.to_pylist()]
    if (
        pa.types.is_integer(t)
        or pa.types.is_boolean(t)
        or pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_decimal(t)
    ):
        return list(array.to_pylist())
    return [None if v is None else str(v) for v in array.to_pylist()]


def _lists(array: pa.Array) -> list[Any]:
    offsets = array.offsets.to_pylist()
    base = offsets[0]
    values = json_values(array.values.slice(base, offsets[-1] - base))
    valid = array.is_valid().to_pylist()
    rows = [values[a - base : b - base] if ok else None for a, b, ok in zip(offsets, offsets[1:], valid, strict=False)]
    if not pa.types.is_map(array.type):
        return rows
    # a map is a list of {"key", "value"} entries: an object when its keys are strings, else pairs
    key_type = array.type.key_type
    if pa.types.is_string(key_type) or pa.types.is_large_string(key_type):
        return [None if m is None else {e["key"]: e["value"] for e in m} for m in rows]
    return [None if m is None else [[e["key"], e["value"]] for e in m] for m in rows]


def _iso_duration(months: int, days: int, nanos: int) -> str:
    """ISO 8601 duration, e.g. ``P1M2DT3.5S``; components keep their own sign, as DuckDB's do."""
    out = "P" + (f"{months}M" if months else "") + (f"{days}D" if days else "")
    if nanos or out == "P":
        sign = "-" if nanos < 0 else ""
        sec, frac = divmod(abs(nanos), 10**9)
        out += f"T{sign}{sec}" + (f".{frac:09d}".rstrip("0") if frac else "") + "S"
    return out


# -- files --------------------------------------------------------------------------------------


class _Writer(Protocol):
    def write_batch(self, batch: pa.RecordBatch) -> None: ...
    def close(self) -> None: ...


def _needs_text(t: pa.DataType, fmt: str) -> bool:
    """Types a format cannot carry, written as their JSON / ISO text instead."""
    if t == pa.month_day_nano_interval() or pa.types.is_union(t):
        return fmt in ("csv", "parquet")
    if fmt == "parquet":
        return bool(pa.types.is_struct(t) and t.num_fields == 0)
    if fmt != "csv":
        return False
    return (
        pa.types.is_nested(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_fixed_size_binary(t)
        or pa.types.is_duration(t)
        or pa.types.is_dictionary(t)
        or isinstance(t, pa.BaseExtensionType)
    )


def _as_text(array: pa.Array) -> pa.Array:
    values = json_values(array)
    if pa.types.is_nested(array.type):
        return pa.array([None if v is None else _ENCODER.encode(v).decode() for v in values], pa.string())
    return pa.array([None if v is None else str(v) for v in values], pa.string())


class _ParquetWriter:
    """Gathers batches into row groups of ``_ROW_GROUP_ROWS``: one row group per small batch would
    make a file that readers crawl through."""

    def __init__(self, out: BinaryIO, schema: pa.Schema) -> None:
        self._writer = pq.ParquetWriter(out, schema, compression="zstd")
        self._schema = schema
        self._pending: list[pa.RecordBatch] = []
        self._rows = 0

    def write_batch(self, batch: pa.RecordBatch) -> None:
        self._pending.append(batch)
        self._rows += batch.num_rows
        while self._rows >= _ROW_GROUP_ROWS:
            table = pa.Table.from_batches(self._pending, self._schema)
            self._writer.write_table(table.slice(0, _ROW_GROUP_ROWS), _ROW_GROUP_ROWS)
            rest = table.slice(_ROW_GROUP_ROWS)
            self._pending, self._rows = rest.to_batches(), rest.num_rows

    def close(self) -> None:
        if self._rows:
            self._writer.write_table(pa.Table.from_batches(self._pending, self._schema), _ROW_GROUP_ROWS)
        self._writer.close()


def _open(fmt: str, out: BinaryIO, schema: pa.Schema) -> _Writer:
    if fmt == "arrow":
        writer: _Writer = pa.ipc.new_stream(out, schema)
    elif fmt == "csv":
        writer = pacsv.CSVWriter(out, schema)
    elif fmt == "parquet":
        writer = _ParquetWriter(out, schema)
    else:
        raise ValueError(f"unknown file format {fmt!r}; expected one of arrow, csv, parquet")
    return writer


def _write_steps(fmt: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch], out: BinaryIO) -> Iterator[int]:
    """Write batch after batch, yielding the rows written so far; the file is complete (footer
    included) once the generator is exhausted."""
    text_cols = [i for i, f in enumerate(schema) if _needs_text(f.type, fmt)]
    out_schema = schema
    for i in text_cols:
        out_schema = out_schema.set(i, pa.field(schema.field(i).name, pa.string()))
    writer = _open(fmt, out, out_schema)
    rows = 0
    try:
        for batch in batches:
            if text_cols:
                cols = [_as_text(c) if i in text_cols else c for i, c in enumerate(batch.columns)]
                batch = pa.RecordBatch.from_arrays(cols, schema=out_schema)
            writer.write_batch(batch)
            rows += batch.num_rows
            yield rows
    finally:
        writer.close()


def write_batches(fmt: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch], out: BinaryIO) -> int:
    """Write ``batches`` to ``out`` as ``fmt`` (``arrow``, ``csv`` or ``parquet``), one batch at a
    time; returns the rows written. Columns the format cannot carry are written as text."""
    rows = 0
    for rows in _write_steps(fmt, schema, batches, out):  # noqa: B007
        pass
    return rows


class _Chunks:
    """A write-only file that hands its bytes out in chunks (pyarrow needs ``tell``)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.total = 0
        self.closed = False

    def write(self, data: bytes | memoryview) -> int:
        b = bytes(data)
        self.parts.append(b)
        self.size += len(b)
        self.total += len(b)
        return len(b)

    def tell(self) -> int:
        return self.total

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts, self.size = [], 0
        return data


def encode_batches(
    fmt: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch], chunk_bytes: int = 1 << 20
) -> Iterator[bytes]:
    """``write_batches`` as a generator of byte chunks of about ``chunk_bytes``, for a streamed
    HTTP body: the chunks concatenated are the file."""
    sink = _Chunks()
    for _ in _write_steps(fmt, schema, batches, sink):  # type: ignore[arg-type]
        if sink.size >= chunk_bytes:
            yield sink.take()
    tail = sink.take()
    if tail:
        yield tail
