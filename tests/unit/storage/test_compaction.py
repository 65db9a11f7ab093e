"""The merge policy: size-tiered, so a busy hour's big part is not rewritten at every merge."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

import storage.compaction
from storage.compaction import CompactionConfig, Compactor, choose
from storage.manifest import Manifest, Part
from storage.partition import PartitionStore
from storage.schema import HOUR_NS
from storage.sketchfile import SKETCH_KIND, SketchExtra, read_sketch_file
from tests.eventgen import T0, random_events, stored

CFG = CompactionConfig(min_parts=4, max_rows=20_000_000, small_rows=1_000_000)


class _Complete:
    """A store stand-in whose parts lack no file: the merge policy alone decides."""

    @staticmethod
    def missing(part: Part) -> list[str]:
        return []


_COMPLETE = _Complete()


def _parts(sizes: list[int]) -> list[Part]:
    return [Part(id=i, hour=0, rows=n, min_ts=0, max_ts=1, files={}) for i, n in enumerate(sizes)]


def _rows(parts: list[Part]) -> list[int]:
    return sorted(p.rows for p in parts)


def test_small_parts_merge_and_the_big_part_waits() -> None:
    parts = _parts([15_000_000] + [250_000] * 15)
    assert _rows(choose(parts, CFG)) == [250_000] * 15  # 3.75M: not yet half of 15M


def test_a_merge_takes_at_most_max_parts_and_an_hour_gives_several() -> None:
    """Many small parts (a busy hour between two rounds): merges of at most ``max_parts``, all
    of them in the same round, disjoint, smallest first."""
    parts = _parts([1_000] * 40)
    assert len(choose(parts, CFG)) == CFG.max_parts

    class _Manifest:  # what Compactor.candidates reads
        class state:
            @staticmethod
            def hours() -> dict[int, list[Part]]:
                return {0: parts}

    groups = Compactor(_COMPLETE, _Manifest(), CFG).candidates()  # type: ignore[arg-type]
    assert [len(g) for g in groups] == [32, 8]
    ids = [p.id for g in groups for p in g]
    assert sorted(ids) == list(range(40))


def test_the_big_part_joins_once_the_small_ones_add_up() -> None:
    parts = _parts([8_000_000, 4_000_000, 250_000, 250_000, 250_000])
    assert _rows(choose(parts, CFG)) == []  # 0.75M of small parts: 4M waits, and 3 parts are too few
    parts = _parts([8_000_000, 4_000_000, 1_000_000, 1_000_000, 250_000])
    assert _rows(choose(parts, CFG)) == [250_000, 1_000_000, 1_000_000, 4_000_000, 8_000_000]


def test_too_few_parts_or_too_many_rows() -> None:
    assert choose(_parts([250_000] * 3), CFG) == []
    assert choose(_parts([9_000_000] * 4), CFG) == []  # 27M would pass max_rows, 2 parts are too few
    assert _rows(choose(_parts([4_000_000] * 6), CFG)) == [4_000_000] * 5  # 24M would pass max_rows
    assert choose(_parts([19_000_000] * 5), CFG) == []  # full parts are left alone


def test_uneven_tiny_parts_still_merge() -> None:
    assert _rows(choose(_parts([1, 1000, 1000, 1000]), CFG)) == [1, 1000, 1000, 1000]


@given(st.lists(st.integers(1, 3_000_000), min_size=1, max_size=60))
def test_a_steady_stream_rewrites_each_row_few_times(sizes: list[int]) -> None:
    """Persist parts one by one, merging as the node would: rows rewritten stay O(log parts) per
    row and no merged part passes max_rows."""
    live: list[Part] = []
    written = 0
    next_id = 0
    for n in sizes:
        live.append(Part(id=next_id, hour=0, rows=n, min_ts=0, max_ts=1, files={}))
        next_id += 1
        while group := choose(live, CFG):
            merged = sum(p.rows for p in group)
            assert merged <= CFG.max_rows
            written += merged
            ids = {p.id for p in group}
            live = [p for p in live if p.id not in ids] + [Part(next_id, 0, merged, 0, 1, {})]
            next_id += 1
    total = sum(sizes)
    assert sum(p.rows for p in live) == total
    # Merging the whole hour each time rewrites rows ~7x here; small parts (always merged
    # together, they are cheap) may add up to small_rows per part persisted.
    assert written <= total * 4 + CFG.small_rows * len(sizes)


def test_memory_is_handed_back_after_each_hour_merged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A round merges hours one after another: each hour's memory goes back to the system once
    it is committed, not only at the end of the round."""
    manifest = Manifest(tmp_path)
    store = PartitionStore(tmp_path, manifest)
    rng = random.Random(3)
    for batch in range(2):
        manifest.commit(add=store.write(stored(random_events(rng, 400, span=2 * HOUR_NS), batch_id=batch)))
    assert len(manifest.state.hours()) == 2 and len(manifest.state.parts) == 4
    parts_at_release: list[int] = []

    def release() -> None:
        parts_at_release.append(len(manifest.state.parts))

    monkeypatch.setattr(storage.compaction, "release_memory", release)
    assert Compactor(store, manifest).run_once(force=True) == 2
    assert parts_at_release == [3, 2]  # after the first hour's commit, then after the second's
    store.close()


