"""Rollups: pre-aggregated counts and sums that answer whole minutes and hours without raw rows.

Both rollups are additive (count and sum of disjoint row sets add up), which is what lets late
events simply add a part and lets compaction merge parts by summing. Sums are DECIMAL(38,0):
int64 sums overflow, and DuckDB would write HUGEINT to Parquet as a lossy DOUBLE.

The write path builds them with Arrow's hash aggregation (``minute_rollup``, ``producer_rollup``,
``merge_rollups``), several times faster than a DuckDB ``GROUP BY`` over a registered Arrow
table; the SQL forms stay for relations that already live in DuckDB.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from storage.ordering import lex_order, string_ranks
from storage.schema import HOUR_NS, MINUTE_NS

__all__ = [
    "MERGE_MINUTE_SQL",
    "MERGE_PRODUCER_SQL",
    "MINUTE_ROLLUP_SCHEMA",
    "MINUTE_ROLLUP_SQL",
    "PRODUCER_ROLLUP_SCHEMA",
    "PRODUCER_ROLLUP_SQL",
    "SUM_TYPE",
    "exact_sum",
    "int64_sums_are_exact",
    "merge_rollups",
    "minute_rollup",
    "producer_rollup",
    "sum_by_id",
]

SUM_TYPE = "DECIMAL(38,0)"

SUM_ARROW = pa.decimal128(38, 0)

MINUTE_ROLLUP_SCHEMA = pa.schema(
    [
        ("category", pa.string()),
        ("shard", pa.uint16()),
        ("minute", pa.int64()),
        ("count", pa.int64()),
        ("sum", SUM_ARROW),
    ]
)

PRODUCER_ROLLUP_SCHEMA = pa.schema(
    [
        ("category", pa.string()),
        ("shard", pa.uint16()),
        ("hour", pa.int64()),
        ("producer_id", pa.string()),
        ("count", pa.int64()),
        ("sum", pa.decimal128(38, 0)),
    ]
)

# Each takes the name of a relation with STORED_SCHEMA columns (``{src}``).
MINUTE_ROLLUP_SQL = f"""
SELECT category, shard, timestamp - (timestamp % {MINUTE_NS}) AS minute,
       count(*)::BIGINT AS count, sum(value)::{SUM_TYPE} AS sum
FROM {{src}} GROUP BY ALL ORDER BY category, shard, minute
"""

PRODUCER_ROLLUP_SQL = f"""
SELECT category, shard, timestamp - (timestamp % {HOUR_NS}) AS hour, producer_id,
       count(*)::BIGINT AS count, sum(value)::{SUM_TYPE} AS sum
FROM {{src}} GROUP BY ALL ORDER BY category, shard, producer_id
"""

# Each takes a relation of rollup rows to merge (``{src}``).
MERGE_MINUTE_SQL = f"""
SELECT category, shard, minute, sum(count)::BIGINT AS count, sum(sum)::{SUM_TYPE} AS sum
FROM {{src}} GROUP BY ALL ORDER BY category, shard, minute
"""

MERGE_PRODUCER_SQL = f"""
SELECT category, shard, hour, producer_id, sum(count)::BIGINT AS count, sum(sum)::{SUM_TYPE} AS sum
FROM {{src}} GROUP BY ALL ORDER BY category, shard, producer_id
"""


# -- the same rollups built with Arrow --------------------------------------------------------------

_INT64_SAFE = float(1 << 62)  # margin below 2**63 for the float estimate of sum(|v|)


def int64_sums_are_exact(values: npt.NDArray[Any]) -> bool:
    """True when no sum of any subset of ``values`` (int64) can overflow int64."""
    return bool(np.abs(values.astype(np.float64)).sum() < _INT64_SAFE)


def exact_sum(values: npt.NDArray[Any]) -> int:
    """The exact sum of int64 ``values`` as a Python int, whatever their size."""
    if int64_sums_are_exact(values):
        return int(values.sum())
    # Split each value into a signed high and an unsigned low 32-bit half: neither half-sum
    # can overflow int64 below 2**31 values, and the halves recombine exactly in Python.
    high = int((values >> np.int64(32)).sum())
    low = int((values & np.int64(0xFFFFFFFF)).sum())
    return (high << 32) + low


def _aggregate(table: pa.Table, keys: list[str]) -> pa.Table:
    """count and exact DECIMAL(38,0) sum of ``value`` per ``keys``."""
    values = table.column("value")
    if not int64_sums_are_exact(values.to_numpy()):
        table = table.set_column(table.schema.get_field_index("value"), "value", values.cast(SUM_ARROW))
    # One thread: groups come out in first-seen order, so equal inputs give equal files.
    out = table.group_by(keys, use_threads=False).aggregate([("value", "count"), ("value", "sum")])
    return out.rename_columns([*keys, "count", "sum"])


def _sorted(table: pa.Table, keys: list[str], schema: pa.Schema) -> pa.Table:
    """``table`` sorted by ``keys`` (string keys by UTF-8 bytes), conformed to ``schema``."""
    columns: list[npt.NDArray[Any]] = []
    for k in keys:
        col = table.column(k)
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            columns.append(string_ranks(col)[0])
        else:
            columns.append(col.to_numpy())
    if table.num_rows:
        table = table.take(pa.array(lex_order(*columns)))
    return table.select(schema.names).cast(schema).combine_chunks()


# Dense (category, shard, minute) grids up to this many cells are counted with bincount.
_DENSE_CELLS = 1 << 23
_FLOAT_EXACT = float(1 << 52)  # float64 sums of integers are exact while they stay below 2**53


def _dense_minute_rollup(rows: pa.Table) -> pa.Table | None:
    """The minute rollup by counting into a dense (category, shard, minute) grid: two
    ``bincount`` passes and no hashing, or None when the grid would be too big or a float64
    sum could be inexact."""
    ts = rows.column("timestamp").to_numpy()
    values = rows.column("value").to_numpy()
    if len(ts) == 0 or np.abs(values.astype(np.float64)).sum() >= _FLOAT_EXACT:
        return None
    minutes = ts // MINUTE_NS
    first = int(minutes.min())
    n_minutes = int(minutes.max()) - first + 1
    shards = rows.column("shard").to_numpy().astype(np.int64)
    n_shards = int(shards.max()) + 1
    ranks, categories = string_ranks(rows.column("category"))
    cells = len(categories) * n_shards * n_minutes
    if cells > _DENSE_CELLS:
        return None
    key = (ranks * n_shards + shards) * n_minutes + (minutes - first)
    counts = np.bincount(key, minlength=cells)
    sums = np.bincount(key, weights=values, minlength=cells)
    cell = np.flatnonzero(counts)
    return pa.table(
        {
            "category": categories.take(pa.array(cell // (n_shards * n_minutes))),
            "shard": pa.array((cell // n_minutes % n_shards).astype(np.uint16)),
            "minute": pa.array((cell % n_minutes + first) * MINUTE_NS),
            "count": pa.array(counts[cell].astype(np.int64)),
            "sum": pa.array(sums[cell].astype(np.int64)).cast(SUM_ARROW),
        },
        schema=MINUTE_ROLLUP_SCHEMA,
    )


def _keyed(rows: pa.Table, period: str, period_ns: int, *extra: str) -> pa.Table:
    """category, shard, the start of each row's ``period`` (Unix ns), ``extra`` columns, value."""
    ts = rows.column("timestamp").to_numpy()
    return pa.table(
        {
            "category": rows.column("category"),
            "shard": rows.column("shard"),
            period: pa.array(ts - ts % period_ns),
            **{c: rows.column(c) for c in extra},
            "value": rows.column("value"),
        }
    )


