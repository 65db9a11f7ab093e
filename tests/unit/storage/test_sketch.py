"""Sketch building and merging against exact answers computed by DuckDB over the same rows."""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections import Counter

import datasketches as ds
import duckdb
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage import sketch
from storage.errors import StorageError
from storage.schema import HOUR_NS, STORED_SCHEMA, ShardHasher
from storage.sketch import SKETCH_SCHEMA, SketchConfig, build_sketches
from storage.sketchmerge import frequent_error, merge_frequent_rows, merge_kll, merge_sketch_tables, stored_values

T0 = 1_700_000_000_000_000_000 - 1_700_000_000_000_000_000 % HOUR_NS
SMALL = SketchConfig(hll_lg_k=8, frequent_lg_max_k=4, kll_k=16)


def workload(
    seed: int,
    n: int,
    producers: int = 3_000,
    categories: int = 3,
    hours: int = 3,
    shards: int = 4,
    zipf: float = 1.1,
) -> pa.Table:
    """Rows in STORED_SCHEMA with Zipf-like producer popularity, a few categories and hours."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, producers + 1) ** zipf
    ids = rng.choice(producers, size=n, p=weights / weights.sum())
    names = pa.array([f"p{i:05d}" for i in range(producers)]).take(pa.array(ids))
    cats = pa.array([f"c{i}" for i in range(categories)]).take(pa.array(rng.integers(0, categories, n)))
    return pa.table(
        {
            "timestamp": pa.array(T0 + rng.integers(0, hours * HOUR_NS, n), pa.int64()),
            "category": cats,
            "value": pa.array(rng.integers(-1_000, 1_000_000, n), pa.int64()),
            "producer_id": names,
            "shard": ShardHasher(shards)(names),
            "batch_id": pa.array(np.arange(n) // 100, pa.int64()),
        },
        schema=STORED_SCHEMA,
    )


def exact(rows: pa.Table, sql: str) -> list[tuple[object, ...]]:
    """Run ``sql`` over ``rows`` (as view ``r`` with an ``hour`` column) in DuckDB."""
    con = duckdb.connect()
    con.register("raw", rows)
    con.execute(f"CREATE VIEW r AS SELECT *, floor(timestamp / {HOUR_NS})::BIGINT * {HOUR_NS} AS hour FROM raw")
    return con.execute(sql).fetchall()


def kll_of(row: dict[str, object], k: int = 200) -> ds.kll_doubles_sketch:
    """The KLL a sketch row answers quantiles with: its stored sketch, or one of its values."""
    return merge_kll(pa.array([row["kll"]], pa.binary()), pa.array([row["value_deltas"]], pa.list_(pa.int64())), k)


def frequent_of(row: dict[str, object], lg_max_k: int = 12) -> tuple[ds.frequent_strings_sketch, int]:
    """A sketch row's frequent items (blob or items) read into a map of 2^lg_max_k, and ``lost``."""
    return merge_frequent_rows(pa.Table.from_pylist([row], schema=SKETCH_SCHEMA), lg_max_k)


def by_key(table: pa.Table) -> dict[tuple[str, int, int], dict[str, object]]:
    return {(r["category"], r["shard"], r["hour"]): r for r in table.to_pylist()}


def producer_counts(rows: pa.Table) -> dict[tuple[str, int, int], Counter[str]]:
    out: dict[tuple[str, int, int], Counter[str]] = {}
    for c, s, h, p, n in exact(rows, "SELECT category, shard, hour, producer_id, count(*) FROM r GROUP BY ALL"):
        out.setdefault((c, s, h), Counter())[p] = n  # type: ignore[index]
    return out


def check_frequent_bounds(table: pa.Table, rows: pa.Table) -> int:
    """Every producer's exact count lies within its sketch bounds; returns how many groups were
    in estimation mode (had to evict), so a test can insist the hard case was exercised."""
    counts = producer_counts(rows)
    sketches = by_key(table)
    evicting = 0
    for key, counter in counts.items():
        row = sketches[key]
        # Read into a map larger than any stored one, so reading evicts nothing more.
        fi, lost = frequent_of(row)
        assert row["frequent_error"] == frequent_error(fi) + lost
        evicting += row["frequent_error"] > 0  # type: ignore[operator]
        for producer, n in counter.items():
            assert fi.get_lower_bound(producer) <= n <= fi.get_upper_bound(producer) + lost, (key, producer)
    return evicting


