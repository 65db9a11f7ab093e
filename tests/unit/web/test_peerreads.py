"""``POST /internal/query`` answered in front of the framework (web/peerreads.py): the same
answers as ``Node.answer_peer``, on the event loop or on a thread, and the same refusals the
framework gave (secret, method, body, field errors, stale map, catching up)."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster.node import Node, NodeConfig
from ingest.wal import WalConfig
from tests.eventgen import T0, random_events, random_range
from web.app import create_app
from web.peerreads import MAX_BODY_BYTES, PATH, PeerReads
from web.problem import PROBLEM_JSON
from web.settings import Settings

SECRET = "s3cret"


def _node(data_dir: Path) -> Node:
    n = Node(NodeConfig(data_dir=data_dir, wal=WalConfig(fsync=False)))
    rng = random.Random(5)
    for i in range(3):
        n.ingest(random_events(rng, 2000, producers=300), key=f"b{i}")
        if i < 2:
            n.persist_now()  # parts and the live buffer both answer
    return n


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    n = _node(tmp_path_factory.mktemp("peerreads"))
    yield n
    n.close()


def _app(node: Node, secret: str = SECRET, insecure: bool = False) -> PeerReads:
    return create_app(node, Settings(node_id=node.me, cluster_secret=secret, insecure=insecure))


def _call(
    app: PeerReads, body: bytes, *, method: str = "POST", secret: str | None = SECRET, path: str = PATH
) -> tuple[int, dict[str, str], Any]:
    sent: list[Any] = []
    chunks = [body[i : i + 4096] for i in range(0, len(body), 4096)] or [b""]

    async def receive() -> dict[str, Any]:
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(message: Any) -> None:
        sent.append(message)

    headers = [(b"content-type", b"application/json")]
    if secret is not None:
        headers.append((b"x-tributary-secret", secret.encode()))
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"", "headers": headers,
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8321), "state": {},
    }  # fmt: skip
    asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    start = next(m for m in sent if m["type"] == "http.response.start")
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    head = {k.decode(): v.decode() for k, v in start["headers"]}
    return int(start["status"]), head, json.loads(payload) if payload else None


def _request(node: Node, kind: str, seed: int, **extra: Any) -> dict[str, Any]:
    rng = random.Random(seed)
    start, end = random_range(rng)
    shards = sorted(rng.sample(range(256), rng.randrange(1, 257)))
    body = {"category": rng.choice(["c0", "c1", "c2"]), "start": start, "end": end, "shards": shards}
    return {**body, "kind": kind, "epoch": node.cmap.epoch, **extra}


@pytest.mark.parametrize("seed", range(12))
def test_answers_equal_answer_peer_on_the_loop_and_on_a_thread(node: Node, seed: int) -> None:
    app = _app(node)
    for kind, extra in (("aggregate", {}), ("topk", {"k": 1 + seed})):
        request = _request(node, kind, seed, **extra)
        status, head, got = _call(app, json.dumps(request).encode())
        assert status == 200 and head["content-type"] == "application/json"
        assert got == json.loads(json.dumps(node.answer_peer(request)))
    distinct = _request(node, "distinct", seed)
    assert node.answer_peer_from_indexes(distinct) is None  # a thread's work
    assert _call(app, json.dumps(distinct).encode())[2] == json.loads(json.dumps(node.answer_peer(distinct)))


def test_an_answer_that_needs_duckdb_is_answered_on_a_thread_exactly(tmp_path: Path) -> None:
    node = _node(tmp_path)  # its parts are made unusable: a node of its own
    request = _request(node, "aggregate", 99)
    request["start"], request["end"] = T0 - 7, T0 + 3 * 3_600_000_000_000 + 11
    top = {**request, "kind": "topk", "k": 5}
    expected, top_expected = node.answer_peer(request), node.answer_peer(top)
    assert node.answer_peer_from_indexes(request) == expected
    assert node.answer_peer_from_indexes(top) == top_expected
    with node.engine.snapshot() as snap:
        parts = list(snap.state.parts)
    assert parts
    for part in parts:
        node.engine.indexes.cache.mark_unusable(part)
    assert node.answer_peer_from_indexes(request) is None
    before = node.engine.duckdb_answers
    status, _, got = _call(_app(node), json.dumps(request).encode())
    assert status == 200 and got == expected
    assert node.engine.duckdb_answers == before + 1
    assert node.answer_peer_from_indexes(top) is None
    status, _, got = _call(_app(node), json.dumps(top).encode())
    assert status == 200 and got == top_expected
    assert node.engine.duckdb_answers == before + 2
    node.close()


def test_the_secret_is_required_and_compared(node: Node) -> None:
    body = json.dumps(_request(node, "aggregate", 1)).encode()
    for secret in (None, "wrong", ""):
        status, head, got = _call(_app(node), body, secret=secret)
        assert status == 401 and head["content-type"] == PROBLEM_JSON and "X-Tributary-Secret" in got["detail"]
    status, _, got = _call(_app(node, secret=""), body, secret=None)
    assert status == 403 and got["status"] == 403
    assert _call(_app(node, secret="", insecure=True), body, secret=None)[0] == 200


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"{not json", ""),
        (b"[1, 2]", "not a JSON object"),
        (json.dumps({"category": "c0", "start": 0, "end": 1}).encode(), "shards"),
        (json.dumps({"category": "c0", "start": "x", "end": 1, "shards": [1]}).encode(), "x"),
        (json.dumps({"category": "c0", "start": 0, "end": 1, "shards": 7}).encode(), "int"),
        (json.dumps({"kind": "topk", "category": "c0", "start": 0, "end": 9, "shards": [1]}).encode(), "k"),
    ],
)
def test_a_malformed_request_is_a_400_problem(node: Node, body: bytes, detail: str) -> None:
    status, head, got = _call(_app(node), body)
    assert status == 400 and head["content-type"] == PROBLEM_JSON
    assert got["type"] == "/problems/bad-internal-request" and detail in got["detail"]


def test_method_size_and_other_paths(node: Node) -> None:
    app = _app(node)
    status, _, got = _call(app, b"", method="GET")
    assert status == 405 and got["status"] == 405
    big = json.dumps({**_request(node, "aggregate", 2), "pad": "x" * MAX_BODY_BYTES}).encode()
    assert _call(app, big)[0] == 413
    status, _, got = _call(app, b"", method="GET", path="/health", secret=None)  # the framework's
    assert status == 200 and got["node_id"] == node.me


def test_a_stale_map_and_catching_up_are_refused_as_before(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    app = _app(node)
    status, _, got = _call(app, json.dumps({**_request(node, "aggregate", 3), "epoch": -1}).encode())
    assert status == 409 and got["epoch"] == node.cmap.epoch
    monkeypatch.setattr(node.answers, "_serving", lambda: False)
    status, head, got = _call(app, json.dumps(_request(node, "aggregate", 3)).encode())
    assert status == 503 and head["retry-after"] == "1" and got["type"] == "/problems/not-serving"


def test_requests_are_counted_in_the_metrics(node: Node) -> None:
    app = _app(node)
    good = json.dumps(_request(node, "aggregate", 4)).encode()
    for body in (good, good, b"{"):
        _call(app, body)
    text = app.metrics.render().decode()
    assert f'tributary_http_requests_total{{method="POST",route="{PATH}",status="200"}} 2.0' in text
    assert f'tributary_http_requests_total{{method="POST",route="{PATH}",status="400"}} 1.0' in text
