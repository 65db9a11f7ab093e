"""The producer client: batches events, sends them to Tributary nodes, and loses none of them.

    with Producer(["http://127.0.0.1:8321"], spool_dir="/var/spool/app") as p:
        p.send({"timestamp": time.time_ns(), "category": "clicks", "value": 1, "producer_id": "dev-7"})

Guarantees:

- Each batch gets an Idempotency-Key (uuid4 hex) when it is formed and keeps it, and its exact
  body, through every retry, failover and spool replay: a batch whose response was lost is
  answered ``duplicate: true`` on retry and is stored once.
- Connection errors, timeouts, 408, 425, 429 and 5xx are retried with exponential backoff and full
  jitter (``Retry-After`` honoured, capped); any other 4xx is final and goes to ``on_error``.
- Failures move on to the next URL: the given ones first, then the nodes learned from
  ``GET /v1/cluster``.
- Memory is bounded (``queue_max_events`` / ``queue_max_bytes``). When full, ``queue_full="block"``
  waits up to ``block_timeout_s`` then raises ``QueueFull``; ``"drop"`` drops the new events,
  counts them in ``stats.dropped`` and logs a warning (at most every 10 s).
- With ``spool_dir``, a batch not delivered within ``spool_after_s`` goes to disk (fsynced,
  checksummed, capped at ``spool_max_bytes``); while the nodes stay unreachable new batches go
  straight there, and a probe every ``probe_interval_s``..``backoff_cap_s`` brings the producer
  back online, oldest batch first. ``close()`` spools whatever it could not deliver in time; a
  new ``Producer`` on the same directory (a restarted process) replays it. The server remembers
  keys for 24 h by default, so replays later than that may store a batch twice.
- Without a spool a batch is given up after ``retry_max_elapsed_s`` (``on_error``, ``failed``).

Imports nothing of the server but ``storage.schema``.
"""

from __future__ import annotations

import atexit
import contextlib
import email.utils
import json
import logging
import numbers
import os
import random
import re
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import httpx
import pyarrow as pa
import pyarrow.compute as pc
import zstandard

from ingest.spool import Spool, SpoolEntry, SpoolLocked
from storage.schema import CATEGORY_MAX_BYTES, EVENT_SCHEMA, PRODUCER_MAX_BYTES

__all__ = [
    "ARROW_STREAM",
    "BatchInfo",
    "InvalidEvent",
    "Producer",
    "ProducerClosed",
    "ProducerConfig",
    "ProducerError",
    "ProducerStats",
    "QueueFull",
    "SpoolLocked",
    "backoff_delay",
    "is_retryable",
    "parse_retry_after",
]

log = logging.getLogger("tributary.client")

ARROW_STREAM = "application/vnd.apache.arrow.stream"
_JSON = "application/json"
_INT64 = (-(1 << 63), (1 << 63) - 1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RFC3339 = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|z|[+-]\d\d:\d\d)$")


class ProducerError(Exception):
    """Root of the producer client's errors."""


class QueueFull(ProducerError):
    """The in-memory queue stayed full for ``block_timeout_s``: the nodes are slower than the
    producer. Send less, raise ``queue_max_*``, or use ``queue_full="drop"`` or a spool."""


class ProducerClosed(ProducerError):
    """``send`` after ``close``; create a new Producer."""


