"""The live buffer's runs against a plain scan: any range, any shard subset, any values."""

from __future__ import annotations

import random
import threading
from collections import Counter

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.buffer import LiveBuffer, minute_rollup
from ingest.run import Run, RunIndexError
from storage.schema import HOUR_NS, STORED_SCHEMA
from tests.eventgen import T0, random_events, random_range, stored


def scan(rows: pa.Table, category: str, start: int, end: int, shards: list[int] | None = None) -> list[dict]:
    keep = []
    for r in rows.to_pylist():
        if r["category"] == category and start <= r["timestamp"] < end and (shards is None or r["shard"] in shards):
            keep.append(r)
    return keep


def shard_subset(rng: random.Random) -> list[int] | None:
    return rng.choice([None, [], sorted(rng.sample(range(256), 100)), list(range(256))])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32), sizes=st.lists(st.integers(0, 300), min_size=1, max_size=6))
def test_runs_answer_any_range_like_a_scan(seed: int, sizes: list[int]) -> None:
    rng = random.Random(seed)
    buffer = LiveBuffer()
    tables = []
    for i, n in enumerate(sizes):
        rows = stored(random_events(rng, n, categories=4), batch_id=i)
        tables.append(rows)
        buffer.append(rows, Run.build(rows), i + 1)
    view, _ = buffer.view()
    everything = pa.concat_tables(tables)
    assert view.rows.num_rows == everything.num_rows
    stamps = everything["timestamp"].to_pylist() or [T0]
    for i in range(40):
        if i % 2:  # boundaries exactly on, just before and just after stored timestamps
            s, e = sorted(rng.choice(stamps) + rng.choice([-1, 0, 1]) for _ in range(2))
        else:
            s, e = random_range(rng)
        cat = rng.choice(["c0", "c1", "c3", "missing"])
        shards = shard_subset(rng)
        want = scan(everything, cat, s, e, shards)
        assert view.aggregate(cat, s, e, shards) == (len(want), sum(r["value"] for r in want))
        counts = view.producer_counts(cat, s, e, shards)
        got = dict(zip(counts["producer_id"].to_pylist(), counts["count"].to_pylist(), strict=True))
        assert got == dict(Counter(r["producer_id"] for r in want))


def test_sums_beyond_int64_are_exact_in_every_shape() -> None:
    big = 2**63 - 1
    rows = stored(
        pa.table(
            {
                "timestamp": pa.array([T0 + i for i in range(6)], pa.int64()),
                "category": ["c"] * 6,
                "value": pa.array([big, big, -big - 1, big, big, 5], pa.int64()),
                "producer_id": ["a", "b", "a", "c", "a", "b"],
            }
        )
    )
    run = Run.build(rows)
    assert not run.exact
    for s in range(T0, T0 + 7):
        for e in range(s, T0 + 7):
            want = scan(rows, "c", s, e)
            assert run.aggregate("c", s, e) == (len(want), sum(r["value"] for r in want))
            assert run.aggregate("c", s, e, np.arange(256)) == run.aggregate("c", s, e)


def test_small_runs_are_folded_and_keep_every_row() -> None:
    rng = random.Random(5)
    buffer = LiveBuffer()
    tables = [stored(random_events(rng, rng.randrange(1, 50)), batch_id=i) for i in range(100)]
    for i, rows in enumerate(tables):
        buffer.append(rows, None, i + 1)
    view, _ = buffer.view()
    assert len(view.runs) < 20, "a stream of tiny batches leaves few runs"
    everything = pa.concat_tables(tables)
    assert sorted(map(str, view.rows.to_pylist())) == sorted(map(str, everything.to_pylist()))
    for _ in range(20):
        s, e = random_range(rng)
        want = scan(everything, "c1", s, e)
        assert view.aggregate("c1", s, e) == (len(want), sum(r["value"] for r in want))


def test_generations_freeze_and_release_without_losing_or_doubling_rows() -> None:
    rng = random.Random(6)
    buffer = LiveBuffer()
    a = stored(random_events(rng, 200))
    b = stored(random_events(rng, 300))
    buffer.append(a, None, 1)
    g = buffer.freeze()
    assert g is not None and g.table().num_rows == 200 and (g.first_seq, g.last_seq) == (1, 1)
    buffer.append(b, None, 2)
    assert buffer.total_rows == 500
    assert buffer.view()[0].aggregate("c0", 0, 2**62)[0] == len(scan(pa.concat_tables([a, b]), "c0", 0, 2**62))
    committed = []
    buffer.release(g, lambda: committed.append(True))
    assert committed and buffer.total_rows == 300 and not buffer.frozen()
    assert buffer.freeze() is not None and buffer.freeze() is None


