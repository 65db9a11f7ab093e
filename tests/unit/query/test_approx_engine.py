"""Distinct, quantiles and approximate top-k through real persists and compactions, against
DuckDB over the same raw rows: exact answers equal the oracle, approximate ones stay inside
their stated bounds on many unaligned ranges (issue 7)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from query.approx import approx_topk, merge_topk
from query.approxengine import (
    HISTOGRAM_SCHEMA,
    ApproxConfig,
    ApproxEngine,
    from_wire,
    merge_distinct,
    merge_quantiles,
    parse_quantiles,
    quantiles_of_histograms,
    to_wire,
)
from query.errors import InvalidQuery, QueryError
from storage.schema import HOUR_NS, MINUTE_NS
from storage.sketch import SketchConfig, build_sketches
from storage.sketchfile import SKETCH_KIND, SketchExtra, read_sketch_file
from tests.eventgen import zipf_stored
from tests.support.parts import Parts

T0 = 1_795_737_600_000_000_000  # 2026-11-27T00:00:00Z
HOURS = 6
SHARDS = 8
# Small sketches so that a test-sized workload drives every sketch into estimation mode.
CONFIG = SketchConfig(hll_lg_k=8, frequent_lg_max_k=5, kll_k=32)
QS = [0.0, 0.01, 0.25, 0.5, 0.9, 0.99, 1.0]


def workload(seed: int, n: int, producers: int, batch: int) -> pa.Table:
    """W20-like rows (STORED_SCHEMA) over HOURS hours from T0, batch ids from ``batch`` on."""
    return zipf_stored(seed, n, producers, start=T0, hours=HOURS, shards=SHARDS, batch_rows=1000, first_batch=batch)


class Node(Parts):
    """A node's storage without the write path: parts (with sketch files), buffer, engines."""

    def __init__(self, root: Path, sketches: bool = True) -> None:
        super().__init__(root, extras=[SketchExtra(CONFIG)] if sketches else [])
        self.approx = ApproxEngine(self.engine, ApproxConfig(sketch=CONFIG))

    def enable_sketches(self) -> None:
        self.reopen_store([SketchExtra(CONFIG)])


class Oracle:
    def __init__(self, rows: pa.Table) -> None:
        self.con = duckdb.connect()
        self.con.register("events", rows)

    def _where(self) -> str:
        return "category = $c AND timestamp >= $s AND timestamp < $e"

    def distinct(self, c: str, s: int, e: int) -> int:
        sql = f"SELECT count(DISTINCT producer_id) FROM events WHERE {self._where()}"
        return int(self.con.sql(sql, params={"c": c, "s": s, "e": e}).fetchall()[0][0])

    def counts(self, c: str, s: int, e: int) -> list[tuple[str, int]]:
        sql = (
            f"SELECT producer_id, count(*) AS n FROM events WHERE {self._where()} "
            "GROUP BY producer_id ORDER BY n DESC, producer_id"
        )
        return [(p, int(n)) for p, n in self.con.sql(sql, params={"c": c, "s": s, "e": e}).fetchall()]

    def values(self, c: str, s: int, e: int) -> np.ndarray:
        sql = f"SELECT value FROM events WHERE {self._where()} ORDER BY value"
        return np.array([v for (v,) in self.con.sql(sql, params={"c": c, "s": s, "e": e}).fetchall()], np.int64)

    def quantile_disc(self, c: str, s: int, e: int, qs: list[float]) -> list[int | None]:
        listed = ", ".join(repr(q) for q in qs)
        sql = f"SELECT quantile_disc(value, [{listed}]) FROM events WHERE {self._where()}"
        (found,) = self.con.sql(sql, params={"c": c, "s": s, "e": e}).fetchall()[0]
        return [None] * len(qs) if found is None else [int(v) for v in found]


