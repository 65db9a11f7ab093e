"""The read side of a node: exact and approximate answers over the cluster, and SQL over its own data.

Every answer is a per-node ``*_partial`` over some shards, combined by ``merge_*``: on a cluster
of one (or when the caller names ``shards``) the local engine answers directly; otherwise the
reader scatters the question over as few replicas as cover every shard and the partials are
merged here. A merged answer over disjoint shards equals the single-node answer over all of them;
shards with no live replica are named in ``missing_shards`` (or refused with ``strict``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import pyarrow as pa

from cluster.errors import NotServing, PartialResult, StaleEpoch
from cluster.membership import ClusterMap
from cluster.reader import Reader, merge_aggregates, merge_topk
from query.approx import DistinctAnswer, QuantileAnswer, TopAnswer
from query.approx import merge_topk as merge_approx_topk
from query.approxengine import (
    ApproxConfig,
    ApproxEngine,
    ExactQuantiles,
    from_wire,
    merge_distinct,
    merge_quantiles,
    to_wire,
)
from query.engine import Aggregate, Engine, TopEntry
from query.sandbox import Sandbox, SqlResult, SqlStream

__all__ = ["Answer", "Answers"]


@dataclass(frozen=True)
class Answer:
    """An answer with its completeness: ``partial`` when some shards could not be read."""

    value: object
    partial: bool = False
    missing_shards: tuple[int, ...] = ()


class Answers:
    """Answers reads for one node; thread-safe as far as the engine, reader and sandbox are."""

    def __init__(
        self,
        me: str,
        cmap: Callable[[], ClusterMap],
        serving: Callable[[], bool],
        engine: Engine,
        approx: ApproxEngine,
        reader: Reader,
        sandbox: Sandbox,
        config: ApproxConfig,
    ) -> None:
        self.me = me
        self._cmap = cmap
        self._serving = serving
        self.engine = engine
        self.approx = approx
        self.reader = reader
        self.sandbox = sandbox
        self.config = config

    def _local(self, shards: Sequence[int] | None) -> bool:
        return shards is not None or self._cmap().is_single(self.me)

    # -- exact count, sum and top-k ---------------------------------------------------------------

    def aggregate(
        self, category: str, start: int, end: int, shards: Sequence[int] | None = None, *, strict: bool = False
    ) -> Answer:
        """Exact count and sum over the cluster (or over ``shards`` of this node only)."""
        if self._local(shards):
            return Answer(self.engine.aggregate(category, start, end, shards))
        g = self.reader.gather(
            {"kind": "aggregate", "category": category, "start": start, "end": end},
            lambda sh: self.engine.aggregate(category, start, end, sh),
            lambda d: Aggregate(int(d["count"]), int(d["sum"])),
        )
        return self.complete(Answer(merge_aggregates(g.parts), bool(g.missing), g.missing), strict)

    def topk(
        self,
        category: str,
        start: int,
        end: int,
        k: int,
        shards: Sequence[int] | None = None,
        *,
        strict: bool = False,
        approx: bool = False,
    ) -> Answer:
        """Exact top-k over the cluster (or over ``shards`` of this node only); with ``approx``
        a ``query.approx.TopAnswer`` from sketches, with per-producer bounds."""
        if approx:
            return self.topk_approx(category, start, end, k, shards, strict=strict)
        if self._local(shards):
            return Answer(self.engine.topk(category, start, end, k, shards))
        self.engine.topk(category, 0, 0, k)  # validates k before any peer is asked
        g = self.reader.gather(
            {"kind": "topk", "category": category, "start": start, "end": end, "k": k},
            lambda sh: self.engine.topk(category, start, end, k, sh),
            lambda d: [TopEntry(str(p), int(c)) for p, c in d["top"]],
        )
        return self.complete(Answer(merge_topk(g.parts, k), bool(g.missing), g.missing), strict)

    # -- distinct, quantiles, approximate top-k (issue 7) -----------------------------------------

    def distinct(
        self,
        category: str,
        start: int,
        end: int,
        approx: bool = False,
        shards: Sequence[int] | None = None,
        *,
        strict: bool = False,
    ) -> Answer:
        """Distinct producers: an ``int``, or with ``approx`` a ``query.approx.DistinctAnswer``."""
        if self._local(shards):
            return Answer(self.approx.distinct(category, start, end, approx=approx, shards=shards))
        g = self.reader.gather(
            {"kind": "distinct", "category": category, "start": start, "end": end, "approx": approx},
            lambda sh: self.distinct_partial(category, start, end, approx, sh),
            lambda d: d,
        )
        return self.complete(Answer(self.merge_distinct_partials(g.parts, approx), bool(g.missing), g.missing), strict)

    def quantiles(
        self,
        category: str,
        start: int,
        end: int,
        qs: Sequence[float],
        approx: bool = False,
        shards: Sequence[int] | None = None,
        *,
        strict: bool = False,
    ) -> Answer:
        """Quantiles of ``value``: ``ExactQuantiles``, or with ``approx`` a ``QuantileAnswer``."""
        if self._local(shards):
            return Answer(self.approx.quantiles(category, start, end, qs, approx=approx, shards=shards))
        g = self.reader.gather(
            {"kind": "quantiles", "category": category, "start": start, "end": end, "approx": approx},
            lambda sh: self.quantiles_partial(category, start, end, approx, sh),
            lambda d: d,
        )
        merged = self.merge_quantiles_partials(g.parts, qs, approx)
        return self.complete(Answer(merged, bool(g.missing), g.missing), strict)

    def topk_approx(
        self,
        category: str,
        start: int,
        end: int,
        k: int,
        shards: Sequence[int] | None = None,
        *,
        strict: bool = False,
    ) -> Answer:
        """Approximate top-k from frequent-items sketches: a ``query.approx.TopAnswer``."""
        if self._local(shards):
            return Answer(self.approx.topk(category, start, end, k, shards))
        g = self.reader.gather(
            {"kind": "topk_approx", "category": category, "start": start, "end": end, "k": k},
            lambda sh: self.topk_approx_partial(category, start, end, k, sh),
            lambda d: d,
        )
        return self.complete(Answer(self.merge_topk_partials(g.parts, k), bool(g.missing), g.missing), strict)

    # -- partials and their merges ----------------------------------------------------------------

    def distinct_partial(
        self, category: str, start: int, end: int, approx: bool, shards: Sequence[int]
    ) -> dict[str, Any]:
        """This node's part of ``distinct`` over ``shards``, JSON-ready; see ``merge_distinct_partials``."""
        return to_wire(self.approx.distinct_partial(category, start, end, approx, shards))

    def quantiles_partial(
        self, category: str, start: int, end: int, approx: bool, shards: Sequence[int]
    ) -> dict[str, Any]:
        """This node's part of ``quantiles`` over ``shards``, JSON-ready (exact: a histogram of
        the values in range, one entry per distinct value); see ``merge_quantiles_partials``."""
        return to_wire(self.approx.quantiles_partial(category, start, end, approx, shards))

    def topk_approx_partial(self, category: str, start: int, end: int, k: int, shards: Sequence[int]) -> dict[str, Any]:
        """This node's approximate top-k over ``shards``, JSON-ready; see ``merge_topk_partials``."""
        return to_wire(self.approx.topk_partial(category, start, end, k, shards))

    def merge_distinct_partials(self, parts: Sequence[dict[str, Any]], approx: bool) -> int | DistinctAnswer:
        partials = [from_wire(p) for p in parts]
        return merge_distinct([p for p in partials if not isinstance(p, dict)], approx, self.config.sketch)

    def merge_quantiles_partials(
        self, parts: Sequence[dict[str, Any]], qs: Sequence[float], approx: bool
    ) -> ExactQuantiles | QuantileAnswer:
        tables = [p for p in map(from_wire, parts) if isinstance(p, pa.Table)]
        return merge_quantiles(tables, qs, approx, self.config.sketch)

    def merge_topk_partials(self, parts: Sequence[dict[str, Any]], k: int) -> TopAnswer:
        return merge_approx_topk([cast(TopAnswer, p) for p in map(from_wire, parts) if isinstance(p, dict)], k)

    @staticmethod
    def complete(ans: Answer, strict: bool) -> Answer:
        """``ans`` as it is, unless ``strict`` and it is partial: then ``PartialResult``."""
        if strict and ans.partial:
            raise PartialResult(f"{len(ans.missing_shards)} shard(s) have no live replica", list(ans.missing_shards))
        return ans

    def answer_peer(self, request: dict[str, Any]) -> dict[str, Any]:
        """A peer's scatter-gather request over some of our shards (``/internal/query``)."""
        answer = self._answer_peer(request, duckdb_ok=True)
        assert answer is not None
        return answer

    def answer_peer_from_indexes(self, request: dict[str, Any]) -> dict[str, Any] | None:
        """``answer_peer`` for a count, sum or top-k that the live buffer and the parts'
        indexes answer alone (no DuckDB: a fraction of a millisecond to a few); None for
        anything else, which the caller then hands to ``answer_peer`` on a thread. Refuses
        what ``answer_peer`` refuses."""
        return self._answer_peer(request, duckdb_ok=False)

    def _answer_peer(self, request: dict[str, Any], duckdb_ok: bool) -> dict[str, Any] | None:
        kind, cat, start, end, shards = self._peer_request(request)
        if kind == "topk":
            topk = self.engine.topk if duckdb_ok else self.engine.topk_from_indexes
            top = topk(cat, start, end, int(request["k"]), shards)
            return None if top is None else {"top": [[t.producer_id, t.count] for t in top]}
        if kind in ("distinct", "quantiles", "topk_approx"):
            if not duckdb_ok:
                return None  # sketches and exact values: a thread's work
            if kind == "distinct":
                return self.distinct_partial(cat, start, end, bool(request.get("approx")), shards)
            if kind == "quantiles":
                return self.quantiles_partial(cat, start, end, bool(request.get("approx")), shards)
            return self.topk_approx_partial(cat, start, end, int(request["k"]), shards)
        aggregate = self.engine.aggregate if duckdb_ok else self.engine.aggregate_from_indexes
        agg = aggregate(cat, start, end, shards)
        return None if agg is None else {"count": agg.count, "sum": agg.sum}

    def _peer_request(self, request: dict[str, Any]) -> tuple[object, str, int, int, list[int]]:
        """(kind, category, start, end, shards) of a peer's request, once we may answer it."""
        if not self._serving():
            raise NotServing(f"{self.me} is catching up and does not answer reads yet")
        epoch, mine = int(request.get("epoch", 0)), self._cmap().epoch
        if epoch < mine:
            raise StaleEpoch(f"routed by map epoch {epoch}; this node has {mine}", mine)
        shards = [int(s) for s in request["shards"]]
        cat, start, end = str(request["category"]), int(request["start"]), int(request["end"])
        return request.get("kind"), cat, start, end, shards

    # -- SQL (this node's data; read-only sandbox) ------------------------------------------------

    def sql(self, sql: str, *, query_id: str | None = None, max_rows: int | None = None) -> SqlResult:
        """Run one read-only statement over the views ``events``, ``rollup_minute`` and
        ``rollup_producer_hour`` of this node's data (parts + live buffer)."""
        with self.engine.snapshot() as snap:
            return self.sandbox.run(sql, self.engine.define_views(snap), query_id=query_id, max_rows=max_rows)

    @contextlib.contextmanager
    def sql_stream(self, sql: str, *, query_id: str | None = None, max_rows: int | None = None) -> Iterator[SqlStream]:
        """``sql`` as a stream of record batches, for exports that never hold the whole result."""
        with (
            self.engine.snapshot() as snap,
            self.sandbox.stream(sql, self.engine.define_views(snap), query_id=query_id, max_rows=max_rows) as stream,
        ):
            yield stream

    def sql_cancel(self, query_id: str) -> bool:
        return self.sandbox.cancel(query_id)
