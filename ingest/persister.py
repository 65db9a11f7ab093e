"""Persisting: the live buffer becomes Parquet parts, and the WAL behind it is dropped.

Order matters for durability: the parts are written and fsynced, the batch keys are appended
to the idempotency log, the manifest commit (parts + persisted WAL position) is made atomically
with dropping the frozen rows from the buffer, and only then are WAL segments deleted. A crash
between any two steps loses nothing and double-counts nothing: uncommitted parts are orphans,
and WAL records at or below the committed position are skipped on replay.

Memory: a generation is written in pieces of at most ``PersistConfig.piece_bytes`` of whole runs
(each piece its own parts), so a persist holds the generation plus the ordering and the sorted
copy of one piece, not of the whole generation. A generation grows past ``max_bytes`` while the
persist before it runs (up to the buffer's cap, 75 MB on the bench), and ordering and copying
all of it at once was the largest block of a loading node's peak memory (issue 8).

Speed: the pieces of a generation are written by ``PersistConfig.workers`` threads at once. A
piece's sort, rollups, sketches and Parquet encoding run mostly in numpy and Arrow with the GIL
released, so two threads write nearly twice the rows a second of one; persisting was the cap of
sustained ingest (issue 8). A generation is cut into about as many pieces as there are workers,
none bigger than ``piece_bytes`` nor smaller than ``min_piece_bytes`` (tiny parts would cost
more per row, in sketches and in later merges, than the parallelism gains). The parts are
committed together, once all pieces are written, so the commit order is the generation order as
before; a piece that fails fails the persist, and the parts its siblings wrote are orphans.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass

from ingest.buffer import Generation, LiveBuffer
from ingest.idempotency import IdempotencyIndex, KeyRecord
from ingest.wal import Wal
from storage.manifest import Manifest, Part
from storage.memory import release_memory
from storage.partition import PartitionStore

__all__ = ["PersistConfig", "Persister"]


@dataclass(frozen=True)
class PersistConfig:
    max_bytes: int = 16 << 20  # persist when the active buffer holds this much
    max_age_s: float = 10.0  # ... or when its oldest row is this old
    key_log_rewrite_every: int = 200  # persists between compactions of the idempotency log
    # A generation is sorted and written this many buffer bytes at a time (see the module
    # docstring): a bigger generation makes more, smaller parts, which compaction merges.
    piece_bytes: int = 16 << 20
    min_piece_bytes: int = 4 << 20
    workers: int = 2  # pieces written at once (see the module docstring)

    def piece_limit(self, nbytes: int) -> int:
        """The most bytes of runs in one piece of a generation of ``nbytes``: about a worker's
        share, within ``[min_piece_bytes, piece_bytes]``."""
        share = -(-nbytes // max(1, self.workers))
        return max(min(share, self.piece_bytes), min(self.min_piece_bytes, self.piece_bytes))


class Persister:
    def __init__(
        self,
        buffer: LiveBuffer,
        wal: Wal,
        store: PartitionStore,
        manifest: Manifest,
        keys: IdempotencyIndex,
        config: PersistConfig | None = None,
    ) -> None:
        self.buffer = buffer
        self.wal = wal
        self.store = store
        self.manifest = manifest
        self.keys = keys
        self.config = config or PersistConfig()
        self._lock = threading.Lock()  # one persist at a time, in generation order
        self._pool = (
            ThreadPoolExecutor(self.config.workers - 1, thread_name_prefix="node-persist-piece")
            if self.config.workers > 1
            else None
        )
        self.persists = 0
        self.rows_persisted = 0
        self.persist_seconds = 0.0  # wall time of all persists, for the persist-duration metric

    def due(self) -> bool:
        c = self.config
        return bool(
            self.buffer.frozen() or self.buffer.active_bytes >= c.max_bytes or (self.buffer.active_age() >= c.max_age_s)
        )

    def wait_due(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for a persist to be due; True if one is. Woken as soon as the
        active buffer reaches ``max_bytes`` (a fixed poll would leave the persist idle for up to
        a poll interval while the buffer fills); the age rule is checked when the wait ends."""
        return self.buffer.wait_for_active(self.config.max_bytes, timeout_s) or self.due()

    def stop_waiting(self) -> None:
        """End any ``wait_due`` now, and make later ones return at once (to stop the thread)."""
        self.buffer.stop_waiting()

    def persist(self) -> int:
        """Persist every frozen generation and then the active one; returns rows persisted."""
        with self._lock:
            n = 0
            for old in self.buffer.frozen():  # left over from a failed attempt: oldest first
                n += self._persist(old)
            g = self.buffer.freeze()
            if g is not None:
                self.wal.roll()
                n += self._persist(g)
            del g  # the persisted rows are gone from the buffer: give their memory back
            if n:
                release_memory()
            return n

    def _persist(self, g: Generation) -> int:
        t0 = time.perf_counter()
        parts = self._write(g)
        self.keys.persist(r for r in g.records if isinstance(r, KeyRecord))
        self.buffer.release(g, lambda: self.manifest.commit(add=parts, wal_seq=g.last_seq))
        self.wal.drop_through(g.last_seq)
        self.persists += 1
        self.rows_persisted += g.rows
        self.persist_seconds += time.perf_counter() - t0
        if self.persists % self.config.key_log_rewrite_every == 0:
            self.keys.rewrite()
        return g.rows

    def close(self) -> None:
        """Stop the piece-writing threads (after any persist in progress)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _write(self, g: Generation) -> list[Part]:
        """``g``'s rows as parts, in pieces of whole runs written side by side: this thread
        writes the first piece, the pool the others."""
        pieces = g.pieces(self.config.piece_limit(g.nbytes))
        if self._pool is None or len(pieces) == 1:
            return [part for piece in pieces for part in self._write_piece(piece)]
        parts: list[Part] = []
        for i in range(0, len(pieces), self.config.workers):
            group = pieces[i : i + self.config.workers]
            futures = [self._pool.submit(self._write_piece, piece) for piece in group[1:]]
            try:
                parts += self._write_piece(group[0])
            finally:  # every piece finishes (or fails) before the persist goes on or gives up
                wait(futures)
            parts += [part for f in futures for part in f.result()]  # raises a piece's error
        return parts

    def _write_piece(self, piece: Generation) -> list[Part]:
        return self.store.write(piece.table(), piece.by_category())
