"""``POST /internal/query`` answered in front of the framework: the one node-to-node route on
every cluster read's path.

A coordinator asks a peer for its share of nearly every count, sum and top-k, so the peer's
time to answer is added to the read. Through Litestar's routing, middleware, body parsing and
a worker thread a peer answered a one-hour count in 1.17-1.36 ms p50 on the bench machine;
here, in 0.63-0.68 ms (``GET /health``: 0.37-0.40 ms; measured side by side, issue 8).

What the framework did for this route is done here too, with the same answers: the cluster
secret (compared in constant time; 401 when wrong, 403 when this node has none and is not
``--insecure``), 405 for another method, a body cap (413), the statuses and problem bodies of
``web/problem.py`` (a malformed request is a 400 ``bad-internal-request``), the request
metrics under the route ``/internal/query``, and an access line for failures (successful
internal requests are logged at debug only, as ``web/logging.py`` does).

A count, sum or top-k that the live buffer and the parts' indexes answer (a fraction of a
millisecond to a few) is answered on the event loop; anything else (distinct, quantiles, or an
answer that needs DuckDB) goes to the internal routes' thread pool, as before.
"""

from __future__ import annotations

import time
from http import HTTPStatus
from typing import cast

import anyio
import msgspec
import structlog
from litestar import Litestar
from litestar.enums import ScopeType
from litestar.types import HTTPResponseBodyEvent, HTTPResponseStartEvent, Receive, Scope, Send

from cluster.node import Node
from cluster.peers import SECRET_HEADER
from storage.errors import TributaryError
from web.internal import BAD_BODY_ERRORS, BAD_REQUEST, secret_refused
from web.metrics import Metrics
from web.problem import problem_of, send_problem

__all__ = ["MAX_BODY_BYTES", "PATH", "PeerReads"]

PATH = "/internal/query"
MAX_BODY_BYTES = 1 << 20  # a request names at most every shard: ~400 KB at 65,536 shards
_SECRET_HEADER = SECRET_HEADER.lower().encode("latin-1")
_JSON = [(b"content-type", b"application/json")]
# The internal routes' malformed-body errors, and a body that is not JSON or not an object.
_BAD_BODY: tuple[type[Exception], ...] = (msgspec.DecodeError, TypeError, *BAD_BODY_ERRORS)


class _Refused(Exception):
    def __init__(self, status: int, slug: str, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.slug, self.title, self.detail = status, slug, title, detail


class PeerReads:
    """An ASGI app: ``POST /internal/query`` is answered here; every other request (and the
    lifespan) goes to ``app``, the node's Litestar app, unchanged."""

    def __init__(
        self,
        app: Litestar,
        node: Node,
        secret: str,
        insecure: bool,
        limiter: anyio.CapacityLimiter,
        metrics: Metrics,
    ) -> None:
        self.app = app
        self.node = node
        self.expected = secret.encode()
        self.insecure = insecure
        self.limiter = limiter
        self.metrics = metrics
        self.log = structlog.get_logger("tributary.http")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or scope["path"] != PATH:
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        method = str(scope.get("method", "GET"))
        status = 500
        self.metrics.in_flight.inc()
        try:
            status = await self._answer(scope, receive, send, method)
        finally:
            elapsed = time.perf_counter() - t0
            self.metrics.in_flight.dec()
            self.metrics.observe_request(PATH, method, status, elapsed)
            if status >= 400:
                client = scope.get("client")
                self.log.info(
                    "request", method=method, path=PATH, status=status,
                    duration_ms=round(elapsed * 1000, 3), client=client[0] if client else None,
                )  # fmt: skip

    async def _answer(self, scope: Scope, receive: Receive, send: Send, method: str) -> int:
        try:
            self._authorize(scope, method)
            request = msgspec.json.decode(await self._body(receive))
            if not isinstance(request, dict):
                raise TypeError("not a JSON object")
            answer = self.node.answer_peer_from_indexes(request)
            if answer is None:
                answer = await anyio.to_thread.run_sync(self.node.answer_peer, request, limiter=self.limiter)
        except _Refused as e:
            await send_problem(send, e.status, e.slug, e.title, e.detail)
            return e.status
        except _BAD_BODY as e:  # before TributaryError: a StorageError is one
            await send_problem(send, *BAD_REQUEST, str(e))
            return BAD_REQUEST[0]
        except TributaryError as e:
            status, slug, title, detail, headers, extra = problem_of(e)
            if status == 500:
                self.log.error("server-side error", method=method, path=PATH, exc_info=e)
            await send_problem(send, status, slug, title, detail, headers, **extra)
            return status
        except Exception as e:  # a bug: logged with its traceback, answered without it
            self.log.error("unhandled error", method=method, path=PATH, exc_info=e)
            await send_problem(
                send, 500, "internal-error", "Internal error", "unexpected error; the node logged it"
            )  # fmt: skip
            return 500
        payload = msgspec.json.encode(answer)
        start: HTTPResponseStartEvent = {
            "type": "http.response.start",
            "status": 200,
            "headers": [*_JSON, (b"content-length", str(len(payload)).encode())],
        }
        body: HTTPResponseBodyEvent = {"type": "http.response.body", "body": payload, "more_body": False}
        await send(start)
        await send(body)
        return 200

    def _authorize(self, scope: Scope, method: str) -> None:
        """The internal router's guard, then the method (as Litestar: auth before routing)."""
        got = next((v for k, v in scope["headers"] if k == _SECRET_HEADER), b"")
        refused = secret_refused(self.expected, self.insecure, got)
        if refused is not None:
            status, detail = refused
            raise _Refused(status, "forbidden" if status == 403 else "unauthorized", HTTPStatus(status).phrase, detail)
        if method != "POST":
            raise _Refused(405, "method-not-allowed", "Method not allowed", f"{method} is not allowed on {PATH}")

    @staticmethod
    async def _body(receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Refused(*BAD_REQUEST, "client disconnected")
            chunk = cast(bytes, message.get("body", b""))
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                detail = f"an internal query is at most {MAX_BODY_BYTES} bytes"
                raise _Refused(413, "payload-too-large", "Payload too large", detail)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