def random_ranges(seed: int, count: int) -> list[tuple[str, int, int]]:
    """Unaligned ranges of many lengths, some empty, some outside the data."""
    rng = np.random.default_rng(seed)
    lengths = [0, 1, 59 * 10**9, 61 * MINUTE_NS + 7, HOUR_NS - 1, HOUR_NS + 13, 2 * HOUR_NS + 5, 4 * HOUR_NS + 1]
    out = []
    for i in range(count):
        start = T0 + int(rng.integers(-HOUR_NS, HOURS * HOUR_NS))
        if i % 5 == 0:  # aligned starts and ends too, where edges vanish
            start -= start % HOUR_NS
        length = lengths[int(rng.integers(len(lengths)))] if i % 5 else HOUR_NS * int(rng.integers(1, HOURS + 1))
        out.append((str(rng.choice(["a", "b", "c", "missing"])), start, start + length))
    out.append(("a", T0 - HOUR_NS, T0 + (HOURS + 1) * HOUR_NS))  # everything
    return out


def check_topk(answer: dict, exact: list[tuple[str, int]], k: int) -> None:  # type: ignore[type-arg]
    truth = dict(exact)
    listed = [p["producer_id"] for p in answer["producers"]]
    assert len(listed) <= k and len(set(listed)) == len(listed)
    for p in answer["producers"]:
        assert p["lower_bound"] <= truth[p["producer_id"]] <= p["upper_bound"], p
    assert all(n <= answer["unlisted_upper_bound"] for p, n in exact if p not in set(listed))
    if answer["guaranteed"]:
        assert set(listed) == {p for p, _ in exact[:k]}
    assert answer["events"] == sum(truth.values())


def check(node: Node, oracle: Oracle, seed: int, count: int) -> dict[str, int]:
    seen = {"guaranteed": 0, "not_guaranteed": 0, "quantiles": 0, "beyond_one_eps": 0, "estimated": 0}
    for c, s, e in random_ranges(seed, count):
        truth = oracle.distinct(c, s, e)
        assert node.approx.distinct(c, s, e) == truth, (c, s, e)
        d = node.approx.distinct(c, s, e, approx=True)
        assert isinstance(d, dict)
        assert d["lower_bound"] <= truth <= d["upper_bound"], (c, s, e, d)
        seen["estimated"] += d["lower_bound"] < d["upper_bound"]

        exact = oracle.counts(c, s, e)
        for k in (1, 5, 25):
            top = node.approx.topk(c, s, e, k)
            check_topk(dict(top), exact, k)
            seen["guaranteed" if top["guaranteed"] else "not_guaranteed"] += 1

        assert node.approx.quantiles(c, s, e, QS) == {
            "quantiles": [{"q": q, "value": v} for q, v in zip(QS, oracle.quantile_disc(c, s, e, QS), strict=True)],
            "n": len(oracle.values(c, s, e)),
        }
        values = oracle.values(c, s, e)
        qa = node.approx.quantiles(c, s, e, QS, approx=True)
        assert qa["n"] == len(values)
        if not len(values):
            assert all(item["value"] is None for item in qa["quantiles"])
            continue
        eps = qa["rank_error"]  # type: ignore[typeddict-item]
        for item in qa["quantiles"]:
            v, q = item["value"], item["q"]
            lo = np.searchsorted(values, v, "left") / len(values)
            hi = np.searchsorted(values, v, "right") / len(values)
            assert hi > lo, "a quantile must be a value that occurred"
            # KLL is randomised: every answer within 2x its 99 %-confidence bound, nearly all within 1x.
            assert lo - 2 * eps <= q <= hi + 2 * eps, (c, s, e, q, eps)
            seen["quantiles"] += 1
            seen["beyond_one_eps"] += not lo - eps <= q <= hi + eps
        assert qa["quantiles"][0]["value"] == values[0] and qa["quantiles"][-1]["value"] == values[-1]
    assert seen["beyond_one_eps"] <= 0.1 * max(seen["quantiles"], 1)
    return seen


