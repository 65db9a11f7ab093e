"""The engine against the oracle: rollups + edges + buffer == a plain scan, for any range."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from query.errors import InvalidQuery
from storage.compaction import Compactor
from storage.schema import HOUR_NS, MINUTE_NS
from tests.eventgen import T0, Oracle, random_events, random_range, stored
from tests.support.parts import Parts


def check(parts: Parts, oracle: Oracle, rng: random.Random, n: int = 40) -> None:
    for _ in range(n):
        s, e = random_range(rng)
        cat = rng.choice(["c0", "c1", "c2", "missing"])
        agg = parts.engine.aggregate(cat, s, e)
        assert (agg.count, agg.sum) == oracle.aggregate(cat, s, e), (cat, s, e)
        k = rng.choice([1, 3, 10])
        top = parts.engine.topk(cat, s, e, k)
        assert [(t.producer_id, t.count) for t in top] == oracle.topk(cat, s, e, k), (cat, s, e, k)


def test_buffer_persisted_and_compacted_answers_equal_the_oracle(tmp_path: Path) -> None:
    rng = random.Random(7)
    parts = Parts(tmp_path)
    oracle = Oracle()
    for i in range(6):
        ev = random_events(rng, 3000)
        oracle.add(ev)
        parts.to_buffer(stored(ev, batch_id=i))
        if i % 2:
            parts.persist()
        check(parts, oracle, rng, 15)
    Compactor(parts.store, parts.manifest).run_once(force=True)
    assert all(len(ps) == 1 for ps in parts.manifest.state.hours().values())
    check(parts, oracle, rng)
    parts.close()


def test_edges_at_exact_minute_and_hour_boundaries(tmp_path: Path) -> None:
    parts = Parts(tmp_path)
    ts = [T0, T0 + MINUTE_NS - 1, T0 + MINUTE_NS, T0 + HOUR_NS - 1, T0 + HOUR_NS, T0 + HOUR_NS + 1]
    ev = pa.table(
        {
            "timestamp": pa.array(ts, pa.int64()),
            "category": ["c"] * 6,
            "value": pa.array(range(1, 7), pa.int64()),
            "producer_id": ["a", "b", "a", "c", "a", "b"],
        }
    )
    parts.to_buffer(stored(ev))
    oracle = Oracle([ev])
    bounds = sorted({t + d for t in ts for d in (-1, 0, 1)})
    for persisted in (False, True):
        if persisted:
            parts.persist()
        for s in bounds:
            for e in bounds:
                if s <= e:
                    agg = parts.engine.aggregate("c", s, e)
                    assert (agg.count, agg.sum) == oracle.aggregate("c", s, e)
                    assert [(t.producer_id, t.count) for t in parts.engine.topk("c", s, e, 2)] == oracle.topk(
                        "c", s, e, 2
                    )
    parts.close()


def test_sum_beyond_int64_is_exact(tmp_path: Path) -> None:
    parts = Parts(tmp_path)
    big = 2**62
    ev = pa.table(
        {
            "timestamp": pa.array([T0 + i for i in range(8)], pa.int64()),
            "category": ["c"] * 8,
            "value": pa.array([big] * 8, pa.int64()),
            "producer_id": ["p"] * 8,
        }
    )
    parts.to_buffer(stored(ev))
    assert parts.engine.aggregate("c", T0, T0 + HOUR_NS).sum == 8 * big
    parts.persist()
    assert parts.engine.aggregate("c", T0 - HOUR_NS, T0 + 2 * HOUR_NS).sum == 8 * big
    parts.close()


def test_k_out_of_range_is_refused(tmp_path: Path) -> None:
    parts = Parts(tmp_path)
    for k in (0, -1, 10**6):
        with pytest.raises(InvalidQuery):
            parts.engine.topk("c", 0, 1, k)
    parts.close()


def test_shard_subsets_add_up_to_the_whole(tmp_path: Path) -> None:
    rng = random.Random(3)
    parts = Parts(tmp_path)
    ev = random_events(rng, 5000)
    parts.to_buffer(stored(ev))
    parts.persist()
    whole = parts.engine.aggregate("c1", T0, T0 + 3 * HOUR_NS)
    halves = [parts.engine.aggregate("c1", T0, T0 + 3 * HOUR_NS, shards=list(r)) for r in (range(128), range(128, 256))]
    assert (sum(h.count for h in halves), sum(h.sum for h in halves)) == (whole.count, whole.sum)
    assert parts.engine.aggregate("c1", T0, T0 + 3 * HOUR_NS, shards=[]).count == 0
    parts.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**32),
    sizes=st.lists(st.integers(1, 400), min_size=1, max_size=5),
    persist_mask=st.integers(0, 31),
    compact=st.booleans(),
)
def test_property_any_mix_of_buffer_and_parts_equals_a_scan(
    tmp_path_factory: pytest.TempPathFactory, seed: int, sizes: list[int], persist_mask: int, compact: bool
) -> None:
    rng = random.Random(seed)
    parts = Parts(tmp_path_factory.mktemp("p"))
    oracle = Oracle()
    for i, n in enumerate(sizes):
        ev = random_events(rng, n, span=rng.choice([MINUTE_NS, HOUR_NS, 3 * HOUR_NS]))
        oracle.add(ev)
        parts.to_buffer(stored(ev, batch_id=i))
        if persist_mask >> i & 1:
            parts.persist()
    if compact:
        Compactor(parts.store, parts.manifest).run_once(force=True)
    check(parts, oracle, rng, 8)
    parts.close()


def test_queries_during_persist_and_compaction_see_every_row_once(tmp_path: Path) -> None:
    """Readers run while a writer appends, persists and compacts. Each answer must lie between
    the rows acknowledged before the query began and those appended when it ended: more means a
    row was counted twice (in the buffer and in a part), less means a row was missed."""
    rng = random.Random(11)
    parts = Parts(tmp_path)
    chunks = [random_events(rng, 1000) for _ in range(12)]
    lo_hi = [0, 0]  # rows of c0 fully appended, rows of c0 appended or being appended
    start, end = T0 - HOUR_NS, T0 + 5 * HOUR_NS
    per_chunk = [Oracle([c]).aggregate("c0", start, end)[0] for c in chunks]
    bad: list[tuple[int, int, int]] = []
    checked = [0]
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            lo = lo_hi[0]
            got = parts.engine.aggregate("c0", start, end).count
            hi = lo_hi[1]
            checked[0] += 1
            if not lo <= got <= hi:
                bad.append((lo, got, hi))

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    compactor = Compactor(parts.store, parts.manifest)
    for round_ in range(4):
        for i, c in enumerate(chunks):
            lo_hi[1] += per_chunk[i]
            parts.to_buffer(stored(c, batch_id=round_))
            lo_hi[0] += per_chunk[i]
            if i % 3 == 2:
                parts.persist()
        compactor.run_once(force=True)
    stop.set()
    for t in threads:
        t.join()
    assert not bad, bad[:5]
    assert checked[0] > 10
    assert parts.engine.aggregate("c0", start, end).count == lo_hi[0]
    parts.close()
