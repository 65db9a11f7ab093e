"""A fault-injecting HTTP/1.1 proxy for tests: lost requests, lost responses, delays, cut responses.

Faults are decided **per request**, not per connection: the proxy reads HTTP/1.1 framing
(Content-Length or chunked, both ways), so a keep-alive connection gets a fresh draw for every
request and clients need not open a connection per request. The kinds:

- ``reset_before``: the request is read, never forwarded, and the client connection is reset
  (RST) — the lost request.
- ``reset_after_forward``: the request reaches the server and its whole response is read, then
  the client connection is reset before any byte of it is relayed — the lost response after
  commit, which creates duplicates in clients without idempotency.
- ``truncate_response``: a random prefix (at least one byte, never all) of the response is
  relayed, then the connection is closed.
- ``delay``: the request is held ``delay_s`` seconds before it is forwarded (drawn
  independently, so it combines with the others).

The three destructive kinds exclude one another (their probabilities must sum to at most 1).
Decisions come from ``random.Random(seed)`` drawn in a fixed order per request, so a sequential
client sees the same faults on every run; ``decisions`` records them in order.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import threading
from typing import Any

__all__ = ["FAULTS", "FaultProxy"]

FAULTS = ("reset_before", "reset_after_forward", "truncate_response", "delay")
_EXCLUSIVE = FAULTS[:3]


class FaultProxy:
    """Run with ``port = proxy.start()`` (or ``with FaultProxy(...) as proxy``); ``stop()`` ends
    it and every connection it holds."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        seed: int = 0,
        reset_before: float = 0.0,
        reset_after_forward: float = 0.0,
        delay: float = 0.0,
        truncate_response: float = 0.0,
        *,
        delay_s: float = 0.05,
        host: str = "127.0.0.1",
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = host
        self.delay_s = delay_s
        self.port: int | None = None
        self._rng = random.Random(seed)
        self._p: dict[str, float] = {}
        self.set_faults(
            reset_before=reset_before,
            reset_after_forward=reset_after_forward,
            delay=delay,
            truncate_response=truncate_response,
        )
        self.counts: dict[str, int] = {"connections": 0, "requests": 0, **dict.fromkeys(FAULTS, 0)}
        self.decisions: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    def set_faults(self, **probabilities: float) -> None:
        """Change fault probabilities (takes effect from the next request)."""
        p = {**dict.fromkeys(FAULTS, 0.0), **self._p, **probabilities}
        if set(p) - set(FAULTS) or sum(p[k] for k in _EXCLUSIVE) > 1.0 or min(p.values()) < 0:
            raise ValueError(f"bad fault probabilities {probabilities}")
        self._p = p

    @property
    def url(self) -> str:
        assert self.port is not None, "start() first"
        return f"http://{self.host}:{self.port}"

    def start(self) -> int:
        """Listen on an ephemeral port in a background thread; returns the port."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(self._serve(ready))
            except BaseException as e:
                failure.append(e)
                ready.set()

        self._thread = threading.Thread(target=run, name="faultproxy", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        assert self.port is not None
        return self.port

    def stop(self) -> None:
        """Close the listener and every connection; returns when the thread is gone."""
        if self._loop is not None and self._stopped is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(10)
        self._thread = None

    async def _serve(self, ready: threading.Event) -> None:
        server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = server.sockets[0].getsockname()[1]
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        ready.set()
        try:
            await self._stopped.wait()
        finally:
            server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await server.wait_closed()

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def faults(self) -> int:
        """Destructive faults injected so far (delays not counted)."""
        return sum(self.counts[k] for k in _EXCLUSIVE)

    def _decide(self) -> tuple[str, bool, float]:
        # Always three draws, in this order, so the sequence depends on the seed alone.
        r, d, cut = self._rng.random(), self._rng.random(), self._rng.random()
        fault, edge = "ok", 0.0
        for kind in _EXCLUSIVE:
            edge += self._p[kind]
            if r < edge:
                fault = kind
                break
        delayed = d < self._p["delay"]
        self.counts["requests"] += 1
        if fault != "ok":
            self.counts[fault] += 1
        if delayed:
            self.counts["delay"] += 1
        self.decisions.append(fault + ("+delay" if delayed else ""))
        return fault, delayed, cut

    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        self.counts["connections"] += 1
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                head = await _read_head(creader)
                if head is None:
                    return
                request = head + await _read_body(creader, head)
                fault, delayed, cut = self._decide()
                if delayed:
                    await asyncio.sleep(self.delay_s)
                if fault == "reset_before":
                    _reset(cwriter)
                    return
                if upstream is None:
                    upstream = await asyncio.open_connection(self.target_host, self.target_port)
                ureader, uwriter = upstream
                uwriter.write(request)
                await uwriter.drain()
                rhead = await _read_head(ureader)
                if rhead is None:
                    return
                method = head.split(b" ", 1)[0]
                response = rhead + await _read_body(ureader, rhead, method=method)
                if fault == "reset_after_forward":
                    _reset(cwriter)
                    return
                if fault == "truncate_response":
                    cwriter.write(response[: min(len(response) - 1, max(1, int(len(response) * cut)))])
                    await cwriter.drain()
                    return
                cwriter.write(response)
                await cwriter.drain()
                if _wants_close(head) or _wants_close(rhead) or _framing(rhead, method) == "eof":
                    return
        except (ConnectionError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            return
        finally:
            for w in (cwriter, upstream[1] if upstream else None):
                if w is not None and not w.is_closing():
                    w.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST rather than FIN: SO_LINGER with a zero timeout."""
    sock: Any = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _read_head(reader: asyncio.StreamReader) -> bytes | None:
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None  # the peer closed between messages (or mid-head: same thing for a proxy)


def _header(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        k, sep, v = line.partition(b":")
        if sep and k.strip().lower() == name:
            return v.strip()
    return None


def _wants_close(head: bytes) -> bool:
    return (_header(head, b"connection") or b"").lower() == b"close"


def _framing(head: bytes, method: bytes | None = None) -> str:
    """How the body after ``head`` ends: none, length, chunked or eof (responses only)."""
    if method is not None:
        status = int(head.split(b" ", 2)[1])
        if method == b"HEAD" or status in (204, 304) or 100 <= status < 200:
            return "none"
    if (_header(head, b"transfer-encoding") or b"").lower().endswith(b"chunked"):
        return "chunked"
    if _header(head, b"content-length") is not None:
        return "length"
    return "none" if method is None else "eof"


async def _read_body(reader: asyncio.StreamReader, head: bytes, method: bytes | None = None) -> bytes:
    """The raw bytes of the message body (chunk framing kept), for relaying unchanged.
    ``method`` is given for a response (the request's method), None for a request."""
    framing = _framing(head, method)
    if framing == "length":
        return await reader.readexactly(int(_header(head, b"content-length") or b"0"))
    if framing == "eof":
        return await reader.read()
    if framing == "none":
        return b""
    parts = []
    while True:
        line = await reader.readuntil(b"\r\n")
        parts.append(line)
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while True:  # trailers, up to the empty line
                trailer = await reader.readuntil(b"\r\n")
                parts.append(trailer)
                if trailer == b"\r\n":
                    return b"".join(parts)
        parts.append(await reader.readexactly(size + 2))
