"""One Tributary process, wired: the only place that builds the parts of a node.

``Node`` owns the data directory (WAL, partitions, manifest, idempotency log, hints, cluster
map), the write path, the query engine and the read side (``cluster.answers``), the background
threads that persist the live buffer and compact hours (``cluster.maintenance``), and — when the
map names other nodes — the cluster parts: peer client, failure detector, write fan-out,
scatter-gather reads, repair and membership changes. Recovery happens
in the constructor: the manifest is loaded, orphans of a crash are removed, and WAL records not
yet persisted are replayed before the node takes traffic.

A node alone in its map (no ``peers``) is a cluster of one and takes the local fast paths:
``ingest`` goes straight to the WAL and reads straight to the engine.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import structlog

from cluster.answers import Answer, Answers
from cluster.detector import Detector, DetectorConfig
from cluster.errors import StaleEpoch
from cluster.hints import HintStore
from cluster.holdings import BatchesExtra, Holdings, HoldingsConfig
from cluster.maintenance import Maintenance
from cluster.mapkeeper import MapKeeper, initial_map, map_id
from cluster.membership import ClusterMap, Member
from cluster.peers import PeerClient, PeerConfig
from cluster.reader import Reader
from cluster.rebalance import Rebalancer, valid_node_id
from cluster.repair import Repairer
from cluster.upkeep import Upkeep, UpkeepConfig
from cluster.writer import Writer
from ingest.buffer import LiveBuffer
from ingest.idempotency import IdempotencyConfig, IdempotencyIndex, KeyRecord
from ingest.ingestor import IngestConfig, Ingestor, IngestResult, batch_id_for
from ingest.persister import PersistConfig, Persister
from ingest.wal import Wal, WalConfig
from query.approxengine import ApproxConfig, ApproxEngine
from query.engine import Engine, EngineConfig
from query.sandbox import Sandbox, SandboxConfig, SqlResult, SqlStream
from storage.compaction import CompactionConfig, Compactor
from storage.manifest import Manifest
from storage.partition import PartExtra, PartitionConfig, PartitionStore, storage_db
from storage.retention import Retention, RetentionConfig
from storage.schema import ShardHasher
from storage.sketchfile import SketchExtra

__all__ = ["Answer", "ClusterConfig", "Node", "NodeConfig"]

log = structlog.get_logger("tributary.node")


@dataclass(frozen=True)
class ClusterConfig:
    """How this node finds and talks to the others. No ``peers``: a cluster of one."""

    peers: tuple[Member, ...] = ()  # every member, this node included (from --peers)
    rf: int = 2
    url: str = "http://127.0.0.1:8321"  # how peers reach this node
    peer: PeerConfig = field(default_factory=PeerConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    upkeep: UpkeepConfig = field(default_factory=UpkeepConfig)
    read_timeout_s: float = 3.0  # a replica that does not answer a read in time is skipped
    write_retries: int = 3  # re-routes after a peer says our map is stale
    pool_threads: int = 32


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
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    holdings: HoldingsConfig = field(default_factory=HoldingsConfig)  # memory of the slice index
    sketches: bool = True  # build sketch files beside parts for approximate answers (issue 7)
    approx: ApproxConfig = field(default_factory=ApproxConfig)  # sketch sizes, most quantiles
    tick_s: float = 0.25  # how often the background threads look for work
    compact_every_s: float = 30.0


class Node:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.me = valid_node_id(config.node_id)
        root = config.data_dir
        root.mkdir(parents=True, exist_ok=True)
        self.started = time.time()
        self.manifest = Manifest(root)
        # Persists build no sketches: a merge sketches the rows it writes, and compaction
        # completes a quiet hour's part no merge takes (storage/compaction.py). Sketching each
        # persisted part and merging the sketches later cost ~3x as much CPU, and the persists'
        # share of it capped sustained ingest (issue 8).
        self.db = storage_db(config.partition)  # shared by the stores and the holdings
        self.store = PartitionStore(root, self.manifest, config.partition, extras=[BatchesExtra()], db=self.db)
        self.store.remove_tmp_files()
        # Merges and evictions write through a store of their own (own lock and DuckDB cursors),
        # so a long merge never holds the store a persist writes through.
        merge_extras: list[PartExtra] = [BatchesExtra()]
        if config.sketches:
            merge_extras.append(SketchExtra(config.approx.sketch))
        self.merge_store = PartitionStore(root, self.manifest, config.partition, extras=merge_extras, db=self.db)
        orphans = self.manifest.remove_orphans()
        self.buffer = LiveBuffer()
        self.keys = IdempotencyIndex(root / "idempotency.log", config.idempotency)
        self.hasher = ShardHasher(config.shards)
        self.wal = Wal(root / "wal", config.wal)
        self.ingestor = Ingestor(self.wal, self.buffer, self.keys, self.hasher, config.ingest)
        self.holdings = Holdings(config.holdings, self.manifest, self.db)
        self.wal._on_durable = self._on_durable
        recovered = self.ingestor.recover(self.manifest.state.wal_seq)
        self.holdings.load(root, self.manifest.state, self.buffer.view()[0].rows, self.wal.last_seq)
        self.wal.start()
        self.persister = Persister(self.buffer, self.wal, self.store, self.manifest, self.keys, config.persist)
        self.compactor = Compactor(self.merge_store, self.manifest, config.compaction)
        self.retention = Retention(root, self.manifest, config.retention)
        self.engine = Engine(root, self.manifest, self.buffer, config.engine)
        self.approx = ApproxEngine(self.engine, config.approx)
        self.sandbox = Sandbox(config.sandbox)
        self.maintenance = Maintenance(
            self.persister, self.compactor, self.retention, self.holdings,
            tick_s=config.tick_s, compact_every_s=config.compact_every_s,
        )  # fmt: skip
        self._build_cluster(config)
        self.maintenance.start()
        log.info(
            "node started",
            node_id=self.me,
            data=str(root),
            recovered_rows=recovered,
            orphans_removed=len(orphans),
            parts=len(self.manifest.state.parts),
            epoch=self.cmap.epoch,
            nodes=self.cmap.node_ids,
        )

    def _on_durable(self, seq: int, ctx: object) -> None:
        self.ingestor.on_durable(seq, ctx)
        self.holdings.note(ctx[0], seq)  # type: ignore[index]

    # -- the cluster parts ----------------------------------------------------------------------

    def _build_cluster(self, config: NodeConfig) -> None:
        cc = config.cluster
        cmap = initial_map(self.me, config.data_dir, config.shards, cc.peers, cc.rf, cc.url)
        self._serving = cmap.is_single(self.me)
        self.hints = HintStore(config.data_dir)
        self.peers = PeerClient(cc.peer, lambda node_id: self.cmap.url_of(node_id))
        self.pool = ThreadPoolExecutor(cc.pool_threads, thread_name_prefix="cluster")
        self.maps = MapKeeper(
            self.me, config.data_dir, cmap, self.peers, self.pool,
            lambda node_id: self.detector.is_up(node_id), lambda: self.upkeep.repair_soon(),
        )  # fmt: skip
        self.detector = Detector(
            self.me, self.peers, lambda: self.cmap.members, cc.detector, self.maps.exchange, self._on_stall
        )
        self.writer = Writer(
            self.me, lambda: self.cmap, self.store_rows, self.peers, self.detector, self.hints, self.pool
        )
        self.reader = Reader(
            self.me, lambda: self.cmap, self.peers, self.detector, self.pool, lambda: self.serving,
            cc.read_timeout_s, self.maps.on_stale, self.hints.count_for,
        )  # fmt: skip
        self.answers = Answers(
            self.me, lambda: self.cmap, lambda: self.serving, self.engine, self.approx, self.reader, self.sandbox,
            config.approx,
        )  # fmt: skip
        self.repairer = Repairer(
            self.me, lambda: self.cmap, self.holdings, self.peers, self.detector,
            self.engine.slice_rows, self.store_rows, self.maintenance.evict, self.retention.cutoff,
        )  # fmt: skip
        self.rebalancer = Rebalancer(self.me, lambda: self.cmap, self.publish, self.peers, self.detector, self.status)
        self.upkeep = Upkeep(
            self.me, lambda: self.cmap, self.peers, self.detector, self.hints, self.holdings,
            self.repairer, self.rebalancer, self.writer.write, self._set_serving, cc.upkeep,
        )  # fmt: skip
        self.detector.start()
        self.upkeep.start()
        if not self._serving:
            self.upkeep.catch_up_async("start")

    @property
    def cmap(self) -> ClusterMap:
        """The cluster map this node routes by (see ``cluster.mapkeeper``)."""
        return self.maps.cmap

    @property
    def serving(self) -> bool:
        """Whether this node answers reads: not while catching up, nor when it may have stalled."""
        return self._serving and (self.cmap.is_single(self.me) or not self.detector.lagging())

    def _set_serving(self, value: bool) -> None:
        self._serving = value

    def adopt(self, cmap: ClusterMap) -> bool:
        """Take ``cmap`` if it is newer than ours (higher epoch; same epoch: higher map id)."""
        return self.maps.adopt(cmap)

    def publish(self, cmap: ClusterMap) -> None:
        """Adopt ``cmap`` and push it to every node of the old and the new map (best effort)."""
        self.maps.publish(cmap)

    def _on_stall(self, gap_s: float) -> None:
        if not self.cmap.is_single(self.me):
            self.upkeep.catch_up_async(f"stalled {gap_s:.1f}s")

    # -- writes ----------------------------------------------------------------------------------

    def ingest(self, events: pa.Table, *, key: str | None = None, fingerprint: int = 0) -> IngestResult:
        """Durable when it returns — fsynced here for a cluster of one, on W disks per shard in a
        cluster — and stored once per Idempotency-Key, whichever node a retry goes through."""
        if self.cmap.is_single(self.me):
            return self.ingestor.ingest(events, key=key, fingerprint=fingerprint)
        if key is not None:
            known = self.keys.begin(key, fingerprint)
            if known is not None:
                return IngestResult(known.accepted, duplicate=True)
        try:
            rows = self.ingestor.stored_rows(events, batch_id_for(key))
            for attempt in range(self.config.cluster.write_retries + 1):
                try:
                    out = self.writer.write(rows)
                    break
                except StaleEpoch:
                    if attempt == self.config.cluster.write_retries:
                        raise
                    self.refresh_map()
            if key is not None:
                self.keys.finish(KeyRecord(key, fingerprint, rows.num_rows, time.time()))
        except BaseException:
            if key is not None:
                self.keys.abort(key)
            raise
        return IngestResult(rows.num_rows, duplicate=out.duplicate)

    def store_rows(self, rows: pa.Table, epoch: int = 0) -> tuple[int, bool]:
        """Store stored-schema rows as a replica, each (shard, hour, batch) slice once; returns
        (rows newly stored, whether all were already held). ``epoch`` (0: no check) refuses
        writes routed by an older map than ours."""
        if epoch and epoch < self.cmap.epoch:
            raise StaleEpoch(f"routed by map epoch {epoch}; this node has {self.cmap.epoch}", self.cmap.epoch)
        slices = self.holdings.slices_of(rows)
        new = self.holdings.claim(slices)
        try:
            if not new:
                return 0, True
            part = rows if len(new) == len(slices) else self.holdings.select(rows, new)
            self.ingestor.ingest(part)
            return part.num_rows, False
        finally:
            self.holdings.release(new)

    def store_hint(self, target: str, rows: pa.Table) -> None:
        """Keep rows for ``target`` durably until it takes them (stored here if it is us)."""
        if target == self.me:
            self.store_rows(rows)
        else:
            self.hints.add(target, rows)

    def refresh_map(self) -> None:
        """Ask every up peer for its map and adopt the newest."""
        self.maps.refresh()

    # -- reads (answered by ``cluster.answers``) -----------------------------------------------

    def aggregate(
        self, category: str, start: int, end: int, shards: Sequence[int] | None = None, *, strict: bool = False
    ) -> Answer:
        """Exact count and sum over the cluster (or over ``shards`` of this node only)."""
        return self.answers.aggregate(category, start, end, shards, strict=strict)

    def topk(
        self,
        category: str,
        start: int,
        end: int,
        k: int,
        shards: Sequence[int] | None = None,
        *,
        strict: bool = False,
        approx: bool = False,
    ) -> Answer:
        """Exact top-k over the cluster (or ``shards`` of this node); with ``approx`` a ``TopAnswer``."""
        return self.answers.topk(category, start, end, k, shards, strict=strict, approx=approx)

    def distinct(
        self,
        category: str,
        start: int,
        end: int,
        approx: bool = False,
        shards: Sequence[int] | None = None,
        *,
        strict: bool = False,
    ) -> Answer:
        """Distinct producers: an ``int``, or with ``approx`` a ``query.approx.DistinctAnswer``."""
        return self.answers.distinct(category, start, end, approx, shards, strict=strict)

    def quantiles(
        self,
        category: str,
        start: int,
        end: int,
        qs: Sequence[float],
        approx: bool = False,
        shards: Sequence[int] | None = None,
        *,
        strict: bool = False,
    ) -> Answer:
        """Quantiles of ``value``: ``ExactQuantiles``, or with ``approx`` a ``QuantileAnswer``."""
        return self.answers.quantiles(category, start, end, qs, approx, shards, strict=strict)

    def answer_peer(self, request: dict[str, Any]) -> dict[str, Any]:
        """A peer's scatter-gather request over some of our shards (``/internal/query``)."""
        return self.answers.answer_peer(request)

    def answer_peer_from_indexes(self, request: dict[str, Any]) -> dict[str, Any] | None:
        """``answer_peer`` when in-memory indexes answer it at once, else None."""
        return self.answers.answer_peer_from_indexes(request)

    # -- membership and state --------------------------------------------------------------------

    def join(self, node_id: str, url: str) -> ClusterMap:
        return self.rebalancer.join(node_id, url)

    def leave(self, node_id: str) -> ClusterMap:
        return self.rebalancer.leave(node_id)

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "node_id": self.me,
            "epoch": self.cmap.epoch,
            "map_id": map_id(self.cmap),
            "serving": self.serving,
        }

    def status(self) -> dict[str, Any]:
        """What peers and the change driver ask (``/internal/status``)."""
        return {
            "node_id": self.me,
            "epoch": self.cmap.epoch,
            "serving": self.serving,
            "pending": self.repairer.pending(),
            "hints": self.hints.counts(),
            "held_shards": self.holdings.shards(),
        }

    def cluster_info(self) -> dict[str, Any]:
        """The map with live health, per-node shard counts and every shard's replicas."""
        cmap = self.cmap
        health = self.detector.snapshot()
        reads = cmap.read_map.load()
        nodes = []
        for m in cmap.members:
            h = health.get(m.node_id)
            up = True if m.node_id == self.me else (h.up if h else True)
            serving = self.serving if m.node_id == self.me else (bool(h and h.up and h.serving) if h else True)
            nodes.append(
                {"node_id": m.node_id, "url": m.url, "state": m.state, "up": up, "serving": serving,
                 "shards": reads.get(m.node_id, 0)}
            )  # fmt: skip
        return {
            **cmap.to_json(),
            "w": cmap.w,
            "node_id": self.me,
            "nodes": nodes,
            "in_transition": cmap.in_transition,
            "replicas": [list(r) for r in cmap.read_map.all_replicas()],
        }

    # -- maintenance -----------------------------------------------------------------------------

    def persist_now(self) -> int:
        return self.maintenance.persist_now()

    def compact_now(self, force: bool = True) -> int:
        return self.maintenance.compact_now(force)

    # -- SQL (this node's data; read-only sandbox) ---------------------------------------------

    def sql(self, sql: str, *, query_id: str | None = None, max_rows: int | None = None) -> SqlResult:
        """Run one read-only statement over the views ``events``, ``rollup_minute`` and
        ``rollup_producer_hour`` of this node's data (parts + live buffer)."""
        return self.answers.sql(sql, query_id=query_id, max_rows=max_rows)

    def sql_stream(
        self, sql: str, *, query_id: str | None = None, max_rows: int | None = None
    ) -> contextlib.AbstractContextManager[SqlStream]:
        """``sql`` as a stream of record batches, for exports that never hold the whole result."""
        return self.answers.sql_stream(sql, query_id=query_id, max_rows=max_rows)

    def sql_cancel(self, query_id: str) -> bool:
        return self.answers.sql_cancel(query_id)

    def stats(self) -> dict[str, object]:
        return {
            "node_id": self.me,
            "events_total": self.ingestor.events_total,
            "batches_total": self.ingestor.batches_total,
            "buffer_rows": self.buffer.total_rows,
            "buffer_bytes": self.buffer.total_bytes,
            "parts": len(self.manifest.state.parts),
            "compaction_pending_hours": self.compactor.pending_hours(),
            "persists": self.persister.persists,
            "wal_fsyncs": self.wal.fsyncs,
            "uptime_s": round(time.time() - self.started, 3),
            "epoch": self.cmap.epoch,
            "serving": self.serving,
            "hints_waiting": sum(self.hints.counts().values()),
            "hints_replayed": self.upkeep.hints_replayed,
            "repair_shipped_rows": self.repairer.shipped_rows,
            "repair_fetched_rows": self.repairer.fetched_rows,
            "evicted_shards": self.repairer.evicted_shards,
        }

    def close(self, persist: bool = True) -> None:
        """Stop background work; with ``persist``, flush the buffer to Parquet first."""
        self.upkeep.stop()
        self.detector.stop()
        self.maintenance.stop()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.peers.close()
        if persist:
            self.persister.persist()
        self.persister.close()
        self.wal.close()
        self.engine.close()
        self.store.close()
        self.merge_store.close()
        self.db.close()
