"""Sketches: bounded-size summaries per (category, shard, hour) for approximate answers (issue 7).

Each sketch row holds three Apache DataSketches, serialized: an HLL of ``producer_id`` (distinct
producers), a frequent-items sketch of ``producer_id`` weighted by event count (approximate top-k
with hard bounds), and a KLL sketch of ``value`` (quantiles). Sketches are built once from raw rows
when a buffer is persisted and afterwards only merged (compaction, range queries), never rebuilt;
every serialized sketch is bounded by ``SketchConfig.max_bytes()`` whatever the number of rows.

``frequent_error`` stores the frequent-items sketch's maximum error beside it, because the sketch
cannot carry it itself when a purge evicted every producer: datasketches-cpp then treats it as
empty, serializes neither its weight nor its error, and skips it in ``merge``
(apache/datasketches-cpp#527). ``merge_frequent`` puts the two back together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import datasketches as ds
import numpy as np
import polars as pl
import pyarrow as pa

from storage.errors import StorageError
from storage.schema import HOUR_NS, PRODUCER_MAX_BYTES

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
    - ``kll_k`` (8..65535): KLL of ``value``; normalized rank error 1.33 % at 200 (99 %
      confidence), at most about 8 * (3k + 512) bytes. Values are summarised as float64, exact for |value| <= 2^53.
    """

    hll_lg_k: int = 12
    frequent_lg_max_k: int = 10
    kll_k: int = 200

    def __post_init__(self) -> None:
        if not 7 <= self.hll_lg_k <= 21:
            raise ValueError(f"hll_lg_k must be in 7..21, got {self.hll_lg_k}")
        if not 3 <= self.frequent_lg_max_k <= 26:
            raise ValueError(f"frequent_lg_max_k must be in 3..26, got {self.frequent_lg_max_k}")
        if not 8 <= self.kll_k <= 65535:
            raise ValueError(f"kll_k must be in 8..65535, got {self.kll_k}")

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


def build_sketches(rows: pa.Table, config: SketchConfig = SketchConfig()) -> pa.Table:
    """Sketch raw rows (``STORED_SCHEMA`` columns) into one ``SKETCH_SCHEMA`` row per
    (category, shard, hour), sorted by those keys; ``hour`` is the timestamp floored to the hour.

    The cost is one hash aggregation plus one sketch update per distinct (group, producer), not
    per event: producers are pre-aggregated to (producer, event count) pairs, and values go to
    KLL as one numpy array per group (about 0.5 s for 1M rows of 100k producers).
    """
    if rows.num_rows == 0:
        return SKETCH_SCHEMA.empty_table()
    df = pl.from_arrow(rows.select(["timestamp", "category", "value", "producer_id", "shard"]))
    assert isinstance(df, pl.DataFrame)
    keys = list(SKETCH_KEYS)
    # One hash aggregation, then a sort of the (few) groups only: sorting the raw rows by a
    # string key costs several times more. Producers are sorted within their group before the
    # run-length count so the frequent-items sketch sees a deterministic order (its purges
    # depend on it): hll and frequent come out byte-identical for any row order (kll does not,
    # its compaction is randomised by design).
    groups = (
        df.lazy()
        .with_columns(hour=(pl.col("timestamp") // HOUR_NS) * HOUR_NS)
        .group_by(keys)
        .agg(n=pl.len(), value=pl.col("value"), runs=pl.col("producer_id").sort().rle())
        .sort(keys)
        .collect()
    )
    # The binding accepts only writable float64 arrays, and polars hands out read-only views.
    values = np.array(groups["value"].explode().cast(pl.Float64).to_numpy(), dtype=np.float64, copy=True)
    runs = groups["runs"].explode().struct.unnest()
    producers = runs["value"].to_list()
    weights = runs["len"].to_list()
    pair_counts = groups["runs"].list.len().to_list()
    hlls: list[bytes] = []
    frequents: list[bytes] = []
    errors: list[int] = []
    klls: list[bytes] = []
    row_start = pair_start = 0
    for n, m in zip(groups["n"].to_list(), pair_counts, strict=True):
        hll = ds.hll_sketch(config.hll_lg_k, _HLL_TYPE)
        frequent = ds.frequent_strings_sketch(config.frequent_lg_max_k)
        for producer, weight in zip(
            producers[pair_start : pair_start + m], weights[pair_start : pair_start + m], strict=True
        ):
            hll.update(producer)
            frequent.update(producer, weight)
        kll = ds.kll_doubles_sketch(config.kll_k)
        kll.update(values[row_start : row_start + n])
        hlls.append(hll.serialize_compact())
        frequents.append(frequent.serialize())
        errors.append(frequent_error(frequent))
        klls.append(kll.serialize())
        row_start += n
        pair_start += m
    return _sketch_table(
        groups["category"].to_list(),
        groups["shard"].to_list(),
        groups["hour"].to_list(),
        groups["n"].to_list(),
        hlls,
        frequents,
        errors,
        klls,
    )


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
