"""The peer client's scatter-gather call over kept connections: answers, error statuses, a peer
that closed a kept connection, a refused connection and a hung peer all end as an answer or a
``PeerError``, never as another exception."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from cluster.errors import PeerError
from cluster.peers import SECRET_HEADER, PeerClient, PeerConfig
from tests.support.process import free_port


class Peer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.mode = "ok"
        self.requests: list[dict[str, Any]] = []
        self.connections = 0
        self.release = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as uvicorn answers
    server: Peer

    def setup(self) -> None:
        super().setup()
        self.server.connections += 1

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        body["secret"] = self.headers.get(SECRET_HEADER)
        self.server.requests.append(body)
        mode = self.server.mode
        if mode == "hang":
            self.server.release.wait(10)
        status, out = {
            "ok": (200, json.dumps({"count": 2**70, "sum": -3}).encode()),
            "hang": (200, b"{}"),
            "stale": (409, json.dumps({"status": 409, "detail": "epoch 1 < 2"}).encode()),
            "garbage": (200, b"not json"),
            "text-error": (500, b"Internal Server Error"),
        }[mode]
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        if mode == "ok" and self.server.connections == 1 and len(self.server.requests) == 1:
            self.send_header("Connection", "close")  # the first connection is closed after one answer
        self.end_headers()
        self.wfile.write(out)


@pytest.fixture()
def peer() -> Iterator[Peer]:
    server = Peer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


def client(urls: dict[str, str], **kw: Any) -> PeerClient:
    return PeerClient(PeerConfig(secret="s3", timeout_s=2.0, **kw), lambda n: urls[n])


def test_answers_come_back_over_kept_connections(peer: Peer) -> None:
    c = client({"a": peer.url})
    for i in range(5):
        assert c.query("a", {"kind": "aggregate", "i": i}) == {"count": 2**70, "sum": -3}
    assert [r["i"] for r in peer.requests] == list(range(5))
    assert all(r["secret"] == "s3" for r in peer.requests)
    assert peer.connections == 2, "one connection closed by the peer, then one kept for the rest"
    c.close()


def test_a_kept_connection_the_peer_dropped_is_replaced(peer: Peer) -> None:
    c = client({"a": peer.url})
    peer.connections = 1  # no 'Connection: close' from here on
    peer.requests.append({})
    c.query("a", {})
    (conn,) = c._idle[("127.0.0.1", peer.server_address[1])]
    assert conn.sock is not None
    conn.sock.close()  # as if the peer had closed it while idle
    assert c.query("a", {"again": True})["count"] == 2**70
    c.close()


@pytest.mark.parametrize(
    ("mode", "status"), [("stale", 409), ("garbage", 200), ("text-error", 500)], ids=["problem", "not-json", "text"]
)
def test_error_answers_are_peer_errors_with_the_status(peer: Peer, mode: str, status: int) -> None:
    peer.mode = mode
    c = client({"a": peer.url})
    with pytest.raises(PeerError) as e:
        c.query("a", {})
    assert e.value.status == status and e.value.node_id == "a"
    if mode == "stale":
        assert isinstance(e.value.body, dict) and e.value.body["detail"] == "epoch 1 < 2"
    c.close()


def test_a_refused_connection_is_status_zero() -> None:
    c = client({"gone": f"http://127.0.0.1:{free_port()}"})
    with pytest.raises(PeerError) as e:
        c.query("gone", {})
    assert e.value.status == 0
    c.close()


def test_a_hung_peer_costs_at_most_the_timeout(peer: Peer) -> None:
    peer.mode = "hang"
    c = client({"a": peer.url})
    with pytest.raises(PeerError) as e:  # the peer would answer only after 10 s
        c.query("a", {}, timeout=0.3)
    assert e.value.status == 0
    c.close()


def test_a_started_query_is_sent_before_its_answer_is_read(peer: Peer) -> None:
    c = client({"a": peer.url})
    peer.connections = 1  # no 'Connection: close'
    peer.requests.append({})
    pending = c.start_query("a", {"early": True})
    deadline = time.monotonic() + 10
    while not any(r.get("early") for r in peer.requests) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert any(r.get("early") for r in peer.requests), "the peer got the query before result()"
    assert pending.result()["sum"] == -3
    c.close()