def test_groups_and_counts_match_exact() -> None:
    rows = workload(seed=1, n=20_000)
    table = build_sketches(rows, SMALL)
    assert table.schema == SKETCH_SCHEMA
    want = exact(rows, "SELECT category, shard, hour, count(*) FROM r GROUP BY ALL ORDER BY ALL")
    got = list(zip(*(table[c].to_pylist() for c in ("category", "shard", "hour", "n")), strict=True))
    assert got == want


@pytest.mark.parametrize("seed", [2, 3])
def test_sketches_summarise_each_group_within_bounds(seed: int) -> None:
    rows = workload(seed=seed, n=40_000, producers=5_000)
    table = build_sketches(rows, SMALL)
    sketches = by_key(table)
    distinct = exact(rows, "SELECT category, shard, hour, count(DISTINCT producer_id) FROM r GROUP BY ALL")
    estimating = 0
    for c, s, h, n in distinct:
        cpc = ds.cpc_sketch.deserialize(sketches[(c, s, h)]["cpc"])  # type: ignore[index]
        estimating += n > 2**SMALL.hll_lg_k  # type: ignore[operator]
        assert cpc.get_lower_bound(3) <= n <= cpc.get_upper_bound(3), (c, s, h)
    assert estimating > 0
    assert check_frequent_bounds(table, rows) > 0

    values = {
        key: np.sort(np.array(v))
        for *key_, v in exact(rows, "SELECT category, shard, hour, list(value) FROM r GROUP BY ALL")
        for key in [tuple(key_)]
    }
    for key, sorted_values in values.items():
        kll = kll_of(sketches[key], SMALL.kll_k)
        assert kll.n == len(sorted_values)
        assert kll.get_min_value() == sorted_values[0] and kll.get_max_value() == sorted_values[-1]
        eps = kll.normalized_rank_error(False)
        for q in (0.1, 0.5, 0.9):
            v = kll.get_quantile(q, True)
            lo = np.searchsorted(sorted_values, v, "left") / len(sorted_values)
            hi = np.searchsorted(sorted_values, v, "right") / len(sorted_values)
            # 2x the 99 %-confidence bound: KLL compaction is randomised, so the test must not
            # flake, yet a wrong quantile (or a sketch of the wrong rows) still lands far outside.
            assert lo - 2 * eps <= q <= hi + 2 * eps, (key, q)


def test_hour_is_floored_also_before_1970() -> None:
    ts = [-1, 0, HOUR_NS - 1, HOUR_NS, -HOUR_NS, -HOUR_NS - 1]
    rows = pa.table(
        {
            "timestamp": pa.array(ts, pa.int64()),
            "category": ["c"] * len(ts),
            "value": pa.array(range(len(ts)), pa.int64()),
            "producer_id": ["p"] * len(ts),
            "shard": pa.array([0] * len(ts), pa.uint16()),
            "batch_id": pa.array([0] * len(ts), pa.int64()),
        },
        schema=STORED_SCHEMA,
    )
    table = build_sketches(rows)
    assert table["hour"].to_pylist() == [-2 * HOUR_NS, -HOUR_NS, 0, HOUR_NS]
    assert table["n"].to_pylist() == [1, 2, 2, 1]


