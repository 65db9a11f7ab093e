"""Parts: one per hour, sorted raw rows, rollups equal to aggregating the rows, merges additive."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage.manifest import Manifest, Part
from storage.ordering import EVENTS_SORT_KEY, EVENTS_SORTED_BY
from storage.partition import PartitionConfig, PartitionStore, hour_folder, storage_db
from storage.schema import HOUR_NS
from tests.eventgen import T0, random_events, stored


def test_hour_folder_is_hive_style() -> None:
    assert hour_folder(T0 + 5 * HOUR_NS + 17) == "hour=2026-11-27T05"


def test_one_part_per_hour_with_exact_rollups(tmp_path: Path) -> None:
    rng = random.Random(1)
    rows = stored(random_events(rng, 5000, span=3 * HOUR_NS))
    m = Manifest(tmp_path)
    store = PartitionStore(tmp_path, m)
    parts = store.write(rows)
    assert [p.hour for p in parts] == [T0, T0 + HOUR_NS, T0 + 2 * HOUR_NS]
    assert sum(p.rows for p in parts) == 5000
    con = duckdb.connect()
    con.register("raw", rows)
    for p in parts:
        events = pq.read_table(p.path(tmp_path, "events"))
        keys = list(zip(events["category"].to_pylist(), events["timestamp"].to_pylist(), strict=True))
        assert keys == sorted(keys), "raw rows sorted by (category, timestamp)"
        assert pq.read_schema(p.path(tmp_path, "events")).metadata[EVENTS_SORT_KEY] == EVENTS_SORTED_BY
        assert (p.min_ts, p.max_ts) == (min(events["timestamp"].to_pylist()), max(events["timestamp"].to_pylist()))
        for kind, cols in [("rollup_minute", 3), ("rollup_producer", 3)]:
            t = pq.read_table(p.path(tmp_path, kind)).to_pylist()
            order = [tuple(r.values())[:cols] for r in t]
            assert order == sorted(order), f"{kind} sorted by its keys"
        got = con.sql(
            "SELECT category, shard, minute, count, sum::HUGEINT "
            f"FROM read_parquet('{p.path(tmp_path, 'rollup_minute')}') ORDER BY ALL"
        ).fetchall()
        want = con.sql(
            f"SELECT category, shard, timestamp - timestamp % 60000000000, count(*), sum(value) FROM raw "
            f"WHERE timestamp >= {p.hour} AND timestamp < {p.hour + HOUR_NS} GROUP BY ALL ORDER BY ALL"
        ).fetchall()
        assert got == want
        got_p = con.sql(
            "SELECT category, shard, hour, producer_id, count "
            f"FROM read_parquet('{p.path(tmp_path, 'rollup_producer')}', hive_partitioning = false) ORDER BY ALL"
        ).fetchall()
        want_p = con.sql(
            f"SELECT category, shard, {p.hour}::BIGINT, producer_id, count(*) FROM raw "
            f"WHERE timestamp >= {p.hour} AND timestamp < {p.hour + HOUR_NS} GROUP BY ALL ORDER BY ALL"
        ).fetchall()
        assert got_p == want_p
    store.close()


def test_merge_sums_rollups_and_keeps_every_row(tmp_path: Path) -> None:
    rng = random.Random(2)
    m = Manifest(tmp_path)
    store = PartitionStore(tmp_path, m)
    a = store.write(stored(random_events(rng, 800, span=HOUR_NS)))
    b = store.write(stored(random_events(rng, 700, span=HOUR_NS)))
    merged = store.merge(a + b)
    assert merged.rows == 1500
    con = duckdb.connect()
    total = con.sql(f"SELECT sum(count) FROM read_parquet('{merged.path(tmp_path, 'rollup_minute')}')").fetchall()
    assert total == [(1500,)]
    n = con.sql(
        f"SELECT count(*) FROM read_parquet('{merged.path(tmp_path, 'rollup_producer')}', hive_partitioning=false) "
        "GROUP BY category, shard, producer_id HAVING count(*) > 1"
    ).fetchall()
    assert n == [], "producer rollup rows merged, not concatenated"
    store.close()


def test_partitions_are_plain_parquet_for_other_readers(tmp_path: Path) -> None:
    import polars as pl

    m = Manifest(tmp_path)
    store = PartitionStore(tmp_path, m)
    rows = stored(random_events(random.Random(3), 100, span=HOUR_NS // 2))
    store.write(rows)
    df = pl.read_parquet(str(tmp_path / "partitions" / "*" / "events-*.parquet"), hive_partitioning=True)
    assert df.height == 100
    assert "hour" in df.columns
    store.close()


@pytest.mark.parametrize("sources", ["sorted", "unsorted", "no-statistics"])
def test_a_merge_in_one_window_or_many_gives_the_same_part(tmp_path: Path, sources: str) -> None:
    """A merge reads windows of (category, time) from row groups: one big window or many tiny
    ones (each straddled by row groups) give the same rows in (category, timestamp) order, the
    same rollups, and the sort-order marker the query path relies on. Sources in another order
    (an older layout) or without row-group statistics merge just the same."""
    rng = random.Random(4)
    batches = [stored(random_events(rng, n, span=HOUR_NS), batch_id=i) for i, n in enumerate([300, 500, 400])]
    merged = {}
    for name, window in [("one", 10**9), ("many", 7)]:
        root = tmp_path / name
        m = Manifest(root)
        store = PartitionStore(root, m, PartitionConfig(merge_window_rows=window, row_group_rows=16))
        parts = [p for b in batches for p in store.write(b)]
        for p in parts if sources != "sorted" else []:  # rewrite each source's events, row groups of 16
            events = pq.read_table(p.path(root, "events"))
            if sources == "unsorted":
                pq.write_table(events.sort_by("value"), p.path(root, "events"), 16)
            else:
                pq.write_table(events, p.path(root, "events"), 16, write_statistics=False)
        parts = [p for b in batches for p in store.write(b)]
        part = store.merge(parts)
        assert part.rows == 1200
        assert (part.min_ts, part.max_ts) == (min(p.min_ts for p in parts), max(p.max_ts for p in parts))
        path = part.path(root, "events")
        assert pq.read_schema(path).metadata[EVENTS_SORT_KEY] == EVENTS_SORTED_BY
        events = pq.read_table(path)
        keys = list(zip(events["category"].to_pylist(), events["timestamp"].to_pylist(), strict=True))
        assert keys == sorted(keys)
        merged[name] = (
            sorted(
                events.select(["timestamp", "category", "value", "producer_id", "shard", "batch_id"]).to_pylist(),
                key=lambda r: tuple(r.values()),
            ),
            pq.read_table(part.path(root, "rollup_minute")).to_pylist(),
            pq.read_table(part.path(root, "rollup_producer")).to_pylist(),
        )
        store.close()
    assert merged["one"] == merged["many"]


def test_a_known_category_order_writes_the_same_parts(tmp_path: Path) -> None:
    rng = random.Random(5)
    rows = stored(random_events(rng, 3000, span=3 * HOUR_NS))
    keys = list(zip(rows["category"].to_pylist(), rows["timestamp"].to_pylist(), strict=True))
    by_category = np.array(sorted(range(len(keys)), key=lambda i: (keys[i][0].encode(), keys[i][1])))
    written = []
    for name, order in [("sorted", None), ("given", by_category)]:
        root = tmp_path / name
        store = PartitionStore(root, Manifest(root))
        parts = store.write(rows, order)
        written.append(
            [(p.hour, p.rows, p.min_ts, p.max_ts, pq.read_table(p.path(root, "events")).to_pylist()) for p in parts]
        )
        store.close()
    assert written[0] == written[1]


def test_a_part_is_written_when_its_new_hour_folder_is_swept_away_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retention removes an expired hour's empty folder; a persist of that hour's late rows may
    have just made it. The first file then finds no folder: the store makes it again."""
    manifest = Manifest(tmp_path)
    store = PartitionStore(tmp_path, manifest)
    write_table = pq.write_table
    swept: list[Path] = []

    def sweep_first(table: object, where: str, **kwargs: object) -> None:
        if not swept:  # as retention's rmdir would, between the store's mkdir and this open
            folder = Path(where).parent
            folder.rmdir()
            swept.append(folder)
        write_table(table, where, **kwargs)

    monkeypatch.setattr("storage.partition.pq.write_table", sweep_first)
    rows = stored(random_events(random.Random(9), 100, span=HOUR_NS // 2))
    (part,) = store.write(rows)
    assert swept == [tmp_path / "partitions" / hour_folder(part.hour)]
    assert pq.read_table(part.path(tmp_path, "events")).num_rows == 100
    store.close()


class _CountsExtra:
    """An extra built and merged through the store's DuckDB cursor: events per category."""

    kind = "counts"

    def build(self, con: duckdb.DuckDBPyConnection, rows_relation: str, path: str) -> None:
        con.execute(
            f"COPY (SELECT category, count(*) AS n FROM {rows_relation} GROUP BY ALL) TO '{path}' (FORMAT parquet)"
        )

    def merge(self, con: duckdb.DuckDBPyConnection, paths: list[str], path: str) -> None:
        files = ", ".join(f"'{p}'" for p in paths)
        con.execute(
            f"COPY (SELECT category, sum(n)::BIGINT AS n FROM read_parquet([{files}]) GROUP BY ALL) "
            f"TO '{path}' (FORMAT parquet)"
        )


def test_two_stores_write_and_merge_side_by_side_through_one_database(tmp_path: Path) -> None:
    """A node's persist store and merge store share one DuckDB database (``storage_db``), each
    working through cursors of its own: a merge runs while the other store writes, and closing
    a store that does not own the database leaves it open for the other."""
    rng = random.Random(4)
    m = Manifest(tmp_path)
    db = storage_db()
    writer = PartitionStore(tmp_path, m, extras=[_CountsExtra()], db=db)
    merger = PartitionStore(tmp_path, m, extras=[_CountsExtra()], db=db)
    batches = [stored(random_events(rng, 500, span=HOUR_NS // 2)) for _ in range(12)]
    first = [p for b in batches[:4] for p in writer.write(b)]

    def write_the_rest() -> list[Part]:
        return [p for b in batches[4:] for p in writer.write(b)]

    with ThreadPoolExecutor(1) as pool:
        later = pool.submit(write_the_rest)
        merged = [merger.merge([p for p in first if p.hour == h]) for h in sorted({p.hour for p in first})]
        written = later.result()
    writer.close()
    merged += [merger.merge([p for p in written if p.hour == h]) for h in sorted({p.hour for p in written})]
    want = pa.concat_tables(batches).group_by("category").aggregate([("category", "count")])
    con = duckdb.connect()
    files = ", ".join(f"'{p.path(tmp_path, 'counts')}'" for p in merged)
    got = dict(con.sql(f"SELECT category, sum(n)::BIGINT FROM read_parquet([{files}]) GROUP BY ALL").fetchall())
    assert got == dict(zip(want["category"].to_pylist(), want["category_count"].to_pylist(), strict=True))
    assert sum(p.rows for p in merged) == 6000
    merger.close()
    assert db.sql("SELECT 42").fetchall() == [(42,)], "the stores close their cursors, not the database"
    db.close()
