"""The rollups of committed parts, held in memory as arrays: count and sum of any range with
binary searches, and the heads of the producer rollups for top-k, without DuckDB.

For each part, ``PartIndex`` keeps the minute rollup summed over shards, per category: the
minutes that have rows, and prefix sums of their counts and sums. Because the part's raw rows
are sorted by (category, timestamp), the prefix counts are also row offsets into the events
file: a ragged edge (part of one minute) is read as exactly that minute's rows through a
``PartReader``. ``PartTop`` keeps, per category, the ``top_n`` producers by count with the
largest count left out (the *threshold*): enough to prove a top-k exact without the rest
(``query/topk.py``). Parts are immutable and their ids never reused, so entries never go stale;
they are dropped when their part leaves the manifest, or least-recently-used first when the
cache is over its byte budget.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from query.lru import ByteLRU
from query.part_reader import PartReader
from query.timerange import ceil_to, floor_to
from storage.manifest import Part
from storage.ordering import EVENTS_SORT_KEY, EVENTS_SORTED_BY, lex_order, string_ranks
from storage.rollup import exact_sum, int64_sums_are_exact
from storage.schema import HOUR_NS, MINUTE_NS

__all__ = ["CacheConfig", "Entry", "PartIndex", "PartTop", "RollupCache", "Span", "TopList", "UnusableIndex"]

Ints = npt.NDArray[Any]


class Entry(Protocol):
    """What the cache holds: something of one part, with its size."""

    @property
    def part(self) -> Part: ...

    @property
    def nbytes(self) -> int: ...


T = TypeVar("T", bound=Entry)


class UnusableIndex(Exception):
    """A part cannot be answered from its index (written in an older layout, or its files
    disagree); the engine answers that part with DuckDB instead."""


@dataclass(frozen=True)
class CacheConfig:
    max_bytes: int = 64 << 20  # indexes and top lists of all parts, together
    top_n: int = 128  # producers kept per (part, category) for top-k (answers k <= 64)


@dataclass(frozen=True, eq=False)
class _Minutes:
    row0: int  # the category's first row in the events file
    minutes: Ints  # minute starts that have rows, ascending
    rows: Ints  # prefix counts (len(minutes) + 1): row offsets from row0
    sums: Ints  # prefix sums of value, int64 or (when int64 could overflow) Python ints


@dataclass(frozen=True, eq=False)
class PartIndex:
    """Count and sum of one part for any category and range."""

    part: Part
    events: str
    categories: dict[str, _Minutes]
    shards: Ints  # distinct shards present, ascending
    nbytes: int

    def aggregate(self, category: str, start: int, end: int, reader: PartReader) -> tuple[int, int]:
        """Exact (count, sum) of the part's rows of ``category`` in ``[start, end)``."""
        cm = self.categories.get(category)
        # Clip to the part's hour, not to its first and last rows: hour bounds are whole
        # minutes, so clipping adds no ragged edge of its own.
        lo, hi = max(start, self.part.hour), min(end, self.part.hour + HOUR_NS)
        if cm is None or lo >= hi or start > self.part.max_ts or end <= self.part.min_ts:
            return 0, 0
        m1, m2 = ceil_to(lo, MINUTE_NS), floor_to(hi, MINUTE_NS)
        count = total = 0
        if m1 <= m2:
            i, j = np.searchsorted(cm.minutes, [m1, m2])
            count += int(cm.rows[j] - cm.rows[i])
            total += int(cm.sums[j] - cm.sums[i])
            edges = [(lo, m1), (m2, hi)]
        else:
            edges = [(lo, hi)]
        for a, b in edges:
            if a < b:
                c, s = self._edge(cm, a, b, reader)
                count += c
                total += s
        return count, total

    def _minute_rows(self, cm: _Minutes, minute: int) -> tuple[int, int]:
        k = int(np.searchsorted(cm.minutes, minute))
        if k == len(cm.minutes) or cm.minutes[k] != minute:
            return 0, 0
        return cm.row0 + int(cm.rows[k]), cm.row0 + int(cm.rows[k + 1])

    def _edge(self, cm: _Minutes, a: int, b: int, reader: PartReader) -> tuple[int, int]:
        """Rows in ``[a, b)``, a piece of one minute, read from the events file."""
        minute = floor_to(a, MINUTE_NS)
        first, stop = self._minute_rows(cm, minute)
        if first == stop:
            return 0, 0
        cols = reader.columns(self.events, first, stop, ["timestamp", "value"])
        ts = cols["timestamp"].to_numpy()
        if ts[0] < minute or ts[-1] >= minute + MINUTE_NS:
            raise UnusableIndex(f"{self.events}: rows {first}..{stop} are not minute {minute}")
        i, j = np.searchsorted(ts, [a, b])
        return int(j - i), exact_sum(cols["value"].to_numpy()[i:j])

    def rows_in(self, category: str, start: int, end: int) -> int:
        """Rows of ``category`` in the whole minutes ``[start, end)`` touches (an estimate of
        the rows in range: exact up to the two partial minutes)."""
        first, stop = self.row_range(category, start, end)
        return stop - first

    def row_range(self, category: str, start: int, end: int) -> tuple[int, int]:
        """The rows of ``category`` in the whole minutes that ``[start, end)`` touches: a
        superset of the rows in range, to be filtered by timestamp."""
        cm = self.categories.get(category)
        if cm is None or start >= end:
            return 0, 0
        i, j = np.searchsorted(cm.minutes, [floor_to(start, MINUTE_NS), ceil_to(end, MINUTE_NS)])
        return cm.row0 + int(cm.rows[i]), cm.row0 + int(cm.rows[j])


