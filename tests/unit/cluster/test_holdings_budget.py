"""Holdings under a byte budget: cold hours leave memory, come back from the batch files, and
every question still gets the answer a plain set of (shard, hour, batch) slices would give."""

from __future__ import annotations

import gc
import json
import random
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.holdings import Holdings, HoldingsConfig, item_hash
from cluster.node import Node, NodeConfig
from cluster.sliceindex import FRESH_ENTRY_BYTES, HourIds, hour_digest
from ingest.wal import WalConfig
from storage.manifest import Manifest
from storage.schema import HOUR_NS, STORED_SCHEMA
from storage.xxh64 import xxh64_int_pairs
from tests.eventgen import T0

Slice = tuple[int, int, int]


def _digests(slices: set[Slice]) -> dict[int, tuple[int, int]]:
    """The oracle: shard digests of a plain set, summed one item at a time."""
    out: dict[int, tuple[int, int]] = {}
    for s, h, b in slices:
        t, n = out.get(s, (0, 0))
        out[s] = ((t + item_hash(h, b)) % 2**64, n + 1)
    return out


def _rows(slices: list[Slice]) -> pa.Table:
    """Two stored rows per slice (a slice is stored whole: both or neither)."""
    cols: dict[str, list[object]] = {n: [] for n in STORED_SCHEMA.names}
    for s, h, b in slices:
        for i in range(2):
            cols["timestamp"].append(h + 1_000 * (s + 1) + i)
            cols["category"].append("c")
            cols["value"].append(1)
            cols["producer_id"].append(f"p{s}")
            cols["shard"].append(s)
            cols["batch_id"].append(b)
    return pa.table(cols, schema=STORED_SCHEMA)


@settings(max_examples=200, deadline=None)
@given(
    hour=st.integers(-(2**62), 2**62).map(lambda h: h - h % HOUR_NS),
    batches=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=20),
)
def test_vectorised_hash_is_the_item_hash(hour: int, batches: list[int]) -> None:
    got = xxh64_int_pairs(hour, np.asarray(batches, np.int64)).tolist()
    assert got == [xxhash.xxh64_intdigest(struct.pack("<qq", hour, b)) for b in batches]
    assert got == [item_hash(hour, b) for b in batches]


hour_ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 300), st.integers(-3, 40)),
        st.tuples(st.just("compact")),
        st.tuples(st.just("drop"), st.frozensets(st.integers(0, 300), max_size=30)),
    ),
    max_size=150,
)


@settings(max_examples=150, deadline=None)
@given(ops=hour_ops)
def test_an_hour_of_pairs_answers_like_a_set(ops: list[tuple]) -> None:  # type: ignore[type-arg]
    ids, oracle = HourIds(), set()
    for op in ops:
        if op[0] == "add":
            assert ids.add(op[1], op[2]) == ((op[1], op[2]) not in oracle)
            oracle.add((op[1], op[2]))
        elif op[0] == "compact":
            ids.compact()
            assert not ids.fresh
        else:
            ids.drop_shards(op[1])
            oracle = {x for x in oracle if x[0] not in op[1]}
        assert len(ids) == len(oracle)
    for s in (0, 1, 7, 255, 300):
        assert ids.shard_batches(s) == {b for x, b in oracle if x == s}
        for b in range(-3, 41):
            assert ids.has(s, b) == ((s, b) in oracle)
    ids.compact()
    pairs = list(zip(ids.batches.tolist(), ids.shards.tolist(), strict=True))
    assert pairs == sorted({(b, s) for s, b in oracle})
    digest = hour_digest(T0, ids.batches, ids.shards)
    assert digest == _digests({(s, T0, b) for s, b in oracle})


node_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("store"),
            st.lists(st.tuples(st.integers(0, 9), st.integers(0, 5), st.integers(1, 12)), min_size=1, max_size=6),
        ),
        st.tuples(st.just("persist")),
        st.tuples(st.just("compact")),
        st.tuples(st.just("evict"), st.frozensets(st.integers(0, 9), min_size=1, max_size=3)),
        st.tuples(st.just("retain"), st.integers(-1, 3)),
        st.tuples(st.just("check")),
    ),
    min_size=1,
    max_size=30,
)


def _check(node: Node, oracle: set[Slice]) -> None:
    h = node.holdings
    assert h.shard_digests() == _digests(oracle)
    assert h.hour_digests(range(10)) == {
        (s, hr): v for hr in {x[1] for x in oracle} for s, v in _digests({x for x in oracle if x[1] == hr}).items()
    }
    assert h.shards() == sorted({s for s, _, _ in oracle})
    probes = sorted(oracle) + [(s, T0 + k * HOUR_NS, b) for s in (0, 5) for k in (0, 2, 5) for b in (1, 4)]
    for x in probes:
        assert h.holds(x) == (x in oracle), x
    new = h.claim(probes, timeout=5)
    h.release(new)
    assert sorted(set(new)) == sorted({x for x in probes if x not in oracle})
    keys = {(s, hr) for s, hr, _ in probes}
    assert h.batch_ids(keys) == {k: {b for s, hr, b in oracle if (s, hr) == k} for k in keys}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=node_ops)
