"""Merging rollup files in bounded memory: producer rollups a category at a time, minute
rollups as integer arrays.

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

A minute rollup merge (``merge_minute_rollups``) reads the files one at a time into plain
integer arrays (category rank, shard, minute, count, sum) and sums them after one integer sort.
Arrow's hash aggregation over the concatenated tables took ~50 MiB to merge an hour of W20's
minute rollups (240k rows, 10 MB) and was a merge's largest block of memory; the arrays take
~12 MB. Sums are summed as int64 only while no total can overflow it; otherwise the files are
merged with ``merge_rollups``, exact in DECIMAL(38,0).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from storage.eventmerge import CATEGORY_UNKNOWN, row_group_bounds
from storage.ordering import lex_order, string_ranks
from storage.rollup import MINUTE_ROLLUP_SCHEMA, PRODUCER_ROLLUP_SCHEMA, SUM_ARROW, int64_sums_are_exact, merge_rollups

__all__ = ["merge_minute_rollups", "merge_producer_rollups"]


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


def _read_minutes(path: str) -> pa.Table:
    return pq.read_table(path, columns=MINUTE_ROLLUP_SCHEMA.names).select(MINUTE_ROLLUP_SCHEMA.names)


def merge_minute_rollups(paths: Sequence[str]) -> pa.Table:
    """The minute rollups in the files at ``paths`` summed per (category, shard, minute): the
    rows ``merge_rollups`` gives for the same files (``MINUTE_ROLLUP_SCHEMA``, sorted by those
    keys), in a fraction of its memory (see the module docstring)."""

    def exact() -> pa.Table:
        return merge_rollups([_read_minutes(p) for p in paths], MINUTE_ROLLUP_SCHEMA)

    dictionaries: list[pa.Array] = []
    codes: list[npt.NDArray[Any]] = []
    columns: dict[str, list[npt.NDArray[Any]]] = {"shard": [], "minute": [], "count": [], "sum": []}
    for path in paths:
        t = _read_minutes(path)
        if t.num_rows == 0:
            continue
        try:
            columns["sum"].append(pc.cast(t["sum"], pa.int64()).to_numpy())  # raises outside int64
        except pa.ArrowInvalid:
            return exact()
        encoded = pc.dictionary_encode(t["category"]).combine_chunks()
        dictionaries.append(encoded.dictionary)
        codes.append(encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64))
        for name in ("shard", "minute", "count"):
            columns[name].append(t[name].to_numpy())
        del t, encoded
    if not dictionaries:
        return MINUTE_ROLLUP_SCHEMA.empty_table()
    shard, minute, count, total = (np.concatenate(columns[name]) for name in ("shard", "minute", "count", "sum"))
    del columns
    if not int64_sums_are_exact(total):  # the totals might overflow int64
        return exact()
    # Each file's category codes -> ranks among every file's categories in byte order: the
    # dictionaries, concatenated, ranked once.
    dictionary_ranks, categories = string_ranks(pa.concat_arrays(dictionaries))
    offsets = np.cumsum([0, *(len(d) for d in dictionaries)])
    rank = np.concatenate([dictionary_ranks[offsets[i] + c] for i, c in enumerate(codes)])
    del codes
    order = lex_order(rank, shard, minute - minute.min())
    rank, shard, minute, count, total = rank[order], shard[order], minute[order], count[order], total[order]
    firsts = np.flatnonzero(
        np.concatenate(([True], (np.diff(rank) != 0) | (np.diff(shard) != 0) | (np.diff(minute) != 0)))
    )
    return pa.table(
        [
            categories.take(pa.array(rank[firsts])),
            pa.array(shard[firsts], pa.uint16()),
            pa.array(minute[firsts], pa.int64()),
            pa.array(np.add.reduceat(count, firsts), pa.int64()),
            pa.array(np.add.reduceat(total, firsts), pa.int64()).cast(SUM_ARROW),
        ],
        schema=MINUTE_ROLLUP_SCHEMA,
    )
