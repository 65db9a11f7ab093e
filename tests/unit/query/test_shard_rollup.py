"""Count and sum over a subset of a part's shards (what a coordinator asks a peer for): equal to
an oracle over the raw rows on random unaligned ranges and random subsets, without DuckDB, and
handed to DuckDB when the part's files are not in the layout the fast path reads."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.buffer import LiveBuffer
from query.engine import Aggregate, Engine, EngineConfig
from query.indexes import IndexConfig
from query.shard_rollup import ShardMask, load_shards
from storage.manifest import Manifest
from storage.partition import PartitionConfig, PartitionStore
from storage.schema import HOUR_NS, MINUTE_NS
from tests.eventgen import T0, random_events, random_range, stored

CATEGORIES = ["c0", "c1", "Zeta", "é-accent"]


class Node:
    """Parts written with small row groups, and the raw rows for the oracle."""

    def __init__(self, root: Path, shards: int) -> None:
        self.root = root
        self.shards = shards
        self.manifest = Manifest(root)
        self.store = PartitionStore(root, self.manifest, PartitionConfig(row_group_rows=128))
        self.buffer = LiveBuffer()
        self.engine = Engine(root, self.manifest, self.buffer, EngineConfig(indexes=IndexConfig(warm=False)))
        self.rows: list[pa.Table] = []
        self.seq = 0

    def add(self, events: pa.Table, persist: bool = True) -> None:
        self.seq += 1
        rows = stored(events, batch_id=self.seq, shards=self.shards)
        self.rows.append(rows)
        self.buffer.append(rows, None, self.seq)
        if persist:
            g = self.buffer.freeze()
            assert g is not None
            parts = self.store.write(g.table())
            self.buffer.release(g, lambda: self.manifest.commit(add=parts, wal_seq=g.last_seq))

    def oracle(self, category: str, start: int, end: int, shards: list[int]) -> tuple[int, int]:
        t = pa.concat_tables(self.rows)
        keep = _selected(t, category, start, end, shards)
        return int(keep.sum()), sum(int(v) for v in t["value"].to_numpy()[keep])

    def close(self) -> None:
        self.engine.close()
        self.store.close()


def events(rng: random.Random, n: int, span: int = 3 * HOUR_NS, big: bool = False) -> pa.Table:
    t = random_events(rng, n, span=span, producers=300)
    t = t.set_column(1, "category", pa.array([rng.choice(CATEGORIES) for _ in range(n)], pa.string()))
    if big:
        t = t.set_column(2, "value", pa.array([rng.choice([2**62, -(2**61), 7]) for _ in range(n)], pa.int64()))
    return t


def subset(rng: random.Random, shards: int) -> list[int]:
    return sorted(rng.sample(range(shards), rng.randrange(1, shards)))


def check(node: Node, rng: random.Random, n: int, stamps: list[int]) -> None:
    for i in range(n):
        if i % 3 == 0:  # a range ending or starting on a row, give or take one ns or a minute
            s, e = sorted(rng.choice(stamps) + rng.choice([-1, 0, 1, MINUTE_NS]) for _ in range(2))
        else:
            s, e = random_range(rng)
        cat = rng.choice([*CATEGORIES, "missing"])
        wanted = subset(rng, node.shards)
        agg = node.engine.aggregate(cat, s, e, wanted)
        assert (agg.count, agg.sum) == node.oracle(cat, s, e, wanted), (cat, s, e, wanted)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**32), shards=st.sampled_from([3, 16, 256]), persists=st.integers(1, 4))
def test_property_shard_subsets_equal_the_oracle_without_duckdb(seed: int, shards: int, persists: int) -> None:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        node = Node(Path(tmp), shards)
        for i in range(persists + 1):
            node.add(events(rng, rng.randrange(50, 1500)), persist=i < persists)  # and a live buffer
        stamps = pa.concat_tables(node.rows)["timestamp"].to_pylist()
        check(node, rng, 40, stamps)
        assert node.engine.duckdb_answers == 0, "a subset of a part's shards is answered from its rollups"
        node.close()


def test_most_of_an_hour_reads_the_rows_outside_the_range_not_inside(tmp_path: Path) -> None:
    """A range covering most of a part's hour subtracts the rows outside it from the hour's
    per-shard totals; a short range counts the rows inside. Both read a few rows, not the hour."""
    rng = random.Random(1)
    node = Node(tmp_path, 4)
    node.add(events(rng, 6000, span=HOUR_NS))
    (part,) = node.manifest.state.parts
    events_file = part.path(tmp_path, "events")
    reader = node.engine.indexes.reader
    c1_groups = -(
        -sum(cm.rows[-1] for name, cm in node.engine.indexes.cache.index(part).categories.items() if name == "c1")
        // 128
    )
    for length in (HOUR_NS - 3 * MINUTE_NS - 17, 2 * MINUTE_NS + 5):
        for _ in range(10):
            reader.forget({events_file})
            before = reader.group_reads
            s = T0 + rng.randrange(HOUR_NS - length)
            a = node.engine.aggregate("c1", s, s + length, [0, 2])
            assert (a.count, a.sum) == node.oracle("c1", s, s + length, [0, 2])
            # Three minutes of c1 rows (about 75) lie in at most two 128-row groups per side.
            assert reader.group_reads - before <= 4 < c1_groups, (length, reader.group_reads - before)
    assert node.engine.duckdb_answers == 0
    node.close()


def test_sums_beyond_int64_are_exact_over_shard_subsets(tmp_path: Path) -> None:
    rng = random.Random(2)
    node = Node(tmp_path, 8)
    node.add(events(rng, 3000, big=True))
    assert load_shards(node.manifest.state.parts[0], tmp_path).categories["c0"].sums.dtype == object
    check(node, rng, 40, pa.concat_tables(node.rows)["timestamp"].to_pylist())
    assert node.engine.duckdb_answers == 0
    node.close()


def test_whole_hours_add_up_shard_totals_and_the_warmer_loads_them(tmp_path: Path) -> None:
    rng = random.Random(3)
    node = Node(tmp_path, 256)
    node.add(events(rng, 2000))
    state = node.manifest.state
    indexes = node.engine.indexes
    indexes.warm(state)
    assert not any(indexes.cache.cached("shards", p.id) for p in state.parts), "not loaded before a subset query"
    wanted = subset(rng, 256)
    agg = node.engine.aggregate("c0", T0 - HOUR_NS, T0 + 4 * HOUR_NS, wanted)
    assert (agg.count, agg.sum) == node.oracle("c0", T0 - HOUR_NS, T0 + 4 * HOUR_NS, wanted)
    indexes.cache.retain([])
    indexes.warm(state)
    assert all(indexes.cache.cached("shards", p.id) for p in state.parts)
    node.close()


def test_the_first_subset_query_has_the_warmer_load_every_parts_shard_totals(tmp_path: Path) -> None:
    """A warm pass ran before any subset query (indexes only); the first one changes what the
    warmer depends on and wakes it, and its next pass loads the per-shard totals of the parts
    already warmed, with no new part to trigger it."""
    rng = random.Random(5)
    node = Node(tmp_path, 256)
    for hour in range(4):
        node.add(random_events(rng, 500, start=T0 + hour * HOUR_NS, span=HOUR_NS))
    state = node.manifest.state
    indexes = node.engine.indexes
    cache = indexes.cache
    assert len(state.parts) >= 4
    indexes.warm(state)
    warmed = indexes.warm_key()
    assert all(cache.cached("index", p.id) for p in state.parts)
    assert not any(cache.cached("shards", p.id) for p in state.parts)
    wanted = subset(rng, 256)
    lo, hi = T0 + HOUR_NS // 3, T0 + HOUR_NS // 2  # one part's hour: the query loads that part's only
    indexes._wake.clear()
    assert node.engine.aggregate("c0", lo, hi, wanted) == Aggregate(*node.oracle("c0", lo, hi, wanted))
    assert indexes._wake.is_set() and indexes.warm_key() != warmed, "the warmer is woken for another pass"
    assert not all(cache.cached("shards", p.id) for p in state.parts)
    indexes.warm(state)
    assert all(cache.cached("shards", p.id) for p in state.parts)
    node.close()


def test_a_rollup_in_any_row_order_gives_the_same_totals(tmp_path: Path) -> None:
    rng = random.Random(4)
    node = Node(tmp_path, 16)
    node.add(events(rng, 2000))
    for part in node.manifest.state.parts:
        path = part.path(tmp_path, "rollup_minute")
        table = pq.read_table(path)
        pq.write_table(table.take(pc.sort_indices(table, [("minute", "ascending"), ("shard", "descending")])), path)
    check(node, rng, 30, pa.concat_tables(node.rows)["timestamp"].to_pylist())
    assert node.engine.duckdb_answers == 0
    node.close()


def test_shard_mask_ignores_shards_no_part_can_hold() -> None:
    mask = ShardMask(np.array([-1, 3, 70000], dtype=np.int64))
    assert mask.of(np.array([0, 3, 65535], dtype=np.uint16)).tolist() == [False, True, False]


def _selected(t: pa.Table, category: str, start: int, end: int, shards: list[int]) -> npt.NDArray[np.bool_]:
    """The rows of ``t`` a query over (category, [start, end), shards) counts."""
    ts = t["timestamp"].to_numpy()
    return (
        (t["category"].to_numpy(zero_copy_only=False) == category)
        & (ts >= start)
        & (ts < end)
        & np.isin(t["shard"].to_numpy(), shards)
    )


def topk_oracle(node: Node, category: str, start: int, end: int, k: int, shards: list[int]) -> list[tuple[str, int]]:
    t = pa.concat_tables(node.rows)
    keep = _selected(t, category, start, end, shards)
    counts: dict[str, int] = {}
    for p in t["producer_id"].filter(pa.array(keep)).to_pylist():
        counts[p] = counts.get(p, 0) + 1
    return sorted(counts.items(), key=lambda pc: (-pc[1], pc[0]))[:k]


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32), shards=st.sampled_from([4, 32, 256]))
def test_property_topk_over_shard_subsets_equals_the_oracle(seed: int, shards: int) -> None:
    """Parts holding some shards only (as on a cluster node), asked for random subsets, for all
    the shards the node holds (what a coordinator asks itself) and for none of a part's shards."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        node = Node(Path(tmp), shards)
        held = subset(rng, shards) if shards > 4 else list(range(shards))
        for i in range(4):
            t = events(rng, rng.randrange(200, 1500))
            part_shards = np.array(rng.sample(held, rng.randrange(1, len(held) + 1)))
            node_shards = stored(t, shards=shards)["shard"].to_numpy()
            node.add(t.filter(pa.array(np.isin(node_shards, part_shards))), persist=i < 3)
        # (the parts' shards may take none of the rows: then there is no stamp to aim at)
        stamps = pa.concat_tables(node.rows)["timestamp"].to_pylist()
        for i in range(30):
            if i % 3 == 0 and stamps:
                s, e = sorted(rng.choice(stamps) + rng.choice([-1, 0, 1, MINUTE_NS]) for _ in range(2))
            else:
                s, e = random_range(rng)
            cat = rng.choice(CATEGORIES)
            wanted = held if i % 4 == 0 else subset(rng, shards)
            k = rng.choice([1, 3, 10])
            got = [(t.producer_id, t.count) for t in node.engine.topk(cat, s, e, k, wanted)]
            assert got == topk_oracle(node, cat, s, e, k, wanted), (cat, s, e, k, wanted)
        node.close()