def test_merging_two_halves_matches_sketching_the_whole() -> None:
    rows = workload(seed=4, n=30_000, producers=4_000)
    whole = build_sketches(rows, SMALL)
    merged = merge_sketch_tables(
        [build_sketches(rows.slice(0, 13_000), SMALL), build_sketches(rows.slice(13_000), SMALL)], SMALL
    )
    assert merged.schema == SKETCH_SCHEMA
    assert merged.select(["category", "shard", "hour", "n"]) == whole.select(["category", "shard", "hour", "n"])
    assert check_frequent_bounds(merged, rows) > 0
    distinct = {
        (c, s, h): n
        for c, s, h, n in exact(rows, "SELECT category, shard, hour, count(DISTINCT producer_id) FROM r GROUP BY ALL")
    }
    whole_rows = by_key(whole)
    for key, row in by_key(merged).items():
        m = ds.cpc_sketch.deserialize(row["cpc"])
        w = ds.cpc_sketch.deserialize(whole_rows[key]["cpc"])
        assert m.get_lower_bound(3) <= distinct[key] <= m.get_upper_bound(3), key
        assert m.get_lower_bound(3) <= w.get_estimate() <= m.get_upper_bound(3), key
        mk = kll_of(row, SMALL.kll_k)
        wk = kll_of(whole_rows[key], SMALL.kll_k)
        assert (mk.n, mk.get_min_value(), mk.get_max_value()) == (
            wk.n,
            wk.get_min_value(),
            wk.get_max_value(),
        )


def test_merge_passes_lone_keys_through_and_is_stable() -> None:
    rows = workload(seed=5, n=5_000)
    table = build_sketches(rows, SMALL)
    assert merge_sketch_tables([table], SMALL) == table
    # Shuffled input comes back sorted by key, byte for byte.
    shuffled = table.take(pa.array(np.random.default_rng(0).permutation(table.num_rows)))
    assert merge_sketch_tables([shuffled.slice(0, 7), shuffled.slice(7)], SMALL) == table


