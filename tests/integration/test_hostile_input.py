"""Hostile and broken input against a real node: every malformed ingest request and every bad
query parameter gets a 4xx problem+json that names the problem, never a 5xx, and afterwards the
stored totals equal exactly what was validly sent."""

from __future__ import annotations

import gzip
import io
import json
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pyarrow as pa
import pytest
import zstandard

from storage.schema import EVENT_SCHEMA
from tests.support.process import NodeProcess

pytestmark = pytest.mark.integration

MAX_BODY = 1 << 20
MAX_ROWS = 1000
MAX_INFLATED = 8 << 20
NOW = time.time_ns()
JSON, NDJSON, ARROW = "application/json", "application/x-ndjson", "application/vnd.apache.arrow.stream"
REUSED_KEY = "hostile-key-1"


def ev(**over: object) -> dict[str, object]:
    base: dict[str, object] = {"timestamp": NOW - 60 * 10**9, "category": "h", "value": 5, "producer_id": "p1"}
    base.update(over)
    return base


def js(*events: object) -> bytes:
    return json.dumps(list(events)).encode()


def arrow(table: pa.Table, schema: pa.Schema | None = None) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, schema or table.schema) as w:
        w.write_table(table)
    return sink.getvalue()


def good_arrow(n: int = 3) -> pa.Table:
    return pa.table(
        {
            "timestamp": pa.array([NOW - 10**9] * n, pa.int64()),
            "category": ["h"] * n,
            "value": pa.array([1] * n, pa.int64()),
            "producer_id": ["p2"] * n,
        },
        schema=EVENT_SCHEMA,
    )


@dataclass
class Case:
    id: str
    body: bytes
    ctype: str | None = JSON
    status: int = 422
    says: tuple[str, ...] = ()  # words the problem's detail (lowercased) must contain
    headers: dict[str, str] = field(default_factory=dict)


BOMB = 64 << 20  # inflates to 8x the node's --max-decompressed-bytes, from a body of a few KiB


def _bomb(compress: Callable[[bytes], bytes], flush: Callable[[], bytes]) -> bytes:
    chunk = b" " * (1 << 20)
    return compress(b"[") + b"".join(compress(chunk) for _ in range(BOMB >> 20)) + compress(b"]") + flush()


def _gzip_bomb() -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return _bomb(z.compress, z.flush)


def _zstd_bomb(declared: bool) -> bytes:
    """A zstd frame that declares its size (refused before any work) or one that does not
    (refused as soon as the output passes the limit)."""
    z = zstandard.ZstdCompressor(level=3).compressobj(size=BOMB + 2 if declared else -1)
    return _bomb(z.compress, z.flush)


