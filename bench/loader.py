"""Tributary through its HTTP API: concurrent ingest clients and the query runner.

Ingest: the workload's Parquet row groups are cut into batches (``plan``), each encoded once
into a body file (Arrow IPC stream, JSON array or NDJSON; cached beside the workload). A pool of
spawned client processes posts the bodies to ``POST /v1/events`` with an ``Idempotency-Key``,
honouring ``Retry-After`` on 429/503. The clock covers the posting only: encoding happens
before it, so on a 2-core machine the figure is the server's rate, not the Python client's
(the issue-8 reference measured that client ceiling separately). Every batch must answer
``accepted == rows`` and ``duplicate == false`` (unless it was retried), or the run aborts.
A batch with a ``shift_ns`` (``bench.scale``: the same day, another date) is shifted by the
client as it posts: the cached body is decoded, its timestamps moved and the body encoded again
(1-3 ms of client CPU per 100k-row Arrow batch), so one cached copy serves every shift.

Queries: one keep-alive client, sequential, wall time per request including JSON decoding.
An error answer or a ``partial`` one is recorded as the answer, so it shows up as a mismatch
against the peers instead of stopping the run.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bench.queries import TOPK, Answer, Query
from storage.schema import EVENT_SCHEMA

__all__ = [
    "FORMATS",
    "Batch",
    "ClientPool",
    "IngestResult",
    "QueryRun",
    "encode",
    "plan",
    "run_queries",
    "shift_body",
]

FORMATS = {
    "arrow": "application/vnd.apache.arrow.stream",
    "json": "application/json",
    "ndjson": "application/x-ndjson",
}
RETRY_DEADLINE_S = 300.0
WARMUP_QUERIES = 10


@dataclass(frozen=True)
class Batch:
    """One HTTP request: some row groups of one Parquet chunk, encoded once into ``body``.

    A nonzero ``shift_ns`` is added to every timestamp when the batch is posted (Arrow only):
    the body file keeps the unshifted events.
    """

    path: Path
    row_groups: tuple[int, ...]
    rows: int
    fmt: str
    key: str
    body: Path
    shift_ns: int = 0


@dataclass(frozen=True)
class IngestResult:
    fmt: str
    events: int
    batches: int
    seconds: float
    body_bytes: int
    retries: int
    clients: int

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def plan(
    paths: list[Path], first_row: int, rows: int, batch_rows: int, fmt: str, bodies: Path, label: str
) -> list[Batch]:
    """Batches covering workload rows ``[first_row, first_row + rows)`` in order, as ``fmt``.

    Row groups are never split and batches never cross chunk files, so ``first_row``, ``rows``
    and ``batch_rows`` should be multiples of the row-group size. Bodies live under ``bodies``.
    """
    out: list[Batch] = []
    row = 0
    end = first_row + rows

    def cut(path: Path, groups: list[int], size: int) -> None:
        name = f"{path.stem}-{groups[0]:04d}-{size}"
        out.append(Batch(path, tuple(groups), size, fmt, f"{label}-{name}", bodies / fmt / f"{name}.{fmt}"))

    for path in paths:
        meta = pq.ParquetFile(path).metadata
        groups: list[int] = []
        size = 0
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            if first_row <= row < end:
                groups.append(g)
                size += n
                if size >= batch_rows:
                    cut(path, groups, size)
                    groups, size = [], 0
            row += n
        if groups:
            cut(path, groups, size)
    return out


# --- client processes -------------------------------------------------------------------------

_client: httpx.Client | None = None


def _init_client(url: str) -> None:
    global _client
    _client = httpx.Client(base_url=url, timeout=httpx.Timeout(120.0, connect=10.0))


def _ready(_: int) -> bool:
    time.sleep(0.05)  # long enough that the tiny tasks spread over every worker
    return True


def encode(table: pa.Table, fmt: str) -> bytes:
    """The request body for ``table`` in ``fmt`` (vectorised: Arrow IPC or Polars' JSON writers)."""
    if fmt == "arrow":
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, EVENT_SCHEMA) as writer:
            writer.write_table(table)
        return bytes(sink.getvalue().to_pybytes())
    import polars as pl

    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    text = frame.write_json() if fmt == "json" else frame.write_ndjson()
    return text.encode()


def shift_body(body: bytes, shift_ns: int) -> bytes:
    """The Arrow IPC stream ``body`` with ``shift_ns`` added to every ``timestamp``; the other
    columns are passed through as they are (no copy before the encode)."""
    table = pa.ipc.open_stream(body).read_all()
    index = table.schema.get_field_index("timestamp")
    shifted = pc.add(table.column(index), pa.scalar(shift_ns, pa.int64()))
    return encode(table.set_column(index, table.schema.field(index), shifted), "arrow")


def _prepare(batch: Batch) -> int:
    """Writes the batch's body file unless it exists (atomically); returns its size."""
    if not batch.body.exists():
        table = pq.ParquetFile(batch.path).read_row_groups(list(batch.row_groups))
        body = encode(table.cast(EVENT_SCHEMA).combine_chunks(), batch.fmt)
        batch.body.parent.mkdir(parents=True, exist_ok=True)
        tmp = batch.body.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(body)
        tmp.rename(batch.body)
    return batch.body.stat().st_size


