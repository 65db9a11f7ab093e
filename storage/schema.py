"""The event as it travels and as it is stored.

An event is ``{timestamp (Unix ns), category, value (int64), producer_id}``. Stored rows add
``shard`` (``xxhash64(producer_id) % shards``) and ``batch_id`` (the ingest batch, for
idempotency and repair). This module is the one piece the producer client shares with the server.
"""

from __future__ import annotations

from collections import OrderedDict

import pyarrow as pa
import pyarrow.compute as pc
import xxhash

__all__ = [
    "CATEGORY_MAX_BYTES",
    "EVENT_SCHEMA",
    "HOUR_NS",
    "MINUTE_NS",
    "PRODUCER_MAX_BYTES",
    "STORED_SCHEMA",
    "ShardHasher",
    "shard_of",
]

MINUTE_NS = 60 * 1_000_000_000
HOUR_NS = 60 * MINUTE_NS
CATEGORY_MAX_BYTES = 128
PRODUCER_MAX_BYTES = 256

EVENT_SCHEMA = pa.schema(
    [
        pa.field("timestamp", pa.int64(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("value", pa.int64(), nullable=False),
        pa.field("producer_id", pa.string(), nullable=False),
    ]
)

STORED_SCHEMA = pa.schema(
    [
        *EVENT_SCHEMA,
        pa.field("shard", pa.uint16(), nullable=False),
        pa.field("batch_id", pa.int64(), nullable=False),
    ]
)


def shard_of(producer_id: str, shards: int) -> int:
    """The shard a producer belongs to: ``xxhash64(utf8(producer_id)) % shards``, stable forever."""
    return xxhash.xxh64_intdigest(producer_id.encode()) % shards


class ShardHasher:
    """Vectorised ``shard_of`` over an Arrow column.

    Hashes each distinct producer once per batch and remembers up to ``cache_size`` of them, so
    the per-row cost is one dictionary lookup done in C++ (``pc.take``), not a Python loop.
    """

    def __init__(self, shards: int, cache_size: int = 1 << 20) -> None:
        self.shards = shards
        self._cache: OrderedDict[str, int] = OrderedDict()
        self._cache_size = cache_size

    def __call__(self, producer_ids: pa.Array | pa.ChunkedArray) -> pa.Array:
        encoded = pc.dictionary_encode(producer_ids)
        if isinstance(encoded, pa.ChunkedArray):
            encoded = encoded.combine_chunks()
        uniques = encoded.dictionary.to_pylist()
        cache, shards = self._cache, self.shards
        out = []
        for p in uniques:
            s = cache.get(p)
            if s is None:
                s = xxhash.xxh64_intdigest(p.encode()) % shards
                cache[p] = s
            out.append(s)
        while len(cache) > self._cache_size:
            cache.popitem(last=False)
        return pc.take(pa.array(out, pa.uint16()), encoded.indices)
