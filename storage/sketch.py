"""Sketches: bounded-size summaries per (category, shard, hour) for approximate answers (issue 7).

Each sketch row holds three Apache DataSketches, serialized: an HLL of ``producer_id`` (distinct
producers), a frequent-items sketch of ``producer_id`` weighted by event count (approximate top-k
with hard bounds), and a KLL sketch of ``value`` (quantiles). Sketches are built once from raw rows
when a buffer is persisted and afterwards only merged (compaction, range queries), never rebuilt;
every serialized sketch is bounded by ``SketchConfig.max_bytes()`` whatever the number of rows.

``frequent_error`` stores the frequent-items summary's maximum error beside the sketch: every
producer's count lies within the sketch's bounds, the upper one raised by ``frequent_error -
frequent_error(sketch)`` (``merge_frequent`` puts the two together). A sketch built from rows
holds only each group's largest producers, with their exact counts (``SketchConfig.frequent_keep``),
and its ``frequent_error`` is the exact count of the next one, which the sketch itself cannot
express. The column also keeps the error of a merge whose purge evicted every producer:
datasketches-cpp then treats the sketch as empty, serializes neither its weight nor its error,
and skips it in ``merge`` (apache/datasketches-cpp#527).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import datasketches as ds
import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from storage.errors import StorageError
from storage.schema import HOUR_NS, PRODUCER_MAX_BYTES
from storage.xxh64 import xxh64_strings

__all__ = [
    "SKETCH_DECODE_ERRORS",
    "SKETCH_KEYS",
    "SKETCH_SCHEMA",
    "SketchConfig",
    "build_sketches",
    "frequent_error",
    "merge_frequent",
    "merge_sketch_tables",
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
        pa.field("hll", pa.binary(), nullable=False),  # hll_sketch (HLL_4, compact) of producer_id
        pa.field("frequent", pa.binary(), nullable=False),  # frequent_strings_sketch of producer_id
        pa.field("frequent_error", pa.int64(), nullable=False),  # max count of an untracked producer
        pa.field("kll", pa.binary(), nullable=False),  # kll_doubles_sketch of value
    ]
)

# HLL_4 is the smallest stored form (about 2^lg_k / 2 bytes when full); unions read any type.
_HLL_TYPE = ds.tgt_hll_type.HLL_4
# Serialized frequent_strings_sketch: a fixed preamble, then per active item an 8-byte weight and
# a 4-byte length followed by the UTF-8 bytes (datasketches-cpp frequent_items_sketch_impl.hpp).
_FREQUENT_PREAMBLE_BYTES = 32
_FREQUENT_ITEM_BYTES = 8 + 4 + PRODUCER_MAX_BYTES


@dataclass(frozen=True)
class SketchConfig:
    """Size/accuracy knobs of the sketches, fixed per deployment.

    - ``hll_lg_k`` (7..21): HLL of ``producer_id`` with 2^lg_k buckets; relative standard error
      about 1.04 / sqrt(2^lg_k) (1.6 % at 12); at most about 2^lg_k / 2 bytes (2.2 KB at 12).
    - ``frequent_lg_max_k`` (3..26): frequent-items map of 2^lg_max_k slots holding up to
      0.75 * 2^lg_max_k producers; a count is off by at most about 3.5 / 2^lg_max_k of the events
      (0.34 % at 10), and the sketch's own bounds on it are hard, not probabilistic.
    - ``frequent_keep`` (>= 1): a sketch built from rows holds only the group's ``frequent_keep``
      producers with most events (exact counts; at most the map's capacity), and its
      ``frequent_error`` is the exact count of the next one. Fewer is smaller and cheaper to build;
      the bounds stay hard, only wider for producers beyond the kept ones.
    - ``kll_k`` (8..65535): KLL of ``value``; normalized rank error 1.33 % at 200 (99 %
      confidence), at most about 8 * (3k + 512) bytes. Values are summarised as float64, exact for |value| <= 2^53.
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
        return {
            "hll": int(ds.hll_sketch.get_max_updatable_serialization_bytes(self.hll_lg_k, _HLL_TYPE)),
            "frequent": _FREQUENT_PREAMBLE_BYTES + frequent_items * _FREQUENT_ITEM_BYTES,
            "kll": 8 * (3 * self.kll_k + 8 * 64) + 4 * 65 + 32,
        }


def build_sketches(
    rows: pa.Table, config: SketchConfig = SketchConfig(), producer_counts: pa.Table | None = None
) -> pa.Table:
    """Sketch raw rows (``STORED_SCHEMA`` columns) into one ``SKETCH_SCHEMA`` row per
    (category, shard, hour), sorted by those keys; ``hour`` is the timestamp floored to the hour.

    Producers are counted exactly first, so the frequent-items sketch gets only each group's
    ``config.kept_producers()`` largest producers with their exact counts, and ``frequent_error``
    is the next largest count: no producer left out has more events. The HLL sees every
    distinct (group, producer) once, and values go to KLL as one sorted array per group (KLL's
    bounds hold for any input order; sorted values compress better). The bytes do not depend on
    row order (kll aside: its compaction is randomised by design).

    ``producer_counts``, when given, is the producer rollup of exactly these rows (columns
    category, shard, hour, producer_id, count, as ``storage.rollup.producer_rollup`` makes it),
    which saves counting them again; raises ``ValueError`` if its counts do not add up to the rows.

    Cost: a few integer sorts over the rows (no string sort), then one sketch update per
    distinct (group, producer) for the HLL and at most ``kept_producers()`` per group for the
    frequent items.
    """
    if rows.num_rows == 0:
        return SKETCH_SCHEMA.empty_table()
    groups = _Groups(rows)
    key = groups.key(rows["category"], rows["shard"], _combined(rows["timestamp"]).to_numpy())
    keys, sizes, values = _sorted_values(key, _combined(rows["value"]).to_numpy())
    if producer_counts is None:
        pair_group, names, counts = _count_pairs(key, keys, _combined(rows["producer_id"]))
    else:
        pair_group, names, counts = _ranked_pairs(groups, keys, producer_counts, rows.num_rows)
    starts = np.searchsorted(pair_group, np.arange(len(keys)))
    ends = np.append(starts[1:], len(pair_group))
    weights = counts.tolist()
    keep = config.kept_producers()
    hlls: list[bytes] = []
    frequents: list[bytes] = []
    errors: list[int] = []
    klls: list[bytes] = []
    row_start = 0
    for n, first, end in zip(sizes.tolist(), starts.tolist(), ends.tolist(), strict=True):
        hll = ds.hll_sketch(config.hll_lg_k, _HLL_TYPE)
        # map() calls the bound method from C: a third cheaper than a Python for loop.
        deque(map(hll.update, names[first:end]), 0)
        top = min(end, first + keep)
        frequent = ds.frequent_strings_sketch(config.frequent_lg_max_k)
        deque(map(frequent.update, names[first:top], weights[first:top]), 0)
        kll = ds.kll_doubles_sketch(config.kll_k)
        kll.update(values[row_start : row_start + n])
        hlls.append(hll.serialize_compact())
        frequents.append(frequent.serialize())
        errors.append(weights[top] if top < end else 0)
        klls.append(kll.serialize())
        row_start += n
    categories, shards, hours = groups.decode(keys)
    return _sketch_table(categories, shards, hours, sizes.tolist(), hlls, frequents, errors, klls)


def _combined(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


_Ints = npt.NDArray[np.int64]
# Combined integer keys stay below this, so that no product overflows an int64; beyond it the
# build takes slower general paths (tests lower it to exercise them).
_KEY_LIMIT = 1 << 62


class _Groups:
    """(category, shard, hour) triples of some rows as non-negative int64 keys that sort as the
    triples do, and back."""

    def __init__(self, rows: pa.Table) -> None:
        categories = pc.unique(_combined(rows["category"]))
        # Categories in order, so that a category's position sorts as the category does.
        self.categories = categories.take(pc.sort_indices(categories))
        hour = _combined(rows["timestamp"]).to_numpy() // HOUR_NS  # floor, also before 1970
        self.first_hour = int(hour.min())
        self.span = int(hour.max()) - self.first_hour + 1
        self.hours: _Ints | None = None
        if len(self.categories) * (1 << 16) * self.span >= _KEY_LIMIT:
            # Millions of categories over centuries: number the hours present instead.
            self.hours = np.unique(hour)
            self.span = len(self.hours)

    def key(self, category: pa.Array | pa.ChunkedArray, shard: pa.Array | pa.ChunkedArray, ts: _Ints) -> _Ints:
        """The keys of rows with these columns (``ts``: any timestamp within the hour)."""
        position = pc.index_in(_combined(category), value_set=self.categories)
        if position.null_count:
            raise ValueError("a category the rows do not have")
        hour = ts // HOUR_NS
        index = np.searchsorted(self.hours, hour) if self.hours is not None else hour - self.first_hour
        shards = _combined(shard).to_numpy().astype(np.int64)
        key: _Ints = (position.to_numpy().astype(np.int64) * (1 << 16) + shards) * self.span + index
        return key

    def decode(self, keys: _Ints) -> tuple[list[str], list[int], list[int]]:
        """(categories, shards, hours) of ``keys``."""
        category, rest = np.divmod(keys, (1 << 16) * self.span)
        shard, index = np.divmod(rest, self.span)
        hour = self.hours[index] if self.hours is not None else index + self.first_hour
        return self.categories.take(pa.array(category)).to_pylist(), shard.tolist(), (hour * HOUR_NS).tolist()


def _count_pairs(key: _Ints, keys: _Ints, producer_id: pa.Array) -> tuple[_Ints, list[str], _Ints]:
    """Exact counts of each distinct (group, producer) of the rows, ranked within each group by
    ``_rank``: (group positions in ``keys``, producers, counts)."""
    producers = producer_id.dictionary_encode()
    codes = producers.indices.to_numpy().astype(np.int64)
    distinct = max(len(producers.dictionary), 1)
    # One sort of a combined integer: the group's key itself when the product fits, else its
    # position among the groups (< rows, so it fits).
    by_key = int(keys[-1]) < _KEY_LIMIT // distinct
    group_of = key if by_key else np.searchsorted(keys, key)
    pair_keys = pl.Series(group_of * distinct + codes).sort().to_numpy()
    firsts = np.flatnonzero(np.diff(pair_keys, prepend=-1))
    counts = np.diff(np.append(firsts, len(pair_keys)))
    pair_group, pair_code = np.divmod(pair_keys[firsts], distinct)
    if by_key:
        pair_group = np.searchsorted(keys, pair_group)  # sorted needles: one pass
    order = _rank(pair_group, counts, xxh64_strings(producers.dictionary)[pair_code])
    return pair_group[order], producers.dictionary.take(pa.array(pair_code[order])).to_pylist(), counts[order]


def _ranked_pairs(groups: _Groups, keys: _Ints, table: pa.Table, rows: int) -> tuple[_Ints, list[str], _Ints]:
    """``_count_pairs`` from a producer rollup of the rows instead of the rows."""
    counts = _combined(table["count"]).to_numpy().astype(np.int64)
    if int(counts.sum()) != rows:
        raise ValueError(f"producer counts add up to {int(counts.sum())} events, not the {rows} rows sketched")
    key = groups.key(table["category"], table["shard"], _combined(table["hour"]).to_numpy())
    pair_group = np.searchsorted(keys, key)
    if not np.array_equal(keys[np.minimum(pair_group, len(keys) - 1)], key):
        raise ValueError("producer counts of a (category, shard, hour) the rows do not have")
    producer_id = _combined(table["producer_id"])
    order = _rank(pair_group, counts, xxh64_strings(producer_id))
    return pair_group[order], producer_id.take(pa.array(order)).to_pylist(), counts[order]


def _rank(group: _Ints, counts: _Ints, tie: npt.NDArray[np.uint64]) -> _Ints:
    """The order of (group, producer) pairs by group, most events first, then by the producer's
    hash, so that which producers are kept (and the bytes) do not depend on the rows' order."""
    # (group, most events first) as one integer: group positions and counts are below 2^31.
    rank_key = group * (int(counts.max()) + 1) - counts
    order: _Ints = pl.DataFrame({"k": rank_key, "t": tie}).with_row_index().sort(["k", "t"])["index"].to_numpy()
    return order


def _sorted_values(key: _Ints, value: _Ints) -> tuple[_Ints, _Ints, npt.NDArray[np.float64]]:
    """The distinct keys in order, each one's row count, and the rows' values as float64
    sorted by (key, value)."""
    low, high = int(value.min()), int(value.max())
    width = high - low + 1
    if (int(key.max()) + 1) * width < _KEY_LIMIT:
        # One sort of a combined integer (polars sorts int64 several times faster than lexsort).
        combined = pl.Series(key * width + (value - low)).sort().to_numpy()
        by_key, values = np.divmod(combined, width)
        values += low
    else:
        order = np.lexsort((value, key))
        by_key, values = key[order], value[order]
    firsts = np.flatnonzero(np.diff(by_key, prepend=-1))
    sizes = np.diff(np.append(firsts, len(by_key)))
    # The binding accepts only writable float64 arrays.
    return by_key[firsts], sizes, values.astype(np.float64)


def frequent_error(sketch: ds.frequent_strings_sketch) -> int:
    """The sketch's maximum error: no producer it does not track has more events than this."""
    # "" is never a producer_id (1..256 bytes), so it is never tracked and its upper bound is
    # the sketch's offset, which the Python binding does not expose otherwise.
    return int(sketch.get_upper_bound(""))


def merge_frequent(
    blobs: Sequence[bytes], errors: Sequence[int], lg_max_k: int
) -> tuple[ds.frequent_strings_sketch, int]:
    """Merge serialized frequent-items sketches with their stored ``frequent_error``s.

    Returns the merged sketch and ``lost``, the error of inputs whose state did not survive
    serialization (purged to no items, apache/datasketches-cpp#527). Guarantees: for every
    producer, ``sketch.get_lower_bound(p) <= true count <= sketch.get_upper_bound(p) + lost``,
    and the merged maximum error is ``frequent_error(sketch) + lost``. Raises one of
    ``SKETCH_DECODE_ERRORS`` on a blob that is not a sketch.
    """
    merged = ds.frequent_strings_sketch(lg_max_k)
    lost = 0
    for blob, error in zip(blobs, errors, strict=True):
        part = ds.frequent_strings_sketch.deserialize(blob)
        # A sketch purged to no items keeps no counters, so each producer it saw had at most
        # its error; that error is what the blob dropped.
        lost += error - frequent_error(part)
        merged.merge(part)
    return merged, lost


def merge_sketch_tables(tables: Sequence[pa.Table], config: SketchConfig = SketchConfig()) -> pa.Table:
    """Merge sketch tables into one row per (category, shard, hour), sorted by those keys.

    A key present once is passed through byte for byte; rows sharing a key are merged into
    sketches of ``config``'s sizes (a larger stored sketch is down-sampled), so the result
    summarises exactly the union of the inputs' rows and stays within ``config.max_bytes()``
    when the inputs were built with it.
    Raises ``StorageError`` if a stored sketch cannot be read.
    """
    parts = [t.select(SKETCH_SCHEMA.names).cast(SKETCH_SCHEMA) for t in tables if t.num_rows]
    if not parts:
        return SKETCH_SCHEMA.empty_table()
    table = pa.concat_tables(parts).sort_by([(k, "ascending") for k in SKETCH_KEYS])
    keys_df = pl.from_arrow(table.select(list(SKETCH_KEYS)))
    assert isinstance(keys_df, pl.DataFrame)
    runs = (
        keys_df.with_row_index("i")
        .group_by(list(SKETCH_KEYS), maintain_order=True)
        .agg(first=pl.col("i").first(), count=pl.len())
    )
    if runs.height == table.num_rows:
        return table.combine_chunks()

    columns = {name: table[name].to_pylist() for name in ("n", "hll", "frequent", "frequent_error", "kll")}
    ns: list[int] = []
    hlls: list[bytes] = []
    frequents: list[bytes] = []
    errors: list[int] = []
    klls: list[bytes] = []
    for category, shard, hour, first, count in runs.iter_rows():
        span = range(first, first + count)
        ns.append(sum(columns["n"][i] for i in span))
        if count == 1:
            hlls.append(columns["hll"][first])
            frequents.append(columns["frequent"][first])
            errors.append(columns["frequent_error"][first])
            klls.append(columns["kll"][first])
            continue
        try:
            hll = ds.hll_union(config.hll_lg_k)
            kll = ds.kll_doubles_sketch(config.kll_k)
            for i in span:
                hll.update(ds.hll_sketch.deserialize(columns["hll"][i]))
                kll.merge(ds.kll_doubles_sketch.deserialize(columns["kll"][i]))
            frequent, lost = merge_frequent(
                [columns["frequent"][i] for i in span],
                [columns["frequent_error"][i] for i in span],
                config.frequent_lg_max_k,
            )
        except SKETCH_DECODE_ERRORS as e:
            raise StorageError(
                f"sketch of category={category!r} shard={shard} hour={hour} cannot be read: {e}; "
                "rebuild it from the hour's events with build_sketches"
            ) from e
        hlls.append(hll.get_result(_HLL_TYPE).serialize_compact())
        frequents.append(frequent.serialize())
        errors.append(frequent_error(frequent) + lost)
        klls.append(kll.serialize())
    return _sketch_table(
        runs["category"].to_list(),
        runs["shard"].to_list(),
        runs["hour"].to_list(),
        ns,
        hlls,
        frequents,
        errors,
        klls,
    )


def _sketch_table(
    categories: list[str],
    shards: list[int],
    hours: list[int],
    ns: list[int],
    hlls: list[bytes],
    frequents: list[bytes],
    errors: list[int],
    klls: list[bytes],
) -> pa.Table:
    return pa.table(
        [
            pa.array(categories, pa.string()),
            pa.array(shards, pa.uint16()),
            pa.array(hours, pa.int64()),
            pa.array(ns, pa.int64()),
            pa.array(hlls, pa.binary()),
            pa.array(frequents, pa.binary()),
            pa.array(errors, pa.int64()),
            pa.array(klls, pa.binary()),
        ],
        schema=SKETCH_SCHEMA,
    )
