"""Merging events files in bounded memory: the compaction's k-way merge.

Every events file is sorted by (category, timestamp), so a merge never needs a full sort: it
walks the categories in order and, inside a category, windows of time, reading from each source
only the row groups whose statistics (min/max category and timestamp, 8k rows a group) overlap
the window, and sorting just that window by timestamp. Memory is about ``window_rows`` rows
(plus the row groups that straddle a window's edges), whatever the size of the parts: an hour
of a billion events merges in the same few tens of MB as an hour of a million, where reading
the sources whole would hold all of them (the soak run saw the node's memory follow the size of
the hour being merged).

Row groups without statistics are read for every window and filtered: slower, still exact.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from storage.schema import STORED_SCHEMA

__all__ = ["CATEGORY_UNKNOWN", "merge_events", "row_group_bounds"]

CATEGORY_UNKNOWN = ("", "\U0010ffff" * 64)  # category bounds of a row group without statistics
_TS_MIN, _TS_MAX = -(1 << 63), (1 << 63) - 1


@dataclass(frozen=True)
class _Group:
    source: int
    index: int
    rows: int
    cat_min: str
    cat_max: str
    ts_min: int
    ts_max: int


def row_group_bounds(meta: pq.FileMetaData, column: str, unknown: tuple[Any, Any]) -> list[tuple[Any, Any]]:
    """(min, max) of ``column`` in each row group of a file, from the footer's statistics;
    ``unknown`` for a group without them (so it overlaps whatever is asked)."""
    names = [meta.schema.column(i).name for i in range(meta.num_columns)]
    index = names.index(column)
    out = []
    for g in range(meta.num_row_groups):
        stats = meta.row_group(g).column(index).statistics
        out.append((stats.min, stats.max) if stats is not None and stats.has_min_max else unknown)
    return out


def _groups(source: int, meta: pq.FileMetaData) -> list[_Group]:
    cats = row_group_bounds(meta, "category", CATEGORY_UNKNOWN)
    times = row_group_bounds(meta, "timestamp", (_TS_MIN, _TS_MAX))
    return [
        _Group(source, g, meta.row_group(g).num_rows, str(c[0]), str(c[1]), int(t[0]), int(t[1]))
        for g, (c, t) in enumerate(zip(cats, times, strict=True))
    ]


def _windows(groups: Sequence[_Group], window_rows: int) -> list[tuple[int, int]]:
    """Half-open time windows covering ``groups`` with about ``window_rows`` rows each (an
    estimate: each group's rows are taken as spread evenly over its time range; the last window
    ends past every timestamp).

    Spread, not counted at the group's start: the row group where one category ends and the next
    begins spans both categories' times, often the whole hour, and counting all of its rows at
    its start put most of a category's rows before the first cut, so a category was read in one
    window of all its rows whatever ``window_rows`` said (issue 8)."""
    rows = sum(g.rows for g in groups)
    n = max(1, math.ceil(rows / window_rows))
    known = [g for g in groups if g.ts_min > _TS_MIN or g.ts_max < _TS_MAX]  # groups with statistics
    if n == 1 or not known:
        return [(_TS_MIN, _TS_MAX)]
    base = min(g.ts_min for g in known)
    starts = np.array([g.ts_min - base for g in known], dtype=np.float64)
    ends = np.array([g.ts_max - base + 1 for g in known], dtype=np.float64)  # + 1: never zero wide
    density = np.array([g.rows for g in known], dtype=np.float64) / (ends - starts)
    # The rows seen up to time t form a piecewise-linear curve whose slope changes at each start
    # (+density) and end (-density): walk those points in time order.
    points = np.concatenate([starts, ends])
    steps = np.concatenate([density, -density])
    order = np.argsort(points, kind="stable")
    points, steps = points[order], steps[order]
    slopes = np.cumsum(steps)
    seen = np.concatenate([[0.0], np.cumsum(slopes[:-1] * np.diff(points))])
    targets = seen[-1] * np.arange(1, n) / n
    at = np.clip(np.searchsorted(seen, targets, side="right") - 1, 0, len(points) - 2)
    offsets = points[at] + (targets - seen[at]) / np.maximum(slopes[at], 1e-300)
    cuts = sorted({base + int(x) for x in offsets})
    edges = [_TS_MIN, *[c for c in cuts if _TS_MIN < c < _TS_MAX], _TS_MAX]
    return [(a, b) for a, b in itertools.pairwise(edges) if a < b]


def merge_events(
    paths: Sequence[str], categories: Sequence[str], write: Callable[[pa.Table], None], window_rows: int = 1 << 20
) -> int:
    """Hand ``write`` the rows of the events files at ``paths`` (STORED_SCHEMA) in (category,
    timestamp) order, a window at a time; returns the rows written. ``categories`` must hold
    every category in the files (the parts' minute rollups name them); rows of others would be
    left out, so the caller checks the count it gets back."""
    files = [pq.ParquetFile(p) for p in paths]
    groups = [g for i, f in enumerate(files) for g in _groups(i, f.metadata)]
    written = 0
    for cat in sorted(set(categories)):
        mine = [g for g in groups if g.cat_min <= cat <= g.cat_max]
        for lo, hi in _windows(mine, window_rows):
            pieces = []
            for i, f in enumerate(files):
                wanted = [g.index for g in mine if g.source == i and g.ts_max >= lo and g.ts_min < hi]
                if not wanted:
                    continue
                t = f.read_row_groups(wanted, columns=STORED_SCHEMA.names, use_threads=False)
                ts = t["timestamp"]
                keep = pc.and_(
                    pc.equal(t["category"], cat),
                    pc.and_(pc.greater_equal(ts, lo), pc.less(ts, hi)),
                )
                pieces.append(t.filter(keep).cast(STORED_SCHEMA))
            if not pieces:
                continue
            window = pa.concat_tables(pieces)
            if window.num_rows == 0:
                continue
            window = window.take(pc.sort_indices(window["timestamp"])).combine_chunks()
            write(window)
            written += window.num_rows
    return written
