"""Node-to-node routes under ``/internal/``: what peers ask of each other, and nothing else.

Every request must carry the cluster's shared secret in ``X-Tributary-Secret`` (compared in
constant time); without it the answer is 401. A node started without a secret refuses all of
them (403) unless it was started ``--insecure``. Blocking work runs on a thread pool of its own,
so peers' requests never wait behind this node's own client requests — which may themselves be
waiting on peers (two coordinators writing to each other cannot starve each other's threads).

Routes: ``GET/POST /map`` (the cluster map), ``POST /ingest`` (store rows as a replica),
``POST /hints`` (keep rows for another node), ``POST /sql`` (a node's part of a cluster-wide
SQL query, answered as Arrow IPC), ``POST /digests``, ``POST /batches``, ``POST /fetch``
(anti-entropy), ``GET /status``. ``POST /query`` (a scatter-gather read over some shards) is answered in
front of the framework, by ``web/peerreads.py``, with the same secret and the same thread pool.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
from litestar import Request, Response, Router, get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler

from cluster.membership import ClusterMap
from cluster.node import Node
from cluster.peers import SECRET_HEADER
from cluster.sqlgather import answer_partial
from storage.errors import StorageError
from storage.shipping import ARROW_STREAM, PARQUET, pack_parquet, unpack
from web.problem import problem

__all__ = ["BAD_BODY_ERRORS", "BAD_REQUEST", "internal_router", "secret_refusal", "secret_refused"]

T = TypeVar("T")


def secret_refusal(peers: str, secret: str, insecure: bool) -> str | None:
    """Why a node must not start (a multi-node map without a secret), or None."""
    named = [p for p in peers.split(",") if p.strip()]
    if len(named) > 1 and not secret and not insecure:
        return (
            "a cluster needs a shared secret for its node-to-node routes: pass the same "
            "--cluster-secret (or TRIBUTARY_CLUSTER_SECRET) to every node, or --insecure on a trusted network"
        )
    return None


# What a malformed internal request is answered (a missing field, a field of the wrong type, a
# refused value): the caller's error, not the server's.
BAD_REQUEST = (400, "bad-internal-request", "The internal request is invalid")
BAD_BODY_ERRORS: tuple[type[Exception], ...] = (StorageError, KeyError, ValueError)


def secret_refused(expected: bytes, insecure: bool, got: bytes) -> tuple[int, str] | None:
    """None when a request carrying ``got`` as the secret may use the internal routes; else
    (status, detail): 403 when this node has no secret (unless ``insecure``), 401 when ``got``
    is missing or wrong (compared in constant time)."""
    if not expected:
        return None if insecure else (403, "this node has no cluster secret; start it with --cluster-secret")
    if not hmac.compare_digest(got, expected):
        return 401, f"missing or wrong {SECRET_HEADER}"
    return None


def _bad_body(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    detail = getattr(exc, "detail", None) or str(exc)
    return problem(*BAD_REQUEST, detail)


def internal_router(node: Node, secret: str, insecure: bool, limiter: anyio.CapacityLimiter) -> Router:
    """The routes, behind the secret; blocking work runs on ``limiter``'s threads."""
    expected = secret.encode()

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        refused = secret_refused(expected, insecure, connection.headers.get(SECRET_HEADER.lower(), "").encode())
        if refused is not None:
            status, detail = refused
            raise (PermissionDeniedException if status == 403 else NotAuthorizedException)(detail)

    async def run(fn: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(fn, *args, limiter=limiter)

    @get("/map", summary="This node's cluster map")
    async def get_map() -> dict[str, Any]:
        return node.cmap.to_json()

    @post("/map", status_code=200, summary="Offer a cluster map; adopted if newer")
    async def post_map(data: dict[str, Any]) -> dict[str, Any]:
        adopted = await run(node.adopt, ClusterMap.from_json(data))
        return {"epoch": node.cmap.epoch, "adopted": adopted}

    @post("/ingest", status_code=200, summary="Store rows as a replica (each slice once)")
    async def ingest(request: Request[Any, Any, Any], epoch: int = 0) -> dict[str, Any]:
        rows = unpack(await request.body(), request.headers.get("content-type"))
        accepted, duplicate = await run(node.store_rows, rows, epoch)
        return {"accepted": accepted, "duplicate": duplicate}

    @post("/hints", status_code=200, summary="Keep rows for another node until it takes them")
    async def hints(request: Request[Any, Any, Any], target: str) -> dict[str, Any]:
        rows = unpack(await request.body(), request.headers.get("content-type"))
        await run(node.store_hint, target, rows)
        return {"stored": rows.num_rows}

    @post("/sql", status_code=200, summary="A node's part of a cluster-wide SQL query, as Arrow IPC")
    async def sql(data: dict[str, Any]) -> Response[bytes]:
        return Response(await run(answer_partial, node, data), media_type=ARROW_STREAM)

    @post("/digests", status_code=200, summary="Digests of held batches per shard or per (shard, hour)")
    async def digests(data: dict[str, Any]) -> dict[str, Any]:
        shards = data.get("shards")
        if data.get("level") == "hour":
            got = await run(node.holdings.hour_digests, [int(s) for s in shards or []])
            return {"digests": [[s, h, t, n] for (s, h), (t, n) in sorted(got.items())]}
        by_shard = await run(node.holdings.shard_digests, None if shards is None else [int(s) for s in shards])
        return {"digests": [[s, t, n] for s, (t, n) in sorted(by_shard.items())]}

    @post("/batches", status_code=200, summary="Batch ids held per (shard, hour)")
    async def batches(data: dict[str, Any]) -> dict[str, Any]:
        slices = [(int(s), int(h)) for s, h in data["slices"]]
        got = await run(node.holdings.batch_ids, slices)
        return {"slices": [[s, h, sorted(ids)] for (s, h), ids in got.items()]}

    @post("/fetch", status_code=200, summary="Rows of (shard, hour, batch ids) slices, as Parquet")
    async def fetch(data: dict[str, Any]) -> Response[bytes]:
        wanted = [(int(s), int(h), [int(b) for b in ids]) for s, h, ids in data["slices"]]
        rows = await run(node.engine.slice_rows, wanted)
        return Response(await run(pack_parquet, rows), media_type=PARQUET)

    @get("/status", summary="Epoch, serving, pending hand-offs and hints held, for peers")
    async def status() -> dict[str, Any]:
        return await run(node.status)

    return Router(
        path="/internal",
        route_handlers=[get_map, post_map, ingest, hints, sql, digests, batches, fetch, status],
        guards=[guard],
        exception_handlers=dict.fromkeys(BAD_BODY_ERRORS, _bad_body),
        include_in_schema=False,
    )
