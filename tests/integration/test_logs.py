"""A real node's log: JSON lines, one access line per request under the id the caller sees,
and no event payload anywhere, accepted or refused."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.support.process import NodeFactory

pytestmark = pytest.mark.integration

MARK = "PAYLOAD-MARK-91c4"


def test_request_ids_and_no_payloads_in_the_log(node_factory: NodeFactory) -> None:
    node = node_factory("logs", args=["--log-format", "json"])
    event = {"timestamp": time.time_ns(), "category": f"{MARK}-cat", "value": 7, "producer_id": f"{MARK}-prod"}
    with httpx.Client(base_url=node.url, timeout=30) as http:
        ok = http.post(
            "/v1/events",
            content=json.dumps([event]),
            headers={"content-type": "application/json", "x-request-id": "caller-chosen-1"},
        )
        assert ok.status_code == 200 and ok.headers["x-request-id"] == "caller-chosen-1"
        bad = http.post(
            "/v1/events", content=json.dumps([{**event, "value": MARK}]), headers={"content-type": "application/json"}
        )
        assert bad.status_code == 422
        q = http.get("/v1/count", params={"category": f"{MARK}-cat", "start": "now-1h", "end": "now+1h"})
        assert q.json()["value"] == 1
        ids = [bad.headers["x-request-id"], q.headers["x-request-id"]]
    node.close()  # flush and stop, so the log is complete
    lines = [json.loads(x) for x in node.log_path.read_text().splitlines() if x.startswith("{")]
    access = {e["request_id"]: e for e in lines if e.get("event") == "request"}
    assert access["caller-chosen-1"]["status"] == 200 and access["caller-chosen-1"]["path"] == "/v1/events"
    assert access[ids[0]]["status"] == 422
    assert access[ids[1]]["status"] == 200 and access[ids[1]]["path"] == "/v1/count"
    assert all({"timestamp", "level", "event"} <= set(e) for e in lines)
    assert MARK not in node.log_path.read_text()
