"""Scatter-gather merging: partial answers over disjoint shard sets merge into the single-node
answer exactly, and the planner picks one live replica per shard."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.node import Node, NodeConfig
from cluster.reader import merge_aggregates, merge_topk, plan
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