INGEST_CASES = [
    # -- bodies that do not parse: 400
    Case("bad-json", b'[{"timestamp": 1,,}]', status=400, says=("json",)),
    Case("truncated-json", js(ev(), ev())[:-7], status=400, says=("json",)),
    Case("not-json", b"hello, world", status=400, says=("json",)),
    Case("empty-body", b"", status=400, says=("json",)),
    Case("invalid-utf8", b'[{"timestamp": 1, "category": "\xff\xfe", "value": 1, "producer_id": "p"}]', status=400,
         says=("utf-8",)),
    Case("lone-surrogate", b'[{"timestamp": 1, "category": "\\ud800", "value": 1, "producer_id": "p"}]',
         status=400, says=("utf",)),
    Case("deeply-nested", b"[" * 100_000 + b"]" * 100_000, status=400),
    Case("ndjson-bad-line", json.dumps(ev()).encode() + b"\n{oops\n", NDJSON, status=400, says=("json",)),
    Case("gzip-claimed-plain", js(ev()), headers={"content-encoding": "gzip"}, status=400, says=("gzip",)),
    Case("gzip-truncated", gzip.compress(js(ev(), ev()))[:-12], headers={"content-encoding": "gzip"}, status=400,
         says=("gzip",)),
    Case("zstd-corrupt", b"\x28\xb5\x2f\xfd" + b"\x00garbage" * 4, headers={"content-encoding": "zstd"}, status=400,
         says=("zstd",)),
    Case("arrow-garbage", b"\xff\xff\xff\xff" + b"\x00" * 64, ARROW, status=400, says=("arrow",)),
    Case("arrow-truncated", arrow(good_arrow(50))[:-40], ARROW, status=400, says=("arrow",)),
    # -- shapes and types: 422 naming the row and field
    Case("object-not-array", json.dumps(ev()).encode(), status=400, says=("array",)),
    Case("empty-batch", b"[]", says=("empty",)),
    Case("event-not-object", b"[1, 2, 3]", says=("object",)),
    Case("nested-object", js(ev(category={"a": 1})), says=("category", "string")),
    Case("array-value", js(ev(value=[1, 2])), says=("value", "integer")),
    Case("missing-field", js({"timestamp": NOW, "category": "h", "value": 1}), says=("producer_id", "missing")),
    Case("null-value", js(ev(value=None)), says=("value", "null")),
    Case("bool-timestamp", js(ev(timestamp=True)), says=("timestamp", "integer")),
    Case("float-value", js(ev(value=1.5)), says=("value", "integer")),
    Case("float-integral-value", b'[{"timestamp": 1, "category": "h", "value": 1.0, "producer_id": "p"}]',
         says=("value", "integer")),
    Case("exponent-value", js(ev())[:-2].replace(b'"value": 5', b'"value": 1e3') + b"}]", says=("value",)),
    Case("huge-exponent", js(ev())[:-2].replace(b'"value": 5', b'"value": 1e99999') + b"}]", status=400,
         says=("out of range",)),
    Case("int64-overflow-value", js(ev(value=2**63)), says=("value", "int64")),
    Case("int64-underflow-value", js(ev(value=-(2**63) - 1)), says=("value", "int64")),
    Case("int64-overflow-timestamp", js(ev(timestamp=2**64)), says=("timestamp",)),
    Case("empty-category", js(ev(category="")), says=("category", "bytes")),
    Case("long-category", js(ev(category="c" * 129)), says=("category", "128")),
    Case("long-multibyte-category", js(ev(category="€" * 43)), says=("category", "128")),
    Case("empty-producer", js(ev(producer_id="")), says=("producer_id",)),
    Case("long-producer", js(ev(producer_id="p" * 257)), says=("producer_id", "256")),
    Case("nul-in-category", js(ev(category="a\u0000b")), says=("category", "nul")),
    Case("future-timestamp", js(ev(timestamp=NOW + 3 * 86_400 * 10**9)), says=("timestamp", "future")),
    Case("negative-timestamp", js(ev(timestamp=-1)), says=("timestamp", "1970")),
    Case("bad-rfc3339-month", js(ev(timestamp="2026-13-01T00:00:00Z")), says=("timestamp",)),
    Case("rfc3339-no-zone", js(ev(timestamp="2026-11-27T10:00:00")), says=("timestamp", "rfc 3339")),
    Case("rfc3339-leap-second", js(ev(timestamp="2026-12-31T23:59:60Z")), says=("timestamp", "leap")),
    Case("rfc3339-feb-30", js(ev(timestamp="2026-02-30T00:00:00Z")), says=("timestamp", "date")),
    Case("one-bad-in-the-middle", js(ev(), ev(value="7"), ev()), says=("event 1", "value")),
    Case("ndjson-bad-event", b"\n".join(json.dumps(e).encode() for e in [ev(), ev(), ev(category="")]), NDJSON,
         says=("event 2", "category")),
    Case("arrow-value-as-string", arrow(good_arrow().set_column(2, "value", pa.array(["1", "2", "3"]))), ARROW,
         says=("value",)),
    Case("arrow-missing-column", arrow(good_arrow().drop_columns(["producer_id"])), ARROW, says=("producer_id",)),
    Case("arrow-null-value", arrow(good_arrow().set_column(2, "value", pa.array([1, None, 3], pa.int64()))), ARROW,
         says=("value",)),
    Case("idempotency-key-reused", js(ev(value=999)), headers={"idempotency-key": REUSED_KEY},
         says=("idempotency",)),
    # -- media types and encodings: 415
    Case("missing-content-type", js(ev()), None, status=415, says=("content-type",)),
    Case("text-plain", js(ev()), "text/plain", status=415, says=("content-type",)),
    Case("latin1-charset", js(ev()), "application/json; charset=latin-1", status=415, says=("charset",)),
    Case("brotli", js(ev()), headers={"content-encoding": "br"}, status=415, says=("content-encoding",)),
    # -- limits: 413
    Case("over-max-body", b"[" + b" " * MAX_BODY + b"]", status=413),
    Case("over-max-rows", js(*[ev()] * (MAX_ROWS + 1)), status=413, says=(str(MAX_ROWS),)),
    Case("gzip-bomb", _gzip_bomb(), headers={"content-encoding": "gzip"}, status=413, says=("decompressed",)),
    Case("zstd-bomb", _zstd_bomb(False), headers={"content-encoding": "zstd"}, status=413, says=("decompressed",)),
    Case("zstd-bomb-declared", _zstd_bomb(True), headers={"content-encoding": "zstd"}, status=413,
         says=("decompressed",)),
    # -- headers: 400
    Case("long-idempotency-key", js(ev()), headers={"idempotency-key": "k" * 300}, status=400,
         says=("idempotency-key",)),
]  # fmt: skip

