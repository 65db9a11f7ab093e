"""Rollups: pre-aggregated counts and sums that answer whole minutes and hours without raw rows.

Both rollups are additive (count and sum of disjoint row sets add up), which is what lets late
events simply add a part and lets compaction merge parts by summing. Sums are DECIMAL(38,0):
int64 sums overflow, and DuckDB would write HUGEINT to Parquet as a lossy DOUBLE.
"""

from __future__ import annotations

import pyarrow as pa

from storage.schema import HOUR_NS, MINUTE_NS

__all__ = [
    "MERGE_MINUTE_SQL",
    "MERGE_PRODUCER_SQL",
    "MINUTE_ROLLUP_SQL",
    "PRODUCER_ROLLUP_SCHEMA",
    "PRODUCER_ROLLUP_SQL",
    "SUM_TYPE",
]

SUM_TYPE = "DECIMAL(38,0)"

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
