"""A node's background work: persisting the live buffer, and merging or dropping persisted parts.

Two threads, so a long compaction never holds up a persist (issue 6: the soak run saw ~20 s
ingest stalls while one thread merged an hour and the live buffer filled to its cap):

- the persist thread writes the live buffer to new parts whenever the persister says it is due;
- the merge thread compacts hours and applies retention.

They cannot corrupt each other: a persist only adds parts and a merge only replaces or removes
parts that were committed before it started, each in one manifest commit (the manifest
serialises commits and allocates part ids under its lock). Each thread writes through its own
``PartitionStore`` (its own lock and DuckDB cursors), so a merge does not hold the store a
persist needs. Compaction, retention and eviction all replace committed parts, so they take one
lock: otherwise a merge of parts that retention or eviction dropped meanwhile would bring their
rows back in its merged part.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection

import structlog

from cluster.holdings import Holdings
from ingest.persister import Persister
from storage.compaction import Compactor
from storage.eviction import evict_shards
from storage.retention import Retention

__all__ = ["Maintenance"]

log = structlog.get_logger("tributary.node")


class Maintenance:
    """Runs persisting and compaction/retention on two daemon threads once ``start`` is called.

    A failure is logged and retried at the next tick: the rows stay in the WAL and the buffer
    until a persist succeeds, and a failed merge leaves its sources committed.
    """

    def __init__(
        self,
        persister: Persister,
        compactor: Compactor,
        retention: Retention,
        holdings: Holdings,
        *,
        tick_s: float = 0.25,
        compact_every_s: float = 30.0,
    ) -> None:
        self.persister = persister
        self.compactor = compactor
        self.retention = retention
        self.holdings = holdings
        self.tick_s = tick_s
        self.compact_every_s = compact_every_s
        self._replacing = threading.Lock()  # compaction, retention and eviction all replace parts
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._persist_loop, name="node-persist", daemon=True),
            threading.Thread(target=self._merge_loop, name="node-compact", daemon=True),
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        """Stop both threads; returns once any persist or merge in progress has finished."""
        self._stop.set()
        self.persister.stop_waiting()  # the persist thread may be waiting for rows
        for t in self._threads:
            if t.is_alive():
                t.join()

    def persist_now(self) -> int:
        """Persist the whole live buffer; returns the rows persisted. Never waits for a merge."""
        return self.persister.persist()

    def compact_now(self, force: bool = True) -> int:
        """Merge qualifying hours now (every hour with 2+ parts when ``force``); returns hours merged."""
        with self._replacing:
            return self.compactor.run_once(force=force)

    def evict(self, shards: Collection[int]) -> int:
        """Remove every row of ``shards`` from this node; returns the persisted rows removed.
        The caller keeps new rows of those shards from being claimed meanwhile."""
        with self._replacing:
            self.persister.persist()  # rows still in memory go to parts first, then all go
            removed = evict_shards(self.compactor.store, self.compactor.manifest, shards)
        self.holdings.forget(shards)
        return removed

    def _persist_loop(self) -> None:
        """Persist whenever one is due: at once after a persist if the buffer filled meanwhile,
        else as soon as the buffer says it is full (``wait_due``), at the latest each tick."""
        while not self._stop.is_set():
            try:
                if self.persister.wait_due(self.tick_s) and not self._stop.is_set():
                    self.persister.persist()
            except Exception:  # keep serving; retried after a tick (data stays in WAL + buffer)
                log.exception("background persist failed")
                self._stop.wait(self.tick_s)

    def _merge_loop(self) -> None:
        last_compact = time.monotonic()
        while not self._stop.wait(self.tick_s):
            try:
                if time.monotonic() - last_compact >= self.compact_every_s:
                    last_compact = time.monotonic()
                    with self._replacing:
                        self.compactor.run_once()
                with self._replacing:
                    run = self.retention.maybe_run()  # drops whole expired hours; a no-op when off
                cut = self.retention.cutoff()
                if run is not None and run.hours and cut is not None:
                    self.holdings.forget_through(cut)
            except Exception:  # keep serving; the next tick retries (sources stay committed)
                log.exception("background compaction or retention failed")
