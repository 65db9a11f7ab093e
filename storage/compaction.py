"""Compaction: merge an hour's small parts into one, so queries open few files.

Two rules pick what to merge. Size-tiered (``choose``) keeps the cost of a busy hour bounded
while it is written. Once an hour has gone quiet, every part of it having been there for
``CompactionConfig.cold_after_s``, its parts are merged whatever their sizes (``choose_cold``),
as ClickHouse does with ``min_age_to_force_merge_seconds``: an hour at rest ends as one part
instead of a big part and the few small ones that arrived after its last tiered merge, which
cost every query of that hour more files and every event a share of their footers and sketches.

A quiet hour's part that no merge takes (alone in its hour, or too big to merge) is completed
instead: given the files of the store's extras it lacks. A node's persists build no sketches
(``cluster/node.py``): its merges sketch the rows they write, and completion the rest, so an
hour at rest has every file whichever way it got there.

The merged part replaces its sources in one manifest commit; the sources' files are deleted
only when no reader still pins them. A crash before the commit leaves an orphan (deleted at the
next start), a crash after it leaves garbage (likewise): nothing is lost or counted twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from storage.manifest import Manifest, Part
from storage.memory import release_memory
from storage.partition import PartitionStore

__all__ = ["CompactionConfig", "Compactor", "choose", "choose_cold"]


@dataclass(frozen=True)
class CompactionConfig:
    min_parts: int = 4  # an hour with at least this many parts is merged
    max_rows: int = 20_000_000  # never build a part larger than this
    small_rows: int = 1_000_000  # parts up to this size are always merged together
    # A merge takes at most this many parts: its minute rollups are held whole (and were its
    # parts' sketches, before merges sketched their rows), so their memory grows with the parts
    # merged (a soak at 290k events/s left ~100 small parts an hour
    # per round, and merging them at once took the node from 0.6 to 1.7 GB); more parts make
    # more merges in the same round.
    max_parts: int = 32
    # An hour none of whose parts is newer than this is merged into one part, and a part of it
    # no merge takes is completed (0: never, but by a forced round).
    cold_after_s: float = 60.0


def choose(parts: Sequence[Part], config: CompactionConfig) -> list[Part]:
    """The parts of one hour to merge now: size-tiered, as in an LSM tree. Smallest first, a
    part joins only while it is at most twice the parts chosen before it together (small parts
    always join), so a big part is rewritten only once the small ones add up to half its size:
    each row is rewritten about log2(parts) times, not at every merge of its hour, and a busy
    hour's merge cost and memory stop growing with the hour. Nothing when fewer than
    ``min_parts`` would be merged."""
    chosen = _smallest_first(parts, config, tiered=True)
    return chosen if len(chosen) >= max(2, config.min_parts) else []


def choose_cold(parts: Sequence[Part], config: CompactionConfig) -> list[Part]:
    """The parts of a quiet hour to merge: as many as fit ``max_rows`` and ``max_parts``,
    smallest first, whatever their sizes; nothing when that is fewer than two."""
    chosen = _smallest_first(parts, config, tiered=False)
    return chosen if len(chosen) >= 2 else []


def _smallest_first(parts: Sequence[Part], config: CompactionConfig, tiered: bool) -> list[Part]:
    """The smallest parts, while they fit ``max_rows`` and ``max_parts`` and, when ``tiered``,
    while the next is at most twice those taken (or small)."""
    chosen: list[Part] = []
    rows = 0
    for p in sorted(parts, key=lambda p: (p.rows, p.id)):
        if rows + p.rows > config.max_rows or len(chosen) == config.max_parts:
            break
        if tiered and chosen and p.rows > max(2 * rows, config.small_rows):
            break
        chosen.append(p)
        rows += p.rows
    return chosen


class Compactor:
    def __init__(
        self,
        store: PartitionStore,
        manifest: Manifest,
        config: CompactionConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.manifest = manifest
        self.config = config or CompactionConfig()
        self.compactions = 0  # hours merged so far
        self.compact_seconds = 0.0  # wall time of those merges, for the compaction-duration metric
        self._clock = clock
        # When this compactor first saw each part: a part's age for ``cold_after_s`` (parts found
        # at start count from then, so a restart delays a quiet hour's merge, never hastens it).
        self._seen: dict[int, float] = {}

    def _quiet(self, parts: Sequence[Part], now: float) -> bool:
        """Whether every part of an hour has been there for ``cold_after_s``."""
        cold = self.config.cold_after_s
        return cold > 0 and all(now - self._seen.get(p.id, now) >= cold for p in parts)

    def candidates(self) -> list[list[Part]]:
        """Groups of parts worth merging, hour by hour, smallest parts first: an hour with more
        than ``max_parts`` small parts gives several groups (disjoint), merged one after another.
        An hour that is quiet (see the module docstring) and not merged by size gives one group
        of as many of its parts as a merge takes."""
        now = self._clock()
        hours = self.manifest.state.hours()
        self._seen = {p.id: self._seen.get(p.id, now) for parts in hours.values() for p in parts}
        groups: list[list[Part]] = []
        for _hour, parts in sorted(hours.items()):
            left = list(parts)
            while group := choose(left, self.config):
                groups.append(group)
                taken = {p.id for p in group}
                left = [p for p in left if p.id not in taken]
            if len(left) == len(parts) and self._quiet(parts, now) and (group := choose_cold(parts, self.config)):
                groups.append(group)
        return groups

    def pending_hours(self) -> int:
        """Hours that a background round would merge now or, once they are quiet, later: 0
        means compaction has nothing left to do until new parts arrive."""
        cold = self.config.cold_after_s > 0
        return sum(
            1
            for parts in self.manifest.state.hours().values()
            if choose(parts, self.config)
            or (cold and (choose_cold(parts, self.config) or any(self.store.missing(p) for p in parts)))
        )

    def incomplete(self) -> list[Part]:
        """Parts of quiet hours that lack a file of the store's extras (see the module
        docstring): completed after a round's merges, which leave only parts none would take."""
        now = self._clock()
        return [
            p
            for parts in self.manifest.state.hours().values()
            if self._quiet(parts, now)
            for p in parts
            if self.store.missing(p)
        ]

    def complete(self, part: Part) -> Part:
        """Build the files ``part`` lacks and commit it with them, in place of itself."""
        t0 = time.perf_counter()
        return self._replace([part], self.store.complete(part), t0)

    def compact_hour(self, parts: list[Part]) -> Part:
        t0 = time.perf_counter()
        merged = self._replace(parts, self.store.merge(parts), t0)
        self.compactions += 1
        return merged

    def _replace(self, old: Sequence[Part], new: Part, t0: float) -> Part:
        """Commit ``new`` in place of ``old``, made since ``t0``."""
        self.manifest.commit(add=[new], remove=[p.id for p in old])
        # A merge holds a window of its hour's rows and its rollups, a completion the rows it
        # sketches: hand that memory back before the next hour of a round (a round during a W20
        # load merges one hour after another for a minute, beside the persists).
        release_memory()
        self.compact_seconds += time.perf_counter() - t0
        return new

    def run_once(self, force: bool = False) -> int:
        """Merge every hour that qualifies and complete the parts of quiet hours no merge takes;
        returns the number of hours merged or completed. ``force`` merges every hour with 2+
        parts down to one part, still ``max_parts`` at a time (smallest first), so a forced
        round's memory is bounded like a background one's, and completes every lone part."""
        if not force:
            groups = self.candidates()
            for parts in groups:
                self.compact_hour(parts)
            completed = [self.complete(p) for p in self.incomplete()]
            return len({g[0].hour for g in groups} | {p.hour for p in completed})
        hours = 0
        cap = max(2, self.config.max_parts)
        for parts in list(self.manifest.state.hours().values()):
            left = list(parts)
            if len(left) < 2:
                if left and self.store.missing(left[0]):
                    self.complete(left[0])
                    hours += 1
                continue
            while len(left) > cap:  # the smallest first, each group in the hour's order
                smallest = {p.id for p in sorted(left, key=lambda p: (p.rows, p.id))[:cap]}
                merged = self.compact_hour([p for p in left if p.id in smallest])
                left = [*(p for p in left if p.id not in smallest), merged]
            self.compact_hour(left)
            hours += 1
        return hours