class InvalidEvent(ProducerError, ValueError):
    """The event breaks the event contract (DESIGN.md, "The event"); nothing of it was queued.
    ``field`` names the offending field."""

    def __init__(self, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.field = field


@dataclass(frozen=True)
class ProducerConfig:
    """The client's knobs. Defaults follow influxdb-client (1000 events / 1 s batches)."""

    batch_events: int = 1000
    batch_bytes: int = 1 << 20
    linger_s: float = 1.0
    format: Literal["arrow", "json"] = "arrow"
    compress_min_bytes: int = 16 << 10  # zstd costs more than it saves on smaller bodies
    compress_level: int = 3
    queue_max_events: int = 100_000
    queue_max_bytes: int = 64 << 20
    queue_full: Literal["block", "drop"] = "block"
    block_timeout_s: float | None = 30.0
    connect_timeout_s: float = 3.0
    request_timeout_s: float = 10.0
    backoff_base_s: float = 0.1
    backoff_cap_s: float = 10.0
    retry_after_max_s: float = 60.0
    retry_max_elapsed_s: float = 120.0
    spool_after_s: float = 5.0
    spool_max_bytes: int = 1 << 30
    spool_fsync: bool = True
    probe_interval_s: float = 0.5
    discover: bool = True
    cluster_refresh_s: float = 30.0
    close_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.batch_events < 1 or self.batch_bytes < 1:
            raise ValueError("batch_events and batch_bytes must be positive")
        if self.queue_max_events < self.batch_events:
            raise ValueError("queue_max_events must hold at least one batch")
        if self.format not in ("arrow", "json") or self.queue_full not in ("block", "drop"):
            raise ValueError("format is arrow|json, queue_full is block|drop")


@dataclass(frozen=True)
class ProducerStats:
    """A snapshot of the counters. Event counts unless said otherwise.

    ``sent``: events accepted by send/send_many; ``acknowledged``: events a node confirmed (a
    duplicate answer included: they are stored once); ``retried``: requests that were retries;
    ``dropped``: events refused by the "drop" queue policy; ``spooled``: events written to the
    spool; ``replayed``: spooled events later acknowledged (also in ``acknowledged``);
    ``failed``: events given up (``on_error`` was called); ``duplicates``: batches answered
    ``duplicate: true``; ``requests``: POSTs made; ``queued``: events in memory now;
    ``spool_files``: batches on disk now; ``spool_corrupt``: damaged spool files set aside.
    """

    sent: int = 0
    acknowledged: int = 0
    retried: int = 0
    dropped: int = 0
    spooled: int = 0
    replayed: int = 0
    failed: int = 0
    duplicates: int = 0
    requests: int = 0
    queued: int = 0
    spool_files: int = 0
    spool_corrupt: int = 0


@dataclass(frozen=True)
class BatchInfo:
    """What ``on_error`` learns about the batch it is told about."""

    idempotency_key: str
    events: int
    body_bytes: int
    content_type: str
    attempts: int
    url: str | None
    from_spool: bool


ErrorCallback = Callable[[BatchInfo, dict[str, Any]], None]


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full jitter (AWS architecture blog, "Exponential Backoff and Jitter"): a uniform draw in
    ``[0, min(cap, base * 2**attempt)]``; ``attempt`` counts from 0."""
    return rng.uniform(0.0, min(cap, base * 2.0 ** min(attempt, 62)))


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date (RFC 9110
    10.2.3). None when absent or unreadable; never negative."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def is_retryable(status: int) -> bool:
    """Statuses worth another attempt: the request may succeed later or elsewhere."""
    return status in (408, 425, 429) or status >= 500


@dataclass(eq=False)
class _Batch:
    key: str
    body: bytes
    content_type: str
    content_encoding: str | None
    events: int
    mem_bytes: int
    entry: SpoolEntry | None = None
    attempts: int = 0
    first_attempt: float | None = None
    not_before: float = 0.0
    url: str | None = None


@dataclass
class _Open:
    ts: list[int] = field(default_factory=list)
    cat: list[str] = field(default_factory=list)
    val: list[int] = field(default_factory=list)
    pid: list[str] = field(default_factory=list)
    tables: list[pa.Table] = field(default_factory=list)
    events: int = 0
    nbytes: int = 0
    started: float = 0.0


_live: weakref.WeakSet[Producer] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    # A daemon sender thread dies silently at exit; give open producers the chance to deliver or
    # spool what they hold.
    for p in list(_live):
        p.close()


class Producer:
    """Sends events to Tributary in the background. Thread-safe; see the module docstring for
    the delivery guarantees. Keyword overrides replace fields of ``config``."""

    def __init__(
        self,
        urls: str | Iterable[str],
        token: str | None = None,
        *,
        config: ProducerConfig | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        on_error: ErrorCallback | None = None,
        transport: httpx.BaseTransport | None = None,
        rng: random.Random | None = None,
        **overrides: Any,
    ) -> None:
        self.config = cfg = replace(config or ProducerConfig(), **overrides)
        given = [urls] if isinstance(urls, str) else list(urls)
        self._given = [u.rstrip("/") for u in given]
        if not self._given:
            raise ValueError("at least one URL is needed")
        self._learned: list[str] = []
        self._url = self._given[0]
        self._on_error = on_error or _log_error
        self._rng = rng or random.Random()
        # The spool first: SpoolLocked must not leave a connection pool behind.
        self._spool = Spool(spool_dir, max_bytes=cfg.spool_max_bytes, fsync=cfg.spool_fsync) if spool_dir else None
        headers = {"User-Agent": "tributary-producer/1"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(cfg.request_timeout_s, connect=cfg.connect_timeout_s),
            transport=transport,
        )
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._abandon = threading.Event()
        self._open = _Open()
        self._queue: deque[_Batch] = deque()
        self._mem_events = 0
        self._mem_bytes = 0
        self._counts = {f.name: 0 for f in fields(ProducerStats)}
        self._closing = False
        self._sender_alive = True
        self._offline = False
        self._probe_failures = 0
        self._next_probe = 0.0
        self._spool_turn = True
        self._next_refresh = 0.0 if cfg.discover else float("inf")
        self._last_drop_warning = 0.0
        self._thread = threading.Thread(target=self._run, name="tributary-producer", daemon=True)
        self._thread.start()
        _live.add(self)

    # -- the caller's side ---------------------------------------------------------------------

    def send(self, event: Mapping[str, Any]) -> None:
        """Queue one event ``{timestamp, category, value, producer_id}``; ``timestamp`` is Unix ns,
        an aware ``datetime`` or an RFC 3339 string. Raises InvalidEvent, QueueFull, ProducerClosed."""
        ts, cat, val, pid, nbytes = _coerce(event)
        sealed: _Open | None = None
        with self._cond:
            if not self._admit(1, nbytes):
                return
            o = self._open
            if not o.events:
                o.started = time.monotonic()
                self._cond.notify_all()  # the sender must learn the new linger deadline
            o.ts.append(ts)
            o.cat.append(cat)
            o.val.append(val)
            o.pid.append(pid)
            o.events += 1
            o.nbytes += nbytes
            if o.events >= self.config.batch_events or o.nbytes >= self.config.batch_bytes:
                sealed, self._open = o, _Open()
        if sealed is not None:
            self._enqueue(sealed)

    def send_many(self, events: pa.Table | pa.RecordBatch | Iterable[Mapping[str, Any]]) -> None:
        """Queue many events: dicts, or an Arrow table/record batch with EVENT_SCHEMA's columns
        (castable types). A table is checked as a whole: InvalidEvent queues none of it."""
        if not isinstance(events, pa.Table | pa.RecordBatch):
            for e in events:
                self.send(e)
            return
        table = _conform(events)
        cfg = self.config
        offset = 0
        while offset < table.num_rows:
            sealed: _Open | None = None
            with self._cond:
                o = self._open
                room = max(1, cfg.batch_events - o.events)
                piece = table.slice(offset, room)
                nbytes = piece.nbytes
                if not self._admit(piece.num_rows, nbytes):
                    offset += piece.num_rows
                    continue
                o = self._open  # _admit may have waited while the sender sealed it
                if not o.events:
                    o.started = time.monotonic()
                    self._cond.notify_all()
                o.tables.append(piece)
                o.events += piece.num_rows
                o.nbytes += nbytes
                offset += piece.num_rows
                if o.events >= cfg.batch_events or o.nbytes >= cfg.batch_bytes:
                    sealed, self._open = o, _Open()
            if sealed is not None:
                self._enqueue(sealed)

    def flush(self, timeout: float | None = None) -> bool:
        """Form a batch of what is pending and wait until every event is acknowledged or finally
        refused, spooled batches included (when the nodes are down it waits for them to return).
        False if ``timeout`` passed first; nothing is lost then, it stays queued or spooled."""
        with self._cond:
            sealed, self._open = (self._open, _Open()) if self._open.events else (None, self._open)
        if sealed is not None:
            self._enqueue(sealed)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._mem_events or (self._spool is not None and self._spool.pending):
                if not self._sender_alive:
                    raise ProducerError("the sender thread has stopped; see the log")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining if remaining is not None else 1.0)
        return True

    def close(self, timeout: float | None = None) -> None:
        """Flush for up to ``timeout`` (default ``close_timeout_s``), then spool what is left
        (without a spool: count it failed and call ``on_error``) and release the connections.
        Idempotent."""
        with self._cond:
            if self._closing:
                return
        with contextlib.suppress(ProducerError):  # a dead sender thread: release what we hold anyway
            self.flush(self.config.close_timeout_s if timeout is None else timeout)
        self._abandon.set()  # stop retrying: what is left goes to the spool
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(self.config.request_timeout_s + self.config.connect_timeout_s + 10.0)
        if self._thread.is_alive():
            log.warning("producer sender thread did not stop; %d events may be lost", self._mem_events)
        self._http.close()
        if self._spool is not None:
            self._spool.close()
        _live.discard(self)

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def stats(self) -> ProducerStats:
        with self._lock:
            counts = dict(self._counts, queued=self._mem_events)
        if self._spool is not None:
            counts.update(spool_files=self._spool.pending, spool_corrupt=self._spool.corrupt)
        return ProducerStats(**counts)

    @property
    def urls(self) -> list[str]:
        """The failover order: the given URLs, then the learned ones."""
        return self._given + [u for u in self._learned if u not in self._given]

    def _admit(self, events: int, nbytes: int) -> bool:
        """Make room for ``events`` (lock held). False when they were dropped by policy."""
        cfg = self.config
        if self._closing:
            raise ProducerClosed("the producer is closed")

        def fits() -> bool:
            return self._mem_events == 0 or (
                self._mem_events + events <= cfg.queue_max_events and self._mem_bytes + nbytes <= cfg.queue_max_bytes
            )

        if not fits():
            if cfg.queue_full == "drop":
                self._counts["dropped"] += events
                now = time.monotonic()
                if now - self._last_drop_warning >= 10.0:
                    self._last_drop_warning = now
                    log.warning("producer queue full: dropping events (%d so far)", self._counts["dropped"])
                return False
            if not self._cond.wait_for(lambda: fits() or self._closing, cfg.block_timeout_s):
                raise QueueFull(f"queue full for {cfg.block_timeout_s} s")
            if self._closing:
                raise ProducerClosed("the producer is closed")
        self._mem_events += events
        self._mem_bytes += nbytes
        self._counts["sent"] += events
        return True

    def _enqueue(self, sealed: _Open) -> None:
        batch = self._encode(sealed)
        with self._cond:
            self._queue.append(batch)
            self._cond.notify_all()

    def _encode(self, o: _Open) -> _Batch:
        cfg = self.config
        parts = [b for t in o.tables for b in t.to_batches()]
        if o.ts:
            cols = [
                pa.array(o.ts, pa.int64()),
                pa.array(o.cat, pa.string()),
                pa.array(o.val, pa.int64()),
                pa.array(o.pid, pa.string()),
            ]
            parts.append(pa.RecordBatch.from_arrays(cols, schema=EVENT_SCHEMA))
        table = pa.Table.from_batches(parts, schema=EVENT_SCHEMA)
        if cfg.format == "arrow":
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, EVENT_SCHEMA) as writer:
                writer.write_table(table)
            body, ctype = sink.getvalue().to_pybytes(), ARROW_STREAM
        else:
            body, ctype = json.dumps(table.to_pylist(), separators=(",", ":")).encode(), _JSON
        encoding = None
        if len(body) >= cfg.compress_min_bytes:
            packed = zstandard.ZstdCompressor(level=cfg.compress_level).compress(body)
            if len(packed) < 0.9 * len(body):
                body, encoding = packed, "zstd"
        return _Batch(uuid.uuid4().hex, body, ctype, encoding, o.events, o.nbytes)

    # -- the sender thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._step():
                pass
        except Exception:
            log.exception("producer sender thread failed")
        finally:
            with self._cond:
                self._sender_alive = False
                self._cond.notify_all()

    def _step(self) -> bool:
        """One unit of the sender's work; False when the thread is done."""
        now = time.monotonic()
        if now >= self._next_refresh:
            self._refresh_cluster()
        spool = self._spool
        with self._cond:
            o: _Open | None = None
            if self._open.events and now - self._open.started >= self.config.linger_s:
                o, self._open = self._open, _Open()
            batch = self._queue[0] if self._queue else None
        if o is not None:
            self._enqueue(o)
            return True
        if self._abandon.is_set():
            self._spill()
            return False
        spooled = spool is not None and spool.pending > 0
        if spooled and self._offline:
            if batch is not None and self._park(batch):
                return True
            if now >= self._next_probe:
                self._replay(probe=True)
                return True
        elif spooled and (self._spool_turn or batch is None):
            self._spool_turn = False  # alternate with memory batches so callers are not starved
            self._replay(probe=False)
            return True
        elif batch is not None:
            self._spool_turn = True
            self._send(batch)
            return True
        with self._cond:
            if self._closing and not self._queue and not self._open.events:
                return False
            self._cond.wait(self._idle_wait(now))
        return True

    def _idle_wait(self, now: float) -> float:
        waits = [self._next_refresh - now, 1.0]
        if self._open.events:
            waits.append(self._open.started + self.config.linger_s - now)
        if self._offline and self._spool is not None and self._spool.pending:
            waits.append(self._next_probe - now)
        return max(0.0, min(waits))

    def _send(self, batch: _Batch) -> None:
        cfg = self.config
        if self._abandon.wait(max(0.0, batch.not_before - time.monotonic())):
            return
        now = time.monotonic()
        if batch.first_attempt is None:
            batch.first_attempt = now
        spool = self._spool
        last_chance = batch.first_attempt + cfg.retry_max_elapsed_s
        outcome = self._deliver(batch, min(now + cfg.spool_after_s, last_chance) if spool else last_chance)
        if outcome == "abandoned":
            return
        if outcome == "gave_up":
            if spool is not None and self._park(batch):
                self._go_offline()
                return
            if batch.not_before < last_chance:
                return  # the spool is full: keep it in memory and try again when due
            self._fail(batch, _problem("undeliverable", f"no node answered within {cfg.retry_max_elapsed_s} s"))
        else:
            self._offline = False
        self._settle(batch)

    def _replay(self, *, probe: bool) -> None:
        assert self._spool is not None
        entry = self._spool.oldest()
        if entry is None:
            self._offline = False
            return
        batch = _Batch(
            entry.idempotency_key,
            entry.body,
            entry.content_type,
            entry.content_encoding,
            entry.events,
            0,
            entry,
        )
        # A probe is a single attempt; online, a replay gets the same patience as a fresh batch.
        give_up_at = time.monotonic() + (0.0 if probe else self.config.spool_after_s)
        outcome = self._deliver(batch, give_up_at)
        if outcome in ("acked", "rejected"):
            self._spool.remove(entry)
            self._offline = False
            self._probe_failures = 0
            with self._cond:
                self._cond.notify_all()
        elif outcome == "gave_up":
            self._go_offline()

    def _go_offline(self) -> None:
        cfg = self.config
        ceiling = min(cfg.backoff_cap_s, cfg.probe_interval_s * 2.0 ** min(self._probe_failures, 30))
        self._next_probe = time.monotonic() + self._rng.uniform(ceiling / 2, ceiling)
        self._probe_failures += 1
        self._offline = True

    def _park(self, batch: _Batch) -> bool:
        """Move a memory batch to the spool; False when the spool is full or failing."""
        assert self._spool is not None
        try:
            ok = self._spool.put(batch.key, batch.content_type, batch.content_encoding, batch.events, batch.body)
        except OSError as e:
            log.error("cannot write the spool: %s", e)
            ok = False
        if ok:
            with self._cond:
                self._counts["spooled"] += batch.events
            self._settle(batch)
        return ok

    def _spill(self) -> None:
        """At close: spool (or fail) every batch still in memory."""
        while True:
            with self._cond:
                if self._open.events:
                    o, self._open = self._open, _Open()
                    self._queue.append(self._encode(o))
                if not self._queue:
                    return
                batch = self._queue[0]
            if self._spool is None or not self._park(batch):
                self._fail(batch, _problem("undelivered at close", "the producer was closed before delivery"))
                self._settle(batch)

    def _settle(self, batch: _Batch) -> None:
        """Forget a memory batch: acknowledged, spooled or failed."""
        with self._cond:
            if self._queue and self._queue[0] is batch:
                self._queue.popleft()
            self._mem_events -= batch.events
            self._mem_bytes -= batch.mem_bytes
            self._cond.notify_all()

    def _fail(self, batch: _Batch, problem: dict[str, Any]) -> None:
        with self._cond:
            self._counts["failed"] += batch.events
        info = BatchInfo(
            batch.key,
            batch.events,
            len(batch.body),
            batch.content_type,
            batch.attempts,
            batch.url,
            batch.entry is not None,
        )
        try:
            self._on_error(info, problem)
        except Exception:
            log.exception("on_error callback raised")

    def _deliver(self, batch: _Batch, give_up_at: float) -> str:
        """Attempt until acknowledged, refused, past ``give_up_at`` or closing. Returns one of
        acked, rejected, gave_up, abandoned."""
        failures = 0
        while True:
            if batch.attempts:
                with self._cond:
                    self._counts["retried"] += 1
            outcome, wait = self._attempt(batch)
            if outcome in ("acked", "rejected"):
                return outcome
            cfg = self.config
            delay = (
                wait if wait is not None else backoff_delay(failures, cfg.backoff_base_s, cfg.backoff_cap_s, self._rng)
            )
            failures += 1
            batch.not_before = time.monotonic() + delay
            if batch.not_before > give_up_at:
                return "gave_up"
            if self._abandon.wait(delay):
                return "abandoned"

    def _attempt(self, batch: _Batch) -> tuple[str, float | None]:
        """One POST. ``("retry", retry_after)`` for a transient failure."""
        url = batch.url = self._url
        batch.attempts += 1
        headers = {"Content-Type": batch.content_type, "Idempotency-Key": batch.key}
        if batch.content_encoding:
            headers["Content-Encoding"] = batch.content_encoding
        with self._cond:
            self._counts["requests"] += 1
        try:
            r = self._http.post(url + "/v1/events", content=batch.body, headers=headers)
        except httpx.TransportError as e:  # refused, reset, timed out, truncated response
            log.debug("POST %s failed: %r", url, e)
            self._rotate(url)
            return "retry", None
        if r.is_success:
            try:
                duplicate = bool(r.json().get("duplicate", False))
            except (ValueError, AttributeError):
                # The status says committed; the retry with the same key is answered as a duplicate.
                return "retry", None
            with self._cond:
                self._counts["acknowledged"] += batch.events
                self._counts["duplicates"] += duplicate
                if batch.entry is not None:
                    self._counts["replayed"] += batch.events
            return "acked", None
        if is_retryable(r.status_code):
            if r.status_code not in (408, 429):  # the node is sick, not just busy: try another
                self._rotate(url)
            wait = parse_retry_after(r.headers.get("retry-after"))
            if wait is not None:
                wait = min(wait, self.config.retry_after_max_s) + self._rng.uniform(0, self.config.backoff_base_s)
            return "retry", wait
        self._fail(batch, _problem_of(r))
        return "rejected", None

    def _rotate(self, failed: str) -> None:
        urls = self.urls
        if self._url == failed and len(urls) > 1:
            i = urls.index(failed) if failed in urls else -1
            self._url = urls[(i + 1) % len(urls)]

    def _refresh_cluster(self) -> None:
        """Learn the nodes' URLs from ``GET /v1/cluster``; any failure is fine: try again later."""
        self._next_refresh = time.monotonic() + self.config.cluster_refresh_s
        try:
            r = self._http.get(self._url + "/v1/cluster", timeout=min(2.0, self.config.request_timeout_s))
            r.raise_for_status()
            nodes = r.json()["nodes"]
            up = [n["url"].rstrip("/") for n in nodes if n.get("up", True) and n.get("url")]
            down = [n["url"].rstrip("/") for n in nodes if not n.get("up", True) and n.get("url")]
        except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError) as e:
            log.debug("cluster refresh from %s failed: %r", self._url, e)
            return
        self._learned = up + down


