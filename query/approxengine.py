"""Distinct producers and value quantiles (exact by default), and top-k from sketches (issue 7).

Exact answers are one DuckDB query over one ``Snapshot``: distinct producers from the producer
rollups for whole hours plus raw rows at the ragged edges and in the live buffer; quantiles from
the raw rows in range (``quantile_disc``: the smallest value with at least q of the rows at or
below it). Approximate answers merge the stored sketch files of whole hours with sketches built
on the fly (``build_sketches``) from the raw rows of the ragged edges, of the live buffer and of
parts written while sketches were off, then answer with ``query.approx``: every answer states
its error bounds, and they hold as ``query.approx`` states whichever way a row was sketched.

For a cluster each node computes a partial over its shards (``*_partial``) and the coordinator
combines them with ``merge_distinct`` / ``merge_quantiles`` / ``query.approx.merge_topk``:
shards hold disjoint producers, so exact distinct counts add up and sketches merge.
"""

from __future__ import annotations

import base64
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict, TypeVar

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from query.approx import (
    DistinctAnswer,
    Quantile,
    QuantileAnswer,
    TopAnswer,
    approx_distinct,
    approx_quantiles,
    approx_topk,
    collapse_sketches,
)
from query.engine import Engine, Snapshot
from query.errors import InvalidQuery, QueryError, QueryTimeout
from query.timerange import ceil_to, floor_to
from storage.schema import HOUR_NS
from storage.sketch import SKETCH_SCHEMA, SketchConfig, build_sketches
from storage.sketchfile import SKETCH_KIND

__all__ = [
    "HISTOGRAM_SCHEMA",
    "ApproxConfig",
    "ApproxEngine",
    "ExactQuantiles",
    "from_wire",
    "merge_distinct",
    "merge_quantiles",
    "parse_quantiles",
    "quantiles_of_histograms",
    "to_wire",
]

# An exact per-node partial of quantiles: how many rows have each value.
_T = TypeVar("_T")

HISTOGRAM_SCHEMA = pa.schema([pa.field("value", pa.int64(), nullable=False), pa.field("n", pa.int64(), nullable=False)])


# The sketch columns each answer reads.
_DISTINCT = ("n", "cpc")
_QUANTILES = ("n", "kll", "value_deltas")
_TOPK = ("shard", "n", "frequent", "frequent_error", "top_producers", "top_counts")


@dataclass(frozen=True)
class ApproxConfig:
    """``sketch``: sizes of the sketches built on the fly and of merges (the same as the stored
    ones); ``max_quantiles``: most quantiles one query may ask for."""

    sketch: SketchConfig = field(default_factory=SketchConfig)
    max_quantiles: int = 64


class ExactQuantiles(TypedDict):
    quantiles: list[Quantile]
    n: int


def parse_quantiles(text: str, limit: int = 64) -> list[float]:
    """``"0.5,0.9,0.99"`` -> ``[0.5, 0.9, 0.99]``; raises ``InvalidQuery`` unless there are 1 to
    ``limit`` numbers, each in [0, 1]."""
    items = [t.strip() for t in text.split(",")]
    try:
        qs = [float(t) for t in items]
    except ValueError:
        raise InvalidQuery(f"q must be comma-separated numbers in [0, 1], got {text!r}") from None
    if not text.strip() or not qs or any(not 0.0 <= q <= 1.0 for q in qs):  # NaN fails the comparison too
        raise InvalidQuery(f"q must be comma-separated numbers in [0, 1], got {text!r}")
    if len(qs) > limit:
        raise InvalidQuery(f"at most {limit} quantiles per query, got {len(qs)}")
    return qs


def _parquet(paths: Sequence[str]) -> str:
    files = ", ".join("'" + p.replace("'", "''") + "'" for p in paths)
    return f"read_parquet([{files}], hive_partitioning = false)"


def _shard_clause(shards: Sequence[int] | None) -> str:
    if shards is None:
        return ""
    if not shards:
        return " AND false"
    return f" AND shard IN ({', '.join(str(int(s)) for s in sorted(shards))})"