def test_builds_do_not_depend_on_row_order() -> None:
    rows = workload(seed=6, n=20_000, producers=5_000)
    a = build_sketches(rows, SMALL)
    b = build_sketches(rows.take(pa.array(np.arange(20_000)[::-1])), SMALL)
    # KLL compaction is randomised by design, so only the other columns are byte-identical.
    assert a.drop_columns(["kll"]) == b.drop_columns(["kll"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=st.lists(
        st.tuples(
            st.integers(-2 * HOUR_NS, 3 * HOUR_NS),
            st.sampled_from(["a", "b"]),
            st.integers(-(2**53), 2**53),
            st.sampled_from([f"p{i}" for i in range(8)] + ["é" * 128]),
        ),
        min_size=1,
        max_size=150,
    ),
    cuts=st.lists(st.integers(0, 150), max_size=4),
)
def test_merge_of_any_split_equals_whole_on_small_inputs(
    events: list[tuple[int, str, int, str]], cuts: list[int]
) -> None:
    ts, cats, values, producers = (list(c) for c in zip(*events, strict=True))
    rows = pa.table(
        {
            "timestamp": pa.array(ts, pa.int64()),
            "category": cats,
            "value": pa.array(values, pa.int64()),
            "producer_id": producers,
            "shard": ShardHasher(2)(pa.array(producers)),
            "batch_id": pa.array([0] * len(ts), pa.int64()),
        },
        schema=STORED_SCHEMA,
    )
    bounds = sorted({min(c, rows.num_rows) for c in cuts} | {0, rows.num_rows})
    parts = [build_sketches(rows.slice(a, b - a)) for a, b in itertools.pairwise(bounds)]
    whole = build_sketches(rows)
    merged = merge_sketch_tables(parts)
    keys = ["category", "shard", "hour", "n"]
    assert merged.select(keys) == whole.select(keys)
    # At most kll_k values per group: every group keeps its values, and merges them exactly.
    assert whole["kll"].null_count == whole.num_rows
    assert merged.select(["value_deltas"]) == whole.select(["value_deltas"])
    counts = producer_counts(rows)
    values_by_key = {
        tuple(k): v for *k, v in exact(rows, "SELECT category, shard, hour, list(value) FROM r GROUP BY ALL")
    }
    for table in (whole, merged):
        for key, row in by_key(table).items():
            # Below capacity every sketch is exact.
            fi, _ = frequent_of(row)
            assert {i[0]: i[1] for i in fi.get_frequent_items(ds.NO_FALSE_NEGATIVES)} == counts[key]
            cpc = ds.cpc_sketch.deserialize(row["cpc"])
            assert round(cpc.get_estimate()) == len(counts[key])
            kll = kll_of(row)
            got = sorted(kll.get_quantiles([i / kll.n for i in range(1, kll.n + 1)], True))
            assert got == sorted(float(v) for v in values_by_key[key])


@pytest.mark.parametrize("n", [1_000, 30_000, 120_000])
def test_serialized_sizes_are_bounded_by_the_config(n: int) -> None:
    rng = np.random.default_rng(n)
    # Longest allowed producer ids, all distinct-ish, in one group: the worst case for every sketch.
    ids = pa.array([f"{i:0256d}" for i in rng.integers(0, 10**9, n)])
    rows = pa.table(
        {
            "timestamp": pa.array(np.full(n, T0), pa.int64()),
            "category": ["c"] * n,
            "value": pa.array(rng.integers(-(2**62), 2**62, n), pa.int64()),
            "producer_id": ids,
            "shard": pa.array(np.zeros(n), pa.uint16()),
            "batch_id": pa.array(np.zeros(n), pa.int64()),
        },
        schema=STORED_SCHEMA,
    )
    limits = SMALL.max_bytes()
    built = build_sketches(rows, SMALL)
    # Sketches of a larger config are down-sampled to the merging config's bound.
    big = build_sketches(rows, SketchConfig(hll_lg_k=14, frequent_lg_max_k=8, kll_k=400))
    merged = merge_sketch_tables([big, built], SMALL)
    for table in (built, merged):
        for column, limit in limits.items():
            value = table[column][0].as_py()
            # value_deltas holds int64s, and is null beyond kll_k values (as here).
            size = 0 if value is None else 8 * len(value) if column == "value_deltas" else len(value)
            assert size <= limit, column
        assert table["value_deltas"].null_count == 1
    assert frequent_of(merged.to_pylist()[0])[0].num_active_items <= 12
    assert merged["n"].to_pylist() == [2 * n]


def one_group(producers: list[str], values: list[int] | None = None) -> pa.Table:
    """STORED_SCHEMA rows of one (category, shard, hour) group, one per producer given."""
    n = len(producers)
    return pa.table(
        {
            "timestamp": pa.array([T0] * n, pa.int64()),
            "category": ["c"] * n,
            "value": pa.array(values if values is not None else range(n), pa.int64()),
            "producer_id": producers,
            "shard": pa.array([0] * n, pa.uint16()),
            "batch_id": pa.array([0] * n, pa.int64()),
        },
        schema=STORED_SCHEMA,
    )


def test_error_survives_a_purge_that_evicts_every_producer() -> None:
    # A merge of equal counts one past the map's capacity (6 at lg_max_k 3): the purge subtracts
    # the median from all counters and evicts them all, and DataSketches then serializes the
    # sketch as empty, without its error (apache/datasketches-cpp#527). The frequent_error
    # column must carry it.
    config = SketchConfig(frequent_lg_max_k=3)
    full = one_group([f"p{i:03d}" for i in range(6)] * 3)
    extra = one_group(["p006"] * 3)
    merged = merge_sketch_tables([build_sketches(full, config), build_sketches(extra, config)], config)
    stored = ds.frequent_strings_sketch.deserialize(merged["frequent"][0].as_py())
    assert stored.num_active_items == 0 and frequent_error(stored) == 0  # the upstream loss
    assert merged["frequent_error"].to_pylist()[0] >= 3
    both = pa.concat_tables([full, extra])
    assert check_frequent_bounds(merged, both) == 1
    # Merged again with a sketch that did keep its items, the lost error still bounds every count.
    other = both.slice(0, 5)
    again = merge_sketch_tables([merged, build_sketches(other, config)], config)
    assert check_frequent_bounds(again, pa.concat_tables([both, other])) == 1


def test_frequent_holds_the_top_producers_with_exact_counts() -> None:
    counts = {"a": 10, "b": 7, "c": 7, "d": 5, "e": 2, "f": 1}
    rows = one_group([p for p, n in counts.items() for _ in range(n)])
    built = build_sketches(rows, SketchConfig(frequent_keep=3))
    # Stored as its items, most events first: no sketch blob.
    assert built["frequent"].to_pylist() == [None]
    (listed,) = built["top_producers"].to_pylist()
    assert listed[0] == "a" and sorted(listed) == ["a", "b", "c"]  # b and c tie: either order
    assert built["top_counts"].to_pylist() == [[10, 7, 7]]
    fi, _ = frequent_of(built.to_pylist()[0])
    assert {p: est for p, est, _, _ in fi.get_frequent_items(ds.NO_FALSE_NEGATIVES)} == {"a": 10, "b": 7, "c": 7}
    assert frequent_error(fi) == 0  # the sketch itself is exact ...
    assert built["frequent_error"].to_pylist() == [5]  # ... and "d", the next, bounds the rest
    assert check_frequent_bounds(built, rows) == 1
    # A tie at the cut: either producer may be kept, but the bound is the tied count.
    tied = build_sketches(rows, SketchConfig(frequent_keep=2))
    kept = frequent_of(tied.to_pylist()[0])[0].get_frequent_items(ds.NO_FALSE_NEGATIVES)
    assert kept[0][:2] == ("a", 10) and kept[1][1] == 7 and tied["frequent_error"].to_pylist() == [7]
    # Every producer kept: nothing left out, so no error.
    assert build_sketches(rows, SketchConfig(frequent_keep=6))["frequent_error"].to_pylist() == [0]


def test_kept_producers_never_exceed_the_map_capacity() -> None:
    assert SketchConfig(frequent_lg_max_k=3, frequent_keep=100).kept_producers() == 6
    assert SketchConfig(frequent_keep=16).kept_producers() == 16
    rows = one_group([f"p{i:02d}" for i in range(20) for _ in range(i + 1)])
    built = build_sketches(rows, SketchConfig(frequent_lg_max_k=3, frequent_keep=100))
    fi, _ = frequent_of(built.to_pylist()[0])
    # Six largest (p19..p14) held exactly, with no purge; p13's count bounds the rest.
    assert sorted(est for _, est, _, _ in fi.get_frequent_items(ds.NO_FALSE_NEGATIVES)) == list(range(15, 21))
    assert built["frequent_error"].to_pylist() == [14]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=st.lists(
        st.tuples(st.integers(0, 3), st.sampled_from(["a", "b"]), st.integers(0, 11)), min_size=1, max_size=200
    ),
    keep=st.integers(1, 12),
)
def test_frequent_is_the_exact_top_of_each_group(events: list[tuple[int, str, int]], keep: int) -> None:
    hours, cats, producers = (list(c) for c in zip(*events, strict=True))
    ids = [f"p{p}" for p in producers]
    rows = pa.table(
        {
            "timestamp": pa.array([T0 + h * HOUR_NS for h in hours], pa.int64()),
            "category": cats,
            "value": pa.array(range(len(ids)), pa.int64()),
            "producer_id": ids,
            "shard": ShardHasher(3)(pa.array(ids)),
            "batch_id": pa.array([0] * len(ids), pa.int64()),
        },
        schema=STORED_SCHEMA,
    )
    built = build_sketches(rows, SketchConfig(frequent_keep=keep))
    counts = producer_counts(rows)
    for key, row in by_key(built).items():
        ranked = sorted(counts[key].values(), reverse=True)
        fi, _ = frequent_of(row)
        items = fi.get_frequent_items(ds.NO_FALSE_NEGATIVES)
        # The kept ones: exact counts, and the largest ones (ties at the cut in any order).
        assert all(est == lb == ub == counts[key][p] for p, est, lb, ub in items)
        assert sorted((est for _, est, _, _ in items), reverse=True) == ranked[:keep]
        assert row["frequent_error"] == (ranked[keep] if len(ranked) > keep else 0)
    check_frequent_bounds(built, rows)