def test_cold_hours_come_back_from_disk_exactly(tmp_path_factory: pytest.TempPathFactory, ops: list[tuple]) -> None:  # type: ignore[type-arg]
    """A budget of one byte sends every persisted hour but the one in use to disk; through
    stores, persists, compactions, evictions and retention, holds / claim / batch_ids and the
    digests answer like a set of slices — and again after a restart."""
    data = tmp_path_factory.mktemp("node")
    cfg = NodeConfig(
        data_dir=data, wal=WalConfig(fsync=False), holdings=HoldingsConfig(max_bytes=1, fresh_entries=3),
        tick_s=3600, compact_every_s=3600,
    )  # fmt: skip
    node = Node(cfg)
    oracle: set[Slice] = set()
    try:
        for op in ops:
            if op[0] == "store":
                slices = sorted({(s, T0 + k * HOUR_NS, b) for s, k, b in op[1]})
                stored, duplicate = node.store_rows(_rows(slices))
                fresh = [x for x in slices if x not in oracle]
                assert (stored, duplicate) == (2 * len(fresh), not fresh)
                oracle.update(slices)
            elif op[0] == "persist":
                node.persist_now()
            elif op[0] == "compact":
                node.compact_now()
            elif op[0] == "evict":
                node.holdings.block(op[1])
                try:
                    node.maintenance.evict(op[1])
                finally:
                    node.holdings.unblock(op[1])
                oracle = {x for x in oracle if x[0] not in op[1]}
            elif op[0] == "retain":
                cut = T0 + op[1] * HOUR_NS
                node.persist_now()
                node.manifest.commit(remove=[p.id for p in node.manifest.state.parts if p.hour <= cut])
                node.holdings.forget_through(cut)
                oracle = {x for x in oracle if x[1] > cut}
            else:
                _check(node, oracle)
        _check(node, oracle)
    finally:
        node.close(persist=False)
    again = Node(cfg)
    try:
        _check(again, oracle)
    finally:
        again.close(persist=False)


def test_a_cold_hour_is_read_back_only_when_asked(tmp_path: Path) -> None:
    cfg = NodeConfig(data_dir=tmp_path, wal=WalConfig(fsync=False), holdings=HoldingsConfig(max_bytes=1))
    node = Node(cfg)
    try:
        for k in range(4):
            node.store_rows(_rows([(1, T0 + k * HOUR_NS, 10 + k), (2, T0 + k * HOUR_NS, 20 + k)]))
        before = node.holdings.nbytes
        node.persist_now()
        node.holdings.drain()
        assert node.holdings.nbytes < before  # persisted hours left memory, the newest stayed
        assert node.holdings.reloads == 0
        assert node.holdings.shard_digests() == _digests(
            {(s, T0 + k * HOUR_NS, (s * 10) + k) for s in (1, 2) for k in range(4)}
        )
        assert node.holdings.reloads == 0  # digests never need the slices
        assert node.holdings.holds((2, T0, 20))
        assert node.holdings.reloads == 1
        assert node.store_rows(_rows([(1, T0 + HOUR_NS, 11)])) == (0, True)  # a retry into a cold hour
        assert node.store_rows(_rows([(3, T0 + HOUR_NS, 11)])) == (2, False)
    finally:
        node.close(persist=False)


def test_rows_only_in_the_buffer_keep_their_hour_in_memory(tmp_path: Path) -> None:
    """An hour with slices not yet in a part cannot go cold: the files would not have them."""
    manifest = Manifest(tmp_path)
    h = Holdings(HoldingsConfig(max_bytes=1), manifest)
    h.note(_rows([(1, T0, 5)]), seq=7)  # WAL record 7; the manifest has persisted nothing
    h.note(_rows([(1, T0 + HOUR_NS, 6)]), seq=8)
    h.drain()
    assert h.holds((1, T0, 5)) and h.holds((1, T0 + HOUR_NS, 6))
    assert h.reloads == 0 and h.nbytes > 0
    manifest.commit(wal_seq=7)  # record 7 persisted (its part would be in the manifest)
    h.holds((1, T0 + HOUR_NS, 6))  # the newer hour is in use: the older may go now
    assert h.reloads == 0
    assert h.nbytes == FRESH_ENTRY_BYTES  # one fresh entry of the hour in use


