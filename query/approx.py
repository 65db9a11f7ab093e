"""Approximate answers from sketch rows: distinct producers, top-k with bounds, value quantiles.

Pure functions over a table of sketch rows (``storage.sketch.SKETCH_SCHEMA``, or the one-row
tables of ``collapse_sketches``) that together cover the range asked; the engine picks the rows
(whole hours from the stored sketches, ragged edges sketched from raw rows with
``storage.sketch.build_sketches``). Every answer states its error (issue 7).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from typing import Any, TypedDict

import datasketches as ds
import numpy as np
import pyarrow as pa

from query.errors import InvalidQuery, QueryError
from storage.sketch import SKETCH_DECODE_ERRORS, SketchConfig
from storage.sketchmerge import frequent_error, merge_frequent_rows, merge_kll

__all__ = [
    "COLLAPSED_SCHEMA",
    "DISTINCT_CONFIDENCE",
    "QUANTILE_CONFIDENCE",
    "DistinctAnswer",
    "Quantile",
    "QuantileAnswer",
    "TopAnswer",
    "TopProducer",
    "approx_distinct",
    "approx_quantiles",
    "approx_topk",
    "collapse_sketches",
    "merge_topk",
]

# CPC bounds at 3 standard deviations: a 1-in-20 miss (2 sd) would be seen by users weekly.
_CPC_STD_DEVS = 3
DISTINCT_CONFIDENCE = 0.997
# KLL's normalized rank error is stated by DataSketches at 99 % confidence.
QUANTILE_CONFIDENCE = 0.99

COLLAPSED_SCHEMA = pa.schema(
    [
        pa.field("n", pa.int64(), nullable=False),
        pa.field("cpc", pa.binary(), nullable=False),
        pa.field("frequent", pa.binary(), nullable=False),
        pa.field("frequent_error", pa.int64(), nullable=False),
        pa.field("kll", pa.binary(), nullable=False),
    ]
)


class DistinctAnswer(TypedDict):
    value: int
    lower_bound: int
    upper_bound: int
    relative_error: float
    confidence: float


class TopProducer(TypedDict):
    producer_id: str
    estimate: int
    lower_bound: int
    upper_bound: int


class TopAnswer(TypedDict):
    producers: list[TopProducer]
    guaranteed: bool
    exact: bool
    unlisted_upper_bound: int
    events: int


class Quantile(TypedDict):
    q: float
    value: int | None


class QuantileAnswer(TypedDict):
    quantiles: list[Quantile]
    rank_error: float
    confidence: float
    n: int


def approx_distinct(rows: pa.Table, config: SketchConfig = SketchConfig()) -> DistinctAnswer:
    """Distinct producers over the rows' CPC sketches.

    The true count lies within ``[lower_bound, upper_bound]`` with probability about 99.7 %
    (3 standard deviations); ``relative_error`` is the wider side of that interval over the
    estimate. Small counts are held nearly exactly, and the interval is then a few producers wide.
    """
    union = _union_cpc(rows, config).get_result()
    estimate = union.get_estimate()
    lower = union.get_lower_bound(_CPC_STD_DEVS)
    upper = union.get_upper_bound(_CPC_STD_DEVS)
    # The true count is an integer, so the integers inside the real interval bound it just as
    # well: a sketch holding every producer then answers a single point.
    low, high = math.ceil(lower), max(math.ceil(lower), math.floor(upper))
    return {
        "value": min(max(round(estimate), low), high),
        "lower_bound": low,
        "upper_bound": high,
        "relative_error": max(upper - estimate, estimate - lower) / estimate if estimate else 0.0,
        "confidence": DISTINCT_CONFIDENCE,
    }


def approx_topk(rows: pa.Table, k: int, config: SketchConfig = SketchConfig()) -> TopAnswer:
    """The k producers with most events by the rows' frequent-items sketches, ordered by
    estimate descending then ``producer_id`` ascending (the exact answer's order).

    The bounds are hard, not probabilistic: each producer's true count lies within
    ``[lower_bound, upper_bound]``, and no producer left out has more than
    ``unlisted_upper_bound`` events. Candidates are every producer a merged sketch still
    tracks (``NO_FALSE_NEGATIVES`` at threshold 0); a producer it does not track — left out
    when the sketch was built (a stored sketch holds only its group's
    ``SketchConfig.frequent_keep`` largest producers) or evicted by a merge — had at most that
    sketch's maximum error, which ``unlisted_upper_bound`` includes. ``guaranteed`` is true when
    the listed set is certainly the exact top-k set — every listed lower bound exceeds
    ``unlisted_upper_bound`` — or when no sketch left any producer out, in which case counts,
    set and order are all exact. The order within a guaranteed set may differ from the exact
    one where bounds overlap. ``exact`` says every count is exact (no producer left out).

    Rows are merged per ``shard`` when that column is present: shards hold disjoint producers,
    so a producer's error is its own shard's, not the sum over all shards (which would grow
    with the shard count and rarely guarantee anything).
    """
    if k < 1:
        raise InvalidQuery(f"k must be at least 1, got {k}")
    candidates: list[TopProducer] = []
    unlisted = 0
    exact = True
    for part in _by_shard(rows):
        merged, lost = _merge_frequent(part, config)
        error = frequent_error(merged) + lost
        exact = exact and error == 0
        items = merged.get_frequent_items(ds.NO_FALSE_NEGATIVES, 0)
        # Only a shard's own top k can make the global top k; the others count by their bound.
        top = heapq.nsmallest(k, items, key=lambda item: (-item[1], item[0]))
        chosen = {item[0] for item in top}
        # ``lost`` (see merge_frequent) widens every upper bound; lower bounds stay as they are.
        rest = max((ub for p, _, _, ub in items if p not in chosen), default=0)
        unlisted = max(unlisted, error, rest + lost if len(items) > k else 0)
        candidates += [
            {"producer_id": p, "estimate": int(est), "lower_bound": int(lb), "upper_bound": int(ub + lost)}
            for p, est, lb, ub in top
        ]
    return _top(candidates, k, unlisted, exact=exact, events=_events(rows))


def merge_topk(answers: Sequence[TopAnswer], k: int) -> TopAnswer:
    """Combine ``approx_topk`` answers over disjoint shards (one per node) into the answer over
    all of them, with the same guarantees; each node needs to send only its top k."""
    if k < 1:
        raise InvalidQuery(f"k must be at least 1, got {k}")
    # Exact per node means exact overall: the global top k are among the nodes' top k's.
    exact = all(a["exact"] for a in answers)
    return _top(
        [p for a in answers for p in a["producers"]],
        k,
        max((a["unlisted_upper_bound"] for a in answers), default=0),
        exact=exact,
        events=sum(a["events"] for a in answers),
    )


def _top(candidates: list[TopProducer], k: int, unlisted: int, *, exact: bool, events: int) -> TopAnswer:
    """Pick k of the candidates. ``unlisted`` bounds every producer not among them; ``exact``
    says every candidate's count is exact and every producer is a candidate."""
    ranked = sorted(candidates, key=lambda p: (-p["estimate"], p["producer_id"]))
    listed, rest = ranked[:k], ranked[k:]
    unlisted = max([unlisted, *(p["upper_bound"] for p in rest)])
    guaranteed = exact or (len(listed) == k and min(p["lower_bound"] for p in listed) > unlisted)
    return {
        "producers": listed,
        "guaranteed": guaranteed,
        "exact": exact,
        "unlisted_upper_bound": unlisted,
        "events": events,
    }


def approx_quantiles(rows: pa.Table, qs: Sequence[float], config: SketchConfig = SketchConfig()) -> QuantileAnswer:
    """Quantiles of ``value`` by the rows' KLL sketches.

    Each returned value is one that occurred; its true normalized rank is within ``rank_error``
    of ``q`` with 99 % confidence (``rank_error`` is 0 while the sketch still holds every value,
    and q = 0 / 1 give the exact minimum / maximum). Values are exact for |value| <= 2^53.
    With no rows every value is None.
    """
    if not qs or any(not 0.0 <= q <= 1.0 for q in qs):
        raise InvalidQuery(f"quantiles must be one or more numbers in [0, 1], got {list(qs)}")
    merged = _merge_kll(rows, config)
    if merged.is_empty():
        values: list[int | None] = [None] * len(qs)
    else:
        # The sketch keeps the exact extremes beside its samples, which may have dropped them.
        lowest, highest = merged.get_min_value(), merged.get_max_value()
        values = [int(lowest if q == 0.0 else highest if q == 1.0 else merged.get_quantile(q, True)) for q in qs]
    return {
        "quantiles": [{"q": q, "value": v} for q, v in zip(qs, values, strict=True)],
        "rank_error": merged.normalized_rank_error(False) if merged.is_estimation_mode() else 0.0,
        "confidence": QUANTILE_CONFIDENCE,
        "n": merged.n,
    }


def collapse_sketches(
    rows: pa.Table, config: SketchConfig = SketchConfig(), columns: Sequence[str] = COLLAPSED_SCHEMA.names
) -> pa.Table:
    """Merge all rows into one ``COLLAPSED_SCHEMA`` row of at most ``config.max_bytes()`` per
    sketch. For distinct and quantiles it answers as the rows themselves do, so a node ships
    this (a few kilobytes) instead of its rows and the coordinator answers from the nodes'
    rows concatenated. Its top-k bounds are looser (the shards are merged together): for top-k
    a node ships its ``approx_topk`` answer instead, combined with ``merge_topk``.

    ``columns`` keeps only those of ``COLLAPSED_SCHEMA`` (``frequent`` and ``frequent_error``
    go together), and ``rows`` need only what they are merged from: ``("n", "cpc")`` is all a
    distinct count ships, ``("n", "kll", "value_deltas")`` all quantiles do (the collapsed row
    holds a ``kll`` sketch, never ``value_deltas``).
    """
    wanted = set(columns)
    merged: dict[str, pa.Array] = {"n": pa.array([_events(rows)], pa.int64())}
    if "cpc" in wanted:
        merged["cpc"] = pa.array([_union_cpc(rows, config).get_result().serialize()])
    if wanted & {"frequent", "frequent_error"}:
        frequent, lost = _merge_frequent(rows, config)
        merged["frequent"] = pa.array([frequent.serialize()])
        merged["frequent_error"] = pa.array([frequent_error(frequent) + lost], pa.int64())
    if "kll" in wanted:
        merged["kll"] = pa.array([_merge_kll(rows, config).serialize()])
    fields = [f for f in COLLAPSED_SCHEMA if f.name in merged]
    return pa.table([merged[f.name] for f in fields], schema=pa.schema(fields))


def _blobs(rows: pa.Table, column: str) -> list[Any]:
    if column not in rows.column_names:
        raise QueryError(f"sketch rows have no {column!r} column (got {rows.column_names})")
    return [b for b in rows[column].to_pylist() if b is not None]


def _unreadable(column: str, e: Exception) -> QueryError:
    return QueryError(f"a stored {column} sketch cannot be read ({e}); rebuild the hour's sketches from its events")


def _union_cpc(rows: pa.Table, config: SketchConfig) -> ds.cpc_union:
    union = ds.cpc_union(config.hll_lg_k)
    try:
        for blob in _blobs(rows, "cpc"):
            union.update(ds.cpc_sketch.deserialize(blob))
    except SKETCH_DECODE_ERRORS as e:
        raise _unreadable("cpc", e) from e
    return union


def _merge_frequent(rows: pa.Table, config: SketchConfig) -> tuple[ds.frequent_strings_sketch, int]:
    """The rows' frequent-items sketches merged: blobs, and the items of sketch rows stored as
    items (collapsed rows have no ``top_*`` columns)."""
    for column in ("frequent", "frequent_error"):
        if column not in rows.column_names:
            raise QueryError(f"sketch rows have no {column!r} column (got {rows.column_names})")
    try:
        return merge_frequent_rows(rows, config.frequent_lg_max_k)
    except SKETCH_DECODE_ERRORS as e:
        raise _unreadable("frequent", e) from e


def _by_shard(rows: pa.Table) -> list[pa.Table]:
    if "shard" not in rows.column_names or rows.num_rows == 0:
        return [rows]
    rows = rows.sort_by("shard")
    shards = rows["shard"].to_numpy()
    starts = [int(i) for i in np.flatnonzero(np.diff(shards)) + 1]
    return [rows.slice(a, b - a) for a, b in zip([0, *starts], [*starts, rows.num_rows], strict=True)]


def _events(rows: pa.Table) -> int:
    return sum(_blobs(rows, "n"))


def _merge_kll(rows: pa.Table, config: SketchConfig) -> ds.kll_doubles_sketch:
    """The rows' KLL sketches and stored values (sketch rows of small groups keep values instead
    of a KLL; collapsed rows have no ``value_deltas`` column) merged into one KLL."""
    if "kll" not in rows.column_names:
        raise QueryError(f"sketch rows have no 'kll' column (got {rows.column_names})")
    deltas = rows["value_deltas"] if "value_deltas" in rows.column_names else None
    try:
        return merge_kll(rows["kll"], deltas, config.kll_k)
    except SKETCH_DECODE_ERRORS as e:
        raise _unreadable("kll", e) from e
