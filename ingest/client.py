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

This module is the public face and the sender loop; its parts are ``ingest.outbox`` (checking
events, sealing batches), ``ingest.courier`` (the wire: retries, failover, discovery) and
``ingest.spool`` (the disk). Together they import nothing of the server but ``storage.schema``.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import random
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

import httpx
import pyarrow as pa

from ingest.courier import Courier, backoff_delay, is_retryable, parse_retry_after, problem
from ingest.outbox import ARROW_STREAM, Batch, InvalidEvent, OpenBatch, ProducerError, check_event, conform, seal
from ingest.spool import Spool, SpoolLocked

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


class QueueFull(ProducerError):
    """The in-memory queue stayed full for ``block_timeout_s``: the nodes are slower than the
    producer. Send less, raise ``queue_max_*``, or use ``queue_full="drop"`` or a spool."""


class ProducerClosed(ProducerError):
    """``send`` after ``close``; create a new Producer."""


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
        given = [u.rstrip("/") for u in ([urls] if isinstance(urls, str) else list(urls))]
        if not given:
            raise ValueError("at least one URL is needed")
        self._on_error = on_error or _log_error
        self._rng = rng or random.Random()
        # The spool first: SpoolLocked must not leave a connection pool behind.
        self._spool = Spool(spool_dir, max_bytes=cfg.spool_max_bytes, fsync=cfg.spool_fsync) if spool_dir else None
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._abandon = threading.Event()
        self._courier = Courier(
            given,
            cfg,
            token=token,
            transport=transport,
            rng=self._rng,
            abandon=self._abandon,
            count=self._count,
            refuse=self._fail,
        )
        self._open = OpenBatch()
        self._queue: deque[Batch] = deque()
        self._mem_events = 0
        self._mem_bytes = 0
        self._counts = {f.name: 0 for f in fields(ProducerStats)}
        self._closing = False
        self._sender_alive = True
        self._offline = False
        self._probe_failures = 0
        self._next_probe = 0.0
        self._spool_turn = True
        self._last_drop_warning = 0.0
        self._thread = threading.Thread(target=self._run, name="tributary-producer", daemon=True)
        self._thread.start()
        _live.add(self)

    # -- the caller's side ---------------------------------------------------------------------

    def send(self, event: Mapping[str, Any]) -> None:
        """Queue one event ``{timestamp, category, value, producer_id}``; ``timestamp`` is Unix ns,
        an aware ``datetime`` or an RFC 3339 string. Raises InvalidEvent, QueueFull, ProducerClosed."""
        ts, cat, val, pid, nbytes = check_event(event)
        sealed: OpenBatch | None = None
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
                sealed, self._open = o, OpenBatch()
        if sealed is not None:
            self._enqueue(sealed)

    def send_many(self, events: pa.Table | pa.RecordBatch | Iterable[Mapping[str, Any]]) -> None:
        """Queue many events: dicts, or an Arrow table/record batch with EVENT_SCHEMA's columns
        (castable types). A table is checked as a whole: InvalidEvent queues none of it."""
        if not isinstance(events, pa.Table | pa.RecordBatch):
            for e in events:
                self.send(e)
            return
        table = conform(events)
        cfg = self.config
        offset = 0
        while offset < table.num_rows:
            sealed: OpenBatch | None = None
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
                    sealed, self._open = o, OpenBatch()
            if sealed is not None:
                self._enqueue(sealed)

    def flush(self, timeout: float | None = None) -> bool:
        """Form a batch of what is pending and wait until every event is acknowledged or finally
        refused, spooled batches included (when the nodes are down it waits for them to return).
        False if ``timeout`` passed first; nothing is lost then, it stays queued or spooled."""
        with self._cond:
            sealed, self._open = (self._open, OpenBatch()) if self._open.events else (None, self._open)
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
        self._courier.close()
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
        return self._courier.urls

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

    def _enqueue(self, sealed: OpenBatch) -> None:
        batch = self._encode(sealed)
        with self._cond:
            self._queue.append(batch)
            self._cond.notify_all()

    def _encode(self, o: OpenBatch) -> Batch:
        cfg = self.config
        return seal(o, cfg.format, cfg.compress_min_bytes, cfg.compress_level)

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
        if now >= self._courier.next_refresh:
            self._courier.refresh()
        spool = self._spool
        with self._cond:
            o: OpenBatch | None = None
            if self._open.events and now - self._open.started >= self.config.linger_s:
                o, self._open = self._open, OpenBatch()
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
        waits = [self._courier.next_refresh - now, 1.0]
        if self._open.events:
            waits.append(self._open.started + self.config.linger_s - now)
        if self._offline and self._spool is not None and self._spool.pending:
            waits.append(self._next_probe - now)
        return max(0.0, min(waits))

    def _send(self, batch: Batch) -> None:
        cfg = self.config
        if self._abandon.wait(max(0.0, batch.not_before - time.monotonic())):
            return
        now = time.monotonic()
        if batch.first_attempt is None:
            batch.first_attempt = now
        spool = self._spool
        last_chance = batch.first_attempt + cfg.retry_max_elapsed_s
        outcome = self._courier.deliver(batch, min(now + cfg.spool_after_s, last_chance) if spool else last_chance)
        if outcome == "abandoned":
            return
        if outcome == "gave_up":
            if spool is not None and self._park(batch):
                self._go_offline()
                return
            if batch.not_before < last_chance:
                return  # the spool is full: keep it in memory and try again when due
            self._fail(batch, problem("undeliverable", f"no node answered within {cfg.retry_max_elapsed_s} s"))
        else:
            self._offline = False
        self._settle(batch)

    def _replay(self, *, probe: bool) -> None:
        assert self._spool is not None
        entry = self._spool.oldest()
        if entry is None:
            self._offline = False
            return
        batch = Batch(
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
        outcome = self._courier.deliver(batch, give_up_at)
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

    def _park(self, batch: Batch) -> bool:
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
                    o, self._open = self._open, OpenBatch()
                    self._queue.append(self._encode(o))
                if not self._queue:
                    return
                batch = self._queue[0]
            if self._spool is None or not self._park(batch):
                self._fail(batch, problem("undelivered at close", "the producer was closed before delivery"))
                self._settle(batch)

    def _settle(self, batch: Batch) -> None:
        """Forget a memory batch: acknowledged, spooled or failed."""
        with self._cond:
            if self._queue and self._queue[0] is batch:
                self._queue.popleft()
            self._mem_events -= batch.events
            self._mem_bytes -= batch.mem_bytes
            self._cond.notify_all()

    def _fail(self, batch: Batch, doc: dict[str, Any]) -> None:
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
            self._on_error(info, doc)
        except Exception:
            log.exception("on_error callback raised")

    def _count(self, **increments: int) -> None:
        with self._cond:
            for name, n in increments.items():
                self._counts[name] += n


def _log_error(info: BatchInfo, doc: dict[str, Any]) -> None:
    log.error("batch %s (%d events) refused: %s", info.idempotency_key, info.events, doc)
