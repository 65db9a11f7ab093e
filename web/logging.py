"""Structured logs: JSON lines when not on a terminal, readable lines when on one.

Every HTTP request gets a request id (the caller's ``X-Request-Id`` when it is a sane token,
else a fresh one), echoed in the ``X-Request-Id`` answer header and bound into structlog's
context for everything logged while the request is handled, threads included. One access line
per request says method, path, status and duration; bodies, query strings and event payloads
never reach the log.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid

import structlog
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["REQUEST_ID_HEADER", "RequestLogMiddleware", "configure_logging"]

REQUEST_ID_HEADER = "x-request-id"
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_QUIET_PATHS = ("/health", "/ready", "/metrics")  # probes and scrapes: logged at debug only
_INTERNAL_PREFIX = "/internal/"  # node-to-node traffic: constant on a cluster, debug only too


def configure_logging(fmt: str = "auto", level: int = logging.INFO) -> None:
    as_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def _request_id(scope: Scope) -> str:
    for key, value in scope["headers"]:
        if key.lower() == REQUEST_ID_HEADER.encode():
            candidate = value.decode("latin-1").strip()
            if _SANE_ID.fullmatch(candidate):
                return candidate
            break
    return uuid.uuid4().hex[:16]


class RequestLogMiddleware(ASGIMiddleware):
    """Binds a request id around each routed request and logs one access line for it."""

    scopes = (ScopeType.HTTP,)

    def __init__(self) -> None:
        self.log = structlog.get_logger("tributary.http")

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        rid = _request_id(scope)
        status = 500
        header = (REQUEST_ID_HEADER.encode(), rid.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        t0 = time.perf_counter()
        with structlog.contextvars.bound_contextvars(request_id=rid):
            try:
                await next_app(scope, receive, send_with_id)
            finally:
                path: str = scope["path"]
                quiet = path in _QUIET_PATHS or path.startswith(_INTERNAL_PREFIX)
                emit = self.log.debug if quiet and status < 400 else self.log.info
                client = scope.get("client")
                emit(
                    "request",
                    method=scope.get("method"),
                    path=path,
                    status=status,
                    duration_ms=round((time.perf_counter() - t0) * 1000, 3),
                    client=client[0] if client else None,
                )
