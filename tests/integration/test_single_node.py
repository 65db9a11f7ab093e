"""One real node against the oracle: every format, before and after persist and compaction,
after a clean restart and after ``kill -9`` right after acknowledgements."""

from __future__ import annotations

import gzip
import io
import json
import random
import threading
import uuid
from typing import Any

import httpx
import pyarrow as pa
import pytest
import zstandard

from storage.schema import EVENT_SCHEMA, HOUR_NS
from tests.eventgen import T0, Oracle, random_events, random_range
from tests.support.process import NodeFactory, NodeProcess

pytestmark = pytest.mark.integration

FAST = ["--persist-interval-s", "3600", "--persist-bytes", str(1 << 30)]


def arrow_body(t: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, EVENT_SCHEMA) as w:
        w.write_table(t)
    return sink.getvalue()


def json_rows(t: pa.Table) -> list[dict[str, Any]]:
    return t.to_pylist()


def post(
    node: NodeProcess, t: pa.Table, fmt: str, key: str | None = None, encoding: str | None = None
) -> httpx.Response:
    if fmt == "arrow":
        body, ctype = arrow_body(t), "application/vnd.apache.arrow.stream"
    elif fmt == "json":
        body, ctype = json.dumps(json_rows(t)).encode(), "application/json"
    else:
        body, ctype = "\n".join(json.dumps(r) for r in json_rows(t)).encode(), "application/x-ndjson"
    headers = {"content-type": ctype}
    if encoding == "gzip":
        body = gzip.compress(body)
    elif encoding == "zstd":
        body = zstandard.ZstdCompressor().compress(body)
    if encoding:
        headers["content-encoding"] = encoding
    if key:
        headers["idempotency-key"] = key
    return httpx.post(node.url + "/v1/events", content=body, headers=headers, timeout=60)


def check_against_oracle(node: NodeProcess, oracle: Oracle, rng: random.Random, n: int = 40) -> None:
    with httpx.Client(base_url=node.url, timeout=30) as http:
        for _ in range(n):
            s, e = random_range(rng)
            cat = rng.choice(["c0", "c1", "c2"])
            params = {"category": cat, "start": s, "end": e}
            want_c, want_s = oracle.aggregate(cat, s, e)
            count = http.get("/v1/count", params=params).json()
            assert count["value"] == want_c and count["partial"] is False, (params, count)
            assert http.get("/v1/sum", params=params).json()["value"] == want_s, params
            k = rng.choice([1, 5, 20])
            top = http.get("/v1/topk", params={**params, "k": k}).json()["producers"]
            assert [(p["producer_id"], p["count"]) for p in top] == oracle.topk(cat, s, e, k), params


def test_all_formats_persist_compact_restart_equal_the_oracle(node_factory: NodeFactory) -> None:
    rng = random.Random(20261127)
    node = node_factory("n1", args=FAST)
    oracle = Oracle()
    formats = [
        ("arrow", None),
        ("json", None),
        ("ndjson", None),
        ("arrow", "zstd"),
        ("json", "gzip"),
        ("ndjson", "zstd"),
    ]
    for i in range(12):
        fmt, enc = formats[i % len(formats)]
        t = random_events(rng, rng.randrange(500, 3000))
        r = post(node, t, fmt, key=f"batch-{i}", encoding=enc)
        assert r.status_code == 200, r.text
        assert r.json() == {"accepted": t.num_rows, "duplicate": False}
        oracle.add(t)
    check_against_oracle(node, oracle, rng)  # all in the live buffer
    assert httpx.post(node.url + "/v1/admin/persist").json()["rows_persisted"] == sum(x.num_rows for x in oracle.tables)
    check_against_oracle(node, oracle, rng)  # all in parts
    for i in range(12, 16):  # late and new events add parts to the same hours
        t = random_events(rng, 1000)
        assert post(node, t, "arrow", key=f"batch-{i}").status_code == 200
        oracle.add(t)
        httpx.post(node.url + "/v1/admin/persist")
    check_against_oracle(node, oracle, rng)
    assert httpx.post(node.url + "/v1/admin/compact").status_code == 200
    check_against_oracle(node, oracle, rng)
    t = random_events(rng, 2000)  # some rows left in the buffer across the restart
    assert post(node, t, "ndjson", key="batch-last").status_code == 200
    oracle.add(t)
    node.terminate()
    node.start().wait_ready()
    check_against_oracle(node, oracle, rng)
    # replays after the restart store nothing twice
    r = post(node, t, "ndjson", key="batch-last")
    assert r.json() == {"accepted": t.num_rows, "duplicate": True}
    r = post(node, oracle.tables[0], "arrow", key="batch-0")
    assert r.json()["duplicate"] is True
    check_against_oracle(node, oracle, rng, 10)