def _log_error(info: BatchInfo, problem: dict[str, Any]) -> None:
    log.error("batch %s (%d events) refused: %s", info.idempotency_key, info.events, problem)


def _problem(title: str, detail: str, status: int = 0) -> dict[str, Any]:
    return {"type": "about:blank", "title": title, "status": status, "detail": detail}


def _problem_of(r: httpx.Response) -> dict[str, Any]:
    try:
        doc = r.json()
        if isinstance(doc, dict):
            return {"status": r.status_code, **doc}
    except ValueError:
        pass
    return _problem(r.reason_phrase or "error", r.text[:1000], r.status_code)


def _text(event: Mapping[str, Any], name: str, limit: int) -> str:
    s = event.get(name)
    if not isinstance(s, str) or not s:
        raise InvalidEvent(f"{name} must be a non-empty string", name)
    if len(s) * 4 > limit and len(s.encode()) > limit:
        raise InvalidEvent(f"{name} is longer than {limit} UTF-8 bytes", name)
    return s


def _coerce(event: Mapping[str, Any]) -> tuple[int, str, int, str, int]:
    """``(timestamp, category, value, producer_id, estimated bytes)`` of a valid event."""
    if not isinstance(event, Mapping):
        raise InvalidEvent("an event is a mapping")
    ts = event.get("timestamp")
    if isinstance(ts, str):
        ts = _parse_rfc3339(ts)
    elif isinstance(ts, datetime):
        if ts.tzinfo is None:
            raise InvalidEvent("timestamp datetime must be timezone-aware", "timestamp")
        ts = _ns_of(ts)
    ts = _int64(ts)
    if ts is None:
        raise InvalidEvent("timestamp must be int64 Unix ns, an aware datetime or RFC 3339", "timestamp")
    value = _int64(event.get("value"))
    if value is None:
        raise InvalidEvent("value must be an int64 integer", "value")
    cat = _text(event, "category", CATEGORY_MAX_BYTES)
    pid = _text(event, "producer_id", PRODUCER_MAX_BYTES)
    return ts, cat, value, pid, 32 + len(cat) + len(pid)