def _within(ranges: Sequence[tuple[int, int]]) -> str:
    return "(" + " OR ".join(f"(timestamp >= {a} AND timestamp < {b})" for a, b in ranges) + ")"


@dataclass(frozen=True)
class _Plan:
    """How ``[start, end)`` splits: hours [h1, h2) whole, the rest ragged edges."""

    start: int
    end: int
    h1: int
    h2: int

    @classmethod
    def of(cls, start: int, end: int) -> _Plan:
        h1, h2 = ceil_to(start, HOUR_NS), floor_to(end, HOUR_NS)
        if h1 >= h2:
            h1 = h2 = end  # no whole hour: everything is edge
        return cls(start, end, h1, h2)

    @property
    def edges(self) -> list[tuple[int, int]]:
        return [(a, b) for a, b in ((self.start, self.h1), (self.h2, self.end)) if a < b]


class ApproxEngine:
    """Distinct, quantiles and approximate top-k over one node's data (all shards, or a subset).

    Shares the ``Engine``'s DuckDB database, snapshots and time limit. Thread-safe.
    """

    def __init__(self, engine: Engine, config: ApproxConfig | None = None) -> None:
        self.engine = engine
        self.config = config or ApproxConfig()

    # -- whole answers on one node ----------------------------------------------------------------

    def distinct(
        self, category: str, start: int, end: int, *, approx: bool = False, shards: Sequence[int] | None = None
    ) -> int | DistinctAnswer:
        """Distinct producers of ``category`` in ``[start, end)``: an exact count, or with
        ``approx`` a CPC estimate with its bounds."""
        if approx:
            return approx_distinct(self.sketch_rows(category, start, end, shards, _DISTINCT), self.config.sketch)
        return self.distinct_exact(category, start, end, shards)

    def quantiles(
        self,
        category: str,
        start: int,
        end: int,
        qs: Sequence[float],
        *,
        approx: bool = False,
        shards: Sequence[int] | None = None,
    ) -> ExactQuantiles | QuantileAnswer:
        """Quantiles of ``value``: exact (``quantile_disc``), or with ``approx`` from KLL
        sketches with their rank error. Values are None when the range holds no rows."""
        self._check_qs(qs)
        if approx:
            rows = self.sketch_rows(category, start, end, shards, _QUANTILES)
            return approx_quantiles(rows, qs, self.config.sketch)
        return self.quantiles_exact(category, start, end, qs, shards)

    def topk(self, category: str, start: int, end: int, k: int, shards: Sequence[int] | None = None) -> TopAnswer:
        """Approximate top-k from frequent-items sketches, with hard per-producer bounds (the
        exact top-k is ``Engine.topk``)."""
        self.check_k(k)
        return approx_topk(self.sketch_rows(category, start, end, shards, _TOPK), k, self.config.sketch)

    def check_k(self, k: int) -> None:
        if not 1 <= k <= self.engine.config.max_k:
            raise InvalidQuery(f"k must be between 1 and {self.engine.config.max_k}")

    def _check_qs(self, qs: Sequence[float]) -> None:
        if not qs or len(qs) > self.config.max_quantiles or any(not 0.0 <= q <= 1.0 for q in qs):
            raise InvalidQuery(f"give 1 to {self.config.max_quantiles} quantiles, each in [0, 1]; got {list(qs)}")

    # -- per-node partials for scatter-gather -----------------------------------------------------

    def distinct_partial(
        self, category: str, start: int, end: int, approx: bool, shards: Sequence[int] | None
    ) -> int | pa.Table:
        """Exact: this node's distinct count over ``shards``. Approximate: its CPC sketches
        collapsed to one row (``n``, ``cpc``: at most a few KB). Combine with ``merge_distinct``."""
        if approx:
            rows = self.sketch_rows(category, start, end, shards, _DISTINCT)
            return collapse_sketches(rows, self.config.sketch, _DISTINCT)
        return self.distinct_exact(category, start, end, shards)

    def quantiles_partial(
        self, category: str, start: int, end: int, approx: bool, shards: Sequence[int] | None
    ) -> pa.Table:
        """Exact: a ``HISTOGRAM_SCHEMA`` table (one row per distinct value in range, so its size
        grows with the values' cardinality). Approximate: its KLL sketches collapsed to one row
        (``n``, ``kll``: bounded by ``SketchConfig.max_bytes()``). Combine with ``merge_quantiles``."""
        if approx:
            rows = self.sketch_rows(category, start, end, shards, _QUANTILES)
            return collapse_sketches(rows, self.config.sketch, _QUANTILES)
        return self.histogram(category, start, end, shards)

    def topk_partial(self, category: str, start: int, end: int, k: int, shards: Sequence[int] | None) -> TopAnswer:
        """This node's approximate top-k over ``shards``; combine with ``query.approx.merge_topk``."""
        return self.topk(category, start, end, k, shards)

    # -- exact ------------------------------------------------------------------------------------

    def distinct_exact(self, category: str, start: int, end: int, shards: Sequence[int] | None = None) -> int:
        if start >= end:
            return 0
        with self.engine.snapshot() as snap:
            sql = f"SELECT count(DISTINCT producer_id) FROM ({self._producers_sql(snap, _Plan.of(start, end), shards)})"
            ((n,),) = self._run(snap, sql, {"cat": category})
        return int(n)

    def _producers_sql(self, snap: Snapshot, plan: _Plan, shards: Sequence[int] | None) -> str:
        sc = _shard_clause(shards)
        pieces = []
        if plan.h1 < plan.h2:
            files = snap.files("rollup_producer", plan.h1, plan.h2)
            if files:
                pieces.append(
                    f"SELECT producer_id FROM {_parquet(files)} "
                    f"WHERE category = $cat AND hour >= {plan.h1} AND hour < {plan.h2}{sc}"
                )
        if plan.edges:
            files = sorted({f for a, b in plan.edges for f in snap.files("events", a, b)})
            if files:
                pieces.append(
                    f"SELECT producer_id FROM {_parquet(files)} WHERE category = $cat AND {_within(plan.edges)}{sc}"
                )
        # the buffer has no producer rollup: all its rows in range count
        pieces.append(
            f"SELECT producer_id FROM buf_rows WHERE category = $cat "
            f"AND timestamp >= {plan.start} AND timestamp < {plan.end}{sc}"
        )
        return " UNION ALL ".join(pieces)

    def _values_sql(self, snap: Snapshot, start: int, end: int, shards: Sequence[int] | None) -> str:
        sc = _shard_clause(shards)
        where = f"category = $cat AND timestamp >= {start} AND timestamp < {end}{sc}"
        files = snap.files("events", start, end)
        pieces = [f"SELECT value FROM {_parquet(files)} WHERE {where}"] if files else []
        pieces.append(f"SELECT value FROM buf_rows WHERE {where}")
        return " UNION ALL ".join(pieces)

    def quantiles_exact(
        self, category: str, start: int, end: int, qs: Sequence[float], shards: Sequence[int] | None = None
    ) -> ExactQuantiles:
        self._check_qs(qs)
        if start >= end:
            return {"quantiles": [{"q": q, "value": None} for q in qs], "n": 0}
        listed = ", ".join(repr(float(q)) for q in qs)
        with self.engine.snapshot() as snap:
            sql = (
                f"SELECT count(*), quantile_disc(value, [{listed}]) FROM ({self._values_sql(snap, start, end, shards)})"
            )
            ((n, values),) = self._run(snap, sql, {"cat": category})
        found = list(values) if values is not None else [None] * len(qs)
        return {
            "quantiles": [{"q": q, "value": None if v is None else int(v)} for q, v in zip(qs, found, strict=True)],
            "n": int(n),
        }

    def histogram(self, category: str, start: int, end: int, shards: Sequence[int] | None = None) -> pa.Table:
        """(value, n) of the rows in range, ordered by value (``HISTOGRAM_SCHEMA``)."""
        if start >= end:
            return HISTOGRAM_SCHEMA.empty_table()
        with self.engine.snapshot() as snap:
            sql = (
                f"SELECT value, count(*)::BIGINT AS n FROM ({self._values_sql(snap, start, end, shards)}) "
                "GROUP BY value ORDER BY value"
            )
            table = self._arrow(snap, sql, {"cat": category})
        return table.cast(HISTOGRAM_SCHEMA)

    # -- sketches ---------------------------------------------------------------------------------

    def sketch_rows(
        self,
        category: str,
        start: int,
        end: int,
        shards: Sequence[int] | None = None,
        columns: Sequence[str] = SKETCH_SCHEMA.names,
    ) -> pa.Table:
        """``SKETCH_SCHEMA`` rows (only ``columns``) that together summarise exactly the rows of
        ``category`` in ``[start, end)`` (over ``shards``): stored sketches of whole hours, and
        sketches built now from the raw rows of the edges, the live buffer and parts without a
        sketch file."""
        schema = pa.schema([SKETCH_SCHEMA.field(c) for c in columns])
        if start >= end:
            return schema.empty_table()
        plan = _Plan.of(start, end)
        sc = _shard_clause(shards)
        params = {"cat": category}
        with self.engine.snapshot() as snap:
            whole = snap.state.parts_between(plan.h1, plan.h2) if plan.h1 < plan.h2 else []
            sketched = [p.path(snap.root, SKETCH_KIND) for p in whole if SKETCH_KIND in p.files]
            unsketched = [p.path(snap.root, "events") for p in whole if SKETCH_KIND not in p.files]
            stored = schema.empty_table()
            if sketched:
                # Only the sketches the answer reads: a KLL or frequent-items blob is kilobytes.
                stored = self._arrow(
                    snap,
                    f"SELECT {', '.join(columns)} FROM {_parquet(sketched)} "
                    f"WHERE category = $cat AND hour >= {plan.h1} AND hour < {plan.h2}{sc}",
                    params,
                )
            cols = "timestamp, category, value, producer_id, shard"
            raw = []
            edge_files = sorted({f for a, b in plan.edges for f in snap.files("events", a, b)})
            if edge_files:
                raw.append(
                    f"SELECT {cols} FROM {_parquet(edge_files)} WHERE category = $cat AND {_within(plan.edges)}{sc}"
                )
            if unsketched:
                raw.append(f"SELECT {cols} FROM {_parquet(unsketched)} WHERE category = $cat{sc}")
            raw.append(
                f"SELECT {cols} FROM buf_rows WHERE category = $cat AND timestamp >= {start} AND timestamp < {end}{sc}"
            )
            rows = self._arrow(snap, " UNION ALL ".join(raw), params)
        built = build_sketches(rows, self.config.sketch).select(list(columns))
        return pa.concat_tables([stored.cast(schema), built])

    # -- running ----------------------------------------------------------------------------------

    def _cursor(self, snap: Snapshot) -> duckdb.DuckDBPyConnection:
        # The engine's database: one memory limit and one thread pool for every answer.
        cur = self.engine._db.cursor()
        cur.register("buf_rows", snap.buffer.rows)
        return cur

    def _timed(self, cur: duckdb.DuckDBPyConnection, run: Callable[[], _T]) -> _T:
        timeout = self.engine.config.timeout_s
        timer = threading.Timer(timeout, cur.interrupt)
        timer.start()
        try:
            return run()
        except duckdb.InterruptException as e:
            raise QueryTimeout(f"query exceeded {timeout}s") from e
        finally:
            timer.cancel()
            cur.close()

    def _run(self, snap: Snapshot, sql: str, params: Mapping[str, object]) -> list[tuple[Any, ...]]:
        cur = self._cursor(snap)
        return self._timed(cur, lambda: cur.sql(sql, params=params).fetchall())

    def _arrow(self, snap: Snapshot, sql: str, params: Mapping[str, object]) -> pa.Table:
        cur = self._cursor(snap)
        return self._timed(cur, lambda: cur.sql(sql, params=params).to_arrow_table())