def test_kill_9_right_after_acknowledgements_loses_nothing(node_factory: NodeFactory) -> None:
    """Writers send keyed batches while the node is SIGKILLed; after a restart every
    acknowledged batch is there, and resending the unacknowledged ones (same keys) makes the
    totals exact: nothing lost, nothing doubled."""
    rng = random.Random(99)
    node = node_factory("n1", args=["--persist-interval-s", "0.5"])
    batches = {f"k-{i}": random_events(rng, 400) for i in range(120)}
    acked: set[str] = set()
    keys = list(batches)
    lock = threading.Lock()

    def writer(mine: list[str]) -> None:
        with httpx.Client(timeout=10) as http:
            for key in mine:
                try:
                    r = http.post(
                        node.url + "/v1/events",
                        content=arrow_body(batches[key]),
                        headers={"content-type": "application/vnd.apache.arrow.stream", "idempotency-key": key},
                    )
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    with lock:
                        acked.add(key)

    threads = [threading.Thread(target=writer, args=(keys[i::3],)) for i in range(3)]
    for t in threads:
        t.start()
    # kill once a good share is acknowledged (bounded poll)
    for _ in range(2000):
        with lock:
            if len(acked) >= 40:
                break
        threading.Event().wait(0.005)
    node.kill()
    for t in threads:
        t.join(timeout=30)
    acked_now = set(acked)
    assert acked_now, "no batch was acknowledged before the kill"
    node.start().wait_ready()
    oracle_acked = Oracle([batches[k] for k in acked_now])
    with httpx.Client(base_url=node.url, timeout=30) as http:
        got = http.get("/v1/count", params={"category": "c1", "start": 0, "end": T0 + 10 * HOUR_NS}).json()["value"]
        assert got >= oracle_acked.aggregate("c1", 0, T0 + 10 * HOUR_NS)[0], "an acknowledged event was lost"
        for key in keys:  # the producer's retries after the outage
            r = http.post(
                "/v1/events",
                content=arrow_body(batches[key]),
                headers={"content-type": "application/vnd.apache.arrow.stream", "idempotency-key": key},
            )
            assert r.status_code == 200, r.text
            if key in acked_now:
                assert r.json()["duplicate"] is True
    oracle_all = Oracle(list(batches.values()))
    check_against_oracle(node, oracle_all, rng, 20)


def test_bad_batches_store_nothing_and_get_problem_details(node_factory: NodeFactory) -> None:
    node = node_factory("n1", args=FAST)
    good = random_events(random.Random(5), 100)
    assert post(node, good, "json").status_code == 200
    bad_rows = json_rows(good)
    bad_rows[37] = {**bad_rows[37], "value": 1.5}
    cases = [
        (json.dumps(bad_rows).encode(), "application/json", 422, 37, "value"),
        (b"[{", "application/json", 400, None, None),
        (b'{"timestamp": 1}', "application/json", 400, None, None),
        (arrow_body(good)[:-20], "application/vnd.apache.arrow.stream", 400, None, None),
        (b"[]", "application/json", 422, None, None),
        (json.dumps(json_rows(good)).encode(), "text/csv", 415, None, None),
    ]
    for body, ctype, status, row, field in cases:
        r = httpx.post(node.url + "/v1/events", content=body, headers={"content-type": ctype})
        assert r.status_code == status, (ctype, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        p = r.json()
        assert {"type", "title", "status", "detail"} <= p.keys() and p["status"] == status
        if row is not None:
            assert (p["row"], p["field"]) == (row, field)
    key = str(uuid.uuid4())
    assert post(node, good, "json", key=key).status_code == 200
    other = random_events(random.Random(6), 10)
    r = post(node, other, "json", key=key)
    assert r.status_code == 422 and "Idempotency-Key" in r.json()["detail"]
    total = httpx.get(node.url + "/v1/stats").json()["events_total"]
    assert total == 200


def test_overload_answers_503_with_retry_after_and_stores_nothing(node_factory: NodeFactory) -> None:
    node = node_factory(
        "n1", args=["--max-buffer-bytes", "300000", "--persist-bytes", str(1 << 30), "--persist-interval-s", "3600"]
    )
    rng = random.Random(8)
    statuses = []
    for i in range(20):
        r = post(node, random_events(rng, 2000), "arrow", key=f"o-{i}")
        statuses.append(r.status_code)
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) >= 1
            assert r.headers["content-type"].startswith("application/problem+json")
            break
    assert 503 in statuses
    accepted = statuses.count(200) * 2000
    assert httpx.get(node.url + "/v1/stats").json()["events_total"] == accepted
    assert httpx.post(node.url + "/v1/admin/persist").status_code == 200
    assert post(node, random_events(rng, 2000), "arrow").status_code == 200, "writes resume once persisted"
    accepted += 2000
    r = post(node, random_events(rng, 20_000), "arrow")  # larger than the whole buffer: never fits
    assert r.status_code == 413 and "split it" in r.json()["detail"], r.text
    assert httpx.get(node.url + "/v1/stats").json()["events_total"] == accepted
