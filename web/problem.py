"""RFC 9457 problem details: every error Tributary answers has this one shape.

``{"type", "title", "status", "detail"}`` plus ``row`` / ``field`` for refused batches,
``missing_shards`` for partial answers, ``epoch`` for a stale map and ``node_id`` for a peer's
failure. Status codes are chosen here, from each package's own
exception types, and nowhere else.
"""

from __future__ import annotations

from typing import Any

import msgspec
import structlog
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.types import ExceptionHandlersMap, Send

from cluster.errors import MembershipError, NotEnoughReplicas, NotServing, PartialResult, PeerError, StaleEpoch
from ingest.errors import (
    BatchRejected,
    IdempotencyConflict,
    MalformedBody,
    Overloaded,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from query.errors import InvalidQuery, QueryCancelled, QueryTimeout, SqlNotAllowed, SqlNotSplittable
from storage.errors import TributaryError

__all__ = ["PROBLEM_JSON", "problem", "problem_handlers", "problem_of", "send_problem"]

PROBLEM_JSON = "application/problem+json"
_log = structlog.get_logger("tributary.http")

# (status, slug, title) for each exception type; the first match in MRO order wins.
_STATUS: dict[type[Exception], tuple[int, str, str]] = {
    MalformedBody: (400, "malformed-body", "The request body cannot be parsed"),
    UnsupportedMediaType: (415, "unsupported-media-type", "Unsupported content type or encoding"),
    PayloadTooLarge: (413, "payload-too-large", "The batch is over a size limit"),
    IdempotencyConflict: (422, "idempotency-key-reused", "Idempotency-Key reused with a different body"),
    BatchRejected: (422, "invalid-event", "The batch contains an invalid event"),
    Overloaded: (503, "overloaded", "The node is overloaded"),
    NotEnoughReplicas: (503, "not-enough-replicas", "Not enough replicas are reachable"),
    PartialResult: (503, "partial-result", "Some shards have no live replica"),
    NotServing: (503, "not-serving", "This node is catching up"),
    StaleEpoch: (409, "stale-epoch", "Routed by an older cluster map"),
    MembershipError: (409, "membership-conflict", "The membership change is not possible"),
    PeerError: (502, "peer-error", "A peer node did not answer"),
    SqlNotSplittable: (422, "sql-not-splittable", "The SQL cannot run cluster-wide"),
    SqlNotAllowed: (403, "sql-not-allowed", "The SQL is not allowed in the read-only sandbox"),
    QueryTimeout: (408, "query-timeout", "The query ran past its time limit"),
    QueryCancelled: (409, "query-cancelled", "The query was cancelled"),
    InvalidQuery: (400, "invalid-query", "The query is invalid"),
}


def _body(status: int, slug: str, title: str, detail: str, extra: dict[str, Any]) -> dict[str, Any]:
    body = {"type": f"/problems/{slug}", "title": title, "status": status, "detail": detail}
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


def problem(
    status: int, slug: str, title: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> Response[dict[str, Any]]:
    body = _body(status, slug, title, detail, extra)
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


async def send_problem(
    send: Send, status: int, slug: str, title: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> None:
    """Answer a problem directly on the ASGI channel: for middleware that refuses a request
    before any handler runs (auth, limits), with the same body shape as ``problem``."""
    payload = msgspec.json.encode(_body(status, slug, title, detail, extra))
    raw = [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload, "more_body": False})


def problem_of(exc: TributaryError) -> tuple[int, str, str, str, dict[str, str] | None, dict[str, Any]]:
    """(status, slug, title, detail, headers, extra fields) of the problem that answers ``exc``;
    status 500 for a type no table row names (a bug: the caller logs it)."""
    for cls in type(exc).__mro__:
        if cls in _STATUS:
            status, slug, title = _STATUS[cls]
            break
    else:
        status, slug, title = 500, "internal-error", "Internal error"
    extra: dict[str, Any] = {}
    headers = None
    if isinstance(exc, BatchRejected):
        extra.update(row=exc.row, field=exc.field)
    if isinstance(exc, Overloaded | NotEnoughReplicas):
        headers = {"Retry-After": str(max(1, round(exc.retry_after)))}
    if isinstance(exc, NotServing):
        headers = {"Retry-After": "1"}  # catching up takes seconds; another replica may answer now
    if isinstance(exc, StaleEpoch):
        extra["epoch"] = exc.epoch  # the caller's writer re-routes by it (cluster/writer.py)
    if isinstance(exc, PeerError):
        extra["node_id"] = exc.node_id
    if isinstance(exc, PartialResult):
        extra["missing_shards"] = exc.missing_shards
    detail = getattr(exc, "detail", None) or str(exc)
    return status, slug, title, detail, headers, extra


def _tributary_error(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    assert isinstance(exc, TributaryError)
    status, slug, title, detail, headers, extra = problem_of(exc)
    if status == 500:
        _log.error("server-side error", method=request.method, path=request.url.path, exc_info=exc)
    return problem(status, slug, title, detail, headers, **extra)


def _http_error(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    detail = exc.detail
    if isinstance(exc, ValidationException) and exc.extra:
        parts = [f"{e.get('key', '?')}: {e.get('message', '')}" for e in exc.extra if isinstance(e, dict)]
        detail = "; ".join(parts) or detail
    slug = {
        404: "not-found",
        405: "method-not-allowed",
        408: "request-timeout",
        413: "payload-too-large",
        401: "unauthorized",
        403: "forbidden",
        429: "too-many-requests",
    }.get(status, "bad-request" if status < 500 else "error")
    headers = dict(exc.headers or {})
    return problem(status, slug, slug.replace("-", " ").capitalize(), str(detail), headers or None)


def _unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """Anything not raised on purpose is a bug: log it with its traceback (the request id is in
    the log context) and answer a 500 problem that reveals nothing of it."""
    _log.error("unhandled error", method=request.method, path=request.url.path, exc_info=exc)
    return problem(
        500, "internal-error", "Internal error", "unexpected error; the node logged it under this request's id"
    )


def problem_handlers() -> ExceptionHandlersMap:
    return {
        TributaryError: _tributary_error,
        HTTPException: _http_error,
        NotFoundException: _http_error,
        Exception: _unexpected_error,
    }


_ = MediaType
