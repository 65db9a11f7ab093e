"""Cluster-wide SQL: scatter a query's per-node part, gather the partials, merge them.

``query.sqlsplit`` splits the query; here every shard is planned onto one live replica (the
reader's ``plan``: this node first, then as few nodes as possible), each node runs the per-node
part over its shards only (``Engine.define_views(snap, shards)``) in its own sandbox and sends the
partial back as Arrow IPC (``POST /internal/sql``), and the merge part runs in a sandbox of its own
over the concatenated partials. A node that fails or times out has its shards moved to another
replica; shards left with none are reported in ``missing_shards`` (``partial``), never guessed, and
with ``strict`` raise ``PartialResult``. Errors of the query itself (a binder error, a time limit)
are the same on every node and are raised at once, not retried elsewhere.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
import structlog

from cluster.errors import NotServing, PartialResult, PeerError, StaleEpoch
from cluster.reader import plan
from query.errors import InvalidQuery, QueryError, QueryTimeout, SqlNotAllowed, SqlNotSplittable
from query.sandbox import Sandbox, SqlResult, SqlStream, ViewDefiner
from query.sqlsplit import PARTIALS, Split, split_sql

if TYPE_CHECKING:
    from cluster.node import Node

__all__ = ["Gathered", "SqlGather", "answer_partial", "from_ipc", "to_ipc"]

log = structlog.get_logger("tributary.sqlgather")


def to_ipc(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue()


def from_ipc(body: bytes) -> pa.Table:
    try:
        return pa.ipc.open_stream(pa.py_buffer(body)).read_all()
    except pa.ArrowException as e:
        raise InvalidQuery(f"a peer's partial result is unreadable: {e}") from e


def _partial_table(node: Node, node_sql: str, shards: Sequence[int], query_id: str | None = None) -> pa.Table:
    """This node's part of a cluster-wide query over ``shards``: every row of it, or an error
    (a part cut at the row cap would make the merge wrong)."""
    cap = node.sandbox.config.max_export_rows
    with (
        node.engine.snapshot() as snap,
        node.sandbox.stream(
            node_sql, node.engine.define_views(snap, shards), query_id=query_id, max_rows=cap,
            timeout_s=node.sandbox.config.timeout_s,
        ) as s,
    ):  # fmt: skip
        table = pa.Table.from_batches(list(s), schema=s.schema)
        if s.truncated:
            raise InvalidQuery(
                f'a node\'s part of this query is over {cap} rows; narrow it, or run it with "scope": "node"'
            )
    return table


def _over(partials: pa.Table) -> ViewDefiner:
    def define(con: duckdb.DuckDBPyConnection) -> None:
        con.register(PARTIALS, partials)

    return define


def answer_partial(node: Node, request: dict[str, Any]) -> bytes:
    """A peer's request ``{"sql", "shards", "epoch"}`` (``POST /internal/sql``): the per-node
    part over our copy of those shards, as an Arrow IPC stream."""
    if not node.serving:
        raise NotServing(f"{node.me} is catching up and does not answer reads yet")
    epoch = int(request.get("epoch", 0))
    if epoch < node.cmap.epoch:
        raise StaleEpoch(f"routed by map epoch {epoch}; this node has {node.cmap.epoch}", node.cmap.epoch)
    sql = request.get("sql")
    if not isinstance(sql, str):
        raise InvalidQuery("sql is required")
    shards = [int(s) for s in request["shards"]]
    return to_ipc(_partial_table(node, sql, shards))


def _query_error(e: PeerError) -> QueryError | None:
    """A peer's refusal of the query itself (the same on every replica), as our own error."""
    detail = e.body.get("detail", str(e)) if isinstance(e.body, dict) else str(e)
    if e.status == 408:
        return QueryTimeout(str(detail))
    if e.status == 403:
        return SqlNotAllowed(str(detail))
    if e.status in (400, 422):
        return InvalidQuery(str(detail))
    return None


@dataclass(frozen=True)
class Gathered:
    result: SqlResult
    missing: tuple[int, ...]


