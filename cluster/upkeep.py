"""The cluster's background work on one node: hints, anti-entropy, catching up, changes.

One thread wakes every ``tick_s`` and

- replays hints to targets that are up again (and re-routes hints for nodes no longer in the
  map through the write path, so nothing waits for a node that will not return);
- every ``repair_interval_s``, syncs with every peer sharing shards (``Repairer.round``), which
  also hands shards to new owners and evicts what was given away;
- drives a running membership change when this node is the driver.

``catch_up`` runs when the node starts and after a stall: it pulls what co-replicas hold and we
lack, then waits (bounded) until no peer holds hints for us, and only then lets the node serve
reads again — so a node that was down or frozen never answers from stale data.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import structlog

from cluster.detector import Detector
from cluster.errors import ClusterError, PeerError
from cluster.hints import HintStore
from cluster.holdings import Holdings
from cluster.membership import ClusterMap
from cluster.peers import PeerClient
from cluster.rebalance import Rebalancer
from cluster.repair import Repairer
from storage.shipping import ARROW_STREAM, unpack

__all__ = ["Upkeep", "UpkeepConfig"]

log = structlog.get_logger("tributary.upkeep")


@dataclass(frozen=True)
class UpkeepConfig:
    tick_s: float = 0.25
    repair_interval_s: float = 5.0
    catch_up_timeout_s: float = 30.0  # after this a node serves reads even if peers lag


class Upkeep:
    def __init__(
        self,
        me: str,
        cmap: Callable[[], ClusterMap],
        peers: PeerClient,
        detector: Detector,
        hints: HintStore,
        holdings: Holdings,
        repairer: Repairer,
        rebalancer: Rebalancer,
        rewrite: Callable[[pa.Table], object],
        set_serving: Callable[[bool], None],
        config: UpkeepConfig | None = None,
    ) -> None:
        self.me = me
        self.cmap = cmap
        self.peers = peers
        self.detector = detector
        self.hints = hints
        self.holdings = holdings
        self.repairer = repairer
        self.rebalancer = rebalancer
        self.rewrite = rewrite
        self.set_serving = set_serving
        self.config = config or UpkeepConfig()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cluster-upkeep", daemon=True)
        self._catching_up = threading.Lock()
        self._repair_now = threading.Event()
        self.hints_replayed = 0
        self.catch_ups = 0
        self.last_catch_up_s: float | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def repair_soon(self) -> None:
        self._repair_now.set()

    # -- the loop -------------------------------------------------------------------------------

    def _loop(self) -> None:
        next_repair = time.monotonic() + self.config.repair_interval_s
        while not self._stop.wait(self.config.tick_s):
            try:
                self.holdings.drain()
                if len(self.cmap().members) < 2 and not self.hints.counts():
                    continue
                self.replay_hints()
                if self._repair_now.is_set() or time.monotonic() >= next_repair:
                    self._repair_now.clear()
                    if not self._catching_up.locked():
                        self.repairer.round()
                    next_repair = time.monotonic() + self.config.repair_interval_s
                self.rebalancer.drive()
            except Exception:  # the next tick tries again; nothing here is needed for correctness now
                log.exception("cluster upkeep failed")

    def replay_hints(self) -> int:
        cmap = self.cmap()
        sent = 0
        for target in list(self.hints.counts()):
            if self._stop.is_set():
                break
            gone = cmap.member(target) is None
            if not gone and (target == self.me or not self.detector.is_up(target)):
                continue
            for path in self.hints.pending(target):
                try:
                    body = self.hints.read(path)
                    if gone:  # the node left for good: write the rows to their owners now
                        self.rewrite(unpack(body, ARROW_STREAM))
                    else:
                        self.peers.ingest(target, body, epoch=0)
                except PeerError as e:
                    if e.status == 0:
                        self.detector.suspect(target)
                    break
                except ClusterError as e:
                    log.info("hint not delivered yet", target=target, error=str(e)[:200])
                    break
                self.hints.done(path)
                sent += 1
        self.hints_replayed += sent
        return sent

    # -- catching up ----------------------------------------------------------------------------

    def catch_up_async(self, reason: str) -> None:
        """Stop serving reads and catch up in the background (once at a time)."""
        if self._catching_up.locked():
            return
        self.set_serving(False)
        threading.Thread(target=self.catch_up, args=(reason,), name="catch-up", daemon=True).start()

    def catch_up(self, reason: str) -> None:
        if not self._catching_up.acquire(blocking=False):
            return
        t0 = time.monotonic()
        try:
            self.set_serving(False)
            deadline = t0 + self.config.catch_up_timeout_s
            while not self.detector.probed_all() and time.monotonic() < deadline and not self._stop.is_set():
                time.sleep(0.05)
            self._pull_all(deadline)
            self._wait_for_hints(deadline)
        except Exception:
            log.exception("catch-up failed; serving anyway, repair continues")
        finally:
            self.last_catch_up_s = round(time.monotonic() - t0, 3)
            self.catch_ups += 1
            self.set_serving(True)
            self._catching_up.release()
            log.info("caught up", reason=reason, took_s=self.last_catch_up_s)

    def _pull_all(self, deadline: float) -> None:
        synced: set[str] = set()
        while time.monotonic() < deadline and not self._stop.is_set():
            targets = [p for p in self.repairer.targets(self.cmap()) if self.detector.is_up(p)]
            todo = [p for p in targets if p not in synced]
            if not todo:
                return
            synced.update(self.repairer.round(pull=True, peers_only=todo))
            if any(p not in synced for p in todo):
                time.sleep(0.2)

    def _wait_for_hints(self, deadline: float) -> None:
        while time.monotonic() < deadline and not self._stop.is_set():
            waiting = 0
            for m in self.cmap().members:
                if m.node_id == self.me or not self.detector.is_up(m.node_id):
                    continue
                try:
                    waiting += int(self.peers.status(m.node_id).get("hints", {}).get(self.me, 0))
                except PeerError:
                    continue
            if not waiting:
                return
            time.sleep(0.1)
