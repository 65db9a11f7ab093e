"""A real Prometheus scrapes a real node on loopback and sees exactly the events that were sent."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pyarrow as pa
import pytest

from storage.schema import EVENT_SCHEMA
from tests.support.process import NodeFactory, free_port

pytestmark = pytest.mark.integration

PROMETHEUS = shutil.which("prometheus")


@pytest.fixture
def prometheus(tmp_path: Path) -> tuple[str, Path]:
    """(url, config path) for a Prometheus on a free loopback port, started by the test."""
    if PROMETHEUS is None:
        pytest.skip("the prometheus binary is not installed (apt-get install prometheus; .ci/run does)")
    return f"http://127.0.0.1:{free_port()}", tmp_path / "prometheus.yml"


def _start_prometheus(url: str, cfg: Path, tmp_path: Path) -> subprocess.Popen[bytes]:
    assert PROMETHEUS is not None
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={cfg}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address={url.removeprefix('http://')}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _query(http: httpx.Client, expr: str) -> float | None:
    r = http.get("/api/v1/query", params={"query": expr})
    if r.status_code != 200:
        return None
    result = r.json()["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def _arrow(n: int) -> bytes:
    now = time.time_ns()
    t = pa.table(
        {
            "timestamp": pa.array([now - i for i in range(n)], pa.int64()),
            "category": ["m"] * n,
            "value": pa.array(range(n), pa.int64()),
            "producer_id": [f"p{i % 13}" for i in range(n)],
        },
        schema=EVENT_SCHEMA,
    )
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, EVENT_SCHEMA) as w:
        w.write_table(t)
    return sink.getvalue()


def test_prometheus_scrapes_the_ingested_events_counter(
    node_factory: NodeFactory, prometheus: tuple[str, Path], tmp_path: Path
) -> None:
    prom_url, cfg = prometheus
    node = node_factory("scraped")
    cfg.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: tributary\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{node.port}']\n"
    )
    proc = _start_prometheus(prom_url, cfg, tmp_path)
    try:
        sent = 0
        with httpx.Client(base_url=node.url, timeout=30) as http:
            for i in range(5):
                events = [
                    {"timestamp": time.time_ns(), "category": "m", "value": j, "producer_id": f"p{j}"}
                    for j in range(100 + i)
                ]
                r = http.post("/v1/events", content=json.dumps(events), headers={"content-type": "application/json"})
                assert r.status_code == 200, r.text
                sent += len(events)
            r = http.post(
                "/v1/events", content=_arrow(250), headers={"content-type": "application/vnd.apache.arrow.stream"}
            )
            assert r.status_code == 200, r.text
            sent += 250
            r = http.post("/v1/events", content=b"[", headers={"content-type": "application/json"})
            assert r.status_code == 400

        deadline = time.monotonic() + 90
        seen: dict[str, float | None] = {}
        with httpx.Client(base_url=prom_url, timeout=5) as prom:
            while True:
                assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
                try:
                    seen = {
                        "ingested": _query(prom, 'sum(tributary_ingest_events_total{job="tributary"})'),
                        "arrow": _query(prom, 'tributary_ingest_events_total{job="tributary",format="arrow"}'),
                        "stored": _query(prom, 'tributary_stored_events_total{job="tributary"}'),
                        "refused": _query(prom, 'tributary_ingest_refused_batches_total{reason="malformed-body"}'),
                        "up": _query(prom, 'up{job="tributary"}'),
                    }
                except httpx.HTTPError:
                    seen = {}
                if seen.get("ingested") == sent:
                    break
                assert time.monotonic() < deadline, f"Prometheus never saw {sent} events: {seen}"
                time.sleep(0.5)
            assert seen == {"ingested": sent, "arrow": 250, "stored": sent, "refused": 1, "up": 1}
            targets = prom.get("/api/v1/targets").json()["data"]["activeTargets"]
            assert [(t["health"], t["lastError"]) for t in targets] == [("up", "")]
    finally:
        proc.kill()
        proc.wait(30)
