"""The HTTP face of one node: routes, status codes and problem details; no logic of its own.

Build with ``create_app(node, settings)``; the CLI serves it with uvicorn. Blocking work
(decoding, waiting for the WAL fsync, DuckDB) runs in worker threads so the event loop keeps
answering ``/health`` while a long query runs. The Litestar app is wrapped by
``web/peerreads.py``, which answers peers' ``POST /internal/query`` in front of it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import anyio
import xxhash
from litestar import Litestar, MediaType, Request, Response, delete, get, post
from litestar.openapi import OpenAPIConfig
from litestar.static_files import create_static_files_router

from cluster.node import Node
from ingest.decode import decode_events
from ingest.errors import Overloaded
from query.engine import Aggregate, TopEntry
from query.errors import InvalidQuery
from query.timerange import parse_range
from web import assets
from web.approx import approx_routes, topk_approx
from web.auth import AuthMiddleware, load_tokens
from web.internal import internal_router
from web.limits import LimitsMiddleware
from web.logging import RequestLogMiddleware
from web.metrics import Metrics
from web.peerreads import PeerReads
from web.problem import problem_handlers
from web.settings import Settings
from web.sql import sql_routes

__all__ = ["create_app"]


def _now_ns() -> int:
    return time.time_ns()


def _took(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 3)


def create_app(node: Node, settings: Settings) -> PeerReads:
    decode_config = settings.decode_config()
    ingest_slots = asyncio.Semaphore(settings.max_concurrent_ingest)

    def _ingest_sync(body: bytes, ctype: str | None, cenc: str | None, key: str | None) -> dict[str, Any]:
        events = decode_events(body, ctype, cenc, now_ns=_now_ns(), config=decode_config)
        fp = xxhash.xxh64_intdigest(body) if key is not None else 0  # only a key's replays compare it
        res = node.ingest(events, key=key, fingerprint=fp)
        return {"accepted": res.accepted, "duplicate": res.duplicate}

    @post("/v1/events", status_code=200, summary="Ingest a batch of events")
    async def ingest_events(request: Request[Any, Any, Any]) -> dict[str, Any]:
        """Stores the batch atomically; answers only once it is durable in the write-ahead log.

        Bodies: JSON array, NDJSON, or Arrow IPC stream; optional gzip/zstd Content-Encoding;
        optional Idempotency-Key (a replay answers the first answer with duplicate=true).
        """
        if ingest_slots.locked():
            raise Overloaded("too many concurrent ingest requests", retry_after=1)
        async with ingest_slots:
            body = await request.body()
            key = request.headers.get("idempotency-key") or None
            if key is not None and len(key) > 256:
                raise InvalidQuery("Idempotency-Key is longer than 256 characters")
            return await anyio.to_thread.run_sync(
                _ingest_sync,
                body,
                request.headers.get("content-type"),
                request.headers.get("content-encoding"),
                key,
            )

    def _range(category: str, start: str, end: str) -> tuple[int, int]:
        if not category:
            raise InvalidQuery("category is required")
        return parse_range(start, end, now_ns=_now_ns())

    def _aggregate(category: str, start: str, end: str, strict: bool) -> tuple[Any, float]:
        t0 = time.perf_counter()
        s, e = _range(category, start, end)
        ans = node.aggregate(category, s, e, strict=strict)
        return ans, _took(t0)

    def _shape(ans: Any, value: Any, took: float) -> dict[str, Any]:
        return {
            "value": value,
            "partial": ans.partial,
            "missing_shards": list(ans.missing_shards),
            "took_ms": took,
        }

    @get("/v1/count", sync_to_thread=True, summary="Count events of a category in [start, end)")
    def count(category: str, start: str, end: str, strict: bool = False) -> dict[str, Any]:
        ans, took = _aggregate(category, start, end, strict)
        agg: Aggregate = ans.value
        return _shape(ans, agg.count, took)

    @get("/v1/sum", sync_to_thread=True, summary="Sum of value for a category in [start, end)")
    def sum_(category: str, start: str, end: str, strict: bool = False) -> dict[str, Any]:
        ans, took = _aggregate(category, start, end, strict)
        agg: Aggregate = ans.value
        return _shape(ans, agg.sum, took)

    @get("/v1/topk", sync_to_thread=True, summary="The k producers with the most events")
    def topk(
        category: str, start: str, end: str, k: int = 10, strict: bool = False, approx: bool = False
    ) -> dict[str, Any]:
        if approx:  # from sketches, with per-producer bounds (web/approx.py)
            return topk_approx(node, category, start, end, k, strict)
        t0 = time.perf_counter()
        s, e = _range(category, start, end)
        ans = node.topk(category, s, e, k, strict=strict)
        return {
            "producers": [{"producer_id": t.producer_id, "count": t.count} for t in cast(list[TopEntry], ans.value)],
            "partial": ans.partial,
            "missing_shards": list(ans.missing_shards),
            "took_ms": _took(t0),
        }

    @get("/health", summary="Liveness, with this node's cluster map epoch and whether it serves reads")
    async def health() -> dict[str, Any]:
        return node.health()

    @get("/v1/cluster", sync_to_thread=False, summary="The cluster map with live health and shard owners")
    def cluster_map() -> dict[str, Any]:
        return node.cluster_info()

    @post(
        "/v1/cluster/nodes",
        status_code=202,
        sync_to_thread=True,
        summary="Add a node to the cluster",
    )
    def cluster_join(data: dict[str, Any]) -> dict[str, Any]:
        """Body ``{"node_id": "n4", "url": "http://host:port"}``. The node joins as ``joining``;
        its shards are shipped to it and it becomes ``active`` when done (watch GET /v1/cluster)."""
        try:
            return node.join(str(data["node_id"]), str(data["url"])).to_json()
        except KeyError as e:
            raise InvalidQuery(f"{e.args[0]} is required") from e

    @delete(
        "/v1/cluster/nodes/{node_id:str}",
        status_code=202,
        sync_to_thread=True,
        summary="Remove a node",
    )
    def cluster_leave(node_id: str) -> dict[str, Any]:
        """The node is marked ``leaving``; its shards are shipped to their new owners, then it is
        removed from the map and evicts its data."""
        return node.leave(node_id).to_json()

    @get("/ready", summary="Readiness: recovery is done and the node takes traffic")
    async def ready() -> dict[str, Any]:
        return {"status": "ready", "node_id": settings.node_id}

    @get("/v1/stats", sync_to_thread=False, summary="Counters for the dashboard")
    def stats() -> dict[str, Any]:
        return node.stats()

    @post("/v1/admin/persist", status_code=200, sync_to_thread=True, summary="Persist the live buffer now")
    def admin_persist() -> dict[str, Any]:
        return {"rows_persisted": node.persist_now()}

    @post("/v1/admin/compact", status_code=200, sync_to_thread=True, summary="Compact every hour now")
    def admin_compact() -> dict[str, Any]:
        return {"hours_compacted": node.compact_now(force=True)}

    def _page(name: str) -> Response[str]:
        path = assets.page_path(name)
        body = path.read_text(encoding="utf-8") if path.is_file() else assets.not_built_page()
        return Response(body, media_type=MediaType.HTML)

    @get("/", include_in_schema=False)
    async def console_page() -> Response[str]:
        return _page(assets.CONSOLE_PAGE)

    @get("/dashboard", include_in_schema=False)
    async def dashboard_page() -> Response[str]:
        return _page(assets.DASHBOARD_PAGE)

    static = create_static_files_router(
        path=assets.ASSETS_URL, directories=[assets.ASSETS_DIR], include_in_schema=False
    )

    def _on_shutdown() -> None:
        node.close()

    # Outermost first: request id + access log, metrics, auth (before a slot is taken), limits.
    metrics = Metrics(node)
    # Peers' requests run on threads of their own, so they never wait behind this node's own
    # client requests, which may themselves be waiting on peers (web/internal.py).
    peer_threads = anyio.CapacityLimiter(32)
    middleware = [
        RequestLogMiddleware(),
        metrics.middleware(),
        AuthMiddleware(load_tokens(settings.tokens_file, settings.tokens), metrics_auth=settings.metrics_auth),
        LimitsMiddleware(settings.max_concurrent_requests, settings.body_read_timeout_s),
    ]

    app = Litestar(
        route_handlers=[
            ingest_events,
            count,
            sum_,
            topk,
            *approx_routes(node),
            health,
            cluster_map,
            cluster_join,
            cluster_leave,
            internal_router(node, settings.cluster_secret, settings.insecure, peer_threads),
            ready,
            stats,
            admin_persist,
            admin_compact,
            *sql_routes(node, settings.max_concurrent_sql),
            console_page,
            dashboard_page,
            static,
            metrics.handler(),
        ],
        middleware=middleware,
        exception_handlers=problem_handlers(),
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(title="Tributary", version="1", path="/schema"),
        on_shutdown=[_on_shutdown],
    )
    return PeerReads(app, node, settings.cluster_secret, settings.insecure, peer_threads, metrics)


_ = Response
