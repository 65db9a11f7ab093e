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
    out = table.group_by(keys).aggregate([("value", "count"), ("value", "sum")])
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


def minute_rollup(rows: pa.Table) -> pa.Table:
    """(category, shard, minute) -> count, sum of STORED_SCHEMA rows, sorted by those keys."""
    ts = rows.column("timestamp").to_numpy()
    src = pa.table(
        {
            "category": rows.column("category"),
            "shard": rows.column("shard"),
            "minute": pa.array(ts - ts % MINUTE_NS),
            "value": rows.column("value"),
        }
    )
    keys = ["category", "shard", "minute"]
    return _sorted(_aggregate(src, keys), keys, MINUTE_ROLLUP_SCHEMA)


def producer_rollup(rows: pa.Table) -> pa.Table:
    """(category, shard, hour, producer_id) -> count, sum of STORED_SCHEMA rows, sorted by
    (category, shard, hour, producer_id)."""
    ts = rows.column("timestamp").to_numpy()
    src = pa.table(
        {
            "category": rows.column("category"),
            "shard": rows.column("shard"),
            "hour": pa.array(ts - ts % HOUR_NS),
            "producer_id": rows.column("producer_id"),
            "value": rows.column("value"),
        }
    )
    keys = ["category", "shard", "hour", "producer_id"]
    return _sorted(_aggregate(src, keys), keys, PRODUCER_ROLLUP_SCHEMA)


def merge_rollups(tables: Sequence[pa.Table], schema: pa.Schema) -> pa.Table:
    """Rollup rows of several parts (``MINUTE_ROLLUP_SCHEMA`` or ``PRODUCER_ROLLUP_SCHEMA``)
    summed per key into one sorted rollup: the merged part's, never rebuilt from raw rows."""
    keys = [n for n in schema.names if n not in ("count", "sum")]
    table = pa.concat_tables([t.select(schema.names).cast(schema) for t in tables])
    out = table.group_by(keys).aggregate([("count", "sum"), ("sum", "sum")])
    return _sorted(out.rename_columns([*keys, "count", "sum"]), keys, schema)