def test_a_forced_round_merges_an_hour_down_to_one_part_max_parts_at_a_time(tmp_path: Path) -> None:
    """``POST /v1/admin/compact`` merges every hour to one part, but never more than
    ``max_parts`` parts in one merge (a merge holds its inputs' rollups and sketches whole), and
    the merged part holds exactly the rows of the parts it replaced."""
    manifest = Manifest(tmp_path)
    store = PartitionStore(tmp_path, manifest)
    rng = random.Random(5)
    tables = [stored(random_events(rng, 50, start=HOUR_NS * 10, span=HOUR_NS), batch_id=b) for b in range(9)]
    for table in tables:
        manifest.commit(add=store.write(table))
    assert [len(ps) for ps in manifest.state.hours().values()] == [9]
    sizes: list[int] = []
    merge = store.merge

    def counting_merge(parts: list[Part]) -> Part:
        sizes.append(len(parts))
        return merge(parts)

    store.merge = counting_merge  # type: ignore[method-assign]
    assert Compactor(store, manifest, CompactionConfig(max_parts=3)).run_once(force=True) == 1
    assert max(sizes) == 3 and len(sizes) == 4  # 9 parts -> 7 -> 5 -> 3 -> 1
    (part,) = manifest.state.parts
    assert part.rows == 9 * 50
    merged = pq.read_table(part.path(tmp_path, "events")).to_pylist()
    got = sorted((r["timestamp"], r["producer_id"]) for r in merged)
    want = sorted((r["timestamp"], r["producer_id"]) for t in tables for r in t.to_pylist())
    assert got == want
    store.close()


class _Hours:
    """A manifest stand-in for ``Compactor.candidates`` and ``pending_hours``: hour -> parts."""

    def __init__(self, hours: dict[int, list[Part]]) -> None:
        self.hours_map = hours
        self.state = self

    def hours(self) -> dict[int, list[Part]]:
        return self.hours_map


def test_a_quiet_hour_is_merged_into_one_part_whatever_the_sizes() -> None:
    """A big part and the two small ones that came after its tiered merge: size-tiered leaves
    them (too few); once every part has been there cold_after_s, all three are merged."""
    now = [1000.0]
    hour = _parts([800_000, 40_000, 30_000])
    manifest = _Hours({0: hour})
    compactor = Compactor(_COMPLETE, manifest, CFG, clock=lambda: now[0])  # type: ignore[arg-type]
    assert compactor.candidates() == [] and compactor.pending_hours() == 1  # first seen now
    now[0] += CFG.cold_after_s - 1
    assert compactor.candidates() == []
    now[0] += 1
    assert [_rows(g) for g in compactor.candidates()] == [[30_000, 40_000, 800_000]]


