"""Top-k from producer heads: whenever ``merge_heads`` answers, the answer is exact."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from hypothesis import given, settings
from hypothesis import strategies as st

from query.rollup_cache import CacheConfig, TopList
from query.topk import count_ids, merge_heads, top_of
from tests.eventgen import random_range
from tests.unit.query.test_rollup_cache import CATEGORIES, Node, events


def head(counts: Counter[str], n: int, shard_of: dict[str, int], rng: random.Random | None = None) -> TopList:
    """The first ``n`` by count; ties at the cut broken at random, as the part loader may."""
    items = list(counts.items())
    (rng or random.Random(0)).shuffle(items)
    ranked = sorted(items, key=lambda kv: -kv[1])
    listed = ranked[:n]
    threshold = ranked[n][1] if len(ranked) > n else 0
    return TopList(
        pa.array([p for p, _ in listed], pa.string()),
        np.array([c for _, c in listed], dtype=np.int64),
        np.array([shard_of[p] for p, _ in listed], dtype=np.int64),
        threshold,
    )


def brute(parts: list[Counter[str]], exact: Counter[str], k: int, shards: set[int] | None, shard_of: dict[str, int]):
    total: Counter[str] = Counter(exact)
    for c in parts:
        total.update(c)
    rows = [(p, n) for p, n in total.items() if n > 0 and (shards is None or shard_of[p] in shards)]
    return sorted(rows, key=lambda r: (-r[1], r[0]))[:k]


@settings(max_examples=300, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    parts=st.integers(0, 6),
    top_n=st.integers(1, 12),
    k=st.integers(1, 8),
    skew=st.sampled_from([0.5, 1.1, 2.0, 50.0]),
    subset=st.booleans(),
)
def test_an_answer_is_always_exact(seed: int, parts: int, top_n: int, k: int, skew: float, subset: bool) -> None:
    rng = random.Random(seed)
    producers = [f"p{i:03d}" for i in range(rng.randrange(1, 60))]
    shard_of = {p: rng.randrange(8) for p in producers}

    def draw(n: int) -> Counter[str]:
        return Counter(producers[min(int(rng.paretovariate(skew)) - 1, len(producers) - 1)] for _ in range(n))

    per_part = [draw(rng.randrange(0, 300)) for _ in range(parts)]
    exact = draw(rng.randrange(0, 50))
    exact_table = count_ids([pa.array(list(exact.elements()), pa.string())])
    shards = set(rng.sample(range(8), 4)) if subset else None
    if shards is not None:  # exact counts arrive already limited to the shards asked for
        exact = Counter({p: n for p, n in exact.items() if shard_of[p] in shards})
        exact_table = count_ids([pa.array(list(exact.elements()), pa.string())])
    heads = [head(c, top_n, shard_of, rng) for c in per_part]
    wanted = None if shards is None else np.array(sorted(shards))
    got = merge_heads(heads, exact_table, k, wanted)
    if got is not None:
        assert got == brute(per_part, exact, k, shards, shard_of)


def test_skewed_heads_prove_most_answers() -> None:
    rng = random.Random(1)
    proven = 0
    for _ in range(50):
        producers = [f"p{i}" for i in range(500)]
        parts = [Counter(producers[min(int(rng.paretovariate(1.1)) - 1, 499)] for _ in range(2000)) for _ in range(24)]
        heads = [head(c, 64, dict.fromkeys(producers, 0)) for c in parts]
        got = merge_heads(heads, count_ids([]), 10)
        if got is not None:
            proven += 1
            assert got == brute(parts, Counter(), 10, None, dict.fromkeys(producers, 0))
    assert proven >= 45


def test_top_of_orders_by_count_then_id() -> None:
    counts = pa.table({"producer_id": ["b", "a", "c", "d"], "count": pa.array([2, 2, 5, 1], pa.int64())})
    assert top_of(counts, 3) == [("c", 5), ("a", 2), ("b", 2)]
    assert top_of(counts.slice(0, 0), 3) == []


def test_engine_topk_with_short_heads_equals_the_oracle(tmp_path: Path) -> None:
    """Heads of 4 producers force thresholds into play on real parts: proven answers must be
    exact, unproven ones fall back to DuckDB."""
    rng = random.Random(9)
    node = Node(tmp_path, cache=CacheConfig(top_n=8))
    for _ in range(4):
        node.add(events(rng, 1500, span=5 * 3_600_000_000_000))
    for _ in range(80):
        s, e = random_range(rng, span=5 * 3_600_000_000_000)
        e = s + rng.choice([2, 3, 4]) * 3_600_000_000_000 + rng.randrange(10**12)
        cat = rng.choice(CATEGORIES)
        k = rng.choice([1, 2, 4])
        got = [(t.producer_id, t.count) for t in node.engine.topk(cat, s, e, k)]
        assert got == node.oracle.topk(cat, s, e, k), (cat, s, e, k)
    node.close()


def test_a_producer_listed_nowhere_can_still_tie_the_answer() -> None:
    """Two parts list "b" (3 each) and cut "a" (also 3 each) at the tie: "a" has the same total
    and the smaller id, so the heads alone must not answer."""
    heads = [
        TopList(pa.array(["b"]), np.array([3]), np.array([0]), threshold=3),
        TopList(pa.array(["b"]), np.array([3]), np.array([0]), threshold=3),
    ]
    assert merge_heads(heads, count_ids([]), 1) is None
    assert merge_heads(heads, count_ids([pa.array(["b"])]), 1) == [("b", 7)]


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32), parts=st.integers(1, 4), top_n=st.integers(1, 10), k=st.integers(1, 6))
def test_heads_minus_rows_outside_the_range_are_exact(seed: int, parts: int, top_n: int, k: int) -> None:
    """A part mostly inside the range contributes its head minus the exact counts of its rows
    outside the range (negative counts in ``exact``); answers must still be exact, and never
    name a producer whose count in range is zero."""
    rng = random.Random(seed)
    producers = [f"p{i:02d}" for i in range(rng.randrange(1, 30))]
    shard_of = dict.fromkeys(producers, 0)

    def draw(n: int) -> list[str]:
        return [producers[min(int(rng.paretovariate(1.1)) - 1, len(producers) - 1)] for _ in range(n)]

    rows = [draw(rng.randrange(0, 200)) for _ in range(parts)]
    outside = [r[: rng.randrange(0, len(r) + 1)] for r in rows]  # a prefix: the rows before the range
    heads = [head(Counter(r), top_n, shard_of, rng) for r in rows]
    minus = count_ids([pa.array(o, pa.string()) for o in outside])
    exact = minus.set_column(1, "count", pc.negate(minus.column("count")))
    truth = [Counter(r[len(o) :]) for r, o in zip(rows, outside, strict=True)]
    got = merge_heads(heads, exact, k)
    if got is not None:
        assert got == brute(truth, Counter(), k, None, shard_of)