# -- coordinator side -----------------------------------------------------------------------------


def merge_distinct(
    partials: Sequence[int | pa.Table], approx: bool, config: SketchConfig | None = None
) -> int | DistinctAnswer:
    """Combine nodes' ``distinct_partial``s over disjoint shards: exact counts add up (a
    producer lives in one shard), collapsed sketches merge."""
    if not approx:
        return sum(int(p) for p in partials if not isinstance(p, pa.Table))
    tables = [p for p in partials if isinstance(p, pa.Table)]
    return approx_distinct(
        pa.concat_tables(tables) if tables else SKETCH_SCHEMA.empty_table(), config or SketchConfig()
    )


def merge_quantiles(
    partials: Sequence[pa.Table], qs: Sequence[float], approx: bool, config: SketchConfig | None = None
) -> ExactQuantiles | QuantileAnswer:
    """Combine nodes' ``quantiles_partial``s over disjoint shards into the answer over all of them."""
    if approx:
        rows = pa.concat_tables(partials) if partials else SKETCH_SCHEMA.empty_table()
        return approx_quantiles(rows, qs, config or SketchConfig())
    return quantiles_of_histograms(partials, qs)


def quantiles_of_histograms(histograms: Sequence[pa.Table], qs: Sequence[float]) -> ExactQuantiles:
    """Exact quantiles from (value, n) histograms, equal to DuckDB's ``quantile_disc`` over the
    rows they count: for q, the value at 0-based position ``max(0, ceil(q * n) - 1)`` in order."""
    if not qs or any(not 0.0 <= q <= 1.0 for q in qs):
        raise InvalidQuery(f"quantiles must be one or more numbers in [0, 1], got {list(qs)}")
    parts = [h.select(HISTOGRAM_SCHEMA.names).cast(HISTOGRAM_SCHEMA) for h in histograms if h.num_rows]
    if not parts:
        return {"quantiles": [{"q": q, "value": None} for q in qs], "n": 0}
    merged = pa.concat_tables(parts).group_by("value").aggregate([("n", "sum")]).sort_by("value")
    values = merged["value"].to_numpy()
    cumulative = np.cumsum(pc.cast(merged["n_sum"], pa.int64()).to_numpy())
    total = int(cumulative[-1])
    out: list[Quantile] = []
    for q in qs:
        position = max(0, math.ceil(q * total) - 1)  # the row wanted, 0-based
        out.append({"q": q, "value": int(values[int(np.searchsorted(cumulative, position + 1, "left"))])})
    return {"quantiles": out, "n": total}