def test_answers_through_persists_and_compactions(tmp_path: Path) -> None:
    node = Node(tmp_path)
    chunks = [workload(20 + i, n=12_000, producers=15_000, batch=i * 100) for i in range(5)]
    # Persist some chunks (several parts per hour), keep the last in the live buffer.
    for chunk in chunks[:4]:
        node.to_buffer(chunk)
        node.persist()
    node.to_buffer(chunks[4])
    oracle = Oracle(pa.concat_tables(chunks))
    seen = check(node, oracle, seed=1, count=30)

    # A merge sketches the rows it writes (storage.sketchfile.SketchWriter): each hour's file is
    # the sketch of its persisted rows, built deterministically but for KLL's randomised compaction.
    expected = build_sketches(pa.concat_tables(chunks[:4]), CONFIG)
    assert node.compact() == HOURS
    hours = node.manifest.state.hours()
    for h, (part,) in hours.items():
        merged = read_sketch_file(part.path(tmp_path, SKETCH_KIND))
        cols = ["category", "shard", "hour", "n", "cpc", "frequent", "frequent_error", "value_deltas"]
        cols += ["top_producers", "top_counts"]
        assert merged.select(cols).equals(expected.filter(pc.equal(expected["hour"], h)).select(cols))
        assert merged["kll"].null_count < merged.num_rows  # some groups outgrew kll_k and got a KLL
        limits = CONFIG.max_bytes()
        for col in limits:
            # value_deltas holds int64s; kll or value_deltas is null in each row.
            sizes = [
                0 if b is None else 8 * len(b) if col == "value_deltas" else len(b) for b in merged[col].to_pylist()
            ]
            assert max(sizes) <= limits[col], col
    node.persist()
    more = check(node, oracle, seed=2, count=30)
    for key in seen:
        seen[key] += more[key]
    # The workload drove the sketches into estimation and both outcomes of the top-k guarantee
    # were seen, so the bound checks above could fail.
    assert seen["estimated"] > 0 and seen["guaranteed"] > 0 and seen["not_guaranteed"] > 0
    node.close()


NEW_ROWS = 8_000


def sketch_new_rows(node: Node, old: pa.Table, seed: int) -> Oracle:
    """The node (restarted) with sketches on takes new rows: answers over old and new parts
    equal the oracle's. Returns the oracle over both."""
    node.enable_sketches()
    new = workload(seed, n=NEW_ROWS, producers=5_000, batch=100)
    node.to_buffer(new)
    node.persist()
    oracle = Oracle(pa.concat_tables([old, new]))
    check(node, oracle, seed=seed, count=12)
    return oracle


def sketched_rows(node: Node, root: Path) -> int:
    """Rows summarised by the sketch files of the node's parts."""
    return sum(sum(read_sketch_file(p.path(root, SKETCH_KIND))["n"].to_pylist()) for p in node.manifest.state.parts)


def test_parts_without_sketch_files_are_sketched_from_their_rows(tmp_path: Path) -> None:
    node = Node(tmp_path, sketches=False)
    old = workload(31, n=8_000, producers=5_000, batch=0)
    node.to_buffer(old)
    node.persist()
    assert all(SKETCH_KIND not in p.files for p in node.manifest.state.parts)
    oracle = sketch_new_rows(node, old, seed=32)
    # Compacting a mix builds the hour's sketch file once, from the merged rows.
    node.compact()
    assert all(SKETCH_KIND in p.files for p in node.manifest.state.parts)
    assert sketched_rows(node, tmp_path) == old.num_rows + NEW_ROWS
    check(node, oracle, seed=4, count=12)
    node.close()


class OldSketches:
    """The part extra of nodes before issue 8 (kind ``sketch``: HLL and KLL blobs), writing bytes
    that no reader of this version could parse, so a test shows that none tries."""

    kind = "sketch"

    def build(self, con: duckdb.DuckDBPyConnection, rows_relation: str, path: str) -> None:
        Path(path).write_bytes(b"an older sketch format")

    def merge(self, con: duckdb.DuckDBPyConnection, paths: Sequence[str], path: str) -> None:
        Path(path).write_bytes(b"an older sketch format")