def test_memory_stays_under_the_budget(tmp_path: Path) -> None:
    """2M single-shard batches over 200 hours with a 1 MiB budget: the index counts its own
    bytes (arrays and fresh entries) and stays within the budget after every drain; without the
    budget it would hold ~20 MB."""
    budget = 1 << 20
    h = Holdings(HoldingsConfig(max_bytes=budget, fresh_entries=2_000), Manifest(tmp_path))
    rng = np.random.default_rng(1)
    peak = 0
    for k in range(200):
        hour = T0 + k * HOUR_NS
        batches = rng.integers(0, 2**62, 10_000).tolist()
        shards = rng.integers(0, 256, 10_000).tolist()
        h._add(zip(shards, [hour] * 10_000, batches, strict=True), 0)  # seq 0: persisted
        h.drain()
        peak = max(peak, h.nbytes)
        assert h.nbytes <= budget
    assert peak > budget // 2  # the budget was used, not trivially undershot
    assert sum(n for _, n in h.shard_digests().values()) == 2_000_000  # digests of every hour kept
    assert len(h._hours) < 20  # ~100 KB an hour: about ten hours fit


def test_the_byte_count_is_what_the_index_takes() -> None:
    """``nbytes`` is honest: what Python allocates for 100k slices (traced) is the counted bytes
    plus the digests (one per shard and hour), not more."""
    rng = np.random.default_rng(2)
    shards, batches = rng.integers(0, 256, 100_000).tolist(), rng.integers(0, 2**62, 100_000).tolist()
    slices = list(zip(shards, [T0] * 100_000, batches, strict=True))
    h = Holdings(HoldingsConfig(fresh_entries=1_000))
    gc.collect()
    tracemalloc.start()
    try:
        h._add(slices)
        gc.collect()
        traced = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert h.nbytes >= 1_000_000  # 10 bytes a slice at least
    assert traced <= h.nbytes + 256 * 400  # the digests: ~400 bytes per (shard, hour) at most


def test_restart_loads_hours_newest_first_within_budget(tmp_path: Path) -> None:
    cfg = NodeConfig(data_dir=tmp_path, wal=WalConfig(fsync=False))
    node = Node(cfg)
    rng = random.Random(1)
    try:
        for k in range(6):
            node.store_rows(_rows([(rng.randrange(256), T0 + k * HOUR_NS, rng.getrandbits(62)) for _ in range(50)]))
            node.persist_now()
        node.store_rows(_rows([(3, T0 + 6 * HOUR_NS, 99)]))  # stays in the WAL
        node.holdings.drain()
        digests = node.holdings.shard_digests()
    finally:
        node.close(persist=False)
    per_hour = HourIds.of(list(range(50)), [0] * 50).nbytes
    small = NodeConfig(
        data_dir=tmp_path, wal=WalConfig(fsync=False), holdings=HoldingsConfig(max_bytes=3 * per_hour + per_hour // 2)
    )
    again = Node(small)
    try:
        h = again.holdings
        assert h.shard_digests() == digests
        assert h.nbytes <= 4 * per_hour  # three persisted hours (newest) plus the one in the WAL
        assert set(h._hours) == {T0 + k * HOUR_NS for k in (3, 4, 5, 6)}
        assert h.holds((3, T0 + 6 * HOUR_NS, 99)) and h.reloads == 0
        assert len(h.batch_ids([(s, T0) for s in range(256)])) == 256 and h.reloads == 1
        assert h.shard_digests() == digests
    finally:
        again.close()


def test_parts_without_batch_files_are_read_from_their_rows(tmp_path: Path) -> None:
    """Parts written before batch files existed: start-up and cold reads use the events file."""
    cfg = NodeConfig(data_dir=tmp_path, wal=WalConfig(fsync=False), holdings=HoldingsConfig(max_bytes=1))
    node = Node(cfg)
    slices = [(s, T0 + k * HOUR_NS, 100 * k + s) for k in range(3) for s in (4, 9)]
    try:
        node.store_rows(_rows(slices))
        node.persist_now()
    finally:
        node.close(persist=False)
    path = tmp_path / "manifest.json"
    raw = json.loads(path.read_text())
    for p in raw["parts"]:
        Path(tmp_path / p["files"].pop("batches")).unlink()
    path.write_text(json.dumps(raw))
    again = Node(cfg)
    try:
        assert not any("batches" in p.files for p in again.manifest.state.parts)
        assert again.holdings.shard_digests() == _digests(set(slices))
        assert all(again.holdings.holds(x) for x in slices)
        assert not again.holdings.holds((4, T0, 109))
        assert again.holdings.reloads >= 3  # a one-byte budget left every hour on disk at start
    finally:
        again.close(persist=False)