# -- the wire between nodes -----------------------------------------------------------------------


def to_wire(partial: int | pa.Table | TopAnswer) -> dict[str, Any]:
    """A ``*_partial`` as JSON-ready data for a peer's answer: ``{"count": n}``, ``{"arrow":
    base64 Arrow IPC}`` (collapsed sketches, histograms) or ``{"top": TopAnswer}``."""
    if isinstance(partial, pa.Table):
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, partial.schema) as w:
            w.write_table(partial)
        return {"arrow": base64.b64encode(sink.getvalue().to_pybytes()).decode("ascii")}
    if isinstance(partial, dict):
        return {"top": dict(partial)}
    return {"count": int(partial)}


def from_wire(body: Mapping[str, Any]) -> int | pa.Table | TopAnswer:
    """The partial a peer sent with ``to_wire``. Raises ``QueryError`` on anything else."""
    try:
        if "arrow" in body:
            return pa.ipc.open_stream(pa.py_buffer(base64.b64decode(body["arrow"]))).read_all()
        if "top" in body:
            top = body["top"]
            return {
                "producers": [
                    {
                        "producer_id": str(p["producer_id"]),
                        "estimate": int(p["estimate"]),
                        "lower_bound": int(p["lower_bound"]),
                        "upper_bound": int(p["upper_bound"]),
                    }
                    for p in top["producers"]
                ],
                "guaranteed": bool(top["guaranteed"]),
                "exact": bool(top["exact"]),
                "unlisted_upper_bound": int(top["unlisted_upper_bound"]),
                "events": int(top["events"]),
            }
        return int(body["count"])
    except (KeyError, TypeError, ValueError, pa.ArrowException) as e:
        raise QueryError(f"a peer's partial answer is unreadable: {e}") from e
