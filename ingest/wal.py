"""The write-ahead log makes a batch durable before it is acknowledged, until the batch is
persisted as Parquet and the log behind it can be dropped.

Records go into append-only segment files. A single writer thread takes every record waiting
at that moment, writes them and issues one fsync for all (group commit), then hands each record
to ``on_durable`` in sequence order before its waiter is released. Every record carries a CRC;
on recovery a torn or corrupt tail of the newest segment is cut off, never a crash.
"""

from __future__ import annotations

import itertools
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from ingest.errors import WalCorrupt

__all__ = ["Wal", "WalConfig", "WalRecord"]

_HEADER = struct.Struct("<IIQI")  # magic, payload length, sequence number, crc32(payload)
_MAGIC = 0x57425254  # "TRBW"


@dataclass(frozen=True)
class WalConfig:
    segment_bytes: int = 64 << 20
    fsync: bool = True  # False only for tests and benchmarks that measure everything but the disk


@dataclass(frozen=True)
class WalRecord:
    seq: int
    payload: bytes


class Wal:
    """Append-only, group-committed, checksummed log under one directory."""

    def __init__(
        self,
        directory: Path,
        config: WalConfig | None = None,
        on_durable: Callable[[int, object], None] | None = None,
    ) -> None:
        self.dir = directory
        self.config = config or WalConfig()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._on_durable = on_durable
        self._cond = threading.Condition()
        self._queue: list[tuple[bytes, object, Future[int]]] = []
        self._roll_requested = False
        self._closed = False
        self._segments = self._list_segments()
        self._seq = 0
        self._fh: object = None
        self._io = threading.Lock()  # the active segment: held while writing it or deleting it
        self._thread: threading.Thread | None = None
        self.fsyncs = 0  # group commits done (one fsync each when fsync is on)
        self.fsync_seconds = 0.0  # time spent in write + fsync over all group commits

    # -- recovery ------------------------------------------------------------------------------

    def _list_segments(self) -> list[Path]:
        return sorted(self.dir.glob("*.wal"))

    def replay(self, after_seq: int = 0) -> Iterator[WalRecord]:
        """Yield every intact record with ``seq > after_seq``, cutting a torn tail off the newest
        segment. Must be called once, before ``start``."""
        segments = self._list_segments()
        for i, seg in enumerate(segments):
            last = i == len(segments) - 1
            with open(seg, "rb") as f:
                data = f.read()
            pos = 0
            while pos < len(data):
                bad = self._check(data, pos)
                if bad:
                    if not last:
                        raise WalCorrupt(f"{seg}: {bad} at offset {pos}, before the newest segment")
                    with open(seg, "r+b") as f:
                        f.truncate(pos)
                        os.fsync(f.fileno())
                    break
                _, length, seq, _ = _HEADER.unpack_from(data, pos)
                payload = data[pos + _HEADER.size : pos + _HEADER.size + length]
                pos += _HEADER.size + length
                self._seq = max(self._seq, seq)
                if seq > after_seq:
                    yield WalRecord(seq, payload)
        self._seq = max(self._seq, after_seq)

    @staticmethod
    def _check(data: bytes, pos: int) -> str | None:
        if len(data) - pos < _HEADER.size:
            return "torn header"
        magic, length, _, crc = _HEADER.unpack_from(data, pos)
        if magic != _MAGIC:
            return "bad magic"
        end = pos + _HEADER.size + length
        if end > len(data):
            return "torn record"
        if zlib.crc32(data[pos + _HEADER.size : end]) != crc:
            return "checksum mismatch"
        return None

    # -- writing ------------------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        return self._seq

    def start(self) -> None:
        self._open_new_segment()
        self._thread = threading.Thread(target=self._run, name="wal-writer", daemon=True)
        self._thread.start()

    def _open_new_segment(self) -> None:
        if self._fh is not None:
            self._fh.close()  # type: ignore[attr-defined]
        path = self.dir / f"{self._seq + 1:020d}.wal"
        self._fh = open(path, "ab")  # noqa: SIM115 - held open across writes, closed on roll/close
        self._segments.append(path)
        self._seg_bytes = 0
        from storage.manifest import fsync_dir

        fsync_dir(self.dir)

    def append(self, payload: bytes | pa.Buffer, context: object = None) -> Future[int]:
        """Queue a record (any bytes-like payload, written without copying); the future
        resolves with its sequence number once it is fsynced and ``on_durable(seq, context)``
        has run."""
        fut: Future[int] = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("WAL is closed")
            self._queue.append((payload, context, fut))
            self._cond.notify()
        return fut

    def roll(self) -> None:
        """Start a new segment at the next write, so older segments can be dropped sooner."""
        with self._cond:
            self._roll_requested = True

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue and self._closed:
                    return
                batch, self._queue = self._queue, []
                roll, self._roll_requested = self._roll_requested, False
            try:
                with self._io:
                    if roll or self._fh is None or self._seg_bytes >= self.config.segment_bytes:
                        self._open_new_segment()
                    seqs = []
                    chunks: list[bytes | memoryview] = []
                    for payload, _, _ in batch:
                        self._seq += 1
                        seqs.append(self._seq)
                        view = memoryview(payload)
                        chunks.append(_HEADER.pack(_MAGIC, view.nbytes, self._seq, zlib.crc32(view)))
                        chunks.append(view)
                    fh = self._fh
                    t0 = time.perf_counter()
                    fh.writelines(chunks)  # type: ignore[attr-defined]  # no join: payloads are MBs
                    fh.flush()  # type: ignore[attr-defined]
                    if self.config.fsync:
                        os.fdatasync(fh.fileno())  # type: ignore[attr-defined]
                    self.fsync_seconds += time.perf_counter() - t0
                    self.fsyncs += 1
                    self._seg_bytes += sum(memoryview(c).nbytes for c in chunks)
            except BaseException as e:  # the disk failed: nobody in this group is acknowledged
                for _, _, fut in batch:
                    fut.set_exception(e)
                continue
            for seq, (_, ctx, fut) in zip(seqs, batch, strict=True):
                try:
                    if self._on_durable is not None:
                        self._on_durable(seq, ctx)
                    fut.set_result(seq)
                except BaseException as e:
                    fut.set_exception(e)

    def drop_through(self, seq: int) -> int:
        """Delete whole segments whose records all have ``seq`` or lower; returns how many.

        The active segment goes too when every record written so far is at or below ``seq``
        (the next record opens a new one): otherwise an idle node would keep its last persisted
        segment on disk for good.
        """
        dropped = 0
        segs = self._list_segments()
        for seg, nxt in itertools.pairwise(segs):
            # a segment's records are all below the first seq of the segment after it
            if int(nxt.stem) - 1 <= seq:
                seg.unlink()
                dropped += 1
            else:
                break
        with self._io:
            with self._cond:
                idle = not self._queue
            if idle and self._fh is not None and self._seq <= seq:
                self._fh.close()  # type: ignore[attr-defined]
                self._fh = None
                active = self._segments[-1] if self._segments else None
                if active is not None and active.exists():
                    active.unlink()
                    dropped += 1
        self._segments = self._list_segments()
        return dropped

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        if self._fh is not None:
            self._fh.close()  # type: ignore[attr-defined]
            self._fh = None
