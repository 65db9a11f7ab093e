"""Write fan-out over real HTTP in one process: W disks per shard, hints where a replica is
down (on a disk that does not already hold a copy), replay when it returns, and a refusal when
W cannot be met."""

from __future__ import annotations

import random

import pytest

from cluster.errors import NotEnoughReplicas
from cluster.node import Node
from cluster.writer import quorum_short
from storage.schema import HOUR_NS
from tests.eventgen import T0, random_events
from tests.unit.cluster.inproc import InProcCluster


def _total(node: Node, shards: list[int] | None = None) -> int:
    total = 0
    for c in ("c0", "c1", "c2"):
        ans = node.aggregate(c, T0 - HOUR_NS, T0 + 10 * HOUR_NS, shards)
        assert not ans.partial, f"{node.me}: shards {ans.missing_shards} missing"
        total += ans.value.count  # type: ignore[attr-defined]
    return total


def test_quorum_short_counts_distinct_disks_capped_by_replicas() -> None:
    sets = [("a", "b"), ("a", "b", "c"), ("a",)]
    disks = {0: {"a"}, 1: {"a", "x"}, 2: {"a"}}
    assert quorum_short([0, 1, 2], sets, disks, w=2) == [0]


def test_writes_reach_every_replica_and_reads_merge(inproc: type[InProcCluster]) -> None:
    c = inproc(3, rf=2)
    c.wait("serving", c.serving)
    n1, n2, n3 = c.nodes.values()
    events = random_events(random.Random(1), 3000, producers=500)
    res = n1.ingest(events, key="batch-1", fingerprint=7)
    assert (res.accepted, res.duplicate) == (3000, False)
    for name, node in c.nodes.items():
        owned = node.cmap.read_map.shards_of(name)
        assert set(node.holdings.shards()) <= set(owned)
    assert _total(n2) == 3000 and _total(n3) == 3000  # every coordinator sees everything once
    again = n2.ingest(events, key="batch-1", fingerprint=7)  # a retry through another node
    assert again.duplicate and _total(n1) == 3000


def test_a_down_replica_gets_hints_that_count_and_are_replayed(inproc: type[InProcCluster]) -> None:
    c = inproc(3, rf=2, repair_interval_s=3600)  # no anti-entropy: hints alone must do it
    c.wait("serving", c.serving)
    n1, n2, n3 = c.nodes.values()
    c.down("n3")
    events = random_events(random.Random(2), 4000, producers=800)
    assert n1.ingest(events, key="while-n3-down").accepted == 4000
    replicas = n1.cmap.read_map.all_replicas()
    with_n1 = [s for s, r in enumerate(replicas) if set(r) == {"n1", "n3"}]
    without_n1 = [s for s, r in enumerate(replicas) if set(r) == {"n2", "n3"}]
    assert n1.hints.count_for("n3") == 1  # its own disk, for shards n2+n3
    assert n2.hints.count_for("n3") == 1  # handed over, for shards n1+n3 (n1 holds a copy)
    assert with_n1 and without_n1
    assert _total(n1) == 4000 and _total(n2) == 4000  # complete and exact with n3 down

    c.up("n3")
    c.wait("hints replayed", lambda: not n1.hints.counts() and not n2.hints.counts())
    owned = n3.cmap.read_map.shards_of("n3")
    expected = _total(n1, with_n1) + _total(n2, without_n1)
    c.wait("n3 holds its shards", lambda: _total(n3, owned) == expected)
    assert n3.holdings.shard_digests(owned) == {
        s: d for s, d in n1.holdings.shard_digests(owned).items() if s in with_n1
    } | {s: d for s, d in n2.holdings.shard_digests(owned).items() if s in without_n1}


def test_no_write_without_w_disks(inproc: type[InProcCluster]) -> None:
    c = inproc(3, rf=2, repair_interval_s=3600)
    c.wait("serving", c.serving)
    n1 = c.nodes["n1"]
    c.down("n2")
    c.down("n3")
    with pytest.raises(NotEnoughReplicas):
        n1.ingest(random_events(random.Random(3), 2000, producers=800), key="too-few")
    ans = n1.aggregate("c0", T0, T0 + 4 * HOUR_NS)
    assert ans.partial and ans.missing_shards  # shards of n2+n3 have no live replica