def _post(batch: Batch) -> tuple[int, int, int]:
    """Posts one batch; returns (rows, body bytes, retries). Raises on any refusal."""
    assert _client is not None
    body = batch.body.read_bytes()
    if batch.shift_ns:
        body = shift_body(body, batch.shift_ns)
    headers = {"Content-Type": FORMATS[batch.fmt], "Idempotency-Key": batch.key}
    retries = 0
    deadline = time.monotonic() + RETRY_DEADLINE_S
    while True:
        response = _client.post("/v1/events", content=body, headers=headers)
        if response.status_code in (429, 503) and time.monotonic() < deadline:
            retries += 1
            time.sleep(min(float(response.headers.get("Retry-After", "0.1") or 0.1), 5.0))
            continue
        break
    if not response.is_success:
        raise RuntimeError(f"{batch.key}: HTTP {response.status_code}: {response.text[:500]}")
    answer = response.json()
    # A retry may find its batch stored (a 503 is "not acknowledged", not "not stored"): then it
    # is answered as a duplicate, which acknowledges it. A first attempt never is.
    if answer.get("accepted") != batch.rows or (answer.get("duplicate") and retries == 0):
        raise RuntimeError(f"{batch.key}: sent {batch.rows} rows, server answered {answer}")
    return batch.rows, len(body), retries


class ClientPool:
    """``clients`` spawned ingest processes, started once and reused for every format.

    ``with ClientPool(url, 3) as pool: pool.ingest(batches, "arrow")``.
    """

    def __init__(self, url: str, clients: int) -> None:
        self.clients = clients
        self._pool = multiprocessing.get_context("spawn").Pool(clients, initializer=_init_client, initargs=(url,))
        self._pool.map(_ready, range(clients * 4), chunksize=1)  # every worker imported

    def prepare(self, batches: list[Batch]) -> int:
        """Encodes every batch's body not yet on disk, in parallel; returns the total body bytes."""
        return sum(self._pool.imap_unordered(_prepare, batches, chunksize=1))

    def ingest(self, batches: list[Batch]) -> IngestResult:
        """Posts every batch (all of one format); the clock covers the posting only."""
        t0 = time.perf_counter()
        events = body_bytes = retries = 0
        for rows, size, tries in self._pool.imap_unordered(_post, batches, chunksize=1):
            events += rows
            body_bytes += size
            retries += tries
        seconds = time.perf_counter() - t0
        return IngestResult(
            batches[0].fmt if batches else "",
            events,
            len(batches),
            seconds,
            body_bytes,
            retries,
            self.clients,
        )

    def close(self) -> None:
        self._pool.terminate()
        self._pool.join()

    def __enter__(self) -> ClientPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- queries ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueryRun:
    """What the query phase measured: answers, wall latencies, the server's own ``took_ms``
    (NaN where absent), and the HTTP floor (wall latency of ``GET /health``)."""

    answers: list[Answer]
    latencies_ms: list[float]
    took_ms: list[float]
    floor_ms: list[float]


def _answer(client: httpx.Client, q: Query) -> tuple[Answer, float]:
    params: dict[str, str | int] = {"category": q.category, "start": q.start, "end": q.end}
    if q.kind == "topk":
        params["k"] = TOPK
    response = client.get(f"/v1/{q.kind}", params=params)
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:300]}", math.nan
    body = response.json()
    took = float(body.get("took_ms", math.nan))
    if body.get("partial"):
        return f"partial answer, missing shards {body.get('missing_shards')}", took
    if q.kind == "topk":
        return tuple((str(p["producer_id"]), int(p["count"])) for p in body["producers"]), took
    return int(body["value"]), took


def run_queries(url: str, queries: list[Query], floor_requests: int = 50) -> QueryRun:
    """Answers every query, after ``WARMUP_QUERIES`` unmeasured, then measures the HTTP floor."""
    return run_side_by_side([url], queries, floor_requests)[0]


def run_side_by_side(urls: list[str], queries: list[Query], floor_requests: int = 50) -> list[QueryRun]:
    """``run_queries`` on several servers at once, interleaved: each query is asked of every
    server in turn (the order reversed every other query) before the next, so a ratio between
    two servers compares the same moments of a noisy machine, not two stretches of minutes."""
    runs = [QueryRun([], [], [], []) for _ in urls]
    clients = [httpx.Client(base_url=url, timeout=60.0) for url in urls]
    try:
        for q in queries[:WARMUP_QUERIES]:
            for client in clients:
                _answer(client, q)
        for i, q in enumerate(queries):
            for j in range(len(urls)) if i % 2 == 0 else reversed(range(len(urls))):
                t0 = time.perf_counter()
                answer, took = _answer(clients[j], q)
                runs[j].latencies_ms.append((time.perf_counter() - t0) * 1000)
                runs[j].answers.append(answer)
                runs[j].took_ms.append(took)
        for _ in range(floor_requests):
            for client, run in zip(clients, runs, strict=True):
                t0 = time.perf_counter()
                client.get("/health")
                run.floor_ms.append((time.perf_counter() - t0) * 1000)
    finally:
        for client in clients:
            client.close()
    return runs
