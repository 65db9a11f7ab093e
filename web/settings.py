"""Settings of one node: every knob, its default, and where it goes.

Only ``web/`` reads settings; ``Settings`` turns them into the frozen config objects of the
lower layers. Every field is a ``tributary serve`` flag and a ``TRIBUTARY_<NAME>`` environment
variable (see ``docs/operations.md``; a test checks that each one is documented).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cluster.detector import DetectorConfig
from cluster.holdings import HoldingsConfig
from cluster.membership import parse_peers
from cluster.node import ClusterConfig, NodeConfig
from cluster.peers import PeerConfig
from cluster.upkeep import UpkeepConfig
from ingest.decode import DecodeConfig
from ingest.idempotency import IdempotencyConfig
from ingest.ingestor import IngestConfig
from ingest.persister import PersistConfig
from ingest.wal import WalConfig
from query.approxengine import ApproxConfig
from query.engine import EngineConfig
from query.sandbox import SandboxConfig
from storage.compaction import CompactionConfig
from storage.retention import RetentionConfig
from storage.sketch import SketchConfig

__all__ = ["Settings"]

SECOND_NS = 1_000_000_000


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8321
    data: Path = Path("./data")
    node_id: str = "n1"
    peers: str = ""  # n1=http://h1:8321,n2=http://h2:8321
    rf: int = 2
    shards: int = 256
    fsync: bool = True
    max_body_bytes: int = 64 << 20
    max_rows: int = 1_000_000
    max_decompressed_bytes: int = 256 << 20
    max_future_s: float = 86_400.0
    retention_s: float = 0.0  # 0 = keep forever
    max_buffer_bytes: int = 64 << 20
    persist_bytes: int = 16 << 20
    persist_interval_s: float = 10.0
    persist_workers: int = 2  # threads writing a persist's pieces side by side
    compact_min_parts: int = 4
    compact_cold_s: float = 60.0  # an hour whose parts are all this old is merged into one
    idempotency_window_s: float = 3600.0
    idempotency_max_keys: int = 500_000
    slice_index_max_bytes: int = 64 << 20  # batch ids in memory; older hours reread from disk
    max_concurrent_ingest: int = 64
    query_timeout_s: float = 30.0
    sql_timeout_s: float = 10.0
    sql_memory_limit: str = "512MB"
    sql_max_rows: int = 10_000
    sql_max_export_rows: int = 10_000_000
    max_concurrent_sql: int = 4
    log_format: str = "auto"  # auto | json | console
    tokens_file: str = ""  # TOKEN scope[,scope] per line; see web/auth.py
    tokens: str = field(default="", repr=False)  # same format, ';' between entries (TRIBUTARY_TOKENS)
    insecure: bool = False  # serve without tokens on a non-loopback address
    metrics_auth: bool = False  # /metrics needs a token with the query scope
    max_concurrent_requests: int = 256
    body_read_timeout_s: float = 30.0
    keep_alive_s: int = 30
    retention_interval_s: float = 60.0
    topk_max_k: int = 10_000
    cluster_secret: str = field(default="", repr=False)  # shared by the nodes; guards /internal/*
    advertise_url: str = ""  # how peers reach this node; default http://host:port
    peer_timeout_s: float = 3.0  # a peer that does not answer a write or read in time is skipped
    probe_interval_s: float = 0.5
    probe_timeout_s: float = 1.0
    repair_interval_s: float = 5.0
    sketches: bool = True  # sketch files beside parts, for approx=true answers (issue 7)
    sketch_hll_lg_k: int = 12
    sketch_frequent_lg_max_k: int = 10
    sketch_kll_k: int = 200
    max_quantiles: int = 64
    extra: dict[str, str] = field(default_factory=dict)

    def decode_config(self) -> DecodeConfig:
        return DecodeConfig(
            max_body_bytes=self.max_body_bytes,
            max_rows=self.max_rows,
            max_decompressed_bytes=self.max_decompressed_bytes,
            max_future_ns=int(self.max_future_s * SECOND_NS),
            retention_ns=int(self.retention_s * SECOND_NS) if self.retention_s > 0 else None,
        )

    def approx_config(self) -> ApproxConfig:
        sketch = SketchConfig(
            hll_lg_k=self.sketch_hll_lg_k, frequent_lg_max_k=self.sketch_frequent_lg_max_k, kll_k=self.sketch_kll_k
        )
        return ApproxConfig(sketch=sketch, max_quantiles=self.max_quantiles)

    def node_config(self) -> NodeConfig:
        return NodeConfig(
            data_dir=Path(self.data),
            sketches=self.sketches,
            approx=self.approx_config(),
            node_id=self.node_id,
            shards=self.shards,
            wal=WalConfig(fsync=self.fsync),
            ingest=IngestConfig(max_buffer_bytes=self.max_buffer_bytes),
            persist=PersistConfig(
                max_bytes=self.persist_bytes, max_age_s=self.persist_interval_s, workers=self.persist_workers
            ),
            compaction=CompactionConfig(min_parts=self.compact_min_parts, cold_after_s=self.compact_cold_s),
            idempotency=IdempotencyConfig(window_s=self.idempotency_window_s, max_keys=self.idempotency_max_keys),
            engine=EngineConfig(timeout_s=self.query_timeout_s, max_k=self.topk_max_k),
            sandbox=SandboxConfig(
                timeout_s=self.sql_timeout_s,
                memory_limit=self.sql_memory_limit,
                max_rows=self.sql_max_rows,
                max_export_rows=self.sql_max_export_rows,
            ),
            retention=RetentionConfig(
                max_age_ns=int(self.retention_s * SECOND_NS) if self.retention_s > 0 else None,
                every_s=self.retention_interval_s,
            ),
            cluster=self.cluster_config(),
            holdings=HoldingsConfig(max_bytes=self.slice_index_max_bytes),
        )

    def cluster_config(self) -> ClusterConfig:
        return ClusterConfig(
            peers=tuple(parse_peers(self.peers)),
            rf=self.rf,
            url=(self.advertise_url or f"http://{self.host}:{self.port}").rstrip("/"),
            peer=PeerConfig(
                secret=self.cluster_secret,
                timeout_s=self.peer_timeout_s,
                probe_timeout_s=self.probe_timeout_s,
            ),
            detector=DetectorConfig(interval_s=self.probe_interval_s, stall_s=max(3.0, 6 * self.probe_interval_s)),
            upkeep=UpkeepConfig(repair_interval_s=self.repair_interval_s),
            read_timeout_s=self.peer_timeout_s,
        )
