"""The producer client against in-process fake nodes (httpx.MockTransport).

The fake node is idempotent the way the contract says a node is: a key seen before is answered
``duplicate: true`` and stores nothing twice. Faults are scripted per request.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter, deque
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.client import (
    ARROW_STREAM,
    InvalidEvent,
    Producer,
    ProducerClosed,
    ProducerConfig,
    QueueFull,
)
from ingest.spool import Spool
from storage.schema import EVENT_SCHEMA

FAST = {"backoff_base_s": 0.001, "backoff_cap_s": 0.01, "discover": False, "linger_s": 60.0}


def event(i: int, category: str = "c") -> dict[str, Any]:
    return {"timestamp": 1_700_000_000_000_000_000 + i, "category": category, "value": i, "producer_id": f"p{i % 7}"}


def decode(request: httpx.Request) -> list[dict[str, Any]]:
    body = request.content
    if request.headers.get("content-encoding") == "zstd":
        body = zstandard.ZstdDecompressor().decompress(body)
    if request.headers["content-type"] == ARROW_STREAM:
        table = pa.ipc.open_stream(body).read_all()
        assert table.schema.equals(EVENT_SCHEMA)
        return table.to_pylist()
    return json.loads(body)


class FakeNode:
    """An idempotent ``POST /v1/events``. ``plan`` scripts the fate of each request: ok, refuse
    (connection refused), lost (committed, then the response is lost), or a status code."""

    def __init__(self, plan: list[str] = (), host: str = "node") -> None:
        self.plan = deque(plan)
        self.host = host
        self.stored: dict[str, list[dict[str, Any]]] = {}
        self.requests: list[httpx.Request] = []
        self.lock = threading.Lock()
        self.down = False

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.requests.append(request)
            action = self.plan.popleft() if self.plan else "ok"
        if self.down or action == "refuse":
            raise httpx.ConnectError("refused", request=request)
        if action.isdigit():
            return httpx.Response(int(action), headers={"Retry-After": "0"}, json={"status": int(action)})
        events = decode(request)
        key = request.headers["idempotency-key"]
        with self.lock:
            duplicate = key in self.stored
            self.stored.setdefault(key, events)
        if action == "lost":
            raise httpx.ReadError("connection reset by peer", request=request)
        return httpx.Response(200, json={"accepted": len(events), "duplicate": duplicate})

    @property
    def events(self) -> list[dict[str, Any]]:
        return [e for batch in self.stored.values() for e in batch]

    def posts(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == "POST"]


def producer(node: Any, **kw: Any) -> Producer:
    return Producer(kw.pop("urls", "http://node"), transport=httpx.MockTransport(node), **{**FAST, **kw})


def poll(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


# -- delivery ----------------------------------------------------------------------------------


def test_idempotency_key_and_body_are_kept_across_retries() -> None:
    node = FakeNode(["503", "refuse", "500", "lost", "429"])
    with producer(node) as p:
        p.send_many(event(i) for i in range(5))
        assert p.flush(10)
        stats = p.stats
    posts = node.posts()
    assert len(posts) == 6
    assert len({r.headers["idempotency-key"] for r in posts}) == 1
    assert len({r.content for r in posts}) == 1
    assert len(node.events) == 5
    assert (stats.sent, stats.acknowledged, stats.retried, stats.duplicates, stats.requests) == (5, 5, 5, 1, 6)


def test_each_batch_gets_its_own_key() -> None:
    node = FakeNode()
    with producer(node, batch_events=10) as p:
        p.send_many(event(i) for i in range(25))
        assert p.flush(10)
    assert [len(decode(r)) for r in node.posts()] == [10, 10, 5]
    assert len({r.headers["idempotency-key"] for r in node.posts()}) == 3


@pytest.mark.parametrize("status", [400, 401, 403, 413, 415, 422])
def test_client_errors_are_not_retried_and_reach_on_error(status: int) -> None:
    problems: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        problem = {"type": "about:blank", "title": "Invalid event", "status": status, "detail": "bad", "row": 3}
        return httpx.Response(status, json=problem, headers={"Content-Type": "application/problem+json"})

    with Producer(
        "http://node", transport=httpx.MockTransport(handler), on_error=lambda *a: problems.append(a), **FAST
    ) as p:
        p.send_many(event(i) for i in range(4))
        assert p.flush(10)
        stats = p.stats
    ((info, problem),) = problems
    assert problem["status"] == status and problem["row"] == 3
    assert info.events == 4 and info.attempts == 1 and len(info.idempotency_key) == 32
    assert (stats.failed, stats.acknowledged, stats.retried, stats.requests) == (4, 0, 0, 1)


def test_retry_after_is_honoured() -> None:
    hits: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hits.append(time.monotonic())
        return httpx.Response(503, headers={"Retry-After": "3600"})

    # The backoff alone would retry within 10 ms; Retry-After holds the retry back for an hour.
    kw = {**FAST, "retry_after_max_s": 3600, "retry_max_elapsed_s": 7200}
    with Producer("http://node", transport=httpx.MockTransport(handler), **kw) as p:
        p.send(event(1))
        assert not p.flush(0.3)
        assert len(hits) == 1
        p.close(timeout=0)


def test_retry_after_is_capped() -> None:
    node = FakeNode(["429"] * 3)
    with producer(node, retry_after_max_s=0.0) as p:
        p.send(event(1))
        assert p.flush(10)  # Retry-After 0 everywhere: the cap keeps a bad header from stalling
    assert len(node.posts()) == 4


def test_gives_up_after_the_total_retry_time_without_spool() -> None:
    problems: list[Any] = []
    node = FakeNode(["503"] * 1000)
    with producer(node, retry_max_elapsed_s=0.05, on_error=lambda *a: problems.append(a)) as p:
        p.send_many(event(i) for i in range(3))
        assert p.flush(10)
        assert p.stats.failed == 3
    assert problems[0][1]["title"] == "undeliverable"


def test_lost_responses_after_commit_store_each_batch_once() -> None:
    node = FakeNode(["lost", "ok", "lost", "lost"])
    with producer(node, batch_events=10) as p:
        p.send_many(event(i) for i in range(20))
        assert p.flush(10)
        stats = p.stats
    assert sorted(e["value"] for e in node.events) == list(range(20))
    assert (stats.acknowledged, stats.duplicates, stats.retried) == (20, 2, 3)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.sampled_from(["ok", "refuse", "lost", "503", "429", "500"]), max_size=30),
    st.integers(1, 60),
    st.integers(1, 12),
)
def test_any_fault_sequence_stores_every_event_exactly_once(plan: list[str], n: int, batch: int) -> None:
    node = FakeNode(plan)
    with producer(node, batch_events=batch) as p:
        p.send_many(event(i) for i in range(n))
        assert p.flush(30)
        stats = p.stats
    assert Counter(e["value"] for e in node.events) == Counter(range(n))
    assert stats.acknowledged == stats.sent == n
    assert stats.requests == len(node.posts())


# -- failover ----------------------------------------------------------------------------------


def test_failover_follows_the_given_order_and_sticks() -> None:
    hosts: list[str] = []
    good = FakeNode()

    def handler(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        if request.url.host == "a":
            raise httpx.ConnectError("refused", request=request)
        if request.url.host == "b":
            return httpx.Response(502)
        return good(request)

    urls = ["http://a", "http://b/", "http://c"]
    with Producer(urls, transport=httpx.MockTransport(handler), batch_events=2, **FAST) as p:
        p.send_many(event(i) for i in range(4))
        assert p.flush(10)
    assert hosts == ["a", "b", "c", "c"]


def test_learns_nodes_from_the_cluster_map() -> None:
    good = FakeNode()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/cluster":
            nodes = [
                {"node_id": "n1", "url": "http://a", "state": "active", "up": True},
                {"node_id": "n2", "url": "http://b", "state": "active", "up": True},
            ]
            return httpx.Response(200, json={"epoch": 1, "rf": 1, "shards": 8, "nodes": nodes})
        if request.url.host == "a":
            raise httpx.ConnectError("refused", request=request)
        return good(request)

    with Producer("http://a", transport=httpx.MockTransport(handler), **{**FAST, "discover": True}) as p:
        p.send(event(1))
        assert p.flush(10)
        assert p.urls == ["http://a", "http://b"]
    assert [r.url.host for r in good.posts()] == ["b"]


@pytest.mark.parametrize(
    "answer", [httpx.Response(404), httpx.Response(200, text="not json"), httpx.Response(200, json=[1])]
)
def test_a_broken_cluster_map_is_tolerated(answer: httpx.Response) -> None:
    node = FakeNode()

    def handler(request: httpx.Request) -> httpx.Response:
        return answer if request.url.path == "/v1/cluster" else node(request)

    with Producer("http://node", transport=httpx.MockTransport(handler), **{**FAST, "discover": True}) as p:
        p.send(event(1))
        assert p.flush(10)
        assert p.urls == ["http://node"]


# -- the queue ---------------------------------------------------------------------------------


class Stalled(FakeNode):
    """Holds every request until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.release.wait(30)
        return super().__call__(request)