def test_parts_with_sketch_files_of_the_old_format_are_sketched_from_their_rows(tmp_path: Path) -> None:
    node = Node(tmp_path, sketches=False)
    node.reopen_store([OldSketches()])
    old = workload(33, n=8_000, producers=5_000, batch=0)
    node.to_buffer(old)
    node.persist()
    assert all("sketch" in p.files and SKETCH_KIND not in p.files for p in node.manifest.state.parts)
    oracle = sketch_new_rows(node, old, seed=34)  # the node restarted on the older data directory
    # Compaction builds each hour's new-format file from the merged rows; the old files go.
    node.compact()
    assert all("sketch" not in p.files and SKETCH_KIND in p.files for p in node.manifest.state.parts)
    assert sketched_rows(node, tmp_path) == old.num_rows + NEW_ROWS
    check(node, oracle, seed=6, count=12)
    node.close()


def test_shard_partials_merge_to_the_whole(tmp_path: Path) -> None:
    node = Node(tmp_path)
    rows = workload(41, n=20_000, producers=10_000, batch=0)
    node.to_buffer(rows.slice(0, 15_000))
    node.persist()
    node.to_buffer(rows.slice(15_000))
    oracle = Oracle(rows)
    halves = [list(range(0, 3)), list(range(3, SHARDS))]  # two "nodes" with disjoint shards
    for c, s, e in random_ranges(5, 12):
        exact = [node.approx.distinct_partial(c, s, e, False, h) for h in halves]
        assert merge_distinct(exact, approx=False) == oracle.distinct(c, s, e)
        sketches = [node.approx.distinct_partial(c, s, e, True, h) for h in halves]
        d = merge_distinct(sketches, approx=True, config=CONFIG)
        assert isinstance(d, dict) and d["lower_bound"] <= oracle.distinct(c, s, e) <= d["upper_bound"]

        histograms = [node.approx.quantiles_partial(c, s, e, False, h) for h in halves]
        assert merge_quantiles(histograms, QS, approx=False) == node.approx.quantiles(c, s, e, QS)
        collapsed = [node.approx.quantiles_partial(c, s, e, True, h) for h in halves]
        # A node ships only the sketch the answer needs, within its size bound.
        assert all(t.column_names == ["n", "cpc"] and t.num_rows == 1 for t in sketches)
        assert all(t.column_names == ["n", "kll"] and t.num_rows == 1 for t in collapsed)
        limits = CONFIG.max_bytes()
        assert all(len(t["cpc"][0].as_py()) <= limits["cpc"] for t in sketches)
        assert all(len(t["kll"][0].as_py()) <= limits["kll"] for t in collapsed)
        assert merge_quantiles(collapsed, [0.5], approx=True, config=CONFIG)["n"] == len(oracle.values(c, s, e))

        # What a peer sends is JSON: every partial survives the trip unchanged.
        for partial in (*exact, *sketches, *histograms, *collapsed):
            back = from_wire(json.loads(json.dumps(to_wire(partial))))
            assert back.equals(partial) if isinstance(partial, pa.Table) else back == partial
        tops = [node.approx.topk_partial(c, s, e, 10, h) for h in halves]
        assert [from_wire(json.loads(json.dumps(to_wire(t)))) for t in tops] == tops
        top = merge_topk(tops, 10)
        check_topk(dict(top), oracle.counts(c, s, e), 10)
    assert node.approx.distinct("a", T0, T0 + HOURS * HOUR_NS, shards=[]) == 0
    node.close()


