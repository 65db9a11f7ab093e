"""Failure detection: every node probes its peers' ``/health`` and keeps who is up and serving.

A peer is **down** after ``down_after`` probes in a row failed (refused, or no answer within the
probe timeout — a SIGSTOPped node never answers), or at once when a data call to it fails; it is
**up** again at its first good probe. ``serving`` is the peer's own word on whether it answers
reads (it does not while catching up after a start or a stall). Reads use peers that are up and
serving, writes peers that are up; everyone else gets hints.

The detector also watches itself: when its own loop wakes much later than planned, the process
was frozen (SIGSTOP) or starved, and may have missed writes meanwhile; ``on_stall`` then lets the
node stop serving reads until it has caught up.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from dataclasses import dataclass
from typing import Any

import structlog

from cluster.errors import PeerError
from cluster.membership import Member
from cluster.peers import PeerClient

__all__ = ["Detector", "DetectorConfig", "PeerHealth"]

log = structlog.get_logger("tributary.detector")


@dataclass(frozen=True)
class DetectorConfig:
    interval_s: float = 0.5
    down_after: int = 2  # consecutive failed probes
    stall_s: float = 3.0  # a gap this long in our own loop means we were frozen


@dataclass
class PeerHealth:
    up: bool = True  # optimistic until probed: a data call to a dead node fails fast anyway
    serving: bool = True
    probed: bool = False
    failures: int = 0
    epoch: int = 0
    changed: float = 0.0  # monotonic time of the last up/down change


class Detector:
    def __init__(
        self,
        me: str,
        peers: PeerClient,
        members: Callable[[], Sequence[Member]],
        config: DetectorConfig | None = None,
        on_health: Callable[[str, dict[str, Any]], None] | None = None,
        on_stall: Callable[[float], None] | None = None,
        on_up: Callable[[str], None] | None = None,
    ) -> None:
        self.me = me
        self.peers = peers
        self.members = members
        self.config = config or DetectorConfig()
        self._on_health = on_health
        self._on_stall = on_stall
        self._on_up = on_up
        self._lock = threading.Lock()
        self._health: dict[str, PeerHealth] = {}
        self._stop = threading.Event()
        self._last_tick = time.monotonic()
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="probe")
        self._thread = threading.Thread(target=self._loop, name="detector", daemon=True)
        self.rounds = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- the loop -------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.wait(self.config.interval_s):
            try:
                self.tick()
            except Exception:  # never let the detector die; the next tick tries again
                log.exception("probe round failed")

    def tick(self) -> None:
        now = time.monotonic()
        gap, self._last_tick = now - self._last_tick, now
        if gap > self.config.stall_s and self._on_stall is not None:
            log.warning("own loop stalled: this node was frozen or starved", gap_s=round(gap, 2))
            self._on_stall(gap)
        others = [m for m in self.members() if m.node_id != self.me]
        futures = [self._pool.submit(self._probe, m) for m in others]
        wait_all(futures)
        self.rounds += 1
        self._last_tick = time.monotonic()

    def _probe(self, m: Member) -> None:
        try:
            body = self.peers.health(m.node_id, url=m.url)
        except PeerError:
            self._failed(m.node_id, at_once=False)
            return
        self._ok(m.node_id, body)
        if self._on_health is not None:
            self._on_health(m.node_id, body)

    def _get(self, node_id: str) -> PeerHealth:
        h = self._health.get(node_id)
        if h is None:
            h = self._health[node_id] = PeerHealth(changed=time.monotonic())
        return h

    def _ok(self, node_id: str, body: dict[str, Any]) -> None:
        came_up = False
        with self._lock:
            h = self._get(node_id)
            came_up = not h.up
            h.up, h.probed, h.failures = True, True, 0
            h.serving = bool(body.get("serving", True))
            h.epoch = int(body.get("epoch", 0) or 0)
            if came_up:
                h.changed = time.monotonic()
        if came_up:
            log.info("peer is up", peer=node_id)
            if self._on_up is not None:
                self._on_up(node_id)

    def _failed(self, node_id: str, *, at_once: bool) -> None:
        with self._lock:
            h = self._get(node_id)
            h.probed = True
            h.failures += 1
            if h.up and (at_once or h.failures >= self.config.down_after):
                h.up = False
                h.serving = False
                h.changed = time.monotonic()
                log.warning("peer is down", peer=node_id)

    # -- what callers ask -----------------------------------------------------------------------

    def suspect(self, node_id: str) -> None:
        """A data call to ``node_id`` failed without an answer: treat it as down now."""
        if node_id != self.me:
            self._failed(node_id, at_once=True)

    def not_serving(self, node_id: str) -> None:
        with self._lock:
            self._get(node_id).serving = False

    def is_up(self, node_id: str) -> bool:
        if node_id == self.me:
            return True
        with self._lock:
            return self._get(node_id).up

    def is_serving(self, node_id: str) -> bool:
        with self._lock:
            h = self._get(node_id)
            return h.up and h.serving

    def probed_all(self) -> bool:
        others = [m.node_id for m in self.members() if m.node_id != self.me]
        with self._lock:
            return all(self._get(n).probed for n in others)

    def lagging(self) -> bool:
        """True while our own loop is overdue (we may have been frozen and not yet noticed)."""
        return time.monotonic() - self._last_tick > self.config.stall_s

    def snapshot(self) -> dict[str, PeerHealth]:
        with self._lock:
            return {n: PeerHealth(**vars(h)) for n, h in self._health.items()}