@dataclass(frozen=True, eq=False)
class TopList:
    """The head of one category's producer rollup in one part."""

    ids: pa.Array  # producer ids, count descending
    counts: Ints
    shards: Ints
    threshold: int  # every producer not listed has at most this count (0: the list is complete)

    def only(self, keep: Ints) -> TopList:
        """The producers at ``keep`` (a boolean mask), the threshold unchanged: the head of the
        part's rows of some shards (a producer lives in one shard)."""
        return TopList(self.ids.filter(pa.array(keep)), self.counts[keep], self.shards[keep], self.threshold)


@dataclass(frozen=True)
class Span:
    """One category's rows in a producer rollup file sorted by category: ``[first, stop)``."""

    first: int
    stop: int


@dataclass(frozen=True, eq=False)
class PartTop:
    part: Part
    categories: dict[str, TopList]
    nbytes: int
    # Per category, its rows in the rollup file, to look up the exact count of a producer the
    # head does not list (empty when the file is not sorted by category).
    spans: dict[str, Span] = field(default_factory=dict)


def _prefix(values: Ints) -> Ints:
    out = np.zeros(len(values) + 1, dtype=values.dtype)
    np.cumsum(values, out=out[1:])
    return out


def load_index(part: Part, root: Path) -> PartIndex:
    events = part.path(root, "events")
    # The footer is parsed here and dropped: the reader opens (and caches) the files queries
    # actually read, so loading every part's index does not push those out.
    meta = pq.read_metadata(events)
    kv = meta.metadata or {}
    if kv.get(EVENTS_SORT_KEY) != EVENTS_SORTED_BY:
        raise UnusableIndex(f"{events} is not sorted by (category, timestamp)")
    table = pq.ParquetFile(part.path(root, "rollup_minute")).read(
        columns=["category", "shard", "minute", "count", "sum"], use_threads=False
    )
    shards = np.unique(table.column("shard").to_numpy())
    cells = table.group_by(["category", "minute"], use_threads=False).aggregate([("count", "sum"), ("sum", "sum")])
    ranks, names = string_ranks(cells.column("category"))
    minutes = cells.column("minute").to_numpy()
    order = lex_order(ranks, minutes) if len(minutes) else np.zeros(0, dtype=np.int64)
    counts = cells.column("count_sum").to_numpy()[order].astype(np.int64)
    sums_col = cells.column("sum_sum").take(pa.array(order))
    try:
        sums = sums_col.cast(pa.int64()).to_numpy()
        exact = int64_sums_are_exact(sums)
    except pa.ArrowInvalid:  # a cell's sum is beyond int64
        exact = False
    if not exact:
        sums = np.array([int(v) for v in sums_col.to_pylist()], dtype=object)
    minutes, ranks = minutes[order], ranks[order]
    if int(counts.sum()) != part.rows or meta.num_rows != part.rows:
        raise UnusableIndex(f"part {part.id}: rollup, events file and manifest disagree on the row count")
    bounds = np.concatenate(([0], np.cumsum(np.bincount(ranks, minlength=len(names)))))
    categories = {}
    row0 = 0
    for r, name in enumerate(names.to_pylist()):
        lo, hi = int(bounds[r]), int(bounds[r + 1])
        rows = _prefix(counts[lo:hi])
        categories[str(name)] = _Minutes(row0, minutes[lo:hi], rows, _prefix(sums[lo:hi]))
        row0 += int(rows[-1])
    nbytes = 512 + sum(len(n) + 100 + m.minutes.nbytes + m.rows.nbytes + m.sums.nbytes for n, m in categories.items())
    return PartIndex(part, events, categories, shards, nbytes + shards.nbytes)


