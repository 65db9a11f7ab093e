"""A node's storage without the write path, for query tests: a manifest, Parquet parts, a live
buffer and the engine over them, filled directly (no WAL, no HTTP).

``persist`` does what ``ingest.persister`` does for a real node (freeze the buffer, write its
parts, commit them to the manifest, release the buffer), so the engine sees the same sources.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa

from ingest.buffer import LiveBuffer, minute_rollup
from query.engine import Engine
from storage.compaction import Compactor
from storage.manifest import Manifest
from storage.partition import PartExtra, PartitionStore

__all__ = ["Parts"]


class Parts:
    """Storage under ``root``; ``extras`` are the ``PartitionStore`` extras (sketch files, ...)."""

    def __init__(self, root: Path, extras: Sequence[PartExtra] = ()) -> None:
        self.root = root
        self.manifest = Manifest(root)
        self.store = PartitionStore(root, self.manifest, extras=extras)
        self.buffer = LiveBuffer()
        self.engine = Engine(root, self.manifest, self.buffer)
        self.seq = 0

    def to_buffer(self, rows: pa.Table) -> None:
        self.seq += 1
        self.buffer.append(rows, minute_rollup(rows), self.seq)

    def persist(self) -> None:
        g = self.buffer.freeze()
        if g is not None:
            parts = self.store.write(g.table())
            self.buffer.release(g, lambda: self.manifest.commit(add=parts, wal_seq=g.last_seq))

    def compact(self) -> int:
        """Merge every hour's parts into one now; the number of hours compacted."""
        return Compactor(self.store, self.manifest).run_once(force=True)

    def reopen_store(self, extras: Sequence[PartExtra]) -> None:
        """A new store with other extras over the same parts (a node restarted with new settings)."""
        self.store.close()
        self.store = PartitionStore(self.root, self.manifest, extras=extras)

    def close(self) -> None:
        self.engine.close()
        self.store.close()
