"""The in-memory part indexes: answers equal to the oracle without DuckDB, invalidated by
compaction, bounded in memory, and refused (so DuckDB answers) for parts in an older layout."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from ingest.buffer import LiveBuffer
from query.engine import Engine, EngineConfig
from query.indexes import IndexConfig
from query.rollup_cache import CacheConfig, RollupCache
from storage.compaction import Compactor
from storage.manifest import Manifest
from storage.partition import PartitionConfig, PartitionStore
from storage.schema import HOUR_NS, MINUTE_NS
from tests.eventgen import T0, Oracle, random_events, random_range, stored

CATEGORIES = ["c0", "c1", "Zeta", "é-accent", "a b"]


def events(rng: random.Random, n: int, span: int = 3 * HOUR_NS) -> pa.Table:
    t = random_events(rng, n, span=span, producers=300)
    cats = pa.array([rng.choice(CATEGORIES) for _ in range(n)], pa.string())
    return t.set_column(1, "category", cats)


class Node:
    def __init__(self, root: Path, *, merge_rows: int = 10**9, cache: CacheConfig | None = None) -> None:
        self.root = root
        self.manifest = Manifest(root)
        self.store = PartitionStore(
            root, self.manifest, PartitionConfig(row_group_rows=128, merge_window_rows=merge_rows)
        )
        self.buffer = LiveBuffer()
        config = EngineConfig(indexes=IndexConfig(cache=cache or CacheConfig(), warm=False))
        self.engine = Engine(root, self.manifest, self.buffer, config)
        self.oracle = Oracle()
        self.seq = 0

    def add(self, rows: pa.Table, persist: bool = True) -> None:
        self.oracle.add(rows)
        self.seq += 1
        self.buffer.append(stored(rows, batch_id=self.seq), None, self.seq)
        if persist:
            g = self.buffer.freeze()
            assert g is not None
            parts = self.store.write(g.table())
            self.buffer.release(g, lambda: self.manifest.commit(add=parts, wal_seq=g.last_seq))

    def check(self, rng: random.Random, n: int = 60, stamps: list[int] | None = None) -> None:
        for i in range(n):
            if stamps and i % 2:
                s, e = sorted(rng.choice(stamps) + rng.choice([-1, 0, 1, MINUTE_NS]) for _ in range(2))
            else:
                s, e = random_range(rng)
            cat = rng.choice([*CATEGORIES, "missing"])
            agg = self.engine.aggregate(cat, s, e)
            assert (agg.count, agg.sum) == self.oracle.aggregate(cat, s, e), (cat, s, e)
            k = rng.choice([1, 3, 10])
            got = [(t.producer_id, t.count) for t in self.engine.topk(cat, s, e, k)]
            assert got == self.oracle.topk(cat, s, e, k), (cat, s, e, k)

    def close(self) -> None:
        self.engine.close()
        self.store.close()


@pytest.mark.parametrize("merge_rows", [10**9, 50], ids=["merge-one-window", "merge-many-windows"])
def test_counts_and_sums_come_from_indexes_and_equal_the_oracle(tmp_path: Path, merge_rows: int) -> None:
    rng = random.Random(merge_rows)
    node = Node(tmp_path, merge_rows=merge_rows)
    for i in range(5):
        node.add(events(rng, 700), persist=i != 4)  # several parts per hour, and a live buffer
    stamps = pa.concat_tables(node.oracle.tables)["timestamp"].to_pylist()
    node.check(rng, stamps=stamps)
    Compactor(node.store, node.manifest).run_once(force=True)
    node.check(rng, stamps=stamps)
    state = node.manifest.state
    assert all(not node.engine.indexes.cache.cached("index", p.id) or p in state.parts for p in state.parts)
    before = node.engine.duckdb_answers
    for _ in range(40):
        s, e = random_range(rng)
        node.engine.aggregate(rng.choice(CATEGORIES), s, e)
    assert node.engine.duckdb_answers == before, "count and sum of all shards never need DuckDB"
    node.close()


def test_shard_subsets_equal_the_sum_of_their_shards(tmp_path: Path) -> None:
    rng = random.Random(2)
    node = Node(tmp_path)
    node.add(events(rng, 3000))
    for _ in range(20):
        s, e = random_range(rng)
        cat = rng.choice(CATEGORIES)
        whole = node.engine.aggregate(cat, s, e)
        split = rng.randrange(1, 256)
        halves = [node.engine.aggregate(cat, s, e, list(r)) for r in (range(split), range(split, 256))]
        assert (sum(h.count for h in halves), sum(h.sum for h in halves)) == (whole.count, whole.sum)
        assert node.engine.aggregate(cat, s, e, list(range(256))) == whole
    node.close()


def test_compaction_drops_the_merged_parts_from_the_cache(tmp_path: Path) -> None:
    rng = random.Random(3)
    node = Node(tmp_path)
    for _ in range(4):
        node.add(events(rng, 500, span=HOUR_NS))
    indexes = node.engine.indexes
    old = list(node.manifest.state.parts)
    indexes.warm(node.manifest.state)
    assert all(indexes.cache.cached("index", p.id) and indexes.cache.cached("top", p.id) for p in old)
    node.check(rng, 10)
    Compactor(node.store, node.manifest).run_once(force=True)
    indexes.warm(node.manifest.state)
    assert not any(indexes.cache.cached("index", p.id) or indexes.cache.cached("top", p.id) for p in old)
    (merged,) = node.manifest.state.parts
    assert indexes.cache.cached("index", merged.id)
    node.check(rng, 20)
    node.close()


def test_the_cache_stays_within_its_byte_budget(tmp_path: Path) -> None:
    rng = random.Random(4)
    node = Node(tmp_path, cache=CacheConfig(max_bytes=20_000, top_n=8))
    for _ in range(6):
        node.add(events(rng, 400, span=6 * HOUR_NS))
    node.check(rng, 40)
    cache = node.engine.indexes.cache
    assert cache.nbytes <= 20_000 or len(cache._entries) == 1
    assert cache.loads > len(node.manifest.state.parts), "evicted entries were loaded again"
    node.close()


def test_parts_in_an_older_layout_are_answered_by_duckdb(tmp_path: Path) -> None:
    """An events file without the sort marker (sorted by shard inside a category, as parts
    were first written) must not be read through the index."""
    rng = random.Random(5)
    node = Node(tmp_path)
    node.add(events(rng, 2000))
    for part in node.manifest.state.parts:
        path = part.path(tmp_path, "events")
        table = pq.read_table(path)
        order = pc.sort_indices(table, [("category", "ascending"), ("shard", "ascending"), ("timestamp", "ascending")])
        pq.write_table(table.take(order).replace_schema_metadata(None), path)
    node.check(rng, 30)
    assert node.engine.duckdb_answers > 0
    node.close()


def test_a_part_index_is_exact_for_sums_beyond_int64(tmp_path: Path) -> None:
    node = Node(tmp_path)
    big = 2**62
    rows = pa.table(
        {
            "timestamp": pa.array([T0 + i * 7 * 10**9 for i in range(40)], pa.int64()),
            "category": ["c0"] * 40,
            "value": pa.array([big] * 40, pa.int64()),
            "producer_id": ["p"] * 40,
        }
    )
    node.add(rows)
    stamps = rows["timestamp"].to_pylist()
    node.check(random.Random(6), 40, stamps=stamps)
    assert node.engine.aggregate("c0", T0, T0 + HOUR_NS).sum == 40 * big
    node.close()


def test_cache_retain_forgets_parts_left_out(tmp_path: Path) -> None:
    rng = random.Random(7)
    node = Node(tmp_path)
    node.add(events(rng, 300, span=HOUR_NS))
    cache = RollupCache(tmp_path, node.engine.indexes.reader)
    (part,) = node.manifest.state.parts
    index = cache.index(part)
    assert np.array_equal(index.shards, np.unique(pq.read_table(part.path(tmp_path, "events"))["shard"].to_numpy()))
    assert cache.retain([]) == [part] and not cache.cached("index", part.id) and cache.nbytes == 0
    node.close()


def test_the_warmer_loads_only_the_newest_hours_and_older_parts_load_when_asked(tmp_path: Path) -> None:
    """A node holding many days warms only its newest ``warm_hours`` of parts, so its memory does
    not grow with the data it holds; a query over older hours loads their indexes then, and
    answers exactly either way."""
    rng = random.Random(8)
    node = Node(tmp_path)
    for _ in range(3):
        node.add(events(rng, 400, span=6 * HOUR_NS))
    indexes = node.engine.indexes
    indexes.config = dataclasses.replace(indexes.config, warm_hours=2)
    parts = node.manifest.state.parts
    newest = max(p.hour for p in parts)
    indexes.warm(node.manifest.state)
    for p in parts:
        assert indexes.cache.cached("index", p.id) == (p.hour >= newest - HOUR_NS), (p.hour, newest)
    assert any(p.hour < newest - HOUR_NS for p in parts)
    node.check(rng, 40)  # every range, old hours included, still exact
    assert all(indexes.cache.cached("index", p.id) for p in parts)  # loaded once asked for
    node.close()