def test_a_new_part_keeps_its_hour_from_being_quiet() -> None:
    now = [0.0]
    manifest = _Hours({0: _parts([800_000, 40_000])})
    compactor = Compactor(_COMPLETE, manifest, CFG, clock=lambda: now[0])  # type: ignore[arg-type]
    compactor.candidates()
    now[0] += CFG.cold_after_s / 2
    manifest.hours_map[0] = [*manifest.hours_map[0], Part(id=7, hour=0, rows=5, min_ts=0, max_ts=1, files={})]
    compactor.candidates()  # part 7 first seen now
    now[0] += CFG.cold_after_s / 2
    assert compactor.candidates() == []  # the first two are cold, part 7 is not
    now[0] += CFG.cold_after_s / 2
    assert [_rows(g) for g in compactor.candidates()] == [[5, 40_000, 800_000]]


def test_quiet_merges_keep_the_bounds_and_can_be_turned_off() -> None:
    now = [0.0]
    big = _parts([15_000_000, 10_000_000, 3_000])  # all three exceed max_rows: the two smallest
    off = CompactionConfig(min_parts=4, cold_after_s=0)
    on = Compactor(_COMPLETE, _Hours({0: big}), CFG, clock=lambda: now[0])  # type: ignore[arg-type]
    never = Compactor(_COMPLETE, _Hours({0: big}), off, clock=lambda: now[0])  # type: ignore[arg-type]
    on.candidates(), never.candidates()
    now[0] += 3600
    assert [_rows(g) for g in on.candidates()] == [[3_000, 10_000_000]]
    assert never.candidates() == [] and never.pending_hours() == 0
    alone = Compactor(_COMPLETE, _Hours({0: _parts([20_000_000, 5])}), CFG, clock=lambda: now[0])  # type: ignore[arg-type]
    alone.candidates()
    now[0] += 3600
    assert alone.candidates() == [] and alone.pending_hours() == 0  # nothing that fits max_rows


def test_a_quiet_hours_lone_part_is_completed_with_the_files_it_lacks(tmp_path: Path) -> None:
    """Parts persisted without sketches (a node's persist store builds none): a quiet hour's two
    parts are merged, sketches built from their rows; the lone part of another hour gains its
    sketch file in place, its other files untouched and still on disk after the commit.
    Nothing happens before the hours are quiet, and the pending count says what is left."""
    manifest = Manifest(tmp_path)
    plain = PartitionStore(tmp_path, manifest)
    sketching = PartitionStore(tmp_path, manifest, extras=[SketchExtra()])
    rng = random.Random(7)
    rows = [stored(random_events(rng, 300, start=T0, span=HOUR_NS), batch_id=b) for b in range(2)]
    rows.append(stored(random_events(rng, 200, start=T0 + HOUR_NS, span=HOUR_NS), batch_id=2))
    for table in rows:
        manifest.commit(add=plain.write(table))
    lone = manifest.state.hours()[T0 + HOUR_NS][0]
    assert SKETCH_KIND not in lone.files
    now = [0.0]
    compactor = Compactor(sketching, manifest, CFG, clock=lambda: now[0])
    assert compactor.run_once() == 0 and compactor.pending_hours() == 2  # not quiet yet
    now[0] += CFG.cold_after_s
    assert compactor.run_once() == 2 and compactor.pending_hours() == 0
    merged, done = (manifest.state.hours()[h][0] for h in (T0, T0 + HOUR_NS))
    assert merged.rows == 600 and done.id == lone.id and len(manifest.state.parts) == 2
    assert done.files == {**lone.files, SKETCH_KIND: done.files[SKETCH_KIND]}
    manifest.collect_garbage()
    for part, table in [(merged, pa.concat_tables(rows[:2])), (done, rows[2])]:
        assert all(Path(part.path(tmp_path, kind)).exists() for kind in part.files)
        sketches = read_sketch_file(part.path(tmp_path, SKETCH_KIND))
        assert sum(sketches["n"].to_pylist()) == table.num_rows
    assert pq.read_table(done.path(tmp_path, "events")).num_rows == 200
    # A forced round completes a lone part at once, quiet or not.
    manifest.commit(add=plain.write(stored(random_events(rng, 50, start=T0 + 5 * HOUR_NS, span=HOUR_NS), batch_id=3)))
    assert Compactor(sketching, manifest, CFG).run_once(force=True) == 1
    assert all(SKETCH_KIND in p.files for p in manifest.state.parts)
    plain.close()
    sketching.close()
