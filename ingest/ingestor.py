"""The write path of one node: idempotency, then the WAL, then the live buffer.

``Ingestor.ingest`` returns only after the batch is fsynced in the WAL; its rows are queryable
from that moment (before they are persisted as Parquet). A batch under a known Idempotency-Key
returns the first answer and stores nothing; when the node is over its buffer cap the batch is
refused with ``Overloaded`` and nothing of it is stored.
"""

from __future__ import annotations

import json
import random
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import pyarrow as pa
import xxhash

from ingest.buffer import LiveBuffer
from ingest.errors import Overloaded, PayloadTooLarge
from ingest.idempotency import IdempotencyIndex, KeyRecord
from ingest.run import Run
from ingest.wal import Wal
from storage.schema import STORED_SCHEMA, ShardHasher

__all__ = ["IngestConfig", "IngestResult", "Ingestor", "decode_record", "encode_record"]

_META_LEN = struct.Struct("<I")


@dataclass(frozen=True)
class IngestConfig:
    max_buffer_bytes: int = 64 << 20  # beyond this (active + persisting) writes get Overloaded
    overload_retry_after_s: float = 1.0
    # A write that finds the buffer full waits this long for a persist to make room before it
    # is refused: a persist frees space within a fraction of a second, and a client told to
    # come back in Retry-After's whole second would leave the pipeline idle meanwhile. Only a
    # few wait at once (each holds a worker thread); the others are refused at once.
    overload_wait_s: float = 2.0
    overload_waiters: int = 4
    durable_timeout_s: float = 60.0


@dataclass(frozen=True)
class IngestResult:
    accepted: int
    duplicate: bool
    seq: int = 0


def batch_id_for(key: str | None) -> int:
    """The batch id stored with every row: derived from the Idempotency-Key when there is one,
    so the same batch always carries the same id (repair relies on it)."""
    if key is None:
        return random.getrandbits(63)
    return xxhash.xxh64_intdigest(key.encode()) >> 1


def encode_record(rows: pa.Table, meta: dict[str, object]) -> pa.Buffer:
    """One WAL record: meta length, meta JSON, then the rows as an Arrow IPC stream. Built in
    one Arrow buffer and handed to the WAL as is (no copy of the megabytes of rows)."""
    sink = pa.BufferOutputStream()
    m = json.dumps(meta, separators=(",", ":")).encode()
    sink.write(_META_LEN.pack(len(m)))
    sink.write(m)
    with pa.ipc.new_stream(sink, STORED_SCHEMA) as w:
        w.write_table(rows)
    return sink.getvalue()


def decode_record(payload: bytes | pa.Buffer) -> tuple[pa.Table, dict[str, object]]:
    view = memoryview(payload)
    (n,) = _META_LEN.unpack_from(view, 0)
    meta = json.loads(bytes(view[_META_LEN.size : _META_LEN.size + n]))
    rows = pa.ipc.open_stream(pa.py_buffer(view)[_META_LEN.size + n :]).read_all()
    return rows, meta


def key_record(meta: dict[str, object]) -> KeyRecord | None:
    if not meta.get("k"):
        return None
    return KeyRecord(str(meta["k"]), int(meta["f"]), int(meta["n"]), float(meta["t"]))  # type: ignore[call-overload, arg-type]


class Ingestor:
    def __init__(
        self,
        wal: Wal,
        buffer: LiveBuffer,
        keys: IdempotencyIndex,
        hasher: ShardHasher,
        config: IngestConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.wal = wal
        self.buffer = buffer
        self.keys = keys
        self.hasher = hasher
        self.config = config or IngestConfig()
        self._clock = clock
        self._waiters = threading.BoundedSemaphore(max(1, self.config.overload_waiters))
        self.events_total = 0
        self.batches_total = 0

    def _wait_for_room(self, nbytes: int) -> bool:
        """Whether ``nbytes`` fit in the buffer after waiting a little for a persist (False at
        once when enough writers are waiting already)."""
        if self.config.overload_wait_s <= 0 or not self._waiters.acquire(blocking=False):
            return False
        try:
            return self.buffer.wait_for_room(nbytes, self.config.max_buffer_bytes, self.config.overload_wait_s)
        finally:
            self._waiters.release()

    # Called by the WAL writer thread, in sequence order, once a record is fsynced.
    def on_durable(self, seq: int, ctx: object) -> None:
        rows, run, rec = cast(tuple[pa.Table, Run, KeyRecord | None], ctx)
        self.buffer.append(rows, run, seq, rec)
        self.events_total += rows.num_rows
        self.batches_total += 1
        if rec is not None:
            self.keys.finish(rec)

    def stored_rows(self, events: pa.Table, batch_id: int) -> pa.Table:
        """EVENT_SCHEMA rows -> STORED_SCHEMA rows (shard and batch id added)."""
        shard = self.hasher(events.column("producer_id"))
        return pa.Table.from_arrays(
            [*events.columns, shard, pa.repeat(pa.scalar(batch_id, pa.int64()), events.num_rows)],
            schema=STORED_SCHEMA,
        )

    def ingest(
        self, events: pa.Table, *, key: str | None = None, fingerprint: int = 0, batch_id: int | None = None
    ) -> IngestResult:
        """Store a validated EVENT_SCHEMA (or STORED_SCHEMA) batch durably, exactly once per key."""
        if key is not None:
            known = self.keys.begin(key, fingerprint)
            if known is not None:
                return IngestResult(known.accepted, duplicate=True)
        try:
            if events.nbytes > self.config.max_buffer_bytes:  # would never fit: retrying cannot help
                raise PayloadTooLarge(
                    f"the batch takes {events.nbytes} bytes in memory, more than the live buffer holds "
                    f"({self.config.max_buffer_bytes}); split it"
                )
            if self.buffer.total_bytes + events.nbytes > self.config.max_buffer_bytes and not self._wait_for_room(
                events.nbytes
            ):
                raise Overloaded(
                    "the live buffer is full while persisting catches up",
                    retry_after=self.config.overload_retry_after_s,
                )
            if "shard" in events.column_names:
                rows = events.select(STORED_SCHEMA.names).cast(STORED_SCHEMA)
            else:
                rows = self.stored_rows(events, batch_id_for(key) if batch_id is None else batch_id)
            run = Run.build(rows)  # the buffer's index, built here on the request thread
            meta: dict[str, object] = {"n": rows.num_rows, "t": self._clock()}
            rec = None
            if key is not None:
                meta.update(k=key, f=fingerprint)
                rec = KeyRecord(key, fingerprint, rows.num_rows, float(meta["t"]))  # type: ignore[arg-type]
            seq = self.wal.append(encode_record(rows, meta), (rows, run, rec)).result(
                timeout=self.config.durable_timeout_s
            )
        except BaseException:
            if key is not None:
                self.keys.abort(key)
            raise
        return IngestResult(rows.num_rows, duplicate=False, seq=seq)

    def recover(self, after_seq: int) -> int:
        """Replay WAL records not yet persisted into the buffer; returns the rows recovered."""
        n = 0
        for rec in self.wal.replay(after_seq):
            rows, meta = decode_record(rec.payload)
            self.on_durable(rec.seq, (rows, Run.build(rows), key_record(meta)))
            n += rows.num_rows
        return n