def test_view_rollup_equals_a_duckdb_rollup() -> None:
    rng = random.Random(8)
    rows = stored(random_events(rng, 2000, span=2 * HOUR_NS))
    buffer = LiveBuffer()
    buffer.append(rows, None, 1)
    view, _ = buffer.view()
    con = duckdb.connect()
    con.register("raw", rows)
    want = con.sql(
        "SELECT category, shard, timestamp - timestamp % 60000000000 AS minute, count(*), sum(value)::HUGEINT "
        "FROM raw GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    con.register("got", view.rollup)
    assert con.sql("SELECT category, shard, minute, count, sum::HUGEINT FROM got ORDER BY ALL").fetchall() == want
    assert minute_rollup(view.rollup, merge=True).num_rows == view.rollup.num_rows


def test_queries_see_each_append_whole_while_appends_run() -> None:
    """A view never holds half a run: counts move from one acknowledged total to the next."""
    rng = random.Random(9)
    batches = [stored(random_events(rng, 500), batch_id=i) for i in range(40)]
    buffer = LiveBuffer()
    seen: list[int] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            seen.append(buffer.view()[0].aggregate("c0", 0, 2**62)[0])

    t = threading.Thread(target=reader)
    t.start()
    for i, b in enumerate(batches):
        buffer.append(b, None, i + 1)
    done.set()
    t.join()
    c0_totals = [0]
    for b in batches:
        c0_totals.append(c0_totals[-1] + len(scan(b, "c0", 0, 2**62)))
    assert set(seen) <= set(c0_totals)


def test_a_run_refuses_rows_that_are_not_stored_rows() -> None:
    with pytest.raises(RunIndexError):
        Run.build(pa.table({"timestamp": [1]}))
    empty = Run.build(STORED_SCHEMA.empty_table())
    assert empty.aggregate("c", 0, 10) == (0, 0) and len(empty.producer_ids("c", 0, 10)) == 0


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32), sizes=st.lists(st.integers(0, 300), min_size=1, max_size=8))
def test_a_generation_knows_its_rows_order_by_category_and_time(seed: int, sizes: list[int]) -> None:
    """The order persisting uses instead of a sort: a permutation of the generation's rows,
    sorted by (category in UTF-8 byte order, timestamp)."""
    rng = random.Random(seed)
    buffer = LiveBuffer()
    for i, n in enumerate(sizes):
        rows = stored(random_events(rng, n, categories=5, span=2 * HOUR_NS), batch_id=i)
        cats = pa.array([rng.choice(["b", "B", "é", "a", "ab"]) for _ in range(n)], pa.string())
        buffer.append(rows.set_column(1, "category", cats), None, i + 1)
    g = buffer.freeze()
    if g is None:
        return
    table = g.table()
    order = g.by_category()
    assert sorted(order.tolist()) == list(range(table.num_rows))
    keys = [(c.encode(), t) for c, t in zip(table["category"].to_pylist(), table["timestamp"].to_pylist(), strict=True)]
    taken = [keys[i] for i in order]
    assert taken == sorted(keys)


def test_whole_runs_count_through_the_cache_and_stay_exact() -> None:
    rng = random.Random(12)
    buffer = LiveBuffer()
    tables = []
    for i in range(3):
        rows = stored(random_events(rng, 2000), batch_id=i)
        tables.append(rows)
        buffer.append(rows, None, i + 1)

    def check(start: int, end: int) -> None:
        view, _ = buffer.view()
        want = Counter(r["producer_id"] for r in scan(pa.concat_tables(tables), "c1", start, end))
        got = view.producer_counts("c1", start, end)
        assert dict(zip(got["producer_id"].to_pylist(), got["count"].to_pylist(), strict=True)) == want

    stamps = sorted(r["timestamp"] for r in scan(pa.concat_tables(tables), "c1", 0, 2**62))
    for start, end in [(0, 2**62), (stamps[0], stamps[-1] + 1), (stamps[0], stamps[-1]), (stamps[0] + 1, 2**62)]:
        check(start, end)
        check(start, end)  # again, from the cache
    assert buffer._counts._entries, "whole runs were merged once and cached"
    more = stored(random_events(rng, 500), batch_id=9)
    tables.append(more)
    buffer.append(more, None, 4)
    check(0, 2**62)  # a new run: a new set of whole runs, counted again
    g = buffer.freeze()
    assert g is not None
    buffer.release(g, lambda: None)
    assert not buffer._counts._entries, "counts over persisted runs leave with them"


def test_a_full_buffer_makes_room_when_a_generation_is_released() -> None:
    """A writer waiting for room is let in as soon as a persisted generation leaves the buffer,
    and told no if none leaves before its deadline."""
    buf = LiveBuffer()
    rows = stored(random_events(random.Random(9), 500))
    buf.append(rows, None, 1)
    cap = buf.total_bytes  # full
    assert not buf.wait_for_room(1, cap, timeout_s=0.05)
    g = buf.freeze()
    assert g is not None
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(buf.wait_for_room(rows.nbytes, cap, timeout_s=60)))
    waiter.start()
    buf.release(g, lambda: None)
    waiter.join(timeout=60)
    assert got == [True] and buf.total_bytes == 0
