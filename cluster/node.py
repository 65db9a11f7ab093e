"""One Tributary process, wired: the only place that builds the parts of a node.

``Node`` owns the data directory (WAL, partitions, manifest, idempotency log), the write path,
the query engine and the background loop that persists the live buffer and compacts hours.
Recovery happens in the constructor: the manifest is loaded, orphans of a crash are removed,
and WAL records not yet persisted are replayed before the node takes traffic.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import structlog

from ingest.buffer import LiveBuffer
from ingest.idempotency import IdempotencyConfig, IdempotencyIndex
from ingest.ingestor import IngestConfig, Ingestor, IngestResult
from ingest.persister import PersistConfig, Persister
from ingest.wal import Wal, WalConfig
from query.engine import Aggregate, Engine, EngineConfig, TopEntry
from storage.compaction import CompactionConfig, Compactor
from storage.manifest import Manifest
from storage.partition import PartitionConfig, PartitionStore
from storage.retention import Retention, RetentionConfig
from storage.schema import ShardHasher

__all__ = ["Answer", "Node", "NodeConfig"]

log = structlog.get_logger("tributary.node")


@dataclass(frozen=True)
class NodeConfig:
    data_dir: Path
    node_id: str = "n1"
    shards: int = 256
    wal: WalConfig = field(default_factory=WalConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    persist: PersistConfig = field(default_factory=PersistConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    compaction: CompactionConfig = field(default_factory=CompactionConfig)
    idempotency: IdempotencyConfig = field(default_factory=IdempotencyConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    tick_s: float = 0.25  # how often the background loop looks for work
    compact_every_s: float = 30.0


@dataclass(frozen=True)
class Answer:
    """An answer with its completeness: ``partial`` when some shards could not be read."""

    value: object
    partial: bool = False
    missing_shards: tuple[int, ...] = ()


class Node:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        root = config.data_dir
        root.mkdir(parents=True, exist_ok=True)
        self.started = time.time()
        self.manifest = Manifest(root)
        self.store = PartitionStore(root, self.manifest, config.partition)
        self.store.remove_tmp_files()
        orphans = self.manifest.remove_orphans()
        self.buffer = LiveBuffer()
        self.keys = IdempotencyIndex(root / "idempotency.log", config.idempotency)
        self.hasher = ShardHasher(config.shards)
        self.wal = Wal(root / "wal", config.wal)
        self.ingestor = Ingestor(self.wal, self.buffer, self.keys, self.hasher, config.ingest)
        self.wal._on_durable = self.ingestor.on_durable
        recovered = self.ingestor.recover(self.manifest.state.wal_seq)
        self.wal.start()
        self.persister = Persister(
            self.buffer, self.wal, self.store, self.manifest, self.keys, config.persist
        )
        self.compactor = Compactor(self.store, self.manifest, config.compaction)
        self.retention = Retention(root, self.manifest, config.retention)
        self.engine = Engine(root, self.manifest, self.buffer, config.engine)
        self._stop = threading.Event()
        self._bg = threading.Thread(target=self._background, name="node-background", daemon=True)
        self._bg.start()
        log.info(
            "node started",
            node_id=config.node_id,
            data=str(root),
            recovered_rows=recovered,
            orphans_removed=len(orphans),
            parts=len(self.manifest.state.parts),
        )

    # -- writes ----------------------------------------------------------------------------------

    def ingest(self, events: pa.Table, *, key: str | None = None, fingerprint: int = 0) -> IngestResult:
        """Durable (fsynced) when it returns; exactly once per Idempotency-Key."""
        return self.ingestor.ingest(events, key=key, fingerprint=fingerprint)

    # -- reads -----------------------------------------------------------------------------------

    def aggregate(self, category: str, start: int, end: int, shards: Sequence[int] | None = None) -> Answer:
        return Answer(self.engine.aggregate(category, start, end, shards))

    def topk(
        self, category: str, start: int, end: int, k: int, shards: Sequence[int] | None = None
    ) -> Answer:
        return Answer(self.engine.topk(category, start, end, k, shards))

    # -- maintenance -----------------------------------------------------------------------------

    def persist_now(self) -> int:
        return self.persister.persist()

    def compact_now(self, force: bool = True) -> int:
        return self.compactor.run_once(force=force)

    def _background(self) -> None:
        last_compact = time.monotonic()
        while not self._stop.wait(self.config.tick_s):
            try:
                if self.persister.due():
                    self.persister.persist()
                if time.monotonic() - last_compact >= self.config.compact_every_s:
                    last_compact = time.monotonic()
                    self.compactor.run_once()
                self.retention.maybe_run()  # drops whole expired hours; a no-op when retention is off
            except Exception:  # keep serving; the next tick retries (data stays in WAL + buffer)
                log.exception("background maintenance failed")

    def stats(self) -> dict[str, object]:
        return {
            "node_id": self.config.node_id,
            "events_total": self.ingestor.events_total,
            "batches_total": self.ingestor.batches_total,
            "buffer_rows": self.buffer.total_rows,
            "buffer_bytes": self.buffer.total_bytes,
            "parts": len(self.manifest.state.parts),
            "persists": self.persister.persists,
            "wal_fsyncs": self.wal.fsyncs,
            "uptime_s": round(time.time() - self.started, 3),
        }

    def close(self, persist: bool = True) -> None:
        """Stop background work; with ``persist``, flush the buffer to Parquet first."""
        self._stop.set()
        self._bg.join()
        if persist:
            self.persister.persist()
        self.wal.close()
        self.engine.close()
        self.store.close()


_ = Aggregate, TopEntry  # re-exported types used by callers of Answer.value
