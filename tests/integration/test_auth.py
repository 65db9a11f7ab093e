"""Authentication on a real node: every /v1 route of the OpenAPI schema needs a token of the
right scope, probes stay open, and serve refuses to go on the network without tokens."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.process import REPO, NodeFactory, free_port

pytestmark = pytest.mark.integration

ING, QRY, ADM = "ingest-0123456789abcdef", "query-0123456789abcdef", "admin-0123456789abcdef"
ENV = {"TRIBUTARY_TOKENS": f"{ING} ingest; {QRY} query; {ADM} admin"}


def _h(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _event() -> bytes:
    return json.dumps([{"timestamp": time.time_ns(), "category": "a", "value": 1, "producer_id": "p"}]).encode()


def test_scopes_on_a_real_node(node_factory: NodeFactory) -> None:
    node = node_factory("auth", env=ENV)
    with httpx.Client(base_url=node.url, timeout=30) as http:
        post = {"content": _event(), "headers": {"content-type": "application/json"}}
        r = http.post("/v1/events", **post)  # type: ignore[arg-type]
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert r.headers["content-type"].startswith("application/problem+json")
        assert (
            http.post(
                "/v1/events", content=_event(), headers={"content-type": "application/json", **_h(QRY)}
            ).status_code
            == 403
        )
        assert (
            http.post(
                "/v1/events", content=_event(), headers={"content-type": "application/json", **_h(ING)}
            ).status_code
            == 200
        )
        q = {"category": "a", "start": "now-1h", "end": "now+1h"}
        assert http.get("/v1/count", params=q).status_code == 401
        assert http.get("/v1/count", params=q, headers=_h(ING)).status_code == 403
        assert http.get("/v1/count", params=q, headers=_h(QRY)).json()["value"] == 1
        assert http.get("/v1/count", params=q, headers=_h(ADM)).json()["value"] == 1
        assert http.post("/v1/admin/persist", headers=_h(QRY)).status_code == 403
        assert http.post("/v1/admin/persist", headers=_h(ADM)).status_code == 200
        for open_path in ["/health", "/ready", "/metrics", "/schema/openapi.json"]:
            assert http.get(open_path).status_code == 200, open_path


def test_every_v1_route_in_the_schema_is_guarded(node_factory: NodeFactory) -> None:
    """Routes added later (SQL, export, tables, cluster) are covered by the path rule: walk the
    schema and check that no /v1 operation answers without a token, nor with a wrong scope."""
    node = node_factory("guarded", env=ENV)
    with httpx.Client(base_url=node.url, timeout=30) as http:
        schema = http.get("/schema/openapi.json").json()
        checked = 0
        for path, ops in schema["paths"].items():
            if not path.startswith("/v1/"):
                continue
            concrete = path.replace("{", "").replace("}", "")
            for method in ops:
                if method.upper() not in {"GET", "POST", "PUT", "PATCH", "DELETE"}:
                    continue
                r = http.request(method.upper(), concrete)
                assert r.status_code == 401, f"{method.upper()} {path} answered {r.status_code} without a token"
                wrong = ING if not path.startswith("/v1/events") else QRY
                r = http.request(method.upper(), concrete, headers=_h(wrong))
                assert r.status_code == 403, f"{method.upper()} {path} answered {r.status_code} to a wrong scope"
                checked += 1
        assert checked >= 5


def test_metrics_auth_and_a_tokens_file(node_factory: NodeFactory, tmp_path: Path) -> None:
    f = tmp_path / "tokens.txt"
    f.write_text(f"# scrape and query\n{QRY} query\n{ING} ingest\n")
    node = node_factory("metrics-auth", args=["--tokens-file", str(f), "--metrics-auth"])
    with httpx.Client(base_url=node.url, timeout=30) as http:
        assert http.get("/metrics").status_code == 401
        assert http.get("/metrics", headers=_h(ING)).status_code == 403
        r = http.get("/metrics", headers=_h(QRY))
        assert r.status_code == 200 and "tributary_ingest_events_total" in r.text
        assert http.get("/health").status_code == 200


def _serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    cmd = [sys.executable, "-m", "web.cli", "serve", "--port", str(free_port()), "--data", str(tmp_path / "d"), *args]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TRIBUTARY_")} | (env or {})
    return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_serve_refuses_a_public_address_without_tokens(tmp_path: Path, host: str) -> None:
    done = _serve(tmp_path, "--host", host)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "refusing to serve" in done.stderr and "--insecure" in done.stderr


def test_serve_refuses_malformed_tokens(tmp_path: Path) -> None:
    done = _serve(tmp_path, "--host", "127.0.0.1", env={"TRIBUTARY_TOKENS": "short ingest"})
    assert done.returncode == 2
    assert "TRIBUTARY_TOKENS" in done.stderr and "16 characters" in done.stderr
    done = _serve(tmp_path, "--host", "127.0.0.1", "--tokens-file", str(tmp_path / "nope"))
    assert done.returncode == 2 and "cannot read" in done.stderr


def test_the_loopback_demo_stays_open(node_factory: NodeFactory) -> None:
    node = node_factory("open")
    r = httpx.post(node.url + "/v1/events", content=_event(), headers={"content-type": "application/json"})
    assert r.status_code == 200