QUERY_CASES = [
    ("start-after-end", "/v1/count", {"category": "h", "start": "now", "end": "now-1h"}, ("start", "after")),
    ("missing-category", "/v1/count", {"start": "now-1h", "end": "now"}, ("category",)),
    ("empty-category", "/v1/sum", {"category": "", "start": "now-1h", "end": "now"}, ("category",)),
    ("missing-start", "/v1/count", {"category": "h", "end": "now"}, ("start",)),
    ("non-numeric-start", "/v1/count", {"category": "h", "start": "yesterday", "end": "now"}, ("start",)),
    ("bad-rfc3339-end", "/v1/sum", {"category": "h", "start": "0", "end": "2026-02-30T00:00:00Z"}, ("end",)),
    ("int64-overflow-start", "/v1/count", {"category": "h", "start": str(10**20), "end": "now"}, ("start",)),
    ("bad-relative-unit", "/v1/count", {"category": "h", "start": "now-15x", "end": "now"}, ("start",)),
    ("k-zero", "/v1/topk", {"category": "h", "start": "now-1h", "end": "now", "k": "0"}, ("k",)),
    ("k-negative", "/v1/topk", {"category": "h", "start": "now-1h", "end": "now", "k": "-3"}, ("k",)),
    ("k-huge", "/v1/topk", {"category": "h", "start": "now-1h", "end": "now", "k": str(10**9)}, ("k",)),
    ("k-int64-overflow", "/v1/topk", {"category": "h", "start": "now-1h", "end": "now", "k": str(10**30)}, ("k",)),
    ("k-non-numeric", "/v1/topk", {"category": "h", "start": "now-1h", "end": "now", "k": "ten"}, ("k",)),
    ("strict-not-bool", "/v1/count", {"category": "h", "start": "now-1h", "end": "now", "strict": "maybe"},
     ("strict",)),
]  # fmt: skip


