"""Sketches: bounded-size summaries per (category, shard, hour) for approximate answers (issue 7).

Each sketch row holds three Apache DataSketches, serialized: a CPC sketch of ``producer_id``
(distinct producers), a frequent-items sketch of ``producer_id`` weighted by event count
(approximate top-k with hard bounds), and a KLL sketch of ``value`` (quantiles). Sketches are built
from raw rows (by compaction, from the rows each merge writes, and per query for the rows no
sketch file covers) and merged where groups meet (range queries, a category sketched in
pieces); every serialized sketch is bounded by ``SketchConfig.max_bytes()`` whatever the number
of rows.

A group of at most ``kll_k`` values stores them instead of a KLL (issue 8): such a KLL holds every
value exactly and has never compacted, so the values answer exactly as it would, and sorted
values stored as differences take under half its bytes. ``value_deltas`` is then the group's
values in ascending order, the first one as it is and each next one as its difference from the
previous one (int64 arithmetic modulo 2^64, so any int64 values round-trip), and ``kll`` is null;
otherwise ``value_deltas`` is null. ``storage.sketchmerge.merge_kll`` reads both forms.

Likewise a frequent-items sketch whose counters are exact (no purge: built from rows, or merged
without one) is stored as its items, most events first, in ``top_producers`` / ``top_counts``
(0.29 against 0.41 bytes per event as blobs on W20), and ``frequent`` is null; a purged one
(offset above 0) is stored as a blob. ``storage.sketchmerge.merge_frequent_rows`` reads both
forms.

``frequent_error`` stores the frequent-items summary's maximum error beside the sketch: every
producer's count lies within the sketch's bounds, the upper one raised by ``frequent_error -
frequent_error(sketch)`` (``storage.sketchmerge.merge_frequent`` puts the two together). A sketch built from rows
holds only each group's largest producers, with their exact counts (``SketchConfig.frequent_keep``),
and its ``frequent_error`` is the exact count of the next one, which the sketch itself cannot
express. The column also keeps the error of a merge whose purge evicted every producer:
datasketches-cpp then treats the sketch as empty, serializes neither its weight nor its error,
and skips it in ``merge`` (apache/datasketches-cpp#527).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import datasketches as ds
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from storage.ordering import radix_order
from storage.schema import HOUR_NS, PRODUCER_MAX_BYTES
from storage.xxh64 import xxh64_strings

__all__ = [
    "SKETCH_DECODE_ERRORS",
    "SKETCH_KEYS",
    "SKETCH_SCHEMA",
    "SketchConfig",
    "build_sketches",
    "combined",
    "sketch_table",
    "value_deltas_column",
]

SKETCH_KEYS = ("category", "shard", "hour")
# What DataSketches raises on bytes that are not a sketch (IndexError for a truncated one).
SKETCH_DECODE_ERRORS = (RuntimeError, ValueError, IndexError)

SKETCH_SCHEMA = pa.schema(
    [
        pa.field("category", pa.string(), nullable=False),
        pa.field("shard", pa.uint16(), nullable=False),
        pa.field("hour", pa.int64(), nullable=False),  # Unix ns of the hour start (floored)
        pa.field("n", pa.int64(), nullable=False),  # rows summarised
        pa.field("cpc", pa.binary(), nullable=False),  # cpc_sketch of producer_id
        pa.field("frequent", pa.binary(), nullable=True),  # frequent_strings_sketch; null if listed
        pa.field("frequent_error", pa.int64(), nullable=False),  # max count of an untracked producer
        pa.field("kll", pa.binary(), nullable=True),  # kll_doubles_sketch of value; null when n <= kll_k
        pa.field("value_deltas", pa.list_(pa.int64()), nullable=True),  # sorted values when n <= kll_k
        pa.field("top_producers", pa.list_(pa.string()), nullable=True),  # exact frequent items ...
        pa.field("top_counts", pa.list_(pa.int64()), nullable=True),  # ... and their counts
    ]
)

# DataSketches' worst serialized CPC size over its trials (cpc_sketch_impl.hpp, 99.9th percentile
# of 80 sizes per trial; compression is data dependent) for lg_k 4..19, and 0.6 * k beyond; plus
# its largest preamble.
_CPC_MAX_BYTES = (24, 36, 56, 100, 180, 344, 660, 1292, 2540, 5020, 9968, 19836, 39532, 78880, 157516, 314656)
_CPC_PREAMBLE_BYTES = 40
# Serialized frequent_strings_sketch: a fixed preamble, then per active item an 8-byte weight and
# a 4-byte length followed by the UTF-8 bytes (datasketches-cpp frequent_items_sketch_impl.hpp).
_FREQUENT_PREAMBLE_BYTES = 32
_FREQUENT_ITEM_BYTES = 8 + 4 + PRODUCER_MAX_BYTES


@dataclass(frozen=True)
class SketchConfig:
    """Size/accuracy knobs of the sketches, fixed per deployment.

    - ``hll_lg_k`` (7..21): CPC sketch of ``producer_id`` with k = 2^lg_k (the name is the
      ``sketch_hll_lg_k`` setting's, kept when HLL gave way to CPC, issue 8); relative standard
      error about 0.7 / sqrt(k) (1.1 % at 12, merged sketches' ICON estimator); about 170 bytes
      for 150 producers and at most about 0.6 k bytes (2.6 KB at 12).
    - ``frequent_lg_max_k`` (3..26): frequent-items map of 2^lg_max_k slots holding up to
      0.75 * 2^lg_max_k producers; a count is off by at most about 3.5 / 2^lg_max_k of the events
      (0.34 % at 10), and the sketch's own bounds on it are hard, not probabilistic.
    - ``frequent_keep`` (>= 1): a sketch built from rows holds only the group's ``frequent_keep``
      producers with most events (exact counts; at most the map's capacity), and its
      ``frequent_error`` is the exact count of the next one; a merge that did not purge keeps
      its ``frequent_keep`` largest counters the same way. Fewer is smaller and cheaper to build;
      the bounds stay hard, only wider for producers beyond the kept ones.
    - ``kll_k`` (8..65535): KLL of ``value``; normalized rank error 1.33 % at 200 (99 %
      confidence), at most about 8 * (3k + 512) bytes. Values are summarised as float64, exact for
      |value| <= 2^53. A group of at most k values stores the values instead (at most 8k bytes).
    """

    hll_lg_k: int = 12
    frequent_lg_max_k: int = 10
    kll_k: int = 200
    frequent_keep: int = 8

    def __post_init__(self) -> None:
        if not 7 <= self.hll_lg_k <= 21:
            raise ValueError(f"hll_lg_k must be in 7..21, got {self.hll_lg_k}")
        if not 3 <= self.frequent_lg_max_k <= 26:
            raise ValueError(f"frequent_lg_max_k must be in 3..26, got {self.frequent_lg_max_k}")
        if not 8 <= self.kll_k <= 65535:
            raise ValueError(f"kll_k must be in 8..65535, got {self.kll_k}")
        if self.frequent_keep < 1:
            raise ValueError(f"frequent_keep must be at least 1, got {self.frequent_keep}")

    def kept_producers(self) -> int:
        """How many producers a sketch built from rows holds: ``frequent_keep``, capped at the
        frequent-items map's capacity so that building never purges."""
        return min(self.frequent_keep, (3 << self.frequent_lg_max_k) // 4)

    def max_bytes(self) -> dict[str, int]:
        """Upper bound on the serialized size of each sketch column, for any number of rows.

        The KLL bound assumes fewer than 2^64 values: levels shrink geometrically by 2/3 from
        ``k`` down to a floor of 8 items, so a sketch holds at most ``3k + 8 * 64`` items.
        """
        frequent_items = (3 << self.frequent_lg_max_k) // 4
        lg_k = self.hll_lg_k
        cpc = _CPC_MAX_BYTES[lg_k - 4] if lg_k - 4 < len(_CPC_MAX_BYTES) else int(0.6 * (1 << lg_k))
        return {
            "cpc": cpc + _CPC_PREAMBLE_BYTES,
            "frequent": _FREQUENT_PREAMBLE_BYTES + frequent_items * _FREQUENT_ITEM_BYTES,
            "kll": 8 * (3 * self.kll_k + 8 * 64) + 4 * 65 + 32,
            "value_deltas": 8 * self.kll_k,
        }


def build_sketches(rows: pa.Table, config: SketchConfig = SketchConfig()) -> pa.Table:
    """Sketch raw rows (``STORED_SCHEMA`` columns) into one ``SKETCH_SCHEMA`` row per
    (category, shard, hour), sorted by those keys; ``hour`` is the timestamp floored to the hour.

    Producers are counted exactly first, so the frequent-items sketch gets only each group's
    ``config.kept_producers()`` largest producers with their exact counts, and ``frequent_error``
    is the next largest count: no producer left out has more events. The CPC sketch sees every
    distinct (group, producer) once. A group of at most ``config.kll_k`` values keeps them in
    ``value_deltas``; a larger one's go to KLL as one sorted array (KLL's bounds hold for any
    input order). The bytes do not depend on row order (kll aside: its compaction is randomised
    by design).

    Cost: a few integer sorts over the rows (no string sort), then one sketch update per
    distinct (group, producer) for the CPC sketch and at most ``kept_producers()`` per group for
    the frequent items.
    """
    if rows.num_rows == 0:
        return SKETCH_SCHEMA.empty_table()
    groups = _Groups(rows)
    key = groups.key(rows)
    keys, sizes, values = _sorted_values(key, combined(rows["value"]).to_numpy())
    pair_group, producers, counts = _count_pairs(key, keys, combined(rows["producer_id"]))
    starts = np.searchsorted(pair_group, np.arange(len(keys)))
    ends = np.append(starts[1:], len(pair_group))
    # The frequent items: each group's first kept_producers() pairs (most events first), exact,
    # and its error the count of the next one.
    keep = config.kept_producers()
    kept = np.arange(len(pair_group)) - starts[pair_group] < keep
    following = starts + keep
    errors = np.where(following < ends, counts[np.minimum(following, len(counts) - 1)], 0)
    listed = np.ones(len(keys), np.bool_)
    top_sizes = np.minimum(ends - starts, keep)
    top_producers = _lists(producers.filter(pa.array(kept)), top_sizes, listed)
    top_counts = _lists(pa.array(counts[kept], pa.int64()), top_sizes, listed)
    names = producers.to_pylist()
    cpcs: list[bytes] = []
    klls: list[bytes | None] = []
    row_start = 0
    for n, first, end in zip(sizes.tolist(), starts.tolist(), ends.tolist(), strict=True):
        cpc = ds.cpc_sketch(config.hll_lg_k)
        # map() calls the bound method from C: a third cheaper than a Python for loop.
        deque(map(cpc.update, names[first:end]), 0)
        # Stored as a union's result: without the HIP estimator's state (16 bytes a group, 0.1 to
        # 0.2 bytes per event on W20), which only a sketch never merged uses, and every answer
        # merges (a union estimates with ICON).
        union = ds.cpc_union(config.hll_lg_k)
        union.update(cpc)
        cpcs.append(union.get_result().serialize())
        if n <= config.kll_k:
            klls.append(None)
        else:
            kll = ds.kll_doubles_sketch(config.kll_k)
            # The binding accepts only writable float64 arrays.
            kll.update(values[row_start : row_start + n].astype(np.float64))
            klls.append(kll.serialize())
        row_start += n
    categories, shards, hours = groups.decode(keys)
    deltas = value_deltas_column(values, sizes, sizes <= config.kll_k)
    frequents: list[bytes | None] = [None] * len(keys)
    return sketch_table(
        categories,
        shards,
        hours,
        sizes.tolist(),
        cpcs,
        frequents,
        errors.tolist(),
        klls,
        deltas,
        top_producers,
        top_counts,
    )


def _lists(children: pa.Array, sizes: _Ints, valid: npt.NDArray[np.bool_]) -> pa.Array:
    """A list column of ``children`` taken ``sizes[i]`` at a time by the ``valid`` rows, and null
    for the others (whose ``sizes`` are ignored: they take no children)."""
    offsets = np.concatenate([[0], np.cumsum(np.where(valid, sizes, 0))]).astype(np.int32)
    return pa.ListArray.from_arrays(
        pa.array(offsets, pa.int32()), children, type=pa.list_(children.type), mask=pa.array(~valid)
    )


def value_deltas_column(values: _Ints, sizes: _Ints, small: npt.NDArray[np.bool_]) -> pa.Array:
    """The ``value_deltas`` column of groups of ``sizes`` rows whose ``values`` are sorted within
    each group: the deltas of the ``small`` groups, null for the others."""
    starts = (np.cumsum(sizes) - sizes)[sizes > 0]
    # int64 differences wrap around modulo 2^64, and so do the sums that undo them.
    deltas = np.diff(values, prepend=np.int64(0))
    deltas[starts] = values[starts]
    return _lists(pa.array(deltas[np.repeat(small, sizes)], pa.int64()), sizes, small)


def combined(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One array of a column that may be chunked."""
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


_Ints = npt.NDArray[np.int64]
# Combined integer keys stay below this, so that no product overflows an int64; beyond it the
# build takes slower general paths (tests lower it to exercise them).
_KEY_LIMIT = 1 << 62


class _Groups:
    """(category, shard, hour) triples of some rows as non-negative int64 keys that sort as the
    triples do, and back. Keys are dense (categories x shards x hours present in the rows'
    ranges), so a part's groups usually fit 16 bits and sort in one radix pass."""

    def __init__(self, rows: pa.Table) -> None:
        categories = pc.unique(combined(rows["category"]))
        # Categories in order, so that a category's position sorts as the category does.
        self.categories = categories.take(pc.sort_indices(categories))
        hour = combined(rows["timestamp"]).to_numpy() // HOUR_NS  # floor, also before 1970
        self.shards = int(pc.max(rows["shard"]).as_py()) + 1
        self.first_hour = int(hour.min())
        self.span = int(hour.max()) - self.first_hour + 1
        self.hours: _Ints | None = None
        if len(self.categories) * self.shards * self.span >= _KEY_LIMIT:
            # Millions of categories over centuries: number the hours present instead.
            self.hours = np.unique(hour)
            self.span = len(self.hours)

    def key(self, rows: pa.Table) -> _Ints:
        """The key of each of ``rows`` (the rows the groups were made from)."""
        position = pc.index_in(combined(rows["category"]), value_set=self.categories).to_numpy()
        hour = combined(rows["timestamp"]).to_numpy() // HOUR_NS
        index = np.searchsorted(self.hours, hour) if self.hours is not None else hour - self.first_hour
        shards = combined(rows["shard"]).to_numpy().astype(np.int64)
        key: _Ints = (position.astype(np.int64) * self.shards + shards) * self.span + index
        return key

    def decode(self, keys: _Ints) -> tuple[list[str], list[int], list[int]]:
        """(categories, shards, hours) of ``keys``."""
        category, rest = np.divmod(keys, self.shards * self.span)
        shard, index = np.divmod(rest, self.span)
        hour = self.hours[index] if self.hours is not None else index + self.first_hour
        return self.categories.take(pa.array(category)).to_pylist(), shard.tolist(), (hour * HOUR_NS).tolist()


def _count_pairs(key: _Ints, keys: _Ints, producer_id: pa.Array) -> tuple[_Ints, pa.Array, _Ints]:
    """Exact counts of each distinct (group, producer) of the rows, ranked within each group by
    ``_rank``: (group positions in ``keys``, producers, counts)."""
    producers = producer_id.dictionary_encode()
    codes = producers.indices.to_numpy().astype(np.int64)
    distinct = max(len(producers.dictionary), 1)
    # One sort of a combined integer: the group's key itself when the product fits, else its
    # position among the groups (< rows, so it fits).
    by_key = int(keys[-1]) < _KEY_LIMIT // distinct
    group_of = key if by_key else np.searchsorted(keys, key)
    pair_keys = np.sort(group_of * distinct + codes)
    firsts = np.flatnonzero(np.diff(pair_keys, prepend=-1))
    counts = np.diff(np.append(firsts, len(pair_keys)))
    pair_group, pair_code = np.divmod(pair_keys[firsts], distinct)
    if by_key:
        pair_group = np.searchsorted(keys, pair_group)  # sorted needles: one pass
    order = _rank(pair_group, counts, xxh64_strings(producers.dictionary)[pair_code])
    return pair_group[order], producers.dictionary.take(pa.array(pair_code[order])), counts[order]


def _rank(group: _Ints, counts: _Ints, tie: npt.NDArray[np.uint64]) -> _Ints:
    """The order of (group, producer) pairs by group, most events first, then by the producer's
    hash, so that which producers are kept (and the bytes) do not depend on the rows' order."""
    return radix_order(group, int(counts.max()) - counts, tie)


def _sorted_values(key: _Ints, value: _Ints) -> tuple[_Ints, _Ints, _Ints]:
    """The distinct keys in order, each one's row count, and the rows' values sorted by
    (key, value)."""
    order = radix_order(key, value)
    by_key, values = key[order], value[order]
    firsts = np.flatnonzero(np.diff(by_key, prepend=-1))
    sizes = np.diff(np.append(firsts, len(by_key)))
    return by_key[firsts], sizes, values.astype(np.int64)


def sketch_table(
    categories: list[str],
    shards: list[int],
    hours: list[int],
    ns: list[int],
    cpcs: list[bytes],
    frequents: list[bytes | None],
    errors: list[int],
    klls: list[bytes | None],
    value_deltas: pa.Array,
    top_producers: pa.Array,
    top_counts: pa.Array,
) -> pa.Table:
    return pa.table(
        [
            pa.array(categories, pa.string()),
            pa.array(shards, pa.uint16()),
            pa.array(hours, pa.int64()),
            pa.array(ns, pa.int64()),
            pa.array(cpcs, pa.binary()),
            pa.array(frequents, pa.binary()),
            pa.array(errors, pa.int64()),
            pa.array(klls, pa.binary()),
            value_deltas,
            top_producers,
            top_counts,
        ],
        schema=SKETCH_SCHEMA,
    )
