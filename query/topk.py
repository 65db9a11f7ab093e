"""Exact top-k from the heads of per-part producer rollups, proven or refused.

Over a range, a producer's count is the sum of its counts in each whole hour's part plus its
count in the raw rows of the ragged edges and the live buffer. ``merge_heads`` knows, for each
whole-hour part, only its ``top_n`` producers and a *threshold* (no unlisted producer has a
higher count there); the edges and the buffer it knows exactly. For every producer it gets a
lower bound (the counts it knows) and an upper bound (plus the threshold of every part that
does not list it); a producer listed nowhere has at most the sum of all thresholds. The top-k by
lower bound is the exact answer when each of its members is fully known and nobody outside it
could reach the k-th count. This is Fagin's threshold algorithm with the thresholds stored; on
skewed data (the usual case for top-k) it proves the answer from a few thousand rows instead of
the hundreds of thousands of a full day's producer rollup. When it cannot prove the answer it
returns None and the caller answers exactly the long way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from query.rollup_cache import TopList

__all__ = ["COUNTS_SCHEMA", "count_ids", "merge_heads", "top_of"]

COUNTS_SCHEMA = pa.schema([("producer_id", pa.string()), ("count", pa.int64())])


def count_ids(ids: Sequence[pa.Array]) -> pa.Table:
    """``(producer_id, count)`` of a multiset of producer ids."""
    ids = [a for a in ids if len(a)]
    if not ids:
        return COUNTS_SCHEMA.empty_table()
    counts = pa.chunked_array(ids, pa.string()).value_counts()
    return pa.table([counts.field("values"), counts.field("counts")], schema=COUNTS_SCHEMA)


def top_of(counts: pa.Table, k: int) -> list[tuple[str, int]]:
    """The first ``k`` of exact ``(producer_id, count)`` rows: count desc, then producer_id asc."""
    if counts.num_rows == 0:
        return []
    order = pc.sort_indices(counts, [("count", "descending"), ("producer_id", "ascending")])
    top = counts.take(order[:k])
    return list(zip(top.column(0).to_pylist(), top.column(1).to_pylist(), strict=True))


def merge_heads(
    heads: Sequence[TopList], exact: pa.Table, k: int, shards: npt.NDArray[Any] | None = None
) -> list[tuple[str, int]] | None:
    """The exact top-k of (whole-hour heads + ``exact`` counts), or None when unprovable.

    ``exact`` holds exact ``(producer_id, count)`` of everything outside the heads' parts;
    ``shards``, when given, limits the answer to producers of those shards.
    """
    unknown = sum(h.threshold for h in heads)  # the most any unlisted producer can have
    ids: list[pa.Array] = [exact.column("producer_id").combine_chunks()]
    low: list[npt.NDArray[Any]] = [exact.column("count").to_numpy()]
    known: list[npt.NDArray[Any]] = [np.zeros(exact.num_rows, dtype=np.int64)]
    for h in heads:
        if shards is None:
            ids.append(h.ids)
            low.append(h.counts)
            n = len(h.counts)
        else:
            keep = np.isin(h.shards, shards)
            ids.append(h.ids.filter(pa.array(keep)))
            low.append(h.counts[keep])
            n = int(keep.sum())
        known.append(np.full(n, h.threshold, dtype=np.int64))
    table = pa.table(
        {
            "producer_id": pa.chunked_array(ids, pa.string()),
            "low": np.concatenate(low).astype(np.int64),
            "known": np.concatenate(known),
        }
    )
    if table.num_rows == 0:
        return [] if unknown == 0 else None
    grouped = table.group_by("producer_id").aggregate([("low", "sum"), ("known", "sum")])
    grouped = grouped.rename_columns(["producer_id", "count", "known"])
    order = pc.sort_indices(grouped, [("count", "descending"), ("producer_id", "ascending")]).to_numpy()
    lows = grouped.column("count").to_numpy()[order]
    highs = lows + (unknown - grouped.column("known").to_numpy()[order])
    if len(order) < k:
        if unknown:  # producers nobody listed may exist and belong in the answer
            return None
        chosen = order
    else:
        chosen = order[:k]
        kth = int(lows[k - 1])
        if not np.array_equal(lows[:k], highs[:k]):
            return None  # a member's count is not fully known
        rest_uncertain = highs[k:][highs[k:] > lows[k:]]
        if len(rest_uncertain) and int(rest_uncertain.max()) >= kth:
            return None  # someone below could reach the k-th count
        if unknown >= kth:
            return None  # a producer listed nowhere could reach it
    top = grouped.take(pa.array(chosen))
    return list(zip(top.column("producer_id").to_pylist(), top.column("count").to_pylist(), strict=True))