@pytest.mark.parametrize("key_limit", [1 << 62, 1 << 8])
def test_wide_keys_and_values_take_the_general_paths(key_limit: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # Keys too wide for one combined integer take slower, general paths (hours numbered, pairs
    # counted by group position); a low limit sends every step there, and the result must not
    # change. Values of any width sort by radix passes either way.
    monkeypatch.setattr(sketch, "_KEY_LIMIT", key_limit)
    hours = [-(2**62) // HOUR_NS, 0, 2**62 // HOUR_NS]
    rows = pa.table(
        {
            "timestamp": pa.array([h * HOUR_NS for h in hours for _ in range(3)], pa.int64()),
            "category": ["c", "b", "c"] * 3,
            "value": pa.array([-(2**62), 2**62, 7] * 3, pa.int64()),
            "producer_id": ["p", "q", "p"] * 3,
            "shard": pa.array([1, 0, 1] * 3, pa.uint16()),
            "batch_id": pa.array([0] * 9, pa.int64()),
        },
        schema=STORED_SCHEMA,
    )
    built = build_sketches(rows)
    want = exact(
        rows, "SELECT category, shard, hour, count(*), min(value), max(value) FROM r GROUP BY ALL ORDER BY ALL"
    )
    kll = [kll_of(row) for row in built.to_pylist()]
    got = [
        (c, s, h, n, int(k.get_min_value()), int(k.get_max_value()))
        for c, s, h, n, k in zip(*(built[x].to_pylist() for x in ("category", "shard", "hour", "n")), kll, strict=True)
    ]
    assert got == want


def test_default_bounds_are_a_few_kilobytes() -> None:
    assert SketchConfig().max_bytes()["cpc"] < 3_000
    assert SketchConfig().max_bytes()["kll"] < 10_000


def test_empty_inputs() -> None:
    assert build_sketches(STORED_SCHEMA.empty_table()) == SKETCH_SCHEMA.empty_table()
    assert merge_sketch_tables([]) == SKETCH_SCHEMA.empty_table()
    assert merge_sketch_tables([SKETCH_SCHEMA.empty_table()]) == SKETCH_SCHEMA.empty_table()


def test_corrupt_sketch_is_a_storage_error() -> None:
    table = build_sketches(workload(seed=7, n=100, categories=1, hours=1, shards=1))
    bad = table.set_column(5, "frequent", pa.array([b"\x00garbage"], pa.binary()))
    with pytest.raises(StorageError, match="cannot be read"):
        merge_sketch_tables([table, bad])


@pytest.mark.parametrize("kwargs", [{"hll_lg_k": 6}, {"hll_lg_k": 22}, {"frequent_lg_max_k": 2}, {"kll_k": 7}])
def test_config_rejects_out_of_range_sizes(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        SketchConfig(**kwargs)


def test_general_paths_build_the_same_sketches(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = workload(seed=8, n=5_000, producers=2_000)
    fast = build_sketches(rows, SMALL)
    monkeypatch.setattr(sketch, "_KEY_LIMIT", 1 << 8)
    slow = build_sketches(rows, SMALL)
    assert slow.drop_columns(["kll"]) == fast.drop_columns(["kll"])
    assert check_frequent_bounds(slow, rows) > 0


def test_small_groups_keep_their_values_exactly_whatever_their_range() -> None:
    # Differences of int64 extremes wrap around modulo 2^64, and their sums wrap back.
    values = [2**63 - 1, -(2**63), 0, -1, 5, 5, 2**62]
    built = build_sketches(one_group([f"p{i}" for i in range(len(values))], values), SMALL)
    assert built["kll"].to_pylist() == [None]
    assert stored_values(built["value_deltas"]).tolist() == sorted(values)
    # A group one past kll_k gets a KLL and no values.
    big = build_sketches(one_group(["p"] * (SMALL.kll_k + 1)), SMALL)
    assert big["value_deltas"].to_pylist() == [None]
    assert ds.kll_doubles_sketch.deserialize(big["kll"][0].as_py()).n == SMALL.kll_k + 1


def test_stored_values_skip_null_rows() -> None:
    column = pa.array([[3, 1, 2], None, [7], None, [-2, 4]], pa.list_(pa.int64()))
    assert stored_values(column).tolist() == [3, 4, 6, 7, -2, 2]
    assert stored_values(pa.array([None, None], pa.list_(pa.int64()))).tolist() == []
    assert stored_values(pa.chunked_array([column.slice(0, 2), column.slice(2)])).tolist() == [3, 4, 6, 7, -2, 2]


def test_merges_keep_values_up_to_kll_k_then_build_a_kll() -> None:
    k = SMALL.kll_k
    first = build_sketches(one_group([f"p{i}" for i in range(k - 3)], list(range(k - 3))), SMALL)
    second = build_sketches(one_group(["q", "r", "s"], [-5, 100, 3]), SMALL)
    merged = merge_sketch_tables([first, second], SMALL)
    assert merged["kll"].to_pylist() == [None]
    assert stored_values(merged["value_deltas"]).tolist() == sorted([*range(k - 3), -5, 100, 3])
    # The same merge again gives the same bytes, and the values do not depend on the order.
    assert merge_sketch_tables([first, second], SMALL) == merged
    assert merge_sketch_tables([second, first], SMALL).select(["kll", "value_deltas"]) == merged.select(
        ["kll", "value_deltas"]
    )
    # One value more than kll_k: a KLL of all of them (exact extremes), values dropped.
    third = build_sketches(one_group(["t"], [10**6]), SMALL)
    over = merge_sketch_tables([merged, third], SMALL)
    assert over["value_deltas"].to_pylist() == [None]
    kll = ds.kll_doubles_sketch.deserialize(over["kll"][0].as_py())
    assert (kll.n, kll.get_min_value(), kll.get_max_value()) == (k + 1, -5, 10**6)
    # Values merged with a stored KLL go into the KLL too.
    mixed = merge_sketch_tables([over, second], SMALL)
    assert ds.kll_doubles_sketch.deserialize(mixed["kll"][0].as_py()).n == k + 4


def test_stored_values_answer_as_the_kll_they_replace() -> None:
    rng = np.random.default_rng(14)
    values = rng.integers(-1_000, 1_000, 200).tolist()
    built = build_sketches(one_group([f"p{i}" for i in range(200)], values))
    assert built["kll"].to_pylist() == [None]
    kll = ds.kll_doubles_sketch(200)
    kll.update(np.array(values, np.float64))
    qs = [i / 100 for i in range(101)]
    assert kll_of(built.to_pylist()[0]).get_quantiles(qs, True) == kll.get_quantiles(qs, True)


def test_building_and_merging_sketches_does_not_import_polars() -> None:
    # polars held ~50 MiB of a loaded server's RSS (library, thread pool, allocator); the
    # build and merge sort with numpy (storage.ordering.radix_order) instead.
    code = (
        "import sys\n"
        "import pyarrow as pa\n"
        "from storage.sketch import build_sketches\n"
        "from storage.sketchmerge import merge_sketch_tables\n"
        "from tests.eventgen import random_events, stored\n"
        "import random\n"
        "rows = [stored(random_events(random.Random(i), 3000, producers=500)) for i in range(2)]\n"
        "built = [build_sketches(r) for r in rows]\n"
        "merged = merge_sketch_tables(built)\n"
        "print(merged.num_rows > 0, 'polars' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["True", "False"]


def test_a_merge_keeps_the_largest_producers_like_a_build() -> None:
    config = SketchConfig(frequent_keep=3)
    first = one_group([p for p, n in {"a": 9, "b": 6, "c": 5, "d": 4, "e": 1}.items() for _ in range(n)])
    second = one_group([p for p, n in {"d": 3, "e": 8, "f": 2, "g": 2}.items() for _ in range(n)])
    merged = merge_sketch_tables([build_sketches(first, config), build_sketches(second, config)], config)
    # Counters after the merge: a 9, e 8, b 6, c 5, d 3, f or g 2; kept: the three largest.
    assert merged["top_producers"].to_pylist() == [["a", "e", "b"]]
    assert merged["top_counts"].to_pylist() == [[9, 8, 6]]
    # The next counter (c: 5) plus what the builds left out (d's 4 in the first, 2 in the second).
    assert merged["frequent_error"].to_pylist() == [5 + 4 + 2]
    assert check_frequent_bounds(merged, pa.concat_tables([first, second])) == 1
