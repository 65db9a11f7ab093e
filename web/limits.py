"""Request limits that protect one node from too many or too slow clients.

Every limit Tributary enforces, and where (all configurable, see ``docs/operations.md``):

- body bytes: ``--max-body-bytes``, checked by Litestar before the handler reads the body (413),
  and again by the decoder, which also caps the decompressed size (a gzip/zstd bomb is stopped
  as soon as its output passes the limit);
- rows per batch: ``--max-rows``, by the decoder (413);
- concurrent requests: ``--max-concurrent-requests`` here (503 with ``Retry-After``) and
  ``--max-concurrent-ingest`` in the ingest route; health, readiness, metrics and node-to-node
  routes are never refused, so a saturated node can still be watched and can still replicate;
- query time: ``--query-timeout-s`` (count/sum/top-k, interrupted in DuckDB, 408) and
  ``--sql-timeout-s`` (SQL);
- result rows: ``--sql-max-rows`` (JSON SQL answers are truncated and say so) and
  ``--topk-max-k`` (a larger k is refused with 400);
- slow clients: ``--body-read-timeout-s`` bounds the time to receive a whole request body (408)
  here, and ``--keep-alive-s`` closes idle keep-alive connections (uvicorn).
"""

from __future__ import annotations

import time

import anyio
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, ReceiveMessage, Scope, Send

from web.problem import send_problem

__all__ = ["EXEMPT_PATHS", "LimitsMiddleware", "RequestTimeout"]

EXEMPT_PATHS = ("/health", "/ready", "/metrics")
EXEMPT_PREFIXES = ("/internal/",)


class RequestTimeout(HTTPException):
    """The client did not send its whole request body in time; the request was abandoned."""

    status_code = 408


class LimitsMiddleware(ASGIMiddleware):
    """Refuses requests beyond ``max_concurrent`` in flight, and bounds the time to read a body.

    The count is kept on the event loop (one thread), so it needs no lock.
    """

    scopes = (ScopeType.HTTP,)

    def __init__(self, max_concurrent: int, body_timeout_s: float) -> None:
        self.max_concurrent = max_concurrent
        self.body_timeout_s = body_timeout_s
        self.in_flight = 0
        self.refused = 0

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        path: str = scope["path"]
        if path in EXEMPT_PATHS or path.startswith(EXEMPT_PREFIXES):
            await next_app(scope, receive, send)
            return
        if self.max_concurrent > 0 and self.in_flight >= self.max_concurrent:
            self.refused += 1
            await send_problem(
                send, 503, "overloaded", "The node is overloaded",
                f"more than {self.max_concurrent} requests in flight; retry shortly",
                {"Retry-After": "1"},
            )  # fmt: skip
            return
        self.in_flight += 1
        try:
            await next_app(scope, self._timed_receive(receive), send)
        finally:
            self.in_flight -= 1

    def _timed_receive(self, receive: Receive) -> Receive:
        """``receive`` with one deadline for the whole body. Once the body is complete (or the
        client is gone) it passes through untimed: a streamed response waits on ``receive``
        for the disconnect for as long as it streams."""
        if self.body_timeout_s <= 0:
            return receive
        deadline = time.monotonic() + self.body_timeout_s
        done = False

        async def timed() -> ReceiveMessage:
            nonlocal done
            if done:
                return await receive()
            remaining = deadline - time.monotonic()
            try:
                with anyio.fail_after(max(remaining, 0.0)):
                    message = await receive()
            except TimeoutError:
                done = True
                raise RequestTimeout(
                    detail=f"the request body was not received within {self.body_timeout_s:g} s"
                ) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                done = True
            return message

        return timed
