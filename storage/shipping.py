"""The shipping format: stored rows (``STORED_SCHEMA``) as bytes between nodes.

Writes are forwarded as Arrow IPC streams (no compression, cheapest to produce and read);
repair and rebalancing ship slices of partitions as Parquet (zstd; a slice may be large and
travels once). ``unpack`` accepts either and returns rows in ``STORED_SCHEMA`` or raises
``StorageError``, so a peer's body is checked before anything of it is stored.
"""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq

from storage.errors import StorageError
from storage.schema import STORED_SCHEMA

__all__ = ["ARROW_STREAM", "PARQUET", "pack_ipc", "pack_parquet", "unpack"]

ARROW_STREAM = "application/vnd.apache.arrow.stream"
PARQUET = "application/vnd.apache.parquet"


def pack_ipc(rows: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, STORED_SCHEMA) as w:
        w.write_table(rows.select(STORED_SCHEMA.names).cast(STORED_SCHEMA))
    return sink.getvalue()


def pack_parquet(rows: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(rows.select(STORED_SCHEMA.names).cast(STORED_SCHEMA), sink, compression="zstd")
    return sink.getvalue()


def unpack(body: bytes, content_type: str | None) -> pa.Table:
    """Rows of a shipped body, conformed to ``STORED_SCHEMA``."""
    media = (content_type or "").split(";")[0].strip().lower()
    try:
        if media == PARQUET:
            rows = pq.read_table(io.BytesIO(body))
        elif media == ARROW_STREAM:
            rows = pa.ipc.open_stream(pa.py_buffer(body)).read_all()
        else:
            raise StorageError(f"cannot unpack rows shipped as {content_type!r}")
        return rows.select(STORED_SCHEMA.names).cast(STORED_SCHEMA)
    except (pa.ArrowException, KeyError, ValueError) as e:
        raise StorageError(f"shipped rows are unreadable: {e}") from e
