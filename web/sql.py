"""SQL over HTTP and Parquet export: ``POST /v1/sql``, ``POST /v1/sql/cancel``,
``GET /v1/tables``, ``GET /v1/export``.

JSON answers are capped (``truncated: true`` beyond the cap); file formats stream record
batches as they come, so an export never holds the whole result in memory. At most
``max_concurrent`` SQL queries run at once (each has its own memory limit); beyond, 503.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import msgspec
import pyarrow as pa
from litestar import MediaType, Response, get, post
from litestar.handlers import BaseRouteHandler
from litestar.response import Stream

from cluster.node import Node
from cluster.sqlgather import SqlGather
from ingest.errors import Overloaded
from query import results
from query.errors import InvalidQuery
from query.timerange import parse_range
from storage.schema import EVENT_SCHEMA

__all__ = ["sql_routes"]

VIEWS = ("events", "rollup_minute", "rollup_producer_hour")
# DuckDB hands rows back with nullable fields; the file's schema must say the same.
EXPORT_SCHEMA = pa.schema([f.with_nullable(True) for f in EVENT_SCHEMA])


def _filename(ext: str, stem: str = "tributary") -> str:
    return f"{stem}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.{ext}"


def _format(fmt: str) -> str:
    if fmt not in results.FORMATS:
        raise InvalidQuery(f"format must be one of {', '.join(results.FORMATS)}; got {fmt!r}")
    return fmt


class _Slots:
    """A non-blocking counting gate: take a slot or be told the node is busy."""

    def __init__(self, n: int) -> None:
        self._sem = threading.BoundedSemaphore(n)

    def __enter__(self) -> None:
        if not self._sem.acquire(blocking=False):
            raise Overloaded("too many SQL queries running; retry shortly", retry_after=1)

    def __exit__(self, *exc: object) -> None:
        self._sem.release()


def sql_routes(node: Node, max_concurrent: int = 4) -> list[BaseRouteHandler]:
    slots = _Slots(max_concurrent)
    gather = SqlGather(node)
    missing_of: dict[int, tuple[int, ...]] = {}

    def _stream(
        sql: str, fmt: str, query_id: str | None, max_rows: int | None, cluster: bool, strict: bool
    ) -> Iterator[bytes]:
        if not cluster:
            with slots, node.sql_stream(sql, query_id=query_id, max_rows=max_rows) as s:
                yield from results.encode_batches(fmt, s.schema, s)
            return
        with slots, gather.stream(sql, query_id=query_id, max_rows=max_rows, strict=strict) as (c, missing):
            missing_of[threading.get_ident()] = missing
            yield from results.encode_batches(fmt, c.schema, c)

    @post("/v1/sql", status_code=200, sync_to_thread=True, summary="Run one read-only SQL statement")
    def run_sql(data: dict[str, Any]) -> Response[Any]:
        """Body ``{"sql": "...", "format": "json|arrow|csv|parquet", "query_id": "...", "max_rows": n}``.

        Views: ``events`` (raw rows, live buffer included), ``rollup_minute``,
        ``rollup_producer_hour``. JSON answers ``{"columns", "rows", "row_count", "truncated",
        "took_ms", "query_id"}``; other formats stream the file.

        On a cluster, ``"scope": "cluster"`` (the default) answers over every shard: the query is
        split into a per-node part and a merge part (``query.sqlsplit``; 422 when it cannot be)
        and the JSON answer adds ``"partial"`` and ``"missing_shards"`` (503 with ``"strict": true``
        when shards are missing). ``"scope": "node"`` reads the receiving node's data alone."""
        sql = data.get("sql")
        if not isinstance(sql, str) or not sql.strip():
            raise InvalidQuery("sql is required: a non-empty string")
        fmt = _format(str(data.get("format") or "json"))
        query_id = data.get("query_id")
        if query_id is not None and not isinstance(query_id, str):
            raise InvalidQuery("query_id must be a string")
        max_rows = data.get("max_rows")
        if max_rows is not None and (not isinstance(max_rows, int) or isinstance(max_rows, bool) or max_rows < 0):
            raise InvalidQuery("max_rows must be a non-negative integer")
        scope = data.get("scope") or "cluster"
        if scope not in ("cluster", "node"):
            raise InvalidQuery(f"scope must be cluster or node; got {scope!r}")
        strict = data.get("strict", False)
        if not isinstance(strict, bool):
            raise InvalidQuery("strict must be true or false")
        cluster = scope == "cluster" and not node.cmap.is_single(node.me)
        if fmt == "json":
            with slots:
                if not cluster:
                    return Response(results.to_json(node.sql(sql, query_id=query_id, max_rows=max_rows)),
                                    media_type=MediaType.JSON)  # fmt: skip
                g = gather.run(sql, query_id=query_id, max_rows=max_rows, strict=strict)
            # to_json's object, with the completeness of a cluster answer appended
            extra = msgspec.json.encode({"partial": bool(g.missing), "missing_shards": list(g.missing)})
            return Response(results.to_json(g.result)[:-1] + b"," + extra[1:], media_type=MediaType.JSON)
        # Check and open before answering 200, so a refused query still gets its 4xx.
        chunks = _stream(sql, fmt, query_id, max_rows, cluster, strict)
        first = next(chunks, b"")
        missing = missing_of.pop(threading.get_ident(), ())

        def body() -> Iterator[bytes]:
            yield first
            yield from chunks

        return Stream(
            body(),
            media_type=results.MEDIA_TYPES[fmt],
            headers={
                "Content-Disposition": f'attachment; filename="{_filename(results.FILE_EXTENSIONS[fmt])}"',
                **({"X-Tributary-Missing-Shards": ",".join(map(str, missing))} if missing else {}),
            },
        )

    @post("/v1/sql/cancel", status_code=200, sync_to_thread=False, summary="Cancel a running SQL query")
    def cancel_sql(data: dict[str, Any]) -> dict[str, Any]:
        query_id = data.get("query_id")
        if not isinstance(query_id, str) or not query_id:
            raise InvalidQuery("query_id is required")
        return {"cancelled": node.sql_cancel(query_id), "query_id": query_id}

    @get("/v1/tables", sync_to_thread=True, summary="The SQL views and their columns")
    def tables() -> dict[str, Any]:
        out = []
        for name in VIEWS:
            r = node.sql(f"SELECT * FROM {name} LIMIT 0")
            cols = [{"name": n, "type": t} for n, t in zip(r.table.column_names, r.column_types, strict=True)]
            out.append({"name": name, "columns": cols})
        return {"tables": out}

    @get("/v1/export", sync_to_thread=True, summary="Stream the raw events of a range as a file")
    def export(start: str, end: str, category: str | None = None, format: str = "parquet") -> Stream:
        """Rows of ``[start, end)`` (one category, or all) as Parquet, CSV or Arrow IPC, streamed."""
        fmt = _format(format)
        if fmt == "json":
            raise InvalidQuery("export formats are parquet, csv and arrow")
        s, e = parse_range(start, end, now_ns=time.time_ns())
        batches = node.engine.export(category or None, s, e)
        chunks = results.encode_batches(fmt, EXPORT_SCHEMA, batches)
        stem = f"tributary-{category}" if category else "tributary"
        return Stream(
            chunks,
            media_type=results.MEDIA_TYPES[fmt],
            headers={"Content-Disposition": f'attachment; filename="{_filename(results.FILE_EXTENSIONS[fmt], stem)}"'},
        )

    return [run_sql, cancel_sql, tables, export]
