"""``GET /metrics``: the node in Prometheus text format.

Two sources, one registry per app (so several apps in one process never collide):

- ``NodeCollector`` reads, at scrape time, the plain counters the lower layers keep as
  attributes (WAL fsyncs and their seconds, persists, compactions, retention, buffer size,
  parts), the cluster figures of ``node.stats()`` when present (``CLUSTER_STATS``) and the
  peers up from the node's failure detector. Nothing below ``web/`` imports
  prometheus-client; a figure a node does not have is simply not exported.
- ``MetricsMiddleware`` measures in ``web/``: request counts and latency by route, query
  latency by kind, and for ``POST /v1/events`` the events and bytes accepted by format and the
  batches refused by reason (read from the answer itself, so every refusal is counted, whichever
  layer refused it).

Names follow the Prometheus conventions: ``tributary_`` prefix, base units (seconds, bytes),
``_total`` on counters, and no label whose values grow with the data (no producer, category or
raw path; routes are Litestar's path templates).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import msgspec
from litestar import Response, get
from litestar.enums import ScopeType
from litestar.handlers import HTTPRouteHandler
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, ReceiveMessage, Scope, Send
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from ingest.decode import MEDIA_TYPES

__all__ = ["FORMATS", "QUERY_KINDS", "Metrics", "MetricsMiddleware", "NodeCollector"]

FORMATS = {"application/json": "json", "application/x-ndjson": "ndjson", "application/vnd.apache.arrow.stream": "arrow"}
QUERY_KINDS = {
    "/v1/count": "count",
    "/v1/sum": "sum",
    "/v1/topk": "topk",
    "/v1/sql": "sql",
    "/v1/export": "export",
    "/v1/tables": "tables",
}
REFUSAL_REASONS = (
    "malformed-body",
    "invalid-event",
    "payload-too-large",
    "unsupported-media-type",
    "idempotency-key-reused",
    "overloaded",
    "not-enough-replicas",
    "unauthorized",
    "forbidden",
    "request-timeout",
)
# The ``_created`` series double the series count and Prometheus ignores them unless a feature
# flag is on; this is process-wide, which suits a process that serves one node.
disable_created_metrics()  # type: ignore[no-untyped-call]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_MAX_CAPTURE = 4096  # answers of /v1/events are tiny; never buffer more than this of one

# node.stats() keys exported when a node has them (the cluster layer adds them): key -> (name, kind, help)
CLUSTER_STATS: dict[str, tuple[str, str, str]] = {
    "hints_waiting": ("tributary_hints_pending", "gauge", "Hinted writes waiting for their replica to return."),
    "hints_replayed": ("tributary_hints_replayed", "counter", "Hinted writes replayed to their replica."),
    "repair_shipped_rows": ("tributary_repair_shipped_rows", "counter", "Rows anti-entropy repair sent to peers."),
    "repair_fetched_rows": ("tributary_repair_fetched_rows", "counter", "Rows anti-entropy repair took from peers."),
    "evicted_shards": ("tributary_evicted_shards", "counter", "Shards dropped after moving to other nodes."),
    "epoch": ("tributary_cluster_epoch", "gauge", "Epoch of the cluster map this node holds."),
    "serving": ("tributary_serving", "gauge", "1 while this node serves reads, else 0."),
}


def _get(obj: object, path: str) -> Any:
    """``obj.a.b`` or None when any step is missing (the node's shape may change beneath us)."""
    for name in path.split("."):
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


class NodeCollector(Collector):
    """Reads a node's own counters at scrape time; never blocks on the data path."""

    def __init__(self, node: object) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        n = self.node
        counters = [
            ("tributary_stored_events", "ingestor.events_total", "Events made durable in this node's WAL."),
            ("tributary_stored_batches", "ingestor.batches_total", "Batches made durable in this node's WAL."),
            ("tributary_persisted_rows", "persister.rows_persisted", "Rows persisted from the buffer to Parquet."),
            ("tributary_retention_runs", "retention.runs", "Retention passes run."),
            ("tributary_retention_dropped_hours", "retention.hours_dropped", "Hours dropped by retention."),
            ("tributary_retention_dropped_rows", "retention.rows_dropped", "Rows dropped by retention."),
            ("tributary_query_duckdb_answers", "engine.duckdb_answers", "Exact answers that needed DuckDB."),
            ("tributary_index_loads", "engine.indexes.cache.loads", "Part indexes loaded from their rollup files."),
            ("tributary_slice_index_reloads", "holdings.reloads", "Slice index hours reread from batch files."),
        ]
        for name, path, doc in counters:
            value = _get(n, path)
            if value is not None:
                yield CounterMetricFamily(name, doc, value=float(value))
        gauges = [
            ("tributary_buffer_bytes", "buffer.total_bytes", "Bytes of acknowledged rows in the live buffer."),
            ("tributary_buffer_rows", "buffer.total_rows", "Acknowledged rows in the live buffer."),
            ("tributary_start_time_seconds", "started", "Unix time the node started."),
            ("tributary_index_bytes", "engine.indexes.cache.nbytes", "Bytes of in-memory part indexes."),
            ("tributary_slice_index_bytes", "holdings.nbytes", "Bytes of the in-memory slice index (capped)."),
        ]
        for name, path, doc in gauges:
            value = _get(n, path)
            if value is not None:
                yield GaugeMetricFamily(name, doc, value=float(value))
        parts = _get(n, "manifest.state.parts")
        if parts is not None:
            yield GaugeMetricFamily("tributary_parts", "Parquet parts in the manifest.", value=len(parts))
        summaries = [
            ("tributary_wal_fsync_seconds", "wal.fsyncs", "wal.fsync_seconds", "WAL group commits: write + fsync."),
            ("tributary_persist_seconds", "persister.persists", "persister.persist_seconds", "Buffer persists."),
            ("tributary_compaction_seconds", "compactor.compactions", "compactor.compact_seconds", "Hour merges."),
        ]
        for name, count_path, sum_path, doc in summaries:
            count, total = _get(n, count_path), _get(n, sum_path)
            if count is not None and total is not None:
                yield SummaryMetricFamily(name, doc, count_value=int(count), sum_value=float(total))
        stats = self._stats()
        for key, (name, kind, doc) in CLUSTER_STATS.items():
            value = stats.get(key)
            if isinstance(value, int | float):  # bools too: 1 / 0
                family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
                yield family(name, doc, value=float(value))
        peers = self._peers()
        if peers is not None:
            yield GaugeMetricFamily("tributary_peers_up", "Peers answering health probes.", value=peers[0])
            yield GaugeMetricFamily("tributary_peers", "Peers this node probes (itself excluded).", value=peers[1])

    def _peers(self) -> tuple[int, int] | None:
        """(up, known) peers from the node's failure detector, when it has one."""
        detector = getattr(self.node, "detector", None)
        snapshot = getattr(detector, "snapshot", None)
        if snapshot is None:
            return None
        try:
            health = {n: h for n, h in snapshot().items() if n != getattr(detector, "me", None)}
        except Exception:  # a scrape must not fail because one figure could not be read
            return None
        return sum(1 for h in health.values() if getattr(h, "up", False)), len(health)

    def _stats(self) -> dict[str, Any]:
        stats = getattr(self.node, "stats", None)
        if stats is None:
            return {}
        try:
            out = stats()
        except Exception:  # a scrape must not fail because one figure could not be read
            return {}
        return out if isinstance(out, dict) else {}


class Metrics:
    """The registry of one app and the instruments measured in ``web/``."""

    def __init__(self, node: object, *, process: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.registry.register(NodeCollector(node))
        if process:  # RSS, CPU, open fds, GC: what a soak test and an operator watch
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        self.ingest_events = Counter(
            "tributary_ingest_events", "Events accepted through POST /v1/events (replays excluded).", ["format"],
            registry=r,
        )  # fmt: skip
        self.ingest_bytes = Counter(
            "tributary_ingest_bytes", "Request body bytes (as sent, compressed or not) of accepted batches.",
            ["format"], registry=r,
        )  # fmt: skip
        self.ingest_batches = Counter(
            "tributary_ingest_batches", "Batches accepted through POST /v1/events (replays excluded).", ["format"],
            registry=r,
        )  # fmt: skip
        self.ingest_duplicates = Counter(
            "tributary_ingest_duplicates", "Batches answered from the idempotency log (replays).", registry=r
        )
        self.refused = Counter(
            "tributary_ingest_refused_batches", "Batches refused, by reason (the problem type).", ["reason"],
            registry=r,
        )  # fmt: skip
        self.query_seconds = Histogram(
            "tributary_query_duration_seconds", "Time to answer a query, by kind.", ["kind"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.requests = Counter(
            "tributary_http_requests", "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"], registry=r,
        )  # fmt: skip
        self.request_seconds = Histogram(
            "tributary_http_request_duration_seconds", "Time to answer an HTTP request, by route template.",
            ["route", "method"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.in_flight = Gauge("tributary_http_requests_in_flight", "HTTP requests being answered.", registry=r)
        for fmt in (*FORMATS.values(), "other"):
            self.ingest_events.labels(fmt)
            self.ingest_bytes.labels(fmt)
            self.ingest_batches.labels(fmt)
        for reason in REFUSAL_REASONS:
            self.refused.labels(reason)
        for kind in QUERY_KINDS.values():
            self.query_seconds.labels(kind)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def handler(self) -> HTTPRouteHandler:
        """The ``GET /metrics`` route."""

        @get("/metrics", sync_to_thread=False, summary="Prometheus metrics", include_in_schema=True)
        def metrics() -> Response[bytes]:
            return Response(self.render(), media_type=CONTENT_TYPE_LATEST)

        return metrics

    def middleware(self) -> MetricsMiddleware:
        return MetricsMiddleware(self)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered HTTP request (the middleware's, and ``web/peerreads.py``'s)."""
        self.requests.labels(route, method, str(status)).inc()
        self.request_seconds.labels(route, method).observe(seconds)

    def observe_ingest(self, content_type: str | None, body_bytes: int, status: int, answer: bytes) -> None:
        """Count one finished ``POST /v1/events`` from its answer."""
        try:
            doc = msgspec.json.decode(answer) if answer else {}
        except msgspec.DecodeError:
            doc = {}
        if not isinstance(doc, dict):
            doc = {}
        if status < 400:
            if doc.get("duplicate") is True:
                self.ingest_duplicates.inc()
                return
            accepted = doc.get("accepted")
            fmt = _format(content_type)
            if isinstance(accepted, int) and not isinstance(accepted, bool):
                self.ingest_events.labels(fmt).inc(accepted)
            self.ingest_batches.labels(fmt).inc()
            self.ingest_bytes.labels(fmt).inc(body_bytes)
            return
        kind = doc.get("type")
        reason = kind.rsplit("/", 1)[-1] if isinstance(kind, str) and kind.startswith("/problems/") else ""
        if reason not in REFUSAL_REASONS:  # keep the label set bounded whatever a handler answers
            reason = "other" if status < 500 else "error"
        self.refused.labels(reason).inc()


def _format(content_type: str | None) -> str:
    essence = (content_type or "").split(";", 1)[0].strip().lower()
    return FORMATS.get(MEDIA_TYPES.get(essence, ""), "other")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


class MetricsMiddleware(ASGIMiddleware):
    """Times every routed request and counts ingest outcomes; never changes an answer."""

    scopes = (ScopeType.HTTP,)

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        m = self.metrics
        path: str = scope["path"]
        method = str(scope.get("method", "GET"))
        route = scope.get("path_template") or "unmatched"
        is_ingest = path == "/v1/events" and method == "POST"
        status = 500
        received = 0
        answer = bytearray()

        async def counting_receive() -> ReceiveMessage:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        async def watching_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif is_ingest and message["type"] == "http.response.body" and len(answer) < _MAX_CAPTURE:
                answer.extend(message.get("body", b"")[: _MAX_CAPTURE - len(answer)])
            await send(message)

        t0 = time.perf_counter()
        m.in_flight.inc()
        try:
            await next_app(scope, counting_receive if is_ingest else receive, watching_send)
        finally:
            elapsed = time.perf_counter() - t0
            m.in_flight.dec()
            m.observe_request(route, method, status, elapsed)
            kind = QUERY_KINDS.get(route)
            if kind is not None and status < 400:
                m.query_seconds.labels(kind).observe(elapsed)
            if is_ingest:
                m.observe_ingest(_header(scope, b"content-type"), received, status, bytes(answer))
