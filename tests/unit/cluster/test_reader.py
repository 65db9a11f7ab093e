"""Scatter-gather merging: partial answers over disjoint shard sets merge into the single-node
answer exactly, and the planner picks one live replica per shard."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster import reader as reader_module
from cluster.errors import PeerError
from cluster.membership import ClusterMap, Member
from cluster.node import Node, NodeConfig
from cluster.reader import Gathered, Reader, merge_aggregates, merge_topk, plan
from ingest.wal import WalConfig
from query.engine import TopEntry
from storage.schema import HOUR_NS
from tests.eventgen import T0, random_events, random_range


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    n = Node(NodeConfig(data_dir=Path(tmp_path_factory.mktemp("reader")), wal=WalConfig(fsync=False)))
    rng = random.Random(42)
    for i in range(4):
        n.ingest(random_events(rng, 3000, producers=400), key=f"b{i}")
        if i % 2 == 0:
            n.persist_now()  # parts and live buffer both take part
    yield n
    n.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    owners=st.lists(st.integers(0, 3), min_size=256, max_size=256),
    k=st.integers(1, 30),
    seed=st.integers(0, 10_000),
    cat=st.sampled_from(["c0", "c1", "c2"]),
)
def test_merged_partials_equal_the_single_node_answer(
    node: Node, owners: list[int], k: int, seed: int, cat: str
) -> None:
    start, end = random_range(random.Random(seed))
    groups = [[s for s in range(256) if owners[s] == g] for g in range(4)]
    tops = [node.engine.topk(cat, start, end, k, g) for g in groups]
    aggs = [node.engine.aggregate(cat, start, end, g) for g in groups]
    assert merge_topk(tops, k) == node.engine.topk(cat, start, end, k)
    assert merge_aggregates(aggs) == node.engine.aggregate(cat, start, end)


def test_merge_topk_orders_by_count_then_producer() -> None:
    a = [TopEntry("p9", 5), TopEntry("p1", 2)]
    b = [TopEntry("p2", 5), TopEntry("p3", 2)]
    assert merge_topk([a, b], 3) == [TopEntry("p2", 5), TopEntry("p9", 5), TopEntry("p1", 2)]
    assert merge_topk([], 3) == []


def test_plan_prefers_itself_then_asks_as_few_nodes_as_possible() -> None:
    replicas = {0: ["a", "b"], 1: ["b", "c"], 2: ["c", "b"], 3: [], 4: ["a", "c"], 5: ["c", "b"], 6: ["c", "d"]}
    assignment, missing = plan(list(replicas), lambda s: replicas[s], prefer="a", rng=random.Random(1))
    assert missing == [3]
    assert assignment["a"] == [0, 4]
    assert sorted(s for shards in assignment.values() for s in shards) == [0, 1, 2, 4, 5, 6]
    assert set(assignment) == {"a", "c"} and assignment["c"] == [1, 2, 5, 6]  # c covers all the rest


def test_plan_spreads_ties_between_coordinators() -> None:
    replicas = {s: ["b", "c"] for s in range(10)}
    picks = {next(iter(plan(list(replicas), lambda s: replicas[s], "a", random.Random(i))[0])) for i in range(20)}
    assert picks == {"b", "c"}


def test_the_full_range_is_exact_too(node: Node) -> None:
    groups = [list(range(0, 256, 2)), list(range(1, 256, 2))]
    tops = [node.engine.topk("c0", T0, T0 + 4 * HOUR_NS, 10, g) for g in groups]
    assert merge_topk(tops, 10) == node.engine.topk("c0", T0, T0 + 4 * HOUR_NS, 10)


class _Peers:
    """Answers ``start_query`` with the shards it was asked for (an error from ``failing``
    nodes), and records who was asked for what."""

    def __init__(self, failing: set[str] | None = None) -> None:
        self.failing = failing or set()
        self.asked: list[tuple[str, list[int]]] = []

    def start_query(self, node: str, body: dict[str, Any], timeout: float) -> Any:
        self.asked.append((node, list(body["shards"])))
        failing = node in self.failing

        class Pending:
            @staticmethod
            def result() -> dict[str, Any]:
                if failing:
                    raise PeerError(f"{node} answered 500", node, 500)
                return {"shards": list(body["shards"])}

        return Pending()


class _Detector:
    def __init__(self, down: set[str]) -> None:
        self.down = down

    def is_serving(self, node: str) -> bool:
        return node not in self.down

    def suspect(self, node: str) -> None:
        self.down.add(node)

    def not_serving(self, node: str) -> None:
        self.down.add(node)


def _reader(peers: _Peers, down: set[str]) -> Reader:
    cmap = ClusterMap(epoch=1, rf=2, shards=256, members=tuple(Member(n, f"http://{n}") for n in "abc"))
    return Reader("a", lambda: cmap, cast(Any, peers), cast(Any, _Detector(down)), cast(Any, None), lambda: True, 1.0)


def _shards_of(reader: Reader, peers: _Peers) -> tuple[list[int], Gathered[list[int]]]:
    g = reader.gather({"kind": "aggregate"}, lambda shards: list(shards), lambda d: [int(s) for s in d["shards"]])
    return sorted(s for part in g.parts for s in part), g


def test_reads_cover_every_shard_once_and_spread_tied_peers(monkeypatch: pytest.MonkeyPatch) -> None:
    """First rounds are planned once per set of live nodes and kept (a few variants): every read
    still covers each shard exactly once, ourselves first, and the shards only b and c hold go
    to both of them over many reads."""
    monkeypatch.setattr(reader_module, "_rng", random.Random(7))
    peers = _Peers()
    reader = _reader(peers, set())
    mine = [s for s in range(256) if "a" in reader.cmap().read_replicas(s)]
    for _ in range(40):
        covered, g = _shards_of(reader, peers)
        assert covered == list(range(256)) and g.missing == ()
        assert g.asked["a"] == mine
    assert {node for node, _ in peers.asked} == {"b", "c"}


def test_a_node_down_or_failing_is_planned_around(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reader_module, "_rng", random.Random(7))
    peers, down = _Peers(), set[str]()
    reader = _reader(peers, down)
    _shards_of(reader, peers)  # plans with every node up are kept
    down.add("b")
    peers.asked.clear()
    for _ in range(10):
        covered, g = _shards_of(reader, peers)
        assert covered == list(range(256)) and g.missing == () and "b" not in g.asked
    assert {node for node, _ in peers.asked} == {"c"}
    down.clear()
    peers.failing.add("c")  # c fails its reads: its shards go to their other replica in round 2
    for _ in range(10):
        covered, g = _shards_of(reader, peers)
        assert covered == list(range(256)) and g.missing == () and "c" not in g.asked
    down.update({"b", "c"})  # no replica left for the shards only b and c hold: reported missing
    covered, g = _shards_of(reader, peers)
    assert g.missing and sorted(covered + list(g.missing)) == list(range(256))
