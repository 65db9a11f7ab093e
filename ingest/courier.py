"""The producer client's side of the wire: one sealed batch to the nodes, with retries, failover
and discovery.

Guarantees:

- Every attempt POSTs the batch's own body, content type and Idempotency-Key (``outbox.Batch``),
  so an attempt whose answer was lost is answered ``duplicate: true`` next time and stored once.
- Connection errors, timeouts, 408, 425, 429 and 5xx are retried with exponential backoff and full
  jitter (``Retry-After`` honoured, capped at ``retry_after_max_s``); any other 4xx is final and
  ``refuse`` is called once with the node's problem+json.
- A failure moves on to the next URL (except 408 and 429: that node is busy, not sick): the given
  URLs first, then the nodes learned from ``GET /v1/cluster``.

Like the rest of the client, imports nothing of the server but ``storage.schema``.
"""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import httpx

from ingest.outbox import Batch

__all__ = [
    "Courier",
    "CourierConfig",
    "Outcome",
    "backoff_delay",
    "is_retryable",
    "parse_retry_after",
    "problem",
]

log = logging.getLogger("tributary.client")

Outcome = Literal["acked", "rejected", "gave_up", "abandoned"]


class CourierConfig(Protocol):
    """The knobs the courier reads; ``ProducerConfig`` has them all."""

    @property
    def connect_timeout_s(self) -> float: ...
    @property
    def request_timeout_s(self) -> float: ...
    @property
    def backoff_base_s(self) -> float: ...
    @property
    def backoff_cap_s(self) -> float: ...
    @property
    def retry_after_max_s(self) -> float: ...
    @property
    def discover(self) -> bool: ...
    @property
    def cluster_refresh_s(self) -> float: ...


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


def problem(title: str, detail: str, status: int = 0) -> dict[str, Any]:
    """An RFC 9457 problem of the client's own making (status 0: no node answered)."""
    return {"type": "about:blank", "title": title, "status": status, "detail": detail}


class Courier:
    """Delivers batches over one connection pool. Used by the producer's sender thread only;
    ``urls`` may be read from any thread. ``count(**increments)`` adds to the producer's
    counters (requests, retried, acknowledged, duplicates, replayed); ``refuse(batch, problem)``
    is told of a final refusal; ``abandon`` set means stop waiting and return."""

    def __init__(
        self,
        urls: list[str],
        config: CourierConfig,
        *,
        token: str | None,
        transport: httpx.BaseTransport | None,
        rng: random.Random,
        abandon: threading.Event,
        count: Callable[..., None],
        refuse: Callable[[Batch, dict[str, Any]], None],
    ) -> None:
        self.config = config
        self._given = urls
        self._learned: list[str] = []
        self._url = urls[0]
        self._rng = rng
        self._abandon = abandon
        self._count = count
        self._refuse = refuse
        headers = {"User-Agent": "tributary-producer/1"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(config.request_timeout_s, connect=config.connect_timeout_s),
            transport=transport,
        )
        self.next_refresh = 0.0 if config.discover else float("inf")

    @property
    def urls(self) -> list[str]:
        """The failover order: the given URLs, then the learned ones."""
        return self._given + [u for u in self._learned if u not in self._given]

    def close(self) -> None:
        self._http.close()

    def deliver(self, batch: Batch, give_up_at: float) -> Outcome:
        """Attempt until acknowledged, refused, past ``give_up_at`` or abandoned."""
        failures = 0
        while True:
            if batch.attempts:
                self._count(retried=1)
            outcome, wait = self._attempt(batch)
            if outcome != "retry":
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

    def _attempt(self, batch: Batch) -> tuple[Literal["acked", "rejected", "retry"], float | None]:
        """One POST. ``("retry", retry_after)`` for a transient failure."""
        url = batch.url = self._url
        batch.attempts += 1
        headers = {"Content-Type": batch.content_type, "Idempotency-Key": batch.key}
        if batch.content_encoding:
            headers["Content-Encoding"] = batch.content_encoding
        self._count(requests=1)
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
            replayed = batch.events if batch.entry is not None else 0
            self._count(acknowledged=batch.events, duplicates=int(duplicate), replayed=replayed)
            return "acked", None
        if is_retryable(r.status_code):
            if r.status_code not in (408, 429):  # the node is sick, not just busy: try another
                self._rotate(url)
            wait = parse_retry_after(r.headers.get("retry-after"))
            if wait is not None:
                wait = min(wait, self.config.retry_after_max_s) + self._rng.uniform(0, self.config.backoff_base_s)
            return "retry", wait
        self._refuse(batch, _problem_of(r))
        return "rejected", None

    def _rotate(self, failed: str) -> None:
        urls = self.urls
        if self._url == failed and len(urls) > 1:
            i = urls.index(failed) if failed in urls else -1
            self._url = urls[(i + 1) % len(urls)]

    def refresh(self) -> None:
        """Learn the nodes' URLs from ``GET /v1/cluster``; any failure is fine: try again later."""
        self.next_refresh = time.monotonic() + self.config.cluster_refresh_s
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


def _problem_of(r: httpx.Response) -> dict[str, Any]:
    try:
        doc = r.json()
        if isinstance(doc, dict):
            return {"status": r.status_code, **doc}
    except ValueError:
        pass
    return problem(r.reason_phrase or "error", r.text[:1000], r.status_code)