def test_full_queue_blocks_then_raises_queue_full() -> None:
    node = Stalled()
    with producer(node, batch_events=10, queue_max_events=20, block_timeout_s=0.1) as p:
        p.send_many(event(i) for i in range(20))
        with pytest.raises(QueueFull):
            p.send(event(20))
        node.release.set()
        assert p.flush(10)
        assert (p.stats.sent, p.stats.acknowledged, p.stats.dropped) == (20, 20, 0)
        p.send(event(21))  # room again
        assert p.flush(10)
    assert len(node.events) == 21


def test_full_queue_drops_counts_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    node = Stalled()
    with (
        caplog.at_level(logging.WARNING, logger="tributary.client"),
        producer(node, batch_events=10, queue_max_events=20, queue_full="drop") as p,
    ):
        p.send_many(event(i) for i in range(35))
        node.release.set()
        assert p.flush(10)
        stats = p.stats
    assert (stats.sent, stats.dropped, stats.acknowledged) == (20, 15, 20)
    assert sorted(e["value"] for e in node.events) == list(range(20))
    warnings = [r for r in caplog.records if "dropping" in r.getMessage()]
    assert len(warnings) == 1  # rate-limited, not one per event


def test_queue_bound_in_bytes() -> None:
    node = Stalled()
    big = "x" * 100
    with producer(node, batch_events=2, queue_max_bytes=600, block_timeout_s=0.05) as p:
        p.send_many({**event(i), "producer_id": big} for i in range(4))
        with pytest.raises(QueueFull):
            p.send({**event(5), "producer_id": big})
        node.release.set()
        assert p.flush(10)