def load_top(part: Part, root: Path, top_n: int) -> PartTop:
    table = pq.ParquetFile(part.path(root, "rollup_producer")).read(
        columns=["category", "shard", "producer_id", "count"], use_threads=False
    )
    counts = table.column("count").to_numpy()
    ranks, names = string_ranks(table.column("category"))
    if len(counts) == 0:
        return PartTop(part, {}, 256)
    ids, shards = table.column("producer_id"), table.column("shard").to_numpy()
    bounds = np.concatenate(([0], np.cumsum(np.bincount(ranks, minlength=len(names)))))
    spans = _spans(ranks, bounds, names.to_pylist())
    order = lex_order(ranks, int(counts.max()) - counts)  # category, then count descending
    ranks, counts = ranks[order], counts[order]
    categories = {}
    nbytes = 256 + 100 * len(spans)
    for r, name in enumerate(names.to_pylist()):
        lo, hi = int(bounds[r]), int(bounds[r + 1])
        head = order[lo : min(hi, lo + top_n)]
        listed = ids.take(pa.array(head)).combine_chunks()
        threshold = int(counts[lo + top_n]) if hi - lo > top_n else 0
        top = TopList(listed, counts[lo : lo + len(head)].copy(), shards[head], threshold)
        categories[str(name)] = top
        nbytes += listed.nbytes + top.counts.nbytes + top.shards.nbytes + 200
    return PartTop(part, categories, nbytes, spans)


def _spans(ranks: Ints, bounds: Ints, names: list[str]) -> dict[str, Span]:
    """Each category's row range, when the file is sorted by category (as rollups are written)."""
    if len(ranks) > 1 and not bool(np.all(ranks[1:] >= ranks[:-1])):
        return {}  # another order: heads work, lookups don't
    return {str(name): Span(int(bounds[r]), int(bounds[r + 1])) for r, name in enumerate(names)}


class RollupCache:
    """Thread-safe, byte-bounded cache of ``PartIndex`` and ``PartTop`` by part id."""

    def __init__(self, root: Path, reader: PartReader, config: CacheConfig | None = None) -> None:
        self.root = root
        self.reader = reader
        self.config = config or CacheConfig()
        self._lock = threading.Lock()
        self._entries: ByteLRU[tuple[str, int], Entry] = ByteLRU(self.config.max_bytes, lambda e: e.nbytes, keep=1)
        self._unusable: set[int] = set()
        self.loads = 0  # entries loaded from files (cache misses), for tests and metrics

    @property
    def nbytes(self) -> int:
        return self._entries.nbytes

    def index(self, part: Part) -> PartIndex:
        """The part's index; raises ``UnusableIndex`` when the part must be read by DuckDB."""
        if part.id in self._unusable:
            raise UnusableIndex(f"part {part.id}")
        try:
            return self.entry("index", part, lambda: load_index(part, self.root))
        except UnusableIndex:
            self.mark_unusable(part)
            raise

    def top(self, part: Part) -> PartTop:
        return self.entry("top", part, lambda: load_top(part, self.root, self.config.top_n))

    def entry(self, kind: str, part: Part, load: Callable[[], T]) -> T:
        """The part's entry of ``kind``, loaded by ``load`` on a miss (other modules keep their
        own kinds of per-part entries here, under the same byte budget)."""
        key = (kind, part.id)
        with self._lock:
            hit = self._entries.get(key)
        if hit is not None:
            return hit  # type: ignore[return-value]
        value = load()
        with self._lock:
            self.loads += 1
            return self._entries.put(key, value)  # type: ignore[return-value]

    def mark_unusable(self, part: Part) -> None:
        with self._lock:
            self._unusable.add(part.id)

    def cached(self, kind: str, part_id: int) -> bool:
        with self._lock:
            return (kind, part_id) in self._entries

    def retain(self, live: Iterable[Part]) -> list[Part]:
        """Drop entries of parts not in ``live`` (removed by compaction or retention); returns
        the dropped parts so their files can be forgotten by the reader too."""
        ids = {p.id for p in live}
        with self._lock:
            dropped = [entry.part for entry in self._entries.pop_where(lambda k: k[1] not in ids)]
            self._unusable &= ids
        return dropped
