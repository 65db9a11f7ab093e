"""What an Arrow IPC stream declares about itself before it is read: the bomb check.

Buffers compressed inside an IPC stream (lz4/zstd) each start with an int64 giving their
uncompressed length, and pyarrow's reader allocates that much and inflates in full: a few KiB of
zstd can declare gigabytes. ``declared_inflation`` sums those declarations from the messages'
FlatBuffers metadata alone, without decompressing anything, so a caller can refuse the stream
before the reader sees it.
"""

from __future__ import annotations

import struct

import pyarrow as pa

__all__ = ["declared_inflation"]


def declared_inflation(data: bytes | bytearray) -> int:
    """Bytes that the compressed buffers of the IPC stream ``data`` (record and dictionary batches)
    declare they inflate to; 0 for a stream without compression. Reads metadata only, in place.
    A corrupt stream raises what pyarrow and ``struct`` raise on bad bytes (``pa.ArrowException``,
    ``OSError``, ``ValueError``, ``struct.error``, ``IndexError``): the caller calls it corrupt."""
    total = 0
    for message in pa.ipc.MessageReader.open_stream(pa.py_buffer(data)):
        if message.type not in ("record batch", "dictionary"):
            continue
        meta = memoryview(message.metadata)
        header = _fb_field(meta, _fb_root(meta), 2)  # Message.header
        if header is None:
            continue
        batch = _fb_table(meta, header)
        if message.type == "dictionary":  # DictionaryBatch.data is the RecordBatch
            data_field = _fb_field(meta, batch, 1)
            if data_field is None:
                continue
            batch = _fb_table(meta, data_field)
        if _fb_field(meta, batch, 3) is None:  # RecordBatch.compression: absent = stored as is
            continue
        buffers = _fb_field(meta, batch, 2)  # RecordBatch.buffers: [Buffer{offset, length}]
        if buffers is None or message.body is None:
            continue
        body = memoryview(message.body)
        vec = buffers + struct.unpack_from("<I", meta, buffers)[0]
        for i in range(struct.unpack_from("<I", meta, vec)[0]):
            offset, length = struct.unpack_from("<qq", meta, vec + 4 + 16 * i)
            if length >= 8:
                # -1 means "stored uncompressed" (Arrow's format spec, Compression): counts nothing.
                total += max(0, struct.unpack_from("<q", body, offset)[0])
    return total


# Just enough of the FlatBuffers wire format (flatbuffers.dev/internals) to read Arrow's
# Message.fbs: a table starts with an offset back to its vtable of field offsets.
def _fb_root(buf: memoryview) -> int:
    return int(struct.unpack_from("<I", buf, 0)[0])


def _fb_table(buf: memoryview, field_pos: int) -> int:
    return field_pos + int(struct.unpack_from("<I", buf, field_pos)[0])


def _fb_field(buf: memoryview, table: int, index: int) -> int | None:
    """Absolute position of field ``index`` of the table at ``table``, None if absent."""
    vtable = table - struct.unpack_from("<i", buf, table)[0]
    vt_size = struct.unpack_from("<H", buf, vtable)[0]
    if 4 + 2 * index >= vt_size:
        return None
    rel = struct.unpack_from("<H", buf, vtable + 4 + 2 * index)[0]
    return table + rel if rel else None