class Totals:
    """What was validly sent: count and sum per category."""

    def __init__(self) -> None:
        self.count: dict[str, int] = {}
        self.sum: dict[str, int] = {}

    def add(self, events: list[dict[str, object]]) -> None:
        for e in events:
            c = str(e["category"])
            self.count[c] = self.count.get(c, 0) + 1
            self.sum[c] = self.sum.get(c, 0) + int(e["value"])  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, Totals]]:
    data: Path = tmp_path_factory.mktemp("hostile")
    args = [
        "--max-body-bytes", str(MAX_BODY), "--max-rows", str(MAX_ROWS),
        "--max-decompressed-bytes", str(MAX_INFLATED), "--persist-interval-s", "2",
    ]  # fmt: skip
    with NodeProcess(data, args=args, name="hostile") as n:
        totals = Totals()
        with httpx.Client(base_url=n.url, timeout=30) as http:
            batches = [
                ([ev(value=i, producer_id=f"p{i % 7}") for i in range(100)], JSON, None, {}),
                ([ev(category="h2", value=-i) for i in range(50)], NDJSON, None, {}),
                ([ev(value=3)] * 20, JSON, "gzip", {"idempotency-key": REUSED_KEY}),
                ([ev(value=3)] * 20, JSON, "gzip", {"idempotency-key": REUSED_KEY}),  # a replay: stored once
            ]
            for i, (events, ctype, enc, headers) in enumerate(batches):
                body = b"\n".join(json.dumps(e).encode() for e in events) if ctype == NDJSON else js(*events)
                hdrs = {"content-type": ctype, **headers}
                if enc:
                    body, hdrs["content-encoding"] = gzip.compress(body), enc
                r = http.post("/v1/events", content=body, headers=hdrs)
                assert r.status_code == 200, r.text
                if i < 3:
                    totals.add(events)
            t = good_arrow(30)
            r = http.post("/v1/events", content=arrow(t), headers={"content-type": ARROW})
            assert r.status_code == 200, r.text
            totals.add(t.to_pylist())
        yield n, totals


def _check_problem(r: httpx.Response, status: int | None, says: tuple[str, ...]) -> None:
    assert r.status_code < 500, f"{r.status_code}: {r.text[:300]}"
    assert 400 <= r.status_code < 500, f"{r.status_code}: {r.text[:300]}"
    if status is not None:
        assert r.status_code == status, r.text[:300]
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers["content-type"]
    body = r.json()
    assert body["status"] == r.status_code
    assert body["type"].startswith("/problems/") and body["title"]
    detail = str(body["detail"]).lower()
    for word in says:
        assert word.lower() in detail, f"{word!r} not in detail {body['detail']!r}"


def test_there_are_at_least_30_malformed_ingest_cases() -> None:
    assert len(INGEST_CASES) >= 30 and len({c.id for c in INGEST_CASES}) == len(INGEST_CASES)


@pytest.mark.parametrize("case", INGEST_CASES, ids=lambda c: c.id)
def test_malformed_ingest_is_a_4xx_problem_naming_it(node: tuple[NodeProcess, Totals], case: Case) -> None:
    n, _ = node
    headers = dict(case.headers)
    if case.ctype is not None:
        headers["content-type"] = case.ctype
    r = httpx.post(n.url + "/v1/events", content=case.body, headers=headers, timeout=60)
    _check_problem(r, case.status, case.says)
    if case.status == 422 and case.says and case.says[0].startswith("event "):
        assert r.json()["row"] == int(case.says[0].split()[1]), "the problem names the row"


@pytest.mark.parametrize(("id_", "path", "params", "says"), QUERY_CASES, ids=[c[0] for c in QUERY_CASES])
def test_bad_query_parameters_are_a_400_problem_naming_them(
    node: tuple[NodeProcess, Totals], id_: str, path: str, params: dict[str, str], says: tuple[str, ...]
) -> None:
    n, _ = node
    r = httpx.get(n.url + path, params=params, timeout=30)
    _check_problem(r, 400, says)


def test_afterwards_the_stored_totals_equal_what_was_validly_sent(node: tuple[NodeProcess, Totals]) -> None:
    n, totals = node
    with httpx.Client(base_url=n.url, timeout=30) as http:
        assert http.get("/health").status_code == 200
        for cat in ["h", "h2", "never-sent"]:
            params = {"category": cat, "start": "0", "end": str(NOW + 86_400 * 10**9)}
            assert http.get("/v1/count", params=params).json()["value"] == totals.count.get(cat, 0), cat
            assert http.get("/v1/sum", params=params).json()["value"] == totals.sum.get(cat, 0), cat
        assert http.get("/v1/stats").json()["events_total"] == sum(totals.count.values())
