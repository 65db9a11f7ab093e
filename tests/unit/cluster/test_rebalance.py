"""Membership changes and repair in one process: a join ships shards to the new node and the
old owners evict only what the new owners confirmed; a leave empties the leaving node; anti-
entropy alone repairs a replica that missed writes (no hints)."""

from __future__ import annotations

import random

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from cluster.errors import MembershipError
from cluster.membership import JOINING, LEAVING, ClusterMap, Member, parse_peers
from cluster.node import Node
from storage.schema import HOUR_NS
from tests.eventgen import T0, random_events
from tests.unit.cluster.inproc import InProcCluster

SPAN = (T0 - HOUR_NS, T0 + 10 * HOUR_NS)


def _count(node: Node, shards: list[int] | None = None) -> int:
    return sum(node.aggregate(c, *SPAN, shards).value.count for c in ("c0", "c1", "c2"))  # type: ignore[attr-defined]


def _holds_only_its_shards(c: InProcCluster) -> bool:
    for name, node in c.nodes.items():
        owned = set(node.cmap.shards_held_by(name))
        if not set(node.holdings.shards()) <= owned:
            return False
    return True


def test_join_then_leave(inproc: type[InProcCluster]) -> None:
    c = inproc(3, rf=2, repair_interval_s=0.3)
    c.wait("serving", c.serving)
    n1 = c.nodes["n1"]
    assert n1.ingest(random_events(random.Random(1), 6000, producers=1500), key="a").accepted == 6000

    n4 = c.add("n4")
    joining = n1.join("n4", c.url("n4"))
    assert joining.member("n4") == Member("n4", c.url("n4"), JOINING)
    with pytest.raises(MembershipError):
        n1.join("n5", "http://127.0.0.1:1")  # one change at a time
    c.wait("join settles", lambda: n1.cmap.epoch > joining.epoch and not n1.cmap.in_transition)
    c.wait("n4 knows", lambda: n4.cmap == n1.cmap)
    mine = n4.cmap.read_map.shards_of("n4")
    assert mine and set(n4.holdings.shards()) <= set(mine)
    for s in mine:  # n4 holds exactly what its co-replica of each shard holds
        other = next(n for n in n4.cmap.read_replicas(s) if n != "n4")
        assert n4.holdings.shard_digests([s]) == c.nodes[other].holdings.shard_digests([s])
    c.wait("old owners evict what they gave away", lambda: _holds_only_its_shards(c))
    for node in c.nodes.values():
        assert _count(node) == 6000

    leaving = n1.leave("n2")
    assert leaving.member("n2").state == LEAVING  # type: ignore[union-attr]
    c.wait("leave settles", lambda: n1.cmap.epoch > leaving.epoch and not n1.cmap.in_transition)
    n2 = c.nodes["n2"]
    c.wait("n2 evicted everything", lambda: not n2.holdings.shards())
    assert n2.manifest.state.parts == () or all(p.rows > 0 for p in n2.manifest.state.parts)
    c.wait("the rest hold only their shards", lambda: _holds_only_its_shards(c))
    for name in ("n1", "n3", "n4"):
        assert _count(c.nodes[name]) == 6000


def test_anti_entropy_repairs_a_replica_that_missed_writes(inproc: type[InProcCluster]) -> None:
    c = inproc(2, rf=2, repair_interval_s=0.3)
    c.wait("serving", c.serving)
    n1, n2 = c.nodes["n1"], c.nodes["n2"]
    rows = n1.ingestor.stored_rows(random_events(random.Random(5), 2000, producers=700), 99)
    n1.store_rows(rows)  # as if n2 had missed this batch and its hint were lost
    assert _count(n2, list(range(256))) == 0
    c.wait("n2 repaired by anti-entropy", lambda: _count(n2, list(range(256))) == 2000)
    assert n1.holdings.shard_digests() == n2.holdings.shard_digests()
    # The pusher counts its rows once the peer has acknowledged them, which can be just after
    # the peer already answers with them.
    c.wait("the repair counted", lambda: n1.repairer.shipped_rows + n2.repairer.fetched_rows >= 2000)


def test_cluster_map_rules() -> None:
    members = parse_peers("n1=http://a:1, n2=http://b:2/,n3=http://c:3")
    assert [m.url for m in members] == ["http://a:1", "http://b:2", "http://c:3"]
    with pytest.raises(MembershipError):
        parse_peers("n1=http://a:1,n1=http://b:2")
    with pytest.raises(MembershipError):
        parse_peers("n1:http://a:1")
    cmap = ClusterMap(1, 2, 64, tuple(members))
    joining = cmap.with_member(Member("n4", "http://d:4", JOINING))
    assert joining.epoch == 2 and joining.in_transition
    assert joining.read_map.node_ids == ("n1", "n2", "n3")
    assert joining.final_map.node_ids == ("n1", "n2", "n3", "n4")
    for s in range(64):
        assert set(joining.write_replicas(s)) == set(joining.read_replicas(s)) | set(joining.final_replicas(s))
    settled = joining.settled()
    assert settled.epoch == 3 and not settled.in_transition and settled.read_map.node_ids == ("n1", "n2", "n3", "n4")
    assert ClusterMap.from_json(settled.to_json()) == settled
    assert cmap.w == 2 and ClusterMap(1, 3, 8, tuple(members[:1])).w == 1
    assert ClusterMap(0, 2, 8, (Member("n1", "http://a:1"),)).is_single("n1")


def test_a_join_ships_in_shipments_the_receiver_can_hold(
    inproc: type[InProcCluster], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shipments over the byte budget are split (whole slices each), so a receiver with a small
    live buffer is never sent more than it can take at once."""
    import cluster.repair

    monkeypatch.setattr(cluster.repair, "_SHIP_BYTES", 1)  # every shipment over budget: one slice each
    c = inproc(3, rf=2, repair_interval_s=0.3)
    c.wait("serving", c.serving)
    n1 = c.nodes["n1"]
    assert n1.ingest(random_events(random.Random(3), 3000, producers=900), key="s").accepted == 3000
    n4 = c.add("n4")
    slices: list[set[tuple[int, int]]] = []  # the (shard, hour) slices of each shipment
    for node in c.nodes.values():
        real = node.peers.ingest

        def counting(peer, body, *a, _real=real, **kw):  # type: ignore[no-untyped-def]
            if kw.get("parquet"):
                rows = pq.read_table(pa.BufferReader(body))
                hours = pc.divide(rows["timestamp"], HOUR_NS).to_pylist()
                slices.append(set(zip(rows["shard"].to_pylist(), hours, strict=True)))
            return _real(peer, body, *a, **kw)

        monkeypatch.setattr(node.peers, "ingest", counting)
    joining = n1.join("n4", c.url("n4"))
    c.wait("join settles", lambda: n1.cmap.epoch > joining.epoch and not n1.cmap.in_transition)
    c.wait("n4 knows", lambda: n4.cmap == n1.cmap)
    mine = n4.cmap.read_map.shards_of("n4")
    for s in mine:  # n4 holds exactly what its co-replica of each shard holds
        other = next(n for n in n4.cmap.read_replicas(s) if n != "n4")
        assert n4.holdings.shard_digests([s]) == c.nodes[other].holdings.shard_digests([s])
    assert _count(n4) == 3000
    assert len(slices) > 1 and all(len(s) == 1 for s in slices), "one slice per shipment"
