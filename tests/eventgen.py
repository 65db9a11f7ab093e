"""Seeded random events for tests, and DuckDB oracles over the same raw rows."""

from __future__ import annotations

import random
from collections.abc import Sequence

import duckdb
import numpy as np
import pyarrow as pa

from storage.schema import EVENT_SCHEMA, HOUR_NS, STORED_SCHEMA, ShardHasher

T0 = 1_795_737_600_000_000_000  # 2026-11-27T00:00:00Z


def random_events(
    rng: random.Random, n: int, *, start: int = T0, span: int = 3 * HOUR_NS, categories: int = 3, producers: int = 200
) -> pa.Table:
    ts = [start + rng.randrange(span) for _ in range(n)]
    return pa.table(
        {
            "timestamp": pa.array(ts, pa.int64()),
            "category": [f"c{rng.randrange(categories)}" for _ in range(n)],
            "value": pa.array([rng.randrange(-1000, 1_000_000) for _ in range(n)], pa.int64()),
            "producer_id": [f"p{int(rng.paretovariate(1.1)) % producers}" for _ in range(n)],
        },
        schema=EVENT_SCHEMA,
    )


def zipf_stored(
    seed: int,
    n: int,
    producers: int,
    *,
    start: int,
    hours: int,
    shards: int,
    batch_rows: int,
    first_batch: int = 0,
) -> pa.Table:
    """W20-like rows in STORED_SCHEMA, the same for the same arguments: Zipf(1.1) producer
    popularity, categories a/b/c at 60/30/10 %, log-normal values, timestamps uniform over
    ``hours`` hours from ``start``, a new batch id every ``batch_rows`` rows from ``first_batch``."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, producers + 1) ** 1.1
    ids = rng.choice(producers, size=n, p=weights / weights.sum())
    names = pa.array([f"p{i:06d}" for i in range(producers)]).take(pa.array(ids))
    return pa.table(
        {
            "timestamp": pa.array(start + rng.integers(0, hours * HOUR_NS, n), pa.int64()),
            "category": pa.array(["a", "b", "c"]).take(pa.array(rng.choice(3, n, p=[0.6, 0.3, 0.1]))),
            "value": pa.array(rng.lognormal(8, 2, n).astype(np.int64) - 100, pa.int64()),
            "producer_id": names,
            "shard": ShardHasher(shards)(names),
            "batch_id": pa.array(first_batch + np.arange(n) // batch_rows, pa.int64()),
        },
        schema=STORED_SCHEMA,
    )


def stored(events: pa.Table, batch_id: int = 1, shards: int = 256) -> pa.Table:
    shard = ShardHasher(shards)(events.column("producer_id"))
    return pa.Table.from_arrays(
        [*events.columns, shard, pa.repeat(pa.scalar(batch_id, pa.int64()), events.num_rows)], schema=STORED_SCHEMA
    )


class Oracle:
    """DuckDB over the raw events: the answer every query path must give."""

    def __init__(self, tables: Sequence[pa.Table] = ()) -> None:
        self.con = duckdb.connect()
        self.tables: list[pa.Table] = [t.select(EVENT_SCHEMA.names) for t in tables]
        self._refresh()

    def add(self, t: pa.Table) -> None:
        self.tables.append(t.select(EVENT_SCHEMA.names))
        self._refresh()

    def _refresh(self) -> None:
        t = pa.concat_tables(self.tables) if self.tables else EVENT_SCHEMA.empty_table()
        self.con.register("oracle", t)

    def aggregate(self, category: str, start: int, end: int) -> tuple[int, int]:
        ((c, s),) = self.con.sql(
            "SELECT count(*), coalesce(sum(value), 0) FROM oracle WHERE category = $c AND timestamp >= $s "
            "AND timestamp < $e",
            params={"c": category, "s": start, "e": end},
        ).fetchall()
        return int(c), int(s)

    def topk(self, category: str, start: int, end: int, k: int) -> list[tuple[str, int]]:
        rows = self.con.sql(
            "SELECT producer_id, count(*) AS n FROM oracle WHERE category = $c AND timestamp >= $s "
            "AND timestamp < $e GROUP BY producer_id ORDER BY n DESC, producer_id ASC LIMIT $k",
            params={"c": category, "s": start, "e": end, "k": k},
        ).fetchall()
        return [(str(p), int(n)) for p, n in rows]


def random_range(rng: random.Random, start: int = T0, span: int = 3 * HOUR_NS) -> tuple[int, int]:
    """Unaligned nanosecond ranges of many lengths, including empty and one-ns ones, and ranges
    before or after all data."""
    s = start + rng.randrange(-HOUR_NS, span + HOUR_NS)
    length = rng.choice([0, 1, 999, 10**9, 59 * 10**9, 61 * 10**9, HOUR_NS - 1, HOUR_NS + 7, 2 * HOUR_NS, 5 * HOUR_NS])
    return s, s + length
