"""``tributary cluster up``: a supervised local cluster in one terminal; Ctrl-C stops it all."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.integration.cluster_support import poll
from tests.support.process import REPO

pytestmark = pytest.mark.integration


def _two_free_ports() -> int:
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            base = int(a.getsockname()[1])
            try:
                with socket.socket() as b:
                    b.bind(("127.0.0.1", base + 1))
                    return base
            except OSError:
                continue
    raise RuntimeError("no two consecutive free ports")


def test_cluster_up_runs_prefixed_nodes_and_ctrl_c_stops_them(tmp_path: Path) -> None:
    base = _two_free_ports()
    cmd = [
        sys.executable, "-m", "web.cli", "cluster", "up", "--nodes", "2", "--rf", "2",
        "--base-port", str(base), "--data", str(tmp_path), "--", "--no-fsync", "--probe-interval-s", "0.2",
    ]  # fmt: skip
    log = open(tmp_path / "up.log", "wb")  # noqa: SIM115 - the child writes to it until it exits
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("TRIBUTARY_CLUSTER_SECRET", None)  # the supervisor makes one up
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    urls = [f"http://127.0.0.1:{base}", f"http://127.0.0.1:{base + 1}"]
    try:

        def both_serving() -> bool:
            return all(httpx.get(u + "/health", timeout=2).json().get("serving") for u in urls)

        poll("both nodes serving", both_serving, 60)
        info = httpx.get(urls[0] + "/v1/cluster", timeout=5).json()
        assert [n["node_id"] for n in info["nodes"]] == ["n1", "n2"] and info["rf"] == 2
        # The children got a secret: the internal routes refuse callers without it.
        assert httpx.get(urls[1] + "/internal/map", timeout=5).status_code == 401
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        proc.wait(60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    text = (tmp_path / "up.log").read_text(errors="replace")
    assert "  n1 | " in text and "  n2 | " in text
    assert "stopping all nodes" in text
    for u in urls:
        with pytest.raises(httpx.HTTPError):
            httpx.get(u + "/health", timeout=1)