def test_stored_sketches_equal_sketching_the_raw_rows(tmp_path: Path) -> None:
    """A whole-hour answer from stored files equals one sketched from raw rows on the fly."""
    node = Node(tmp_path)
    rows = workload(51, n=10_000, producers=4_000, batch=0)
    node.to_buffer(rows)
    stored_before = node.approx.sketch_rows("a", T0, T0 + HOURS * HOUR_NS)
    node.persist()
    stored_after = node.approx.sketch_rows("a", T0, T0 + HOURS * HOUR_NS)
    cols = ["category", "shard", "hour", "n", "cpc", "frequent", "frequent_error", "value_deltas", "top_producers"]
    assert (
        stored_after.sort_by([("shard", "ascending"), ("hour", "ascending")])
        .select(cols)
        .equals(stored_before.sort_by([("shard", "ascending"), ("hour", "ascending")]).select(cols))
    )
    assert approx_topk(stored_after, 5, CONFIG) == node.approx.topk("a", T0, T0 + HOURS * HOUR_NS, 5)
    node.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.lists(st.integers(-(2**62), 2**62), min_size=0, max_size=60),
    repeat=st.lists(st.integers(1, 4), min_size=60, max_size=60),
    split=st.integers(0, 60),
    qs=st.lists(st.sampled_from([0.0, 0.001, 0.1, 0.25, 0.3, 1 / 3, 0.5, 0.7, 0.9, 0.99, 1.0]), min_size=1),
)
def test_histogram_quantiles_equal_quantile_disc(
    values: list[int], repeat: list[int], split: int, qs: list[float]
) -> None:
    rows = [v for v, r in zip(values, repeat, strict=False) for _ in range(r)]
    con = duckdb.connect()
    con.register("t", pa.table({"value": pa.array(rows, pa.int64())}))
    listed = ", ".join(repr(q) for q in qs)
    (found,) = con.sql(f"SELECT quantile_disc(value, [{listed}]) FROM t").fetchall()[0]
    histograms = [
        con.sql(
            f"SELECT value, count(*)::BIGINT AS n FROM (SELECT value FROM t LIMIT {lim} OFFSET {off}) GROUP BY value"
        )
        .to_arrow_table()
        .cast(HISTOGRAM_SCHEMA)
        for off, lim in ((0, split), (split, max(len(rows), 1)))
    ]
    answer = quantiles_of_histograms(histograms, qs)
    assert answer["n"] == len(rows)
    assert [item["value"] for item in answer["quantiles"]] == ([None] * len(qs) if found is None else list(found))


@pytest.mark.parametrize("text", ["", " ", "a", "0.5,", "1.5", "-0.1", "nan", "0.5,,0.9", ",".join(["0.5"] * 65)])
def test_bad_quantile_lists_are_refused(text: str) -> None:
    with pytest.raises(InvalidQuery):
        parse_quantiles(text)


def test_quantile_lists_parse() -> None:
    assert parse_quantiles("0.5,0.9, 0.99") == [0.5, 0.9, 0.99]
    assert parse_quantiles("0,1") == [0.0, 1.0]


def test_bad_k_and_qs_are_refused_and_empty_ranges_answer_nothing(tmp_path: Path) -> None:
    node = Node(tmp_path)
    for k in (0, -1, 10**6):
        with pytest.raises(InvalidQuery):
            node.approx.topk("a", T0, T0 + HOUR_NS, k)
    for qs in ([], [1.5], [math.nan]):
        with pytest.raises(InvalidQuery):
            node.approx.quantiles("a", T0, T0 + HOUR_NS, qs)
    assert node.approx.distinct("a", T0, T0) == 0
    assert node.approx.quantiles("a", T0, T0, [0.5]) == {"quantiles": [{"q": 0.5, "value": None}], "n": 0}
    assert node.approx.topk("a", T0, T0, 3)["producers"] == []
    assert node.approx.distinct("a", T0, T0 + HOUR_NS, approx=True)["value"] == 0  # type: ignore[index]
    node.close()


@pytest.mark.parametrize("body", [{}, {"arrow": "not base64!"}, {"top": {"producers": [{}]}}, {"count": "x"}])
def test_unreadable_partials_are_query_errors(body: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(QueryError):
        from_wire(body)
