"""Holdings: order-independent digests that cannot cancel, idempotent claims, rebuilt at start."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.holdings import Holdings, item_hash
from cluster.node import Node, NodeConfig
from ingest.errors import Overloaded
from ingest.wal import WalConfig
from storage.schema import HOUR_NS
from tests.eventgen import T0, random_events, stored

items = st.lists(
    st.tuples(st.integers(0, 7), st.integers(0, 5).map(lambda h: T0 + h * HOUR_NS), st.integers(1, 2**62)),
    max_size=60,
)


def _holdings(slices: list[tuple[int, int, int]]) -> Holdings:
    h = Holdings()
    h._add(slices)
    return h


@settings(max_examples=60, deadline=None)
@given(slices=items, seed=st.integers(0, 1000))
def test_digests_do_not_depend_on_order_or_repeats(slices: list[tuple[int, int, int]], seed: int) -> None:
    shuffled = slices[:]
    random.Random(seed).shuffle(shuffled)
    a, b = _holdings(slices), _holdings(shuffled + shuffled[: len(shuffled) // 2])
    assert a.shard_digests() == b.shard_digests()
    assert a.hour_digests(range(8)) == b.hour_digests(range(8))


@settings(max_examples=60, deadline=None)
@given(slices=items.filter(bool), extra=st.integers(1, 2**62))
def test_different_sets_have_different_digests(slices: list[tuple[int, int, int]], extra: int) -> None:
    s, h, _ = slices[0]
    base = _holdings(slices)
    grown = _holdings([*slices, (s, h, extra)])
    if extra not in base.batch_ids([(s, h)])[(s, h)]:
        assert base.shard_digests()[s] != grown.shard_digests()[s]
        assert base.hour_digests([s])[(s, h)] != grown.hour_digests([s])[(s, h)]


def test_a_pair_of_items_does_not_cancel_like_xor() -> None:
    """With XOR two sets that differ by the same item twice look equal; the sum does not."""
    one = _holdings([(0, T0, 1)])
    two = _holdings([(0, T0, 1), (0, T0 + HOUR_NS, 1), (0, T0 + 2 * HOUR_NS, 1)])
    assert item_hash(T0 + HOUR_NS, 1) ^ item_hash(T0 + 2 * HOUR_NS, 1) != 0
    assert one.shard_digests()[0] != two.shard_digests()[0]
    assert two.shard_digests()[0][1] == 3


def test_slices_of_rows_match_sql_grouping() -> None:
    rows = stored(random_events(random.Random(3), 3000, span=4 * HOUR_NS), batch_id=77)
    h = Holdings()
    one = sorted(h.slices_of(rows))  # one batch: the numpy path
    mixed = pa.concat_tables([rows, stored(random_events(random.Random(4), 10), batch_id=78)])
    many = sorted(h.slices_of(mixed))  # several batches: the SQL path
    assert set(one) <= set(many)
    assert {b for _, _, b in many} == {77, 78}
    assert all(hour % HOUR_NS == 0 for _, hour, _ in one)
    assert h.select(mixed, [x for x in many if x[2] == 78]).num_rows == 10


def test_claims_hand_out_each_slice_once() -> None:
    h = Holdings()
    slices = [(1, T0, 5), (2, T0, 5)]
    first = h.claim(slices)
    assert first == slices
    got: list[list[tuple[int, int, int]]] = []
    waiter = threading.Thread(target=lambda: got.append(h.claim(slices, timeout=10)))
    waiter.start()
    h._add(first)  # what the WAL hook reports once the rows are durable
    h.release(first)
    waiter.join()
    assert got == [[]]  # the second request finds both held: nothing to store
    assert h.claim([(3, T0, 5)]) == [(3, T0, 5)]
    try:
        h.claim([(3, T0, 5)], timeout=0.05)
        raise AssertionError("a slice in flight must not be claimed twice")
    except Overloaded:
        pass


def test_a_node_rebuilds_holdings_from_parts_and_wal(tmp_path: Path) -> None:
    cfg = NodeConfig(data_dir=tmp_path, wal=WalConfig(fsync=False))
    node = Node(cfg)
    try:
        node.ingest(random_events(random.Random(5), 2000), key="a")
        node.persist_now()
        node.ingest(random_events(random.Random(6), 500), key="b")  # stays in the WAL
        node.holdings.drain()
        digests = node.holdings.shard_digests()
    finally:
        node.close(persist=False)
    again = Node(cfg)
    try:
        assert again.holdings.shard_digests() == digests
        assert any("batches" in p.files for p in again.manifest.state.parts)
    finally:
        again.close()


def test_store_rows_keeps_each_slice_once(tmp_path: Path) -> None:
    node = Node(NodeConfig(data_dir=tmp_path, wal=WalConfig(fsync=False)))
    try:
        rows = stored(random_events(random.Random(8), 1000), batch_id=9)
        assert node.store_rows(rows) == (1000, False)
        assert node.store_rows(rows) == (0, True)
        more = stored(random_events(random.Random(9), 300), batch_id=10)
        accepted, duplicate = node.store_rows(pa.concat_tables([rows, more]))
        assert (accepted, duplicate) == (300, False)
        total = node.aggregate("c0", T0, T0 + 10 * HOUR_NS).value.count + sum(
            node.aggregate(c, T0, T0 + 10 * HOUR_NS).value.count for c in ("c1", "c2")
        )
        assert total == 1300
    finally:
        node.close()


ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 255), st.integers(0, 5), st.integers(0, 30)),
        st.tuples(st.just("forget"), st.frozensets(st.integers(0, 255), max_size=40)),
        st.tuples(st.just("forget_through"), st.integers(-1, 5)),
    ),
    max_size=200,
)


@settings(max_examples=80, deadline=None)
@given(ops=ops)
def test_the_index_answers_like_a_set_of_slices(ops: list[tuple]) -> None:  # type: ignore[type-arg]
    """Slices are kept as one shard bitmask per (hour, batch); every question gets the answer a
    plain set of (shard, hour, batch) would give, through adds, evictions and retention."""
    h, oracle = Holdings(), set()
    for op in ops:
        if op[0] == "add":
            x = (op[1], T0 + op[2] * HOUR_NS, op[3])
            h._add([x])
            oracle.add(x)
        elif op[0] == "forget":
            h.forget(op[1])
            oracle = {x for x in oracle if x[0] not in op[1]}
        else:
            h.forget_through(T0 + op[1] * HOUR_NS)
            oracle = {x for x in oracle if x[1] > T0 + op[1] * HOUR_NS}
    assert h.shards() == sorted({s for s, _, _ in oracle})
    assert h.shard_digests() == _holdings(sorted(oracle)).shard_digests()
    probes = sorted(oracle) + [(s, T0 + k * HOUR_NS, b) for s in (0, 7, 255) for k in (0, 3) for b in (0, 5)]
    for x in probes:
        assert h.holds(x) == (x in oracle)
    assert h.claim(probes, timeout=1) == [x for x in probes if x not in oracle]
    keys = {(s, hr) for s, hr, _ in probes}
    assert h.batch_ids(keys) == {k: {b for s, hr, b in oracle if (s, hr) == k} for k in keys}