def minute_rollup(rows: pa.Table) -> pa.Table:
    """(category, shard, minute) -> count, sum of STORED_SCHEMA rows, sorted by those keys."""
    dense = _dense_minute_rollup(rows)
    if dense is not None:
        return dense
    keys = ["category", "shard", "minute"]
    return _sorted(_aggregate(_keyed(rows, "minute", MINUTE_NS), keys), keys, MINUTE_ROLLUP_SCHEMA)


# Producer rollups are sorted by (category, shard, hour) but not by producer id inside: ordering
# the ids costs more than the rest of the rollup, and their delta encoding compresses them just
# as well in first-seen order (1.61 vs 1.64 bytes per event on W20).
_PRODUCER_ORDER = ["category", "shard", "hour"]


def producer_rollup(rows: pa.Table) -> pa.Table:
    """(category, shard, hour, producer_id) -> count, sum of STORED_SCHEMA rows, sorted by
    (category, shard, hour)."""
    keys = ["category", "shard", "hour", "producer_id"]
    src = _keyed(rows, "hour", HOUR_NS, "producer_id")
    return _sorted(_aggregate(src, keys), _PRODUCER_ORDER, PRODUCER_ROLLUP_SCHEMA)


def merge_rollups(tables: Sequence[pa.Table], schema: pa.Schema) -> pa.Table:
    """Rollup rows of several parts (``MINUTE_ROLLUP_SCHEMA`` or ``PRODUCER_ROLLUP_SCHEMA``)
    summed per key into one sorted rollup: the merged part's, never rebuilt from raw rows."""
    keys = [n for n in schema.names if n not in ("count", "sum")]
    table = pa.concat_tables([t.select(schema.names).cast(schema) for t in tables])
    out = table.group_by(keys, use_threads=False).aggregate([("count", "sum"), ("sum", "sum")])
    order = _PRODUCER_ORDER if "producer_id" in keys else keys
    return _sorted(out.rename_columns([*keys, "count", "sum"]), order, schema)


def sum_by_id(ids: pa.Array | pa.ChunkedArray, *columns: npt.NDArray[Any]) -> tuple[pa.Array, list[npt.NDArray[Any]]]:
    """The distinct ids and, for each column, its sum per id. A hash (dictionary encoding) and
    a ``bincount`` per column: several times cheaper than an Arrow group-by for the few
    thousand rows of a top-k. The sums go through float64, exact for counts below 2**53."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks() if ids.num_chunks != 1 else ids.chunk(0)
    encoded = ids.dictionary_encode()
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    n = len(encoded.dictionary)
    sums = [np.bincount(codes, weights=c, minlength=n).astype(np.int64) for c in columns]
    return encoded.dictionary, sums
