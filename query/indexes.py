"""Answers from in-memory indexes: the engine's fast path, for every part it can serve.

``PartIndexes.aggregate`` answers count and sum of the committed parts from their
``PartIndex`` (whole minutes from prefix sums, the ragged edges from a few rows of the events
file) and names the parts it could not serve; ``PartIndexes.topk`` answers a top-k from the
parts' producer heads and the exact counts of the edges and the live buffer, or returns None.
Either way the engine answers what is left with DuckDB, so the fast path only ever makes an
answer faster, never different. A background thread loads the indexes of new parts as soon as
they are committed, so queries rarely pay for a load.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from ingest.buffer import BufferView
from query.part_reader import PartReader, ReaderConfig
from query.rollup_cache import CacheConfig, PartIndex, PartTop, RollupCache, TopList, UnusableIndex
from query.shard_rollup import PartShards, ShardMask, load_shards
from query.timerange import ceil_to, floor_to
from query.topk import RESOLVED_SCHEMA, Bounds, bounds, count_ids, heads_of, prove, sum_by_id, top_of, unresolved
from storage.manifest import Manifest, ManifestState, Part
from storage.memory import release_memory
from storage.schema import HOUR_NS, MINUTE_NS

__all__ = ["IndexConfig", "PartIndexes"]

Ints = npt.NDArray[Any]
_CHUNK_ROWS = 1 << 20  # top-k reads and counts a long edge this many rows at a time


@dataclass(frozen=True)
class IndexConfig:
    cache: CacheConfig = field(default_factory=CacheConfig)
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    warm: bool = True  # load new parts' indexes in the background
    # ... of the newest this many hours of data only: older parts load when a query first needs
    # them. Warming every part filled the cache as data grew (a node holding ten W20 days used
    # 20 MiB of indexes and 65 MiB more RSS than one holding a day, none of it for the day the
    # queries read: issue 8's "RSS at 200M events").
    warm_hours: int = 24
    poll_s: float = 0.25  # how often the background loader looks for new parts
    # A top-k the heads leave open may look up this many producers' exact counts in the parts
    # whose heads don't list them (e.g. over a shard subset, whose k-th count is lower than the
    # whole part's); beyond, DuckDB answers.
    lookup_ids: int = 64


def _wanted(shards: Sequence[int] | None) -> Ints | None:
    return None if shards is None else np.array(sorted(set(shards)), dtype=np.int64)


class PartIndexes:
    def __init__(self, root: Path, manifest: Manifest, config: IndexConfig | None = None) -> None:
        self.config = config or IndexConfig()
        self.manifest = manifest
        self.reader = PartReader(self.config.reader)
        self.cache = RollupCache(root, self.reader, self.config.cache)
        self._seen = -1
        self._subsets = False  # a query asked for some shards: warm the per-shard totals too
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._warmer: threading.Thread | None = None
        if self.config.warm:
            self._warmer = threading.Thread(target=self._warm_loop, name="index-warmer", daemon=True)
            self._warmer.start()
            self.notice(manifest.state)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._warmer is not None:
            self._warmer.join(timeout=10)

    # -- background loading ----------------------------------------------------------------------

    def notice(self, state: ManifestState) -> None:
        """A query saw ``state``: wake the warmer if the parts changed since last time."""
        if state.version != self._seen:
            self._seen = state.version
            self._wake.set()

    def warm(self, state: ManifestState) -> None:
        """Forget removed parts, then load the indexes of the parts of the newest
        ``warm_hours`` hours, newest first, while they fit the cache."""
        for part in self.cache.retain(state.parts):
            self.reader.forget({part.path(self.cache.root, kind) for kind in part.files})
        budget = self.cache.config.max_bytes * 3 // 4
        loads = self.cache.loads
        newest = max((p.hour for p in state.parts), default=0)
        horizon = newest - (self.config.warm_hours - 1) * HOUR_NS
        for part in sorted(state.parts, key=lambda p: (p.hour, p.id), reverse=True):
            if self._stop.is_set() or self.cache.nbytes > budget or part.hour < horizon:
                break
            try:
                self.cache.index(part)
                self.cache.top(part)
                if self._subsets:
                    self.shards(part)
            except (UnusableIndex, OSError):
                continue  # answered by DuckDB; a part deleted meanwhile is simply skipped
        if self.cache.loads != loads:
            release_memory()  # loading reads whole rollup files; keep only the small indexes

    def warm_key(self) -> tuple[int, bool]:
        """What a warm pass depends on: the parts (the manifest's version) and whether a query
        asked for a shard subset (then per-shard totals are warmed too). The warmer runs a
        pass whenever it changes."""
        return self.manifest.state.version, self._subsets

    def _warm_loop(self) -> None:
        warmed: tuple[int, bool] | None = None  # (manifest version, subsets) of the last pass
        while not self._stop.is_set():
            # Woken by a query that saw new parts, or by itself every poll_s: new parts are
            # loaded right after a persist or a merge, before a query has to load them itself.
            # The first subset query wakes it too: the parts warmed already need their per-shard
            # totals as well.
            self._wake.wait(self.config.poll_s)
            self._wake.clear()
            if self._stop.is_set() or self.warm_key() == warmed:
                continue
            subsets = self._subsets
            with self.manifest.pin() as state:  # no file of these parts is deleted meanwhile
                self.warm(state)
                warmed = (state.version, subsets)

    # -- count and sum ---------------------------------------------------------------------------

    def shards(self, part: Part) -> PartShards:
        """The part's per-shard totals (loaded once a query asks for a subset of its shards)."""
        self.cache.index(part)  # a part whose index is unusable has no usable shard totals either
        return self.cache.entry("shards", part, lambda: load_shards(part, self.cache.root))

    def aggregate(
        self, state: ManifestState, category: str, start: int, end: int, shards: Sequence[int] | None
    ) -> tuple[int, int, list[Part]]:
        """(count, sum) over the parts served from indexes, and the parts left for DuckDB."""
        wanted = _wanted(shards)
        mask = None if wanted is None else ShardMask(wanted)
        count = total = 0
        slow: list[Part] = []
        for part in state.parts_between(start, end):
            try:
                index = self.cache.index(part)
                if mask is not None:
                    inside = mask.of(index.shards)
                    if not inside.any():
                        continue  # none of the part's shards is asked for
                    if not inside.all():
                        # Some are (a coordinator asks us for the shards it lacks): per-shard
                        # totals and per-shard minutes, see query/shard_rollup.py.
                        if not self._subsets:
                            self._subsets = True
                            self._wake.set()
                        c, s = self.shards(part).aggregate(index, category, start, end, mask, self.reader)
                        count += c
                        total += s
                        continue
                c, s = index.aggregate(category, start, end, self.reader)
            except UnusableIndex:
                self.cache.mark_unusable(part)
                slow.append(part)
                continue
            count += c
            total += s
        return count, total, slow

    # -- top-k -----------------------------------------------------------------------------------

    def _edge_ids(
        self, index: PartIndex, category: str, start: int, end: int, wanted: Ints | None
    ) -> Iterator[pa.Array]:
        """Producer ids of the part's rows of ``category`` in ``[start, end)``, read at most
        ``_CHUNK_ROWS`` rows at a time (a busy hour's edge can be tens of millions of rows)."""
        first, stop = index.row_range(category, start, end)
        names = ["timestamp", "producer_id"] if wanted is None else ["timestamp", "producer_id", "shard"]
        mask = None if wanted is None else ShardMask(wanted)
        for a in range(first, stop, _CHUNK_ROWS):
            b = min(stop, a + _CHUNK_ROWS)
            cols = self.reader.columns(index.events, a, b, names)
            ts = cols["timestamp"].to_numpy()
            if len(ts) and (
                (a == first and ts[0] < floor_to(start, MINUTE_NS)) or (b == stop and ts[-1] >= ceil_to(end, MINUTE_NS))
            ):
                raise UnusableIndex(f"{index.events}: rows {first}..{stop} are not the minutes asked for")
            i, j = np.searchsorted(ts, [start, end])  # rows of one category are sorted by time
            ids = cols["producer_id"].slice(i, j - i)
            if mask is not None:
                ids = ids.filter(pa.array(mask.of(cols["shard"].to_numpy()[i:j])))
            yield ids

    def topk(
        self,
        state: ManifestState,
        buffer: BufferView,
        category: str,
        start: int,
        end: int,
        k: int,
        shards: Sequence[int] | None,
    ) -> list[tuple[str, int]] | None:
        """The exact top-k, or None when the engine must answer it with DuckDB."""
        if k > self.cache.config.top_n // 2:
            return None  # the heads are too short to prove a long answer
        wanted = _wanted(shards)
        mask = None if wanted is None else ShardMask(wanted)
        filtered = False  # a head of a part holding shards not asked for: filter the heads
        h1, h2 = ceil_to(start, HOUR_NS), floor_to(end, HOUR_NS)
        heads: list[TopList] = []
        tops: list[PartTop] = []  # the part of each head, for lookups
        added = _Tally()  # rows counted one by one
        removed = _Tally()  # rows subtracted from a whole part's head
        try:
            for part in state.parts_between(start, end):
                # Only parts with shards not asked for are filtered (a coordinator asks itself
                # for all of its shards); parts with none asked for are skipped, thresholds too.
                part_wanted = wanted
                if mask is not None:
                    inside_shards = mask.of(self.cache.index(part).shards)
                    if not inside_shards.any():
                        continue
                    if inside_shards.all():
                        part_wanted = None
                if h1 <= part.hour and part.hour + HOUR_NS <= h2:
                    top = self.cache.top(part)
                    head = top.categories.get(category)
                    if head is not None:
                        heads.append(head)
                        tops.append(top)
                        filtered = filtered or part_wanted is not None
                    continue
                index = self.cache.index(part)
                lo, hi = max(start, part.hour), min(end, part.hour + HOUR_NS)
                inside = index.rows_in(category, lo, hi)
                whole = index.rows_in(category, part.hour, part.hour + HOUR_NS)
                if 2 * inside <= whole:
                    added.add(self._edge_ids(index, category, lo, hi, part_wanted))
                    continue
                # Most of the part's hour is in range: take its head and subtract the rows
                # outside the range, which are fewer to read than the rows inside.
                top = self.cache.top(part)
                head = top.categories.get(category)
                if head is not None:
                    heads.append(head)
                    tops.append(top)
                    filtered = filtered or part_wanted is not None
                    removed.add(self._edge_ids(index, category, part.hour, lo, part_wanted))
                    removed.add(self._edge_ids(index, category, hi, part.hour + HOUR_NS, part_wanted))
        except UnusableIndex:
            return None  # a part written in an older layout: the long way answers it
        counts = _add_counts(buffer.producer_counts(category, start, end, shards), added.counts())
        if not heads:
            return top_of(counts, k)
        minus = removed.counts()
        if minus.num_rows:
            minus = minus.set_column(1, "count", pc.negate(minus.column("count")))
            counts = _add_counts(counts, minus)
        if filtered and mask is not None:
            # Once for both ``bounds`` calls; ``_look_up`` needs no more of a head than this.
            heads = heads_of(heads, mask)
        known = bounds(heads, counts)
        answer = prove(known, k)
        if answer is None:
            resolved = self._look_up(known, heads, tops, category, k)
            if resolved is not None:
                answer = prove(bounds(heads, counts, resolved=resolved), k)
        return answer

    def _look_up(
        self, known: Bounds, heads: Sequence[TopList], tops: Sequence[PartTop], category: str, k: int
    ) -> pa.Table | None:
        """Exact counts, in the parts whose heads don't list them, of the producers that keep
        ``known`` from proving a top-k (``query/topk.py`` ``unresolved``), as ``RESOLVED_SCHEMA``
        rows; None when there are too many or a part's rollup is not sorted by category."""
        need = unresolved(known, k, self.config.lookup_ids)
        if need is None:
            return None
        ids: list[pa.Array] = []
        found: list[Ints] = []
        thresholds: list[Ints] = []
        for head, top in zip(heads, tops, strict=True):
            if head.threshold == 0:
                continue  # a complete list: a producer it does not list has no rows there
            span = top.spans.get(category)
            if span is None:
                return None
            missing = need.filter(pc.invert(pc.is_in(need, head.ids)))
            if len(missing) == 0:
                continue
            # One read of the category's rows per part (a producer has one row per part: one
            # hour); a producer without a row there has a count of 0 in it.
            cols = self.reader.columns(
                top.part.path(self.cache.root, "rollup_producer"), span.first, span.stop, ["producer_id", "count"]
            )
            hit = pc.is_in(cols["producer_id"], missing)
            present = cols["producer_id"].filter(hit)
            absent = missing.filter(pc.invert(pc.is_in(missing, present)))
            ids += [present, absent]
            found += [cols["count"].filter(hit).to_numpy(), np.zeros(len(absent), dtype=np.int64)]
            thresholds.append(np.full(len(present) + len(absent), head.threshold, dtype=np.int64))
        if not ids:
            return None
        return pa.table(
            [pa.chunked_array(ids, pa.string()), np.concatenate(found).astype(np.int64), np.concatenate(thresholds)],
            schema=RESOLVED_SCHEMA,
        )


class _Tally:
    """Producer ids counted as they are read, folded into counts every ``_CHUNK_ROWS`` ids: a
    top-k holds one chunk of ids plus a count per distinct producer, not every id in range."""

    def __init__(self) -> None:
        self._counts = count_ids([])
        self._ids: list[pa.Array] = []
        self._held = 0

    def add(self, chunks: Iterable[pa.Array]) -> None:
        for ids in chunks:
            self._ids.append(ids)
            self._held += len(ids)
            if self._held >= _CHUNK_ROWS:
                self._fold()

    def _fold(self) -> None:
        self._counts = _add_counts(self._counts, count_ids(self._ids))
        self._ids, self._held = [], 0

    def counts(self) -> pa.Table:
        self._fold()
        return self._counts


def _add_counts(a: pa.Table, b: pa.Table) -> pa.Table:
    if a.num_rows == 0:
        return b
    if b.num_rows == 0:
        return a
    both = pa.concat_tables([a.select(["producer_id", "count"]).cast(b.schema), b])
    ids, (counts,) = sum_by_id(both.column("producer_id"), both.column("count").to_numpy())
    return pa.table({"producer_id": ids, "count": counts})