def test_send_after_close_is_refused() -> None:
    p = producer(FakeNode())
    p.close()
    p.close()  # idempotent
    with pytest.raises(ProducerClosed):
        p.send(event(1))


# -- batching and encoding ---------------------------------------------------------------------


def test_linger_sends_a_partial_batch_without_flush() -> None:
    node = FakeNode()
    with producer(node, linger_s=0.02) as p:
        p.send_many(event(i) for i in range(3))
        poll(lambda: len(node.events) == 3)


def test_batches_close_on_bytes() -> None:
    node = FakeNode()
    with producer(node, batch_bytes=1000) as p:
        p.send_many({**event(i), "category": "k" * 100} for i in range(30))
        assert p.flush(10)
    sizes = [len(decode(r)) for r in node.posts()]
    assert sum(sizes) == 30 and max(sizes) <= 8 and len(sizes) >= 4


@pytest.mark.parametrize("fmt", ["arrow", "json"])
def test_encodings_carry_the_events_exactly(fmt: str) -> None:
    node = FakeNode()
    events = [event(i, category=f"cat-{i % 3}-é") for i in range(50)] + [
        {"timestamp": 0, "category": "min", "value": -(2**63), "producer_id": "x"},
        {"timestamp": 2**63 - 1, "category": "max", "value": 2**63 - 1, "producer_id": "y" * 256},
    ]
    with producer(node, format=fmt, compress_min_bytes=1 << 30) as p:
        p.send_many(events)
        assert p.flush(10)
    (request,) = node.posts()
    assert request.headers["content-type"] == (ARROW_STREAM if fmt == "arrow" else "application/json")
    assert "content-encoding" not in request.headers
    assert decode(request) == events


def test_big_batches_are_zstd_compressed() -> None:
    node = FakeNode()
    with producer(node, compress_min_bytes=1024) as p:
        p.send_many(event(i) for i in range(500))
        assert p.flush(10)
        p.send(event(0))  # a second, small batch stays plain
        assert p.flush(10)
    big, small = node.posts()
    assert big.headers["content-encoding"] == "zstd" and len(decode(big)) == 500
    assert "content-encoding" not in small.headers


def test_token_is_sent_as_bearer() -> None:
    node = FakeNode()
    with Producer("http://node", token="s3cret", transport=httpx.MockTransport(node), **FAST) as p:
        p.send(event(1))
        assert p.flush(10)
    assert node.posts()[0].headers["authorization"] == "Bearer s3cret"


def test_timestamps_as_datetime_and_rfc3339_are_exact_nanoseconds() -> None:
    node = FakeNode()
    base = int(datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()) * 10**9
    with producer(node) as p:
        p.send({**event(0), "timestamp": "2024-01-02T03:04:05.123456789Z"})
        p.send({**event(1), "timestamp": "2024-01-02T05:04:05.5+02:00"})
        p.send({**event(2), "timestamp": datetime(2024, 1, 2, 4, 4, 5, 7, tzinfo=timezone(timedelta(hours=1)))})
        assert p.flush(10)
    assert [e["timestamp"] for e in node.events] == [base + 123456789, base + 500_000_000, base + 7000]


