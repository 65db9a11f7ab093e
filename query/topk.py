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
the hundreds of thousands of a full day's producer rollup.

When the bounds leave the answer open only because a few producers' counts are not fully known
(typically over a shard subset, whose k-th count is lower than the whole part's: a member falls
below some hour's threshold), ``unresolved`` names them; the caller looks up their exact counts
in the parts whose heads don't list them and proves again with those (``bounds(resolved=)``).
When even that cannot prove the answer, the caller answers exactly the long way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from query.rollup_cache import TopList
from query.shard_rollup import ShardMask
from storage.rollup import sum_by_id

__all__ = [
    "COUNTS_SCHEMA",
    "RESOLVED_SCHEMA",
    "Bounds",
    "bounds",
    "count_ids",
    "heads_of",
    "merge_heads",
    "prove",
    "sum_by_id",
    "top_of",
    "unresolved",
]

COUNTS_SCHEMA = pa.schema([("producer_id", pa.string()), ("count", pa.int64())])
RESOLVED_SCHEMA = pa.schema([("producer_id", pa.string()), ("count", pa.int64()), ("known", pa.int64())])


def count_ids(ids: Sequence[pa.Array]) -> pa.Table:
    """``(producer_id, count)`` of a multiset of producer ids."""
    ids = [a for a in ids if len(a)]
    if not ids:
        return COUNTS_SCHEMA.empty_table()
    counts = pa.chunked_array(ids, pa.string()).value_counts()
    return pa.table([counts.field("values"), counts.field("counts")], schema=COUNTS_SCHEMA)


def _first_k(ids: pa.Array, counts: npt.NDArray[Any], k: int) -> npt.NDArray[Any]:
    """Positions of the first ``k`` by count desc, then id asc: the k-th count is found with a
    partition, and only the rows at or above it (ties included) are sorted."""
    if len(counts) > 4 * k:
        kth = np.partition(counts, len(counts) - k)[len(counts) - k]
        near = np.flatnonzero(counts >= kth)
    else:
        near = np.arange(len(counts))
    table = pa.table({"id": ids.take(pa.array(near)), "count": counts[near]})
    order = pc.sort_indices(table, [("count", "descending"), ("id", "ascending")]).to_numpy()
    chosen: npt.NDArray[Any] = near[order[:k]]
    return chosen


def top_of(counts: pa.Table, k: int) -> list[tuple[str, int]]:
    """The first ``k`` of exact ``(producer_id, count)`` rows: count desc, then producer_id asc."""
    if counts.num_rows == 0:
        return []
    ids = counts.column("producer_id").combine_chunks()
    values = counts.column("count").to_numpy()
    chosen = _first_k(ids, values, k)
    return list(zip(ids.take(pa.array(chosen)).to_pylist(), values[chosen].tolist(), strict=True))


@dataclass(frozen=True, eq=False)
class Bounds:
    """What heads and exact counts tell of each producer: a count it has at least (``lows``)
    and at most (``highs``), and ``unknown``, the most a producer listed nowhere can have."""

    ids: pa.Array
    lows: npt.NDArray[Any]
    highs: npt.NDArray[Any]
    unknown: int


def heads_of(heads: Sequence[TopList], shards: ShardMask) -> list[TopList]:
    """The heads limited to producers of ``shards`` (a producer lives in one shard, so a head's
    threshold still bounds the unlisted ones)."""
    return [h.only(shards.of(h.shards)) for h in heads]


def bounds(heads: Sequence[TopList], exact: pa.Table, resolved: pa.Table | None = None) -> Bounds:
    """The bounds of every producer seen in ``heads`` or ``exact``.

    ``exact`` holds exact ``(producer_id, count)`` of everything outside the heads' parts (for a
    shard subset, ``heads`` are already ``heads_of`` those shards). ``resolved`` holds
    ``(producer_id, count, known)`` rows: a producer's exact count in a part whose head does not
    list it, looked up, with that head's threshold as ``known`` (it no longer bounds the
    producer's count there, see ``unresolved``).
    """
    unknown = sum(h.threshold for h in heads)  # the most any unlisted producer can have
    id_arrays: list[pa.Array] = [exact.column("producer_id").combine_chunks()]
    low: list[npt.NDArray[Any]] = [exact.column("count").to_numpy()]
    known: list[npt.NDArray[Any]] = [np.zeros(exact.num_rows, dtype=np.int64)]
    for h in heads:
        id_arrays.append(h.ids)
        low.append(h.counts)
        known.append(np.full(len(h.counts), h.threshold, dtype=np.int64))
    if resolved is not None and resolved.num_rows:
        id_arrays.append(resolved.column("producer_id").combine_chunks())
        low.append(resolved.column("count").to_numpy())
        known.append(resolved.column("known").to_numpy())
    ids, (lows, known_sums) = sum_by_id(
        pa.chunked_array(id_arrays, pa.string()),
        np.concatenate(low).astype(np.int64),
        np.concatenate(known).astype(np.int64),
    )
    return Bounds(ids, lows, lows + (unknown - known_sums), unknown)


def _chosen(b: Bounds, k: int) -> npt.NDArray[Any]:
    # Only producers with a positive count can be in the answer (``exact`` may hold negative
    # counts: rows subtracted from a whole part's head, see PartIndexes.topk).
    positive = np.flatnonzero(b.lows > 0)
    chosen: npt.NDArray[Any] = positive[_first_k(b.ids.take(pa.array(positive)), b.lows[positive], k)]
    return chosen


def prove(b: Bounds, k: int) -> list[tuple[str, int]] | None:
    """The exact top-k, or None when the bounds leave it open."""
    if len(b.ids) == 0:
        return [] if b.unknown == 0 else None
    chosen = _chosen(b, k)
    if not np.array_equal(b.lows[chosen], b.highs[chosen]):
        return None  # a member's count is not fully known
    rest = np.ones(len(b.lows), dtype=bool)
    rest[chosen] = False
    uncertain = b.highs[rest & (b.highs > b.lows)]
    if len(chosen) < k:
        # A short answer: nobody else may have a positive count.
        if b.unknown > 0 or (len(uncertain) and int(uncertain.max()) > 0):
            return None
    else:
        kth = int(b.lows[chosen[-1]])
        if len(uncertain) and int(uncertain.max()) >= kth:
            return None  # someone below could reach the k-th count
        if b.unknown >= kth:
            return None  # a producer listed nowhere could reach it
    return list(zip(b.ids.take(pa.array(chosen)).to_pylist(), b.lows[chosen].tolist(), strict=True))


def unresolved(b: Bounds, k: int, limit: int) -> pa.Array | None:
    """The producers whose exact counts would settle an answer ``prove`` leaves open: the
    members not fully known and everyone below who could still reach the k-th count. None when
    lookups cannot settle it: a short answer, a producer listed nowhere that could reach the
    k-th count, or more than ``limit`` producers to look up.

    Looking them up can only raise lows (counts are added where only a threshold was known),
    so the k-th count cannot fall and nobody outside this set can reach it afterwards.
    """
    if len(b.ids) == 0:
        return None
    chosen = _chosen(b, k)
    if len(chosen) < k:
        return None
    kth = int(b.lows[chosen[-1]])
    if b.unknown >= kth:
        return None
    open_ = b.highs > b.lows
    member = np.zeros(len(b.lows), dtype=bool)
    member[chosen] = True
    need = np.flatnonzero(open_ & (member | (b.highs >= kth)))
    if len(need) == 0 or len(need) > limit:
        return None
    return b.ids.take(pa.array(need))


def merge_heads(
    heads: Sequence[TopList], exact: pa.Table, k: int, shards: npt.NDArray[Any] | None = None
) -> list[tuple[str, int]] | None:
    """The exact top-k of (whole-hour heads + ``exact`` counts), or None when unprovable."""
    return prove(bounds(heads if shards is None else heads_of(heads, ShardMask(shards)), exact), k)