def _int64(x: object) -> int | None:
    """``x`` as a Python int when it is an integer (numpy's too, bool not) within int64."""
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        return None
    i = int(x)
    return i if _INT64[0] <= i <= _INT64[1] else None


def _ns_of(dt: datetime) -> int:
    """Exact integer nanoseconds (no float on the way)."""
    return (dt - _EPOCH) // timedelta(microseconds=1) * 1000


def _parse_rfc3339(s: str) -> int:
    m = _RFC3339.match(s)
    if m is None:
        raise InvalidEvent(f"timestamp {s!r} is not RFC 3339", "timestamp")
    base, frac, zone = m.groups()
    try:
        dt = datetime.fromisoformat(base + ("+00:00" if zone in "Zz" else zone))
    except ValueError as e:
        raise InvalidEvent(f"timestamp {s!r}: {e}", "timestamp") from e
    return _ns_of(dt) + int((frac or "0").ljust(9, "0"))


def _conform(data: pa.Table | pa.RecordBatch) -> pa.Table:
    """The data as an EVENT_SCHEMA table, or InvalidEvent naming the first bad column."""
    table = pa.Table.from_batches([data]) if isinstance(data, pa.RecordBatch) else data
    cols = []
    for f in EVENT_SCHEMA:
        if f.name not in table.column_names:
            raise InvalidEvent(f"column {f.name} is missing", f.name)
        col = table.column(f.name)
        if col.null_count:
            raise InvalidEvent(f"column {f.name} has nulls", f.name)
        if not col.type.equals(f.type):
            try:
                col = col.cast(pa.int64()) if pa.types.is_timestamp(col.type) else col.cast(f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise InvalidEvent(f"column {f.name}: {e}", f.name) from e
        cols.append(col)
    out = pa.Table.from_arrays(cols, schema=EVENT_SCHEMA)
    for name, limit in (("category", CATEGORY_MAX_BYTES), ("producer_id", PRODUCER_MAX_BYTES)):
        if out.num_rows:
            lo, hi = pc.min_max(pc.binary_length(out.column(name))).values()
            if lo.as_py() < 1 or hi.as_py() > limit:
                raise InvalidEvent(f"{name} must be 1..{limit} UTF-8 bytes", name)
    return out
