"""/metrics: the node's own counters read at scrape time, ingest outcomes counted from answers,
and names that follow the Prometheus conventions."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar, Request, get, post
from litestar.types import ReceiveMessage
from prometheus_client.parser import text_string_to_metric_families

from cluster.node import Node, NodeConfig
from ingest.errors import IdempotencyConflict, MalformedBody, Overloaded, PayloadTooLarge
from ingest.wal import WalConfig
from tests.eventgen import T0, random_events
from web.metrics import Metrics
from web.problem import problem_handlers


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _value(text: str, name: str, **labels: str) -> float:
    return _samples(text)[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def node(tmp_path: Path) -> Any:
    n = Node(NodeConfig(data_dir=tmp_path, wal=WalConfig(fsync=False)))
    yield n
    n.close()


def test_the_node_collector_reads_the_lower_layers_counters(node: Node) -> None:
    metrics = Metrics(node)
    before = metrics.render().decode()
    assert _value(before, "tributary_stored_events_total") == 0
    assert _value(before, "tributary_wal_fsync_seconds_count") == 0
    rng = random.Random(3)
    for _ in range(4):
        node.ingest(random_events(rng, 250, start=T0))
    live = metrics.render().decode()
    assert _value(live, "tributary_stored_events_total") == 1000
    assert _value(live, "tributary_stored_batches_total") == 4
    assert _value(live, "tributary_buffer_rows") == 1000
    assert _value(live, "tributary_buffer_bytes") > 0
    assert _value(live, "tributary_wal_fsync_seconds_count") >= 1
    node.persist_now()
    node.ingest(random_events(rng, 10, start=T0))
    node.persist_now()
    node.compact_now()
    after = metrics.render().decode()
    assert _value(after, "tributary_buffer_rows") == 0
    assert _value(after, "tributary_persisted_rows_total") == 1010
    assert _value(after, "tributary_persist_seconds_count") == 2
    assert _value(after, "tributary_persist_seconds_sum") > 0
    assert _value(after, "tributary_compaction_seconds_count") >= 1
    assert _value(after, "tributary_parts") == len(node.manifest.state.parts)
    assert _value(after, "tributary_retention_dropped_hours_total") == 0
    node.holdings.drain()  # stored slices are indexed lazily (by readers, or the upkeep thread)
    indexed = metrics.render().decode()
    assert _value(indexed, "tributary_slice_index_bytes") == node.holdings.nbytes > 0
    assert _value(indexed, "tributary_slice_index_reloads_total") == node.holdings.reloads
    node.aggregate("c0", T0, T0 + 3_600_000_000_000)  # type: ignore[attr-defined]
    queried = metrics.render().decode()
    assert _value(queried, "tributary_index_loads_total") >= 1
    assert _value(queried, "tributary_index_bytes") > 0
    assert _value(queried, "tributary_query_duckdb_answers_total") == node.engine.duckdb_answers


def test_names_follow_the_prometheus_conventions(node: Node) -> None:
    text = Metrics(node).render().decode()
    families = list(text_string_to_metric_families(text))
    ours = [f for f in families if f.name.startswith("tributary_")]
    assert len(ours) >= 20
    for f in families:
        assert f.name.startswith(("tributary_", "process_", "python_")), f.name
    for f in ours:
        if f.type == "counter":
            assert all(s.name.endswith("_total") for s in f.samples), f.name
        if "duration" in f.name or "latency" in f.name or "time" in f.name:
            assert f.name.endswith("_seconds"), f"{f.name}: durations in seconds"
        for s in f.samples:
            assert not {"producer", "producer_id", "category", "path"} & set(s.labels), (s.name, s.labels)
    # the list: each present
    names = {f.name for f in ours}
    for want in [
        "tributary_ingest_events",
        "tributary_ingest_bytes",
        "tributary_ingest_refused_batches",
        "tributary_wal_fsync_seconds",
        "tributary_buffer_bytes",
        "tributary_persist_seconds",
        "tributary_compaction_seconds",
        "tributary_query_duration_seconds",
    ]:
        assert want in names, want
    assert "process_resident_memory_bytes" in {s.name for f in families for s in f.samples}


class _Health:
    def __init__(self, up: bool) -> None:
        self.up = up


class _Detector:
    me = "n1"

    def snapshot(self) -> dict[str, _Health]:
        return {"n1": _Health(True), "n2": _Health(True), "n3": _Health(False)}


class _ClusterLike:
    """The figures a cluster node adds to stats(); the collector exports whichever exist."""

    detector = _Detector()

    def stats(self) -> dict[str, object]:
        return {"hints_waiting": 7, "repair_shipped_rows": 3, "epoch": 4, "serving": True, "node_id": "n1"}


class _Broken:
    def stats(self) -> dict[str, object]:
        raise RuntimeError("boom")


def test_cluster_figures_from_stats_are_exported_when_present() -> None:
    text = Metrics(_ClusterLike(), process=False).render().decode()
    assert _value(text, "tributary_hints_pending") == 7
    assert _value(text, "tributary_repair_shipped_rows_total") == 3
    assert _value(text, "tributary_cluster_epoch") == 4
    assert _value(text, "tributary_serving") == 1
    assert _value(text, "tributary_peers_up") == 1, "n2 up, n3 down, n1 is this node"
    assert _value(text, "tributary_peers") == 2
    assert "tributary_stored_events_total" not in text, "a figure the node lacks is left out"
    assert "tributary_hints_replayed_total" not in text


def test_a_failing_stats_call_does_not_fail_the_scrape() -> None:
    assert b"tributary_ingest_events_total" in Metrics(_Broken(), process=False).render()


# -- the middleware, on a small app whose /v1/events answers as the real one does -------------


@post("/v1/events", status_code=200)
async def _ingest(request: Request[Any, Any, Any]) -> dict[str, Any]:
    body = await request.body()
    mode = request.headers.get("x-mode", "ok")
    if mode == "malformed":
        raise MalformedBody("malformed JSON")
    if mode == "large":
        raise PayloadTooLarge("too large")
    if mode == "reused":
        raise IdempotencyConflict("key reused")
    if mode == "overloaded":
        raise Overloaded("busy", retry_after=1)
    if mode == "duplicate":
        return {"accepted": 9, "duplicate": True}
    return {"accepted": len(json.loads(body)), "duplicate": False}


@get("/v1/count")
async def _count() -> dict[str, Any]:
    return {"value": 1}


@get("/v1/topk")
async def _topk(k: int = 10) -> dict[str, Any]:
    return {"producers": []}


async def _post(app: Litestar, body: bytes, ctype: str, mode: str = "ok") -> int:
    sent: list[Any] = []
    delivered = False

    async def receive() -> ReceiveMessage:
        nonlocal delivered
        if delivered:
            await asyncio.sleep(3600)
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    headers = [(b"content-type", ctype.encode()), (b"x-mode", mode.encode())]
    await app(_scope("POST", "/v1/events", headers), receive, send)  # type: ignore[arg-type]
    return int(next(m for m in sent if m["type"] == "http.response.start")["status"])


async def _get(app: Litestar, path: str, query: bytes = b"") -> int:
    sent: list[Any] = []

    async def receive() -> ReceiveMessage:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    await app(_scope("GET", path, [], query), receive, send)  # type: ignore[arg-type]
    return int(next(m for m in sent if m["type"] == "http.response.start")["status"])


def _scope(method: str, path: str, headers: list[tuple[bytes, bytes]], query: bytes = b"") -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "root_path": "", "query_string": query, "headers": headers,
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8321), "state": {},
    }  # fmt: skip


def test_ingest_outcomes_are_counted_by_format_and_reason() -> None:
    metrics = Metrics(object(), process=False)
    app = Litestar([_ingest, _count, _topk], middleware=[metrics.middleware()], exception_handlers=problem_handlers())
    three = json.dumps([{}, {}, {}]).encode()

    async def scenario() -> None:
        assert await _post(app, three, "application/json") == 200
        assert await _post(app, three, "application/x-ndjson; charset=utf-8") == 200
        assert await _post(app, three, "application/json", "duplicate") == 200
        assert await _post(app, b"[", "application/json", "malformed") == 400
        assert await _post(app, b"[]", "application/json", "large") == 413
        assert await _post(app, b"[]", "application/json", "reused") == 422
        assert await _post(app, b"[]", "application/json", "overloaded") == 503
        assert await _get(app, "/v1/count") == 200
        assert await _get(app, "/v1/topk", b"k=3") == 200
        assert await _get(app, "/v1/topk", b"k=x") == 400

    asyncio.run(scenario())
    text = metrics.render().decode()
    assert _value(text, "tributary_ingest_events_total", format="json") == 3
    assert _value(text, "tributary_ingest_events_total", format="ndjson") == 3
    assert _value(text, "tributary_ingest_events_total", format="arrow") == 0
    assert _value(text, "tributary_ingest_bytes_total", format="json") == len(three)
    assert _value(text, "tributary_ingest_batches_total", format="json") == 1
    assert _value(text, "tributary_ingest_duplicates_total") == 1
    for reason in ["malformed-body", "payload-too-large", "idempotency-key-reused", "overloaded"]:
        assert _value(text, "tributary_ingest_refused_batches_total", reason=reason) == 1, reason
    assert _value(text, "tributary_ingest_refused_batches_total", reason="invalid-event") == 0
    assert _value(text, "tributary_query_duration_seconds_count", kind="count") == 1
    assert _value(text, "tributary_query_duration_seconds_count", kind="topk") == 1, "a refused query is not timed"
    assert _value(text, "tributary_http_requests_total", route="/v1/events", method="POST", status="200") == 3
    assert _value(text, "tributary_http_requests_total", route="/v1/topk", method="GET", status="400") == 1
    assert _value(text, "tributary_http_requests_in_flight") == 0
