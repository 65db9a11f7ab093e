"""Structured logs: a request id per request (echoed, bound into every line logged while the
request is handled, threads included), one access line, and never a payload."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from litestar import Litestar, Request, get, post
from litestar.types import ReceiveMessage
from structlog.testing import LogCapture

from web.logging import RequestLogMiddleware, configure_logging

MARKER = "SECRET-PAYLOAD-7f3a"


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    cap = LogCapture()
    structlog.configure(processors=[structlog.contextvars.merge_contextvars, cap])
    yield cap
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


@post("/v1/events", status_code=200)
async def _ingest(request: Request[Any, Any, Any]) -> dict[str, Any]:
    await request.body()
    return {"accepted": 1}


@get("/v1/count", sync_to_thread=True)
def _count(category: str) -> dict[str, Any]:
    structlog.get_logger("test").info("inside the handler, in a worker thread")
    return {"value": 0}


@get("/health")
async def _health() -> dict[str, Any]:
    return {"status": "ok"}


@get("/internal/status")
async def _internal_status() -> dict[str, Any]:
    return {"serving": True}


APP = Litestar([_ingest, _count, _health, _internal_status], middleware=[RequestLogMiddleware()])


def _call(
    method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b"", query: bytes = b""
) -> dict[str, str]:
    sent: list[Any] = []

    async def receive() -> ReceiveMessage:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "root_path": "", "query_string": query, "headers": headers,
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8321), "state": {},
    }  # fmt: skip
    asyncio.run(APP(scope, receive, send))  # type: ignore[arg-type]
    start = next(m for m in sent if m["type"] == "http.response.start")
    return {k.decode(): v.decode() for k, v in start["headers"]} | {":status": str(start["status"])}


def test_every_request_gets_an_id_in_the_answer_and_the_access_line(logs: LogCapture) -> None:
    a = _call("GET", "/health", [])
    b = _call("GET", "/health", [])
    assert len(a["x-request-id"]) == 16 and a["x-request-id"] != b["x-request-id"]
    access = [e for e in logs.entries if e["event"] == "request"]
    assert [e["request_id"] for e in access] == [a["x-request-id"], b["x-request-id"]]
    assert access[0]["status"] == 200 and access[0]["path"] == "/health" and access[0]["method"] == "GET"
    assert access[0]["log_level"] == "debug", "probes are logged at debug"


@pytest.mark.parametrize(
    ("given", "kept"),
    [("abc-123.def_4:5", True), ("x" * 64, True), ("x" * 65, False), ("bad id", False), ('a"b', False), ("", False)],
)
def test_a_sane_caller_request_id_is_kept_anything_else_replaced(logs: LogCapture, given: str, kept: bool) -> None:
    rid = _call("GET", "/health", [(b"x-request-id", given.encode())])["x-request-id"]
    assert (rid == given) is kept
    assert rid and len(rid) <= 64


def test_lines_logged_in_a_worker_thread_carry_the_request_id(logs: LogCapture) -> None:
    rid = _call("GET", "/v1/count", [(b"x-request-id", b"req-42")], query=b"category=c")["x-request-id"]
    inner = [e for e in logs.entries if e["event"].startswith("inside the handler")]
    assert rid == "req-42" and inner and inner[0]["request_id"] == "req-42"
    assert structlog.contextvars.get_contextvars() == {}, "the id is unbound after the request"


def test_no_payload_query_string_or_body_reaches_the_log(logs: LogCapture) -> None:
    body = json.dumps([{"category": MARKER, "producer_id": MARKER}]).encode()
    _call("POST", "/v1/events", [(b"content-type", b"application/json")], body)
    _call("GET", "/v1/count", [], query=f"category={MARKER}".encode())
    assert len(logs.entries) >= 2
    assert MARKER not in repr(logs.entries)


def test_json_format_writes_one_json_object_a_line(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        configure_logging("json")
        structlog.get_logger("t").info("hello", n=1)
        line = capsys.readouterr().err.strip().splitlines()[-1]
        doc = json.loads(line)
        assert doc["event"] == "hello" and doc["n"] == 1 and doc["level"] == "info" and "timestamp" in doc
    finally:
        structlog.reset_defaults()


def test_node_to_node_requests_are_logged_at_debug_not_client_requests(logs: LogCapture) -> None:
    """``/internal/`` traffic is constant on a cluster: it must not drown the client requests."""
    _call("GET", "/internal/status", [])
    _call("GET", "/v1/count", [], query=b"category=c")
    levels = {(e["path"], e["status"]): e["log_level"] for e in logs.entries if e["event"] == "request"}
    assert levels == {("/internal/status", 200): "debug", ("/v1/count", 200): "info"}