@pytest.mark.parametrize(
    ("text", "ns"),
    [("2024-01-02t03:04:05z", 0), ("2024-01-02 04:04:05.000000001+01:00", 1), ("2024-01-02T03:04:05-00:00", 0)],
)
def test_rfc3339_forms_the_node_accepts_are_accepted_at_send(text: str, ns: int) -> None:
    node = FakeNode()
    with producer(node) as p:
        p.send({**event(0), "timestamp": text})
        assert p.flush(10)
    assert node.events[0]["timestamp"] == int(datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()) * 10**9 + ns


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"timestamp": None}, "timestamp"),
        ({"timestamp": 1.5}, "timestamp"),
        ({"timestamp": "yesterday"}, "timestamp"),
        ({"timestamp": "2016-12-31T23:59:60Z"}, "timestamp"),
        ({"timestamp": "2026-01-01T00:00:00+24:00"}, "timestamp"),
        ({"timestamp": datetime(2024, 1, 1)}, "timestamp"),
        ({"timestamp": 2**63}, "timestamp"),
        ({"value": 1.0}, "value"),
        ({"value": True}, "value"),
        ({"value": "3"}, "value"),
        ({"category": ""}, "category"),
        ({"category": "é" * 65}, "category"),
        ({"producer_id": 7}, "producer_id"),
        ({"producer_id": "p" * 257}, "producer_id"),
    ],
)
def test_invalid_events_are_refused_at_send(change: dict[str, Any], field: str) -> None:
    with producer(FakeNode()) as p:
        with pytest.raises(InvalidEvent) as err:
            p.send({**event(1), **change})
        assert err.value.field == field
        assert p.stats.sent == 0


def test_send_many_takes_arrow_tables_with_castable_types() -> None:
    node = FakeNode()
    table = pa.table(
        {
            "producer_id": pa.array(["a", "b", "c"], pa.large_string()),
            "value": pa.array([1, 2, 3], pa.int32()),
            "timestamp": pa.array([1, 2, 3], pa.timestamp("ns")),
            "category": ["x", "y", "z"],
            "extra": [0, 0, 0],
        }
    )
    with producer(node, batch_events=2) as p:
        p.send_many(table)
        p.send_many(table.to_batches()[0])
        assert p.flush(10)
    expected = [
        {"timestamp": t, "category": c, "value": t, "producer_id": pid}
        for t, c, pid in zip([1, 2, 3], "xyz", "abc", strict=True)
    ]
    assert sorted(node.events, key=str) == sorted(expected * 2, key=str)
    assert [len(decode(r)) for r in node.posts()] == [2, 2, 2]


@pytest.mark.parametrize(
    "table",
    [
        pa.table({"timestamp": [1, None], "category": ["a", "b"], "value": [1, 2], "producer_id": ["p", "q"]}),
        pa.table({"timestamp": [1, 2], "category": ["a", ""], "value": [1, 2], "producer_id": ["p", "q"]}),
        pa.table({"timestamp": [1, 2], "category": ["a", "b"], "value": [1, 2]}),
        pa.table({"timestamp": [1, 2], "category": ["a", "b"], "value": ["1", "x"], "producer_id": ["p", "q"]}),
    ],
)
def test_send_many_refuses_a_bad_table_whole(table: pa.Table) -> None:
    with producer(FakeNode()) as p:
        with pytest.raises(InvalidEvent):
            p.send_many(table)
        assert p.stats.sent == 0


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        ProducerConfig(batch_events=10, queue_max_events=5)
    with pytest.raises(ValueError):
        ProducerConfig(queue_full="wait")  # type: ignore[arg-type]


def test_the_public_face_is_ingest_client() -> None:
    """Callers import everything from ``ingest.client``, whichever part of the client defines it."""
    import ingest.client

    names = {"Producer", "ProducerConfig", "ProducerStats", "ProducerError", "InvalidEvent", "QueueFull"}
    names |= {"ProducerClosed", "SpoolLocked", "backoff_delay", "parse_retry_after", "is_retryable", "ARROW_STREAM"}
    assert names <= set(ingest.client.__all__)
    assert all(hasattr(ingest.client, n) for n in ingest.client.__all__)
    assert issubclass(QueueFull, ingest.client.ProducerError) and issubclass(InvalidEvent, ValueError)


# -- the spool ---------------------------------------------------------------------------------


