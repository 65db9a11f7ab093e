"""Merging producer rollup files in bounded memory: a category at a time.

A part's producer rollup is sorted by (category, shard, hour), so the rows of one category sit
in a few row groups of each file, found by the groups' min/max statistics. A merge takes one
category's rows from every part, sums them per (category, shard, hour, producer_id) and hands
them on, so it holds about one category of the hour (plus the row groups that straddle the
next category) instead of the whole hour, and reads each row group once. The sum of the
parts' rollups and Arrow's hash table over all of them was the largest block of a merge's
memory (issue 8). The result is the same rows as merging all at once
(``storage.rollup.merge_rollups``), sorted by (category, shard, hour) the same way; producers
within one of those may come in another order (as Arrow's group-by meets them), which no
reader relies on. Equal inputs give equal files.

A row group without statistics is read once and kept to the end: more memory, still exact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from storage.eventmerge import CATEGORY_UNKNOWN, row_group_bounds
from storage.rollup import PRODUCER_ROLLUP_SCHEMA, merge_rollups

__all__ = ["merge_producer_rollups"]


def merge_producer_rollups(paths: Sequence[str], categories: Sequence[str], write: Callable[[pa.Table], None]) -> int:
    """Hand ``write`` the merged producer rollup of the files at ``paths``, a category at a time
    in category order (``PRODUCER_ROLLUP_SCHEMA``, sorted by (category, shard, hour)); returns
    the events it counts. ``categories`` must name every category in the files (the parts'
    minute rollups do); rows of others would be left out, so the caller checks the count."""
    files = [pq.ParquetFile(p) for p in paths]
    bounds = [row_group_bounds(f.metadata, "category", CATEGORY_UNKNOWN) for f in files]
    # Row groups read and still needed, per file. Categories come in order and so do a file's
    # row groups, so each group is read once and dropped once past its last category: a part
    # small enough to be one row group (most persists of a busy node) is decoded once, not once
    # per category.
    held: list[dict[int, pa.Table]] = [{} for _ in files]
    events = 0
    for cat in sorted(set(categories)):
        pieces = []
        for f, groups, kept in zip(files, bounds, held, strict=True):
            for g, (lo, hi) in enumerate(groups):
                if lo <= cat <= hi and g not in kept:
                    kept[g] = f.read_row_group(g, columns=PRODUCER_ROLLUP_SCHEMA.names, use_threads=False)
            for g in sorted(kept):
                t = kept[g]
                pieces.append(t.filter(pc.equal(t["category"], cat)))
                if groups[g][1] <= cat:
                    del kept[g]  # nothing of a later category in it
        merged = merge_rollups(pieces, PRODUCER_ROLLUP_SCHEMA) if pieces else None
        if merged is not None and merged.num_rows:
            write(merged)
            events += int(pc.sum(merged["count"]).as_py())
    return events
