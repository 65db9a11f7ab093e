"""The shard map: rendezvous hashing moves few shards and balances many nodes (simulations)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.shardmap import ShardMap, majority

ids = st.lists(
    st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=8), min_size=1, max_size=12, unique=True
)


@settings(max_examples=40, deadline=None)
@given(nodes=ids, new=st.text("ABCDEFGHIJ", min_size=1, max_size=6), rf=st.integers(1, 4))
def test_adding_a_node_moves_only_shards_it_takes(nodes: list[str], new: str, rf: int) -> None:
    shards = 4096
    before, after = ShardMap(nodes, rf, shards), ShardMap([*nodes, new], rf, shards)
    moved = ShardMap.moved(before, after)
    for s in moved:
        old, now = set(before.replicas(s)), set(after.replicas(s))
        assert new in now  # nothing moves between old nodes
        if len(nodes) >= rf:
            assert len(old - now) == 1 and now - old == {new}  # one replica swapped for the new node
    for s in set(range(shards)) - set(moved):
        assert new not in after.replicas(s)
    n = len(nodes) + 1
    p = min(rf, n) / n  # about RF/N of the shards move (all of them while N <= RF)
    expected, sigma = shards * p, (shards * p * (1 - p)) ** 0.5
    assert abs(len(moved) - expected) <= 5 * sigma + 1, (len(moved), expected)


def test_removing_a_node_moves_only_its_shards() -> None:
    nodes = [f"n{i}" for i in range(1, 8)]
    before, after = ShardMap(nodes, 3, 2048), ShardMap(nodes[:-1], 3, 2048)
    moved = ShardMap.moved(before, after)
    assert set(moved) == set(before.shards_of("n7"))


def test_a_100_node_map_is_balanced_within_10_percent() -> None:
    m = ShardMap([f"node-{i:03d}" for i in range(100)], rf=3, shards=65_536)
    load = m.load()
    mean = 3 * 65_536 / 100
    assert sum(load.values()) == 3 * 65_536
    assert all(abs(v - mean) <= 0.10 * mean for v in load.values()), (min(load.values()), max(load.values()))


def test_replica_sets_are_distinct_nodes_and_deterministic() -> None:
    a = ShardMap(["n3", "n1", "n2"], 2, 256)
    b = ShardMap(["n1", "n2", "n3", "n1"], 2, 256)
    assert a.all_replicas() == b.all_replicas()
    assert all(len(set(r)) == 2 for r in a.all_replicas())
    assert a.replicas(17) == a.all_replicas()[17]
    assert sorted(s for n in ("n1", "n2", "n3") for s in a.shards_of(n)) == sorted(list(range(256)) * 2)


def test_fewer_nodes_than_rf_puts_every_shard_everywhere() -> None:
    m = ShardMap(["solo", "duo"], 3, 64)
    assert all(set(r) == {"solo", "duo"} for r in m.all_replicas())
    assert ShardMap([], 2, 8).load() == {}


def test_majority() -> None:
    assert [majority(r) for r in (1, 2, 3, 4, 5)] == [1, 2, 2, 3, 3]
