"""The fault-injecting proxy against a tiny local HTTP echo server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.support.faultproxy import FaultProxy


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so several requests share a proxied connection
    disable_nagle_algorithm = True  # headers and body are written apart: no 40 ms delayed-ACK stall
    received: list[bytes]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append(body)  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        # Chunked, to show the proxy relays both framings.
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for part in (b"hello ", b"chunked ", b"world"):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def echo() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    server.received = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(10)


def proxy_for(echo: ThreadingHTTPServer, **faults: float) -> FaultProxy:
    return FaultProxy("127.0.0.1", echo.server_address[1], **faults)


def test_without_faults_it_relays_everything_over_keep_alive(echo: ThreadingHTTPServer) -> None:
    with proxy_for(echo, seed=1) as proxy, httpx.Client(base_url=proxy.url) as http:
        for i in range(30):
            body = b"x" * i * 100
            assert http.post("/", content=body).content == body
        assert http.get("/").text == "hello chunked world"
    assert len(echo.received) == 30
    assert proxy.counts["requests"] == 31 and proxy.counts["connections"] == 1 and proxy.faults == 0


def test_reset_before_loses_the_request(echo: ThreadingHTTPServer) -> None:
    with proxy_for(echo, reset_before=1.0) as proxy, httpx.Client(base_url=proxy.url) as http:
        for _ in range(5):
            with pytest.raises(httpx.TransportError):
                http.post("/", content=b"lost")
    assert echo.received == []
    assert proxy.counts["reset_before"] == 5


def test_reset_after_forward_loses_the_response_not_the_request(echo: ThreadingHTTPServer) -> None:
    with proxy_for(echo, reset_after_forward=1.0) as proxy, httpx.Client(base_url=proxy.url) as http:
        for i in range(5):
            with pytest.raises(httpx.TransportError):
                http.post("/", content=b"committed %d" % i)
    assert echo.received == [b"committed %d" % i for i in range(5)]
    assert proxy.counts["reset_after_forward"] == 5


def test_truncate_response_cuts_it_short(echo: ThreadingHTTPServer) -> None:
    with proxy_for(echo, truncate_response=1.0) as proxy, httpx.Client(base_url=proxy.url) as http:
        for _ in range(10):
            with pytest.raises(httpx.TransportError):
                http.post("/", content=b"y" * 5000)
        with pytest.raises(httpx.TransportError):
            http.get("/")
    assert len(echo.received) == 10
    assert proxy.counts["truncate_response"] == 11


def test_delay_holds_requests_but_delivers_them(echo: ThreadingHTTPServer) -> None:
    with proxy_for(echo, delay=1.0, delay_s=0.01) as proxy, httpx.Client(base_url=proxy.url) as http:
        for i in range(5):
            assert http.post("/", content=b"%d" % i).content == b"%d" % i
    assert proxy.counts["delay"] == 5 and proxy.faults == 0


def run_mixed(echo: ThreadingHTTPServer, seed: int) -> tuple[list[str], list[bool]]:
    outcomes = []
    faults = {"reset_before": 0.2, "reset_after_forward": 0.2, "truncate_response": 0.2, "delay": 0.2}
    with proxy_for(echo, seed=seed, delay_s=0.001, **faults) as proxy, httpx.Client(base_url=proxy.url) as http:
        for i in range(60):
            try:
                ok = http.post("/", content=b"%d" % i).content == b"%d" % i
            except httpx.TransportError:
                ok = False
            outcomes.append(ok)
    return proxy.decisions, outcomes


def test_a_seed_reproduces_the_same_faults(echo: ThreadingHTTPServer) -> None:
    decisions, outcomes = run_mixed(echo, seed=7)
    again, outcomes_again = run_mixed(echo, seed=7)
    other, _ = run_mixed(echo, seed=8)
    assert decisions == again and outcomes == outcomes_again
    assert decisions != other
    assert outcomes == [d.split("+")[0] == "ok" for d in decisions]
    assert {d.split("+")[0] for d in decisions} == {"ok", "reset_before", "reset_after_forward", "truncate_response"}


def test_bad_probabilities_are_refused() -> None:
    with pytest.raises(ValueError):
        FaultProxy("127.0.0.1", 1, reset_before=0.6, truncate_response=0.6)
    with pytest.raises(ValueError):
        FaultProxy("127.0.0.1", 1, delay=-0.1)
