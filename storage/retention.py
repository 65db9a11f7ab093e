"""Retention: whole hours older than the configured age leave the node in one manifest commit.

An hour ``[h, h + 1h)`` is dropped once every instant in it is older than ``max_age_ns``, i.e.
when ``h + 1h <= now - max_age_ns``; an hour that is only partly expired is kept whole (data is
dropped by the hour, never by the row). The parts go in a single commit, so a reader sees the
hour either whole or gone; their files are deleted when no pinned reader still names them (the
manifest's garbage rule), and an hour folder left empty is removed on a later run. Rows of an
expired hour still in the live buffer are dropped on the first run after they are persisted.
Every replica runs its own retention against its own clock, so replicas converge on the same
cut without talking to each other.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from storage.manifest import Manifest, Part
from storage.schema import HOUR_NS

__all__ = ["Retention", "RetentionConfig", "RetentionRun"]


@dataclass(frozen=True)
class RetentionConfig:
    """``max_age_ns=None`` keeps everything forever; ``every_s`` is how often ``maybe_run``
    actually looks (the check itself only reads the manifest in memory)."""

    max_age_ns: int | None = None
    every_s: float = 60.0


@dataclass(frozen=True)
class RetentionRun:
    """What one run dropped."""

    hours: int = 0
    parts: int = 0
    rows: int = 0


def _folder_hour(name: str) -> int | None:
    """The hour start (Unix ns) of a ``hour=YYYY-MM-DDTHH`` folder name, or None."""
    if not name.startswith("hour="):
        return None
    try:
        dt = datetime.strptime(name[5:], "%Y-%m-%dT%H").replace(tzinfo=UTC)
    except ValueError:
        return None
    return int(dt.timestamp()) * 1_000_000_000


class Retention:
    """Drops expired hours from one node's manifest; safe to call from any thread."""

    def __init__(
        self,
        root: Path,
        manifest: Manifest,
        config: RetentionConfig | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = root
        self.manifest = manifest
        self.config = config or RetentionConfig()
        self._clock_ns = clock_ns
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._last_run: float | None = None
        # Plain counters, read by web/metrics.py.
        self.runs = 0
        self.hours_dropped = 0
        self.parts_dropped = 0
        self.rows_dropped = 0

    def cutoff(self, now_ns: int | None = None) -> int | None:
        """The start of the newest wholly expired hour (hours starting at or before it go);
        None when retention is off."""
        if self.config.max_age_ns is None:
            return None
        now = self._clock_ns() if now_ns is None else now_ns
        last = now - self.config.max_age_ns - HOUR_NS  # an hour starting here ends at the horizon
        return last - last % HOUR_NS

    def expired(self, now_ns: int | None = None) -> list[Part]:
        """The committed parts whose whole hour is past the retention age."""
        cut = self.cutoff(now_ns)
        if cut is None:
            return []
        return [p for p in self.manifest.state.parts if p.hour <= cut]

    def run_once(self, now_ns: int | None = None) -> RetentionRun:
        """Drop every expired hour in one manifest commit; returns what was dropped (all zero
        when retention is off or nothing has expired)."""
        with self._lock:
            self._last_run = self._monotonic()
            self.runs += 1
            cut = self.cutoff(now_ns)
            if cut is None:
                return RetentionRun()
            gone = self.expired(now_ns)
            if gone:
                self.manifest.commit(remove=[p.id for p in gone])
            run = RetentionRun(len({p.hour for p in gone}), len(gone), sum(p.rows for p in gone))
            self.hours_dropped += run.hours
            self.parts_dropped += run.parts
            self.rows_dropped += run.rows
            self._remove_empty_folders(cut)
            return run

    def maybe_run(self) -> RetentionRun | None:
        """``run_once`` if retention is on and ``every_s`` has passed since the last run (for the
        node's background loop); None when it did not run."""
        if self.config.max_age_ns is None:
            return None
        last = self._last_run
        if last is not None and self._monotonic() - last < self.config.every_s:
            return None
        return self.run_once()

    def _remove_empty_folders(self, cut: int) -> None:
        # Only folders of expired hours: a live hour's folder may be between mkdir and the first
        # part file of a persist. Files of a dropped hour are deleted once unpinned, so its folder
        # empties later; a later run removes it then.
        base = self.root / "partitions"
        if not base.is_dir():
            return
        for d in base.iterdir():
            hour = _folder_hour(d.name)
            if hour is None or hour > cut or not d.is_dir():
                continue
            with contextlib.suppress(OSError):  # not empty (yet), or already gone
                d.rmdir()
