"""Request limits: concurrent requests beyond the cap get 503, slow bodies get 408, probes pass."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from litestar import Litestar, Request, get, post
from litestar.types import ReceiveMessage

from web.limits import LimitsMiddleware
from web.problem import PROBLEM_JSON, problem_handlers

_gate: dict[str, asyncio.Event] = {}


@get("/v1/count")
async def _slow_query() -> dict[str, Any]:
    await _gate["open"].wait()
    return {"value": 1}


@get("/health")
async def _health() -> dict[str, Any]:
    return {"status": "ok"}


@post("/v1/events", status_code=200)
async def _ingest(request: Request[Any, Any, Any]) -> dict[str, Any]:
    body = await request.body()
    return {"accepted": len(body)}


def _app(max_concurrent: int = 2, body_timeout_s: float = 5.0) -> Litestar:
    return Litestar(
        [_slow_query, _health, _ingest],
        middleware=[LimitsMiddleware(max_concurrent, body_timeout_s)],
        exception_handlers=problem_handlers(),
    )


def test_requests_beyond_the_cap_get_503_while_probes_still_answer() -> None:
    async def scenario() -> None:
        _gate["open"] = asyncio.Event()
        limits = LimitsMiddleware(2, 5.0)
        app = Litestar([_slow_query, _health], middleware=[limits], exception_handlers=problem_handlers())
        held = [asyncio.create_task(_call(app, _no_body, "GET", "/v1/count")) for _ in range(2)]
        for _ in range(1000):  # let both reach the handler
            if limits.in_flight == 2:
                break
            await asyncio.sleep(0.001)
        assert limits.in_flight == 2
        status, headers, body = await _call(app, _no_body, "GET", "/v1/count")
        assert status == 503
        assert headers["content-type"].startswith(PROBLEM_JSON)
        assert headers["retry-after"] == "1"
        assert json.loads(body)["type"] == "/problems/overloaded"
        assert (await _call(app, _no_body, "GET", "/health"))[0] == 200, "probes are never refused"
        _gate["open"].set()
        assert [r[0] for r in await asyncio.gather(*held)] == [200, 200]
        assert (await _call(app, _no_body, "GET", "/v1/count"))[0] == 200, "slots are given back"
        assert limits.in_flight == 0 and limits.refused == 1

    asyncio.run(scenario())


async def _no_body() -> ReceiveMessage:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _call(
    app: Litestar, receive: Any, method: str = "POST", path: str = "/v1/events"
) -> tuple[int, dict[str, str], bytes]:
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1234), "server": ("127.0.0.1", 8321), "state": {},
    }  # fmt: skip
    await app(scope, receive, send)  # type: ignore[arg-type]
    start = next(m for m in sent if m["type"] == "http.response.start")
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], headers, body


def test_a_body_that_never_comes_gets_408() -> None:
    async def never() -> ReceiveMessage:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    status, headers, body = asyncio.run(_call(_app(body_timeout_s=0.05), never))
    assert status == 408
    assert headers["content-type"].startswith(PROBLEM_JSON)
    assert b"request-timeout" in body and b"not received within" in body


def test_a_trickling_body_gets_408_the_deadline_is_for_the_whole_body() -> None:
    async def trickle() -> ReceiveMessage:
        await asyncio.sleep(0.01)  # each chunk is quick, but they never end
        return {"type": "http.request", "body": b"x", "more_body": True}

    status, _, _ = asyncio.run(_call(_app(body_timeout_s=0.1), trickle))
    assert status == 408


def test_a_prompt_body_passes_and_the_wait_after_it_is_not_timed() -> None:
    messages: list[ReceiveMessage] = [
        {"type": "http.request", "body": b"[1,", "more_body": True},
        {"type": "http.request", "body": b"2]", "more_body": False},
    ]

    async def scenario() -> None:
        async def receive() -> ReceiveMessage:
            if messages:
                return messages.pop(0)
            await asyncio.sleep(0.2)  # past the deadline: waiting for a disconnect is untimed
            return {"type": "http.disconnect"}

        limits = LimitsMiddleware(4, 0.05)
        timed = limits._timed_receive(receive)
        got = [await timed(), await timed()]
        assert [m["type"] for m in got] == ["http.request", "http.request"]
        assert (await timed())["type"] == "http.disconnect"

    asyncio.run(scenario())

    async def once() -> ReceiveMessage:
        return {"type": "http.request", "body": b"12345", "more_body": False}

    status, _, body = asyncio.run(_call(_app(body_timeout_s=5), once))
    assert status == 200 and body == b'{"accepted":5}'


def test_zero_turns_the_limits_off() -> None:
    async def scenario() -> None:
        _gate["open"] = asyncio.Event()
        limits = LimitsMiddleware(0, 0)
        app = Litestar([_slow_query], middleware=[limits], exception_handlers=problem_handlers())
        held = [asyncio.create_task(_call(app, _no_body, "GET", "/v1/count")) for _ in range(5)]
        for _ in range(1000):
            if limits.in_flight == 5:
                break
            await asyncio.sleep(0.001)
        assert limits.in_flight == 5
        _gate["open"].set()
        assert {r[0] for r in await asyncio.gather(*held)} == {200}

    asyncio.run(scenario())