class SqlGather:
    """Cluster-wide ``POST /v1/sql`` for one node (``scope: cluster``). Thread-safe."""

    def __init__(self, node: Node) -> None:
        self.node = node
        cfg = node.sandbox.config
        # The merge reads only the partials, never the views.
        self.merger = Sandbox(dataclasses.replace(cfg, views=(PARTIALS,)))

    def run(
        self, sql: str, *, query_id: str | None = None, max_rows: int | None = None, strict: bool = False
    ) -> Gathered:
        """The query's answer over every shard of the cluster (JSON-sized: capped like ``Node.sql``)."""
        t0 = time.perf_counter()
        cfg = self.node.sandbox.config
        cap = cfg.max_rows if max_rows is None else max(0, min(max_rows, cfg.max_rows))
        split = split_sql(sql, row_cap=cap)
        if split.local:
            return Gathered(self.node.sql(sql, query_id=query_id, max_rows=max_rows), ())
        partials, missing, shape = self._gather(split, strict, query_id)
        merge_sql = split.merge_sql(shape.table.column_names, shape.column_types)
        result = self.merger.run(merge_sql, _over(partials), max_rows=cap)
        took = round((time.perf_counter() - t0) * 1000, 3)
        return Gathered(dataclasses.replace(result, took_ms=took, query_id=query_id or result.query_id), missing)

    @contextlib.contextmanager
    def stream(
        self, sql: str, *, query_id: str | None = None, max_rows: int | None = None, strict: bool = False
    ) -> Iterator[tuple[SqlStream, tuple[int, ...]]]:
        """The answer as a stream of record batches (a file format), with the missing shards.
        The partials are gathered first; only the merge streams."""
        cap = self.node.sandbox.config.max_export_rows
        cap = cap if max_rows is None else max(0, min(max_rows, cap))
        split = split_sql(sql, row_cap=cap)
        if split.local:
            with self.node.sql_stream(sql, query_id=query_id, max_rows=max_rows) as s:
                yield s, ()
            return
        partials, missing, shape = self._gather(split, strict, query_id)
        merge_sql = split.merge_sql(shape.table.column_names, shape.column_types)
        with self.merger.stream(merge_sql, _over(partials), query_id=query_id, max_rows=cap) as s:
            yield s, missing

    # -- scatter-gather ---------------------------------------------------------------------------

    def _shape(self, sql: str) -> SqlResult:
        """The query's column names and DuckDB types on one node: the query over empty views."""
        node = self.node
        with node.engine.snapshot() as snap:
            return node.sandbox.run(sql, node.engine.define_views(snap, []), max_rows=0)

    def _eligible(self, peer: str) -> bool:
        node = self.node
        if peer == node.me:
            return node.serving
        # A peer we still hold hints for has missed writes: not read from until they land.
        return node.detector.is_serving(peer) and not node.hints.count_for(peer)

    def _gather(self, split: Split, strict: bool, query_id: str | None) -> tuple[pa.Table, tuple[int, ...], SqlResult]:
        node = self.node
        shape = self._shape(split.sql)
        cmap = node.cmap
        tried: dict[int, set[str]] = {}

        def candidates(s: int) -> list[str]:
            return [n for n in cmap.read_replicas(s) if n not in tried.get(s, ()) and self._eligible(n)]

        todo = list(range(cmap.shards))
        parts: list[pa.Table] = []
        missing: list[int] = []
        for _ in range(max(1, cmap.rf) + 1):
            assignment, lost = plan(todo, candidates, node.me)
            missing += lost
            if not assignment:
                break
            futures: dict[str, Future[pa.Table]] = {}
            for peer, shards in assignment.items():
                for s in shards:
                    tried.setdefault(s, set()).add(peer)
                if peer == node.me:
                    futures[peer] = node.pool.submit(_partial_table, node, split.node_sql, shards, query_id)
                else:
                    body = {"sql": split.node_sql, "shards": shards, "epoch": cmap.epoch}
                    futures[peer] = node.pool.submit(self._remote, peer, body)
            todo = []
            for peer, fut in futures.items():
                try:
                    parts.append(fut.result())
                except QueryError:
                    raise
                except Exception as e:
                    log.info("replica failed a SQL part; trying another", replica=peer, error=str(e)[:200])
                    todo += assignment[peer]
            if not todo:
                break
        missing = sorted(set(missing + todo))
        if strict and missing:
            raise PartialResult(f"{len(missing)} shard(s) have no live replica", missing)
        if not parts:  # no replica answered: an empty partial of the right shape
            parts.append(_partial_table(node, split.node_sql, []))
        try:
            table = pa.concat_tables(parts, promote_options="permissive")
        except (pa.ArrowException, duckdb.Error) as e:
            raise SqlNotSplittable(f"the nodes' partial results do not line up: {e}") from e
        return table, tuple(missing), shape

    def _remote(self, peer: str, body: dict[str, Any]) -> pa.Table:
        node = self.node
        try:
            return from_ipc(node.peers.sql(peer, body, timeout=node.sandbox.config.timeout_s + 2))
        except PeerError as e:
            err = _query_error(e)
            if err is not None:
                raise err from e
            if e.status == 0:
                node.detector.suspect(peer)
            elif e.status == 503:
                node.detector.not_serving(peer)
            raise
