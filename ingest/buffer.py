"""The live buffer: acknowledged rows not yet persisted as Parquet, queryable at once.

Rows sit in memory as ``Run``s (see ``ingest/run.py``): the rows of each WAL record with a
(category, timestamp) index built before the record was appended, so count, sum and the
producers of any range of live data are answered by binary searches, never by a scan or a
DuckDB query. The buffer is frozen and replaced when it is persisted; a query takes a
``BufferView`` of the active and all frozen-but-not-yet-committed generations under one lock, so
every row is seen exactly once whether it is in memory or already in a committed part.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from ingest.run import Run
from storage.rollup import MINUTE_ROLLUP_SCHEMA, merge_rollups, sum_by_id
from storage.rollup import minute_rollup as _minute_rollup
from storage.schema import STORED_SCHEMA

__all__ = ["MINUTE_ROLLUP_SCHEMA", "BufferView", "CountCache", "Generation", "LiveBuffer", "Run", "minute_rollup"]

# Runs below this many rows are "small"; once ``_SMALL_RUNS_FOLD`` of them trail a generation
# they are folded into one, so a stream of tiny batches does not leave thousands of runs for
# every query to visit.
_SMALL_RUN_ROWS = 16_384
_SMALL_RUNS_FOLD = 16


def minute_rollup(rows: pa.Table, *, merge: bool = False) -> pa.Table:
    """Minute rollup of STORED_SCHEMA rows (or, with ``merge``, re-aggregation of rollup rows)."""
    if merge:
        return merge_rollups([rows], MINUTE_ROLLUP_SCHEMA)
    return _minute_rollup(rows.select(STORED_SCHEMA.names))


@dataclass
class Generation:
    """One generation of the buffer: what was appended between two freezes."""

    runs: list[Run] = field(default_factory=list)
    rows: int = 0
    nbytes: int = 0
    first_seq: int = 0
    last_seq: int = 0
    created: float = field(default_factory=time.monotonic)
    records: list[object] = field(default_factory=list)  # per-record context (idempotency keys)

    def table(self) -> pa.Table:
        return _concat([r.rows for r in self.runs])

    def pieces(self, max_bytes: int) -> list[Generation]:
        """The runs in order, cut into pieces of at most ``max_bytes`` (a bigger run is a piece
        of its own). Pieces carry rows only: sequence numbers and records stay with ``self``."""
        out: list[Generation] = []
        for run in self.runs:
            last = out[-1] if out else None
            if last is None or (last.nbytes + run.nbytes > max_bytes and last.runs):
                last = Generation()
                out.append(last)
            last.runs.append(run)
            last.rows += run.num_rows
            last.nbytes += run.nbytes
        return out

    def by_category(self) -> npt.NDArray[Any]:
        """Positions of ``table()``'s rows sorted by (category, timestamp), from the runs'
        indexes: per category, the runs' slices (each already in timestamp order) are merged by
        a stable sort that finds those sorted runs, instead of sorting every row from scratch.
        Categories come in UTF-8 byte order, the order parts are written in."""
        offsets = np.cumsum([0] + [r.num_rows for r in self.runs])
        categories = sorted({c for r in self.runs for c in r.spans}, key=lambda c: c.encode())
        pieces: list[npt.NDArray[Any]] = []
        for c in categories:
            positions, stamps = [], []
            for offset, run in zip(offsets, self.runs, strict=False):
                span = run.spans.get(c)
                if span is not None:
                    lo, hi = span
                    positions.append(run.order[lo:hi].astype(np.int64) + offset)
                    stamps.append(run.ts[lo:hi])
            if len(positions) == 1:
                pieces.append(positions[0])
            else:
                merged = np.argsort(np.concatenate(stamps), kind="stable")
                pieces.append(np.concatenate(positions)[merged])
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)


def _concat(tables: Sequence[pa.Table]) -> pa.Table:
    return pa.concat_tables(tables) if tables else STORED_SCHEMA.empty_table()


def _shard_array(shards: Sequence[int] | None) -> npt.NDArray[Any] | None:
    return None if shards is None else np.array(sorted(set(shards)), dtype=np.int64)


def _counts_table(pieces: Sequence[tuple[pa.Array, npt.NDArray[Any]]]) -> pa.Table:
    if not pieces:
        return pa.table({"producer_id": pa.array([], pa.string()), "count": pa.array([], pa.int64())})
    if len(pieces) == 1:
        ids, counts = pieces[0]
    else:
        ids, (counts,) = sum_by_id(
            pa.chunked_array([p[0] for p in pieces], pa.string()), np.concatenate([p[1] for p in pieces])
        )
    return pa.table({"producer_id": ids, "count": pa.array(counts, pa.int64())})


class CountCache:
    """Producer counts of one category over a set of whole runs, least recently used out.

    Keyed by the runs' serial numbers (not the runs: a cached entry must not keep persisted rows
    alive). After ingest stops the buffer's runs stay the same until the next persist, so every
    top-k over them finds its counts here."""

    def __init__(self, entries: int = 64) -> None:
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, tuple[int, ...]], tuple[pa.Array, npt.NDArray[Any]]] = OrderedDict()
        self._size = entries

    def merged(self, category: str, runs: Sequence[Run]) -> tuple[pa.Array, npt.NDArray[Any]]:
        key = (category, tuple(r.serial for r in runs))
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
                return hit
        ids = [r.producer_ids(category, r.min_ts, r.max_ts + 1) for r in runs]
        counted = pa.chunked_array(ids, pa.string()).value_counts()  # one count over all rows
        value = (counted.field("values"), counted.field("counts").to_numpy())
        with self._lock:
            self._entries[key] = value
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return value

    def discard(self, serials: set[int]) -> None:
        """Drop the counts over any of the runs ``serials`` (persisted runs: no view asks for
        them again, and an entry can hold a category's every producer id)."""
        with self._lock:
            for key in [k for k in self._entries if not serials.isdisjoint(k[1])]:
                del self._entries[key]


@dataclass(frozen=True)
class BufferView:
    """An immutable picture of the buffer for one query."""

    runs: tuple[Run, ...]
    counts: CountCache = field(default_factory=CountCache, compare=False)

    @property
    def empty(self) -> bool:
        return all(r.num_rows == 0 for r in self.runs)

    @cached_property
    def rows(self) -> pa.Table:
        """Every buffered row, one chunk per run (zero-copy)."""
        return _concat([r.rows for r in self.runs])

    @cached_property
    def rollup(self) -> pa.Table:
        """The minute rollup of the buffered rows, built on first use (SQL views only: the
        engine answers from the runs' indexes)."""
        return _minute_rollup(self.rows) if self.runs else MINUTE_ROLLUP_SCHEMA.empty_table()

    def aggregate(self, category: str, start: int, end: int, shards: Sequence[int] | None = None) -> tuple[int, int]:
        """Exact (count, sum) of buffered rows of ``category`` in ``[start, end)``."""
        wanted = _shard_array(shards)
        count = total = 0
        for run in self.runs:
            c, s = run.aggregate(category, start, end, wanted)
            count += c
            total += s
        return count, total

    def producer_counts(self, category: str, start: int, end: int, shards: Sequence[int] | None = None) -> pa.Table:
        """``(producer_id, count)`` of buffered rows of ``category`` in ``[start, end)``.

        Runs whose rows of ``category`` all lie in range are counted together once per set of
        runs and the counts kept (``CountCache``): a long range over a big buffer does not
        re-count every buffered row on every query."""
        wanted = _shard_array(shards)
        whole = [] if wanted is not None else [r for r in self.runs if r.covers(category, start, end)]
        serials = {r.serial for r in whole}
        ids = [r.producer_ids(category, start, end, wanted) for r in self.runs if r.serial not in serials]
        ids = [a for a in ids if len(a)]
        pieces: list[tuple[pa.Array, npt.NDArray[Any]]] = []
        if whole:
            pieces.append(self.counts.merged(category, whole))
        if ids:
            counted = pa.chunked_array(ids).value_counts()
            pieces.append((counted.field("values"), counted.field("counts").to_numpy()))
        return _counts_table(pieces)


class LiveBuffer:
    """Active generation plus frozen generations waiting for their Parquet parts to commit."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)  # notified when a persisted generation leaves
        self._filled = threading.Condition(self._lock)  # notified when rows are appended
        self._stopped_waiting = False  # set by ``stop_waiting``
        self._wake_at = 0  # ``append`` wakes ``wait_for_active`` once the active holds this much
        self._clock = clock
        self._active = Generation(created=clock())
        self._frozen: list[Generation] = []
        self._counts = CountCache()

    def append(self, rows: pa.Table, run: Run | pa.Table | None, seq: int, record: object = None) -> None:
        """Add durable rows (STORED_SCHEMA) with their index (``Run.build(rows)``; built here
        when None; a table in its place, the minute rollup older callers passed, is ignored)."""
        if not isinstance(run, Run):
            run = Run.build(rows.select(STORED_SCHEMA.names))
        with self._lock:
            g = self._active
            if not g.runs:
                g.first_seq = seq
                g.created = self._clock()
            g.runs.append(run)
            g.rows += run.num_rows
            g.nbytes += run.nbytes
            g.last_seq = seq
            if record is not None:
                g.records.append(record)
            small = self._trailing_small(g)
            if g.nbytes >= self._wake_at:  # only then: a wake-up per small append costs the GIL
                self._filled.notify_all()
        if small:
            self._fold(g, small)

    @staticmethod
    def _trailing_small(g: Generation) -> list[Run]:
        small: list[Run] = []
        for run in reversed(g.runs):
            if run.num_rows >= _SMALL_RUN_ROWS:
                break
            small.append(run)
        return small[::-1] if len(small) >= _SMALL_RUNS_FOLD else []

    def _fold(self, g: Generation, small: list[Run]) -> None:
        """Replace the trailing small runs of ``g`` by one run of the same rows. Built outside
        the lock; only the WAL writer appends, so those runs are still ``g``'s last ones (a
        freeze in between moves ``g`` as a whole and keeps its rows the same)."""
        merged = Run.merge(small)
        with self._lock:
            if g.runs[-len(small) :] == small:
                g.runs[-len(small) :] = [merged]
                g.nbytes += merged.nbytes - sum(r.nbytes for r in small)

    @property
    def active_bytes(self) -> int:
        return self._active.nbytes

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return self._total_bytes()

    def _total_bytes(self) -> int:  # under the lock
        return self._active.nbytes + sum(g.nbytes for g in self._frozen)

    @property
    def total_rows(self) -> int:
        with self._lock:
            return self._active.rows + sum(g.rows for g in self._frozen)

    def active_age(self) -> float:
        g = self._active
        return self._clock() - g.created if g.runs else 0.0

    def freeze(self) -> Generation | None:
        """Close the active generation for persisting; returns None when it is empty."""
        with self._lock:
            g = self._active
            if not g.runs:
                return None
            self._frozen.append(g)
            self._active = Generation(created=self._clock())
            return g

    def frozen(self) -> list[Generation]:
        with self._lock:
            return list(self._frozen)

    def release(self, g: Generation, commit: Callable[[], object]) -> None:
        """Run ``commit`` (the manifest commit of ``g``'s parts) and drop ``g`` atomically with
        respect to ``view``: no query sees ``g``'s rows twice or not at all."""
        with self._lock:
            commit()
            self._frozen.remove(g)
            self._room.notify_all()
        self._counts.discard({r.serial for r in g.runs})

    def wait_for_room(self, nbytes: int, cap: int, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` until ``nbytes`` more fit under ``cap`` (a persist
        released a generation); True if they fit now."""
        with self._room:
            return self._room.wait_for(lambda: self._total_bytes() + nbytes <= cap, timeout_s)

    def wait_for_active(self, nbytes: int, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` until the active generation holds ``nbytes`` or a frozen
        one waits (the persist thread sleeps here between persists, woken by ``append``);
        True if so now."""

        def ready() -> bool:
            return self._active.nbytes >= nbytes or bool(self._frozen)

        with self._filled:
            self._wake_at = nbytes
            self._filled.wait_for(lambda: ready() or self._stopped_waiting, timeout_s)
            return ready()

    def stop_waiting(self) -> None:
        """End every ``wait_for_active`` now, and any later one at once (the node is stopping:
        the persist thread must not sleep through its stop)."""
        with self._filled:
            self._stopped_waiting = True
            self._filled.notify_all()

    def view(self, pin: Callable[[], object] | None = None) -> tuple[BufferView, object]:
        """The buffer's runs; ``pin`` runs under the same lock (it pins the manifest state that
        matches this view)."""
        with self._lock:
            runs = tuple(r for g in (*self._frozen, self._active) for r in g.runs)
            pinned = pin() if pin is not None else None
        return BufferView(runs, self._counts), pinned
