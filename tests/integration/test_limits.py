"""Slow and greedy clients against a real node: a stalled body gets 408, requests beyond the
concurrency cap get 503 with Retry-After, and probes always get through."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from tests.support.process import NodeFactory, NodeProcess

pytestmark = pytest.mark.integration


def _stalled_upload(node: NodeProcess, sent: bytes = b'[{"timestamp": ') -> socket.socket:
    """A POST that announces 1000 body bytes and sends only a few."""
    s = socket.create_connection((node.host, node.port), timeout=30)
    head = (
        f"POST /v1/events HTTP/1.1\r\nHost: {node.host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: 1000\r\n\r\n"
    ).encode()
    s.sendall(head + sent)
    return s


def _read_answer(s: socket.socket) -> tuple[int, str]:
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) == 0:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode(errors="replace")


def test_a_stalled_body_gets_408(node_factory: NodeFactory) -> None:
    node = node_factory("slow", args=["--body-read-timeout-s", "1"])
    with _stalled_upload(node) as s:
        status, body = _read_answer(s)
    assert status == 408
    assert json.loads(body)["type"] == "/problems/request-timeout"
    assert httpx.get(node.url + "/health").status_code == 200


def test_beyond_the_concurrency_cap_503_then_slots_come_back(node_factory: NodeFactory) -> None:
    node = node_factory("busy", args=["--max-concurrent-requests", "2", "--body-read-timeout-s", "4"])
    params = {"category": "c", "start": "now-1h", "end": "now"}
    with httpx.Client(base_url=node.url, timeout=10) as http:
        stalled = [_stalled_upload(node), _stalled_upload(node)]
        try:
            deadline = time.monotonic() + 10
            while True:  # the uploads hold their slots as soon as the node has read their headers
                r = http.get("/v1/count", params=params)
                if r.status_code == 503:
                    break
                assert time.monotonic() < deadline, f"never refused: {r.status_code}"
                time.sleep(0.05)
            assert r.headers["retry-after"] == "1"
            assert r.headers["content-type"].startswith("application/problem+json")
            assert r.json()["type"] == "/problems/overloaded"
            for probe in ["/health", "/ready", "/metrics"]:
                assert http.get(probe).status_code == 200, probe
            assert [_read_answer(s)[0] for s in stalled] == [408, 408]
        finally:
            for s in stalled:
                s.close()
        deadline = time.monotonic() + 10
        while (r := http.get("/v1/count", params=params)).status_code != 200:
            assert time.monotonic() < deadline, r.text
            time.sleep(0.05)
        assert r.json()["value"] == 0
