"""Eviction: remove every row of some shards from the persisted parts (after a hand-off).

Each part holding rows of the shards is replaced, in one manifest commit, by a part rebuilt
from its remaining rows (rollups and extras built from exactly those rows), or simply removed
when nothing remains. A crash mid-way leaves every part either old or new, never both visible.
The caller must keep compaction from running at the same time (both replace parts) and must
persist the live buffer first: rows still in memory are not touched here.
"""

from __future__ import annotations

from collections.abc import Collection

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from storage.manifest import Manifest, Part
from storage.partition import PartitionStore
from storage.schema import STORED_SCHEMA

__all__ = ["evict_shards"]


def _shards_in(store: PartitionStore, part: Part) -> set[int]:
    kind = "batches" if "batches" in part.files else "events"
    col = pq.read_table(part.path(store.root, kind), columns=["shard"]).column("shard")
    return {int(s) for s in pc.unique(col).to_pylist()}


def evict_shards(store: PartitionStore, manifest: Manifest, shards: Collection[int]) -> int:
    """Drop the rows of ``shards`` from every committed part; returns the rows removed."""
    gone = set(shards)
    if not gone:
        return 0
    value_set = pa.array(sorted(gone), pa.uint16())
    removed = 0
    for part in manifest.state.parts:
        if not _shards_in(store, part) & gone:
            continue
        rows = pq.read_table(part.path(store.root, "events")).select(STORED_SCHEMA.names).cast(STORED_SCHEMA)
        keep = rows.filter(pc.invert(pc.is_in(rows.column("shard"), value_set=value_set)))
        replacement = store.write(keep) if keep.num_rows else []
        manifest.commit(add=replacement, remove=[part.id])
        removed += rows.num_rows - keep.num_rows
    return removed