def test_offline_batches_are_spooled_and_replayed_by_a_new_producer(tmp_path: Path) -> None:
    down = FakeNode()
    down.down = True
    with producer(down, spool_dir=tmp_path, batch_events=10, spool_after_s=0.02) as p:
        p.send_many(event(i) for i in range(35))
        poll(lambda: p.stats.spooled >= 30)  # three full batches went to disk on their own
        p.close(timeout=0)  # the partial one is spooled at close
        stats = p.stats
    assert (stats.sent, stats.spooled, stats.acknowledged, stats.failed, stats.spool_files) == (35, 35, 0, 0, 4)
    tried = {r.headers["idempotency-key"] for r in down.requests}

    up = FakeNode()
    with producer(up, spool_dir=tmp_path) as p2:  # a restarted process
        assert p2.flush(10)
        stats = p2.stats
    assert sorted(e["value"] for e in up.events) == list(range(35))
    assert (stats.replayed, stats.acknowledged, stats.spool_files) == (35, 35, 0)
    assert tried <= set(up.stored)  # the keys survived the disk
    assert not list(tmp_path.glob("*.spool"))


def test_goes_back_online_when_the_node_returns(tmp_path: Path) -> None:
    node = FakeNode()
    node.down = True
    with producer(node, spool_dir=tmp_path, batch_events=10, spool_after_s=0.02, probe_interval_s=0.01) as p:
        p.send_many(event(i) for i in range(50))
        poll(lambda: p.stats.spooled == 50)
        node.down = False
        assert p.flush(10)
        p.send_many(event(i) for i in range(50, 60))
        assert p.flush(10)
        stats = p.stats
    assert sorted(e["value"] for e in node.events) == list(range(60))
    assert (stats.spooled, stats.replayed, stats.acknowledged, stats.spool_files) == (50, 50, 60, 0)


def test_replay_is_oldest_first(tmp_path: Path) -> None:
    down = FakeNode()
    down.down = True
    with producer(down, spool_dir=tmp_path, batch_events=1, spool_after_s=0.01) as p:
        p.send_many(event(i) for i in range(10))
        p.close(timeout=0)
    up = FakeNode()
    with producer(up, spool_dir=tmp_path) as p2:
        assert p2.flush(10)
    assert [decode(r)[0]["value"] for r in up.posts()] == list(range(10))


def test_a_corrupt_spool_file_is_set_aside_not_fatal(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.put("k1", ARROW_STREAM, None, 1, b"garbage")
    spool.close()
    (tmp_path / "00000000000000000000-000000-bad.spool").write_bytes(b"TRBSPOOL\x01\x00")
    node = FakeNode(["400"])  # the garbage body is refused by the node: final, off the spool
    with producer(node, spool_dir=tmp_path) as p:
        p.send(event(1))
        assert p.flush(10)
        stats = p.stats
    assert (stats.spool_corrupt, stats.failed, stats.acknowledged, stats.spool_files) == (1, 1, 1, 0)
    assert (tmp_path / "corrupt" / "00000000000000000000-000000-bad.spool").exists()


def test_close_without_spool_fails_what_is_left(tmp_path: Path) -> None:
    problems: list[Any] = []
    node = FakeNode()
    node.down = True
    p = producer(node, on_error=lambda *a: problems.append(a))
    p.send_many(event(i) for i in range(5))
    p.close(timeout=0.05)
    assert p.stats.failed == 5
    assert [pr["title"] for _info, pr in problems] == ["undelivered at close"]


def test_a_full_spool_falls_back_to_memory(tmp_path: Path) -> None:
    node = FakeNode()
    node.down = True
    with producer(node, spool_dir=tmp_path, spool_max_bytes=100, spool_after_s=0.01, batch_events=10) as p:
        p.send_many(event(i) for i in range(10))
        poll(lambda: len(node.requests) >= 3)  # still retrying from memory
        assert p.stats.spooled == 0 and p.stats.queued == 10
        node.down = False
        assert p.flush(10)
    assert len(node.events) == 10


@pytest.mark.parametrize(
    "event",
    [
        {"timestamp": -1, "category": "c", "value": 1, "producer_id": "p"},
        {"timestamp": 1, "category": "c\x00x", "value": 1, "producer_id": "p"},
        {"timestamp": 1, "category": "c", "value": 1, "producer_id": "p\x00"},
    ],
)
def test_client_refuses_what_the_node_refuses(event: dict[str, object]) -> None:
    """One such event would otherwise get its whole batch refused by the node (422)."""
    from ingest.outbox import InvalidEvent, check_event, conform

    with pytest.raises(InvalidEvent):
        check_event(event)
    with pytest.raises(InvalidEvent):
        conform(pa.Table.from_pylist([event], schema=EVENT_SCHEMA))
