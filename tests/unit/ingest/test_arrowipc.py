"""ingest.arrowipc: the declared inflation of an IPC stream, read from metadata alone."""

from __future__ import annotations

import struct

import pyarrow as pa
import pytest

from ingest.arrowipc import declared_inflation


def ipc(table: pa.Table, compression: str | None = None, batch_rows: int | None = None) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression=compression)) as w:
        w.write_table(table, max_chunksize=batch_rows)
    return bytes(sink.getvalue().to_pybytes())


ZEROS = pa.table({"v": pa.array([0] * 100_000, pa.int64())})


def test_an_uncompressed_stream_declares_nothing() -> None:
    assert declared_inflation(ipc(ZEROS)) == 0


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_compressed_buffers_declare_their_inflated_size(codec: str) -> None:
    body = ipc(ZEROS, codec)
    assert len(body) < 100_000  # the zeros did compress
    # The value buffer is 800 kB; the validity bitmap is absent (no nulls).
    assert declared_inflation(body) == 800_000


def test_every_batch_counts() -> None:
    assert declared_inflation(ipc(ZEROS, "zstd", batch_rows=10_000)) == 800_000


def test_dictionary_batches_count() -> None:
    words = pa.array(["x" * 1000] * 1000).dictionary_encode()
    table = pa.table({"w": pa.DictionaryArray.from_arrays(pa.array([0] * 1000, pa.int32()), words.dictionary)})
    # 1000 int32 indices (4000 bytes) plus one dictionary word: offsets (8) and 1000 bytes of data.
    assert declared_inflation(ipc(table, "zstd")) == 4000 + 8 + 1000


def test_garbage_raises_what_the_caller_calls_corrupt() -> None:
    with pytest.raises((pa.ArrowException, OSError, ValueError, IndexError, struct.error)):
        declared_inflation(b"\xff\xff\xff\xff\x10\x00\x00\x00garbage!")
