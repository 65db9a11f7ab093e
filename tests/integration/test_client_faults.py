"""The producer client against a real node on an unreliable network: nothing lost, nothing doubled.

- 100k events through the fault proxy (10 % of requests lost before the server, 10 % whose
  response is lost after the server committed, 10 % truncated responses, 10 % delayed).
- The node frozen (SIGSTOP) and then gone while a producer process sends with a spool; the
  producer process restarted in the middle; the node returns.
- The node killed (SIGKILL) and restarted while a producer sends.

Each ends with count and sum per category equal to a DuckDB oracle over the events sent, and
prints the delivery figures (run with ``-s`` to see them).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest

from ingest.client import Producer, ProducerStats
from storage.schema import HOUR_NS
from tests.eventgen import T0, Oracle, random_events
from tests.support.faultproxy import FaultProxy
from tests.support.process import REPO, NodeFactory, NodeProcess

pytestmark = pytest.mark.integration

CATEGORIES = 5
SPAN = 3 * HOUR_NS


def assert_matches_oracle(node: NodeProcess, events: pa.Table) -> None:
    oracle = Oracle([events])
    with httpx.Client(base_url=node.url, timeout=60) as http:
        for c in range(CATEGORIES):
            params = {"category": f"c{c}", "start": T0, "end": T0 + SPAN}
            count = http.get("/v1/count", params=params).raise_for_status().json()
            total = http.get("/v1/sum", params=params).raise_for_status().json()
            assert (count["value"], total["value"]) == oracle.aggregate(f"c{c}", T0, T0 + SPAN), f"category c{c}"
            assert not count["partial"] and not total["partial"]


def figures(title: str, stats: ProducerStats | dict[str, Any]) -> str:
    s = stats if isinstance(stats, dict) else asdict(stats)
    keys = ("sent", "acknowledged", "retried", "duplicates", "spooled", "replayed", "failed", "dropped", "requests")
    return f"{title}: " + ", ".join(f"{k} {s[k]:,}" for k in keys)


@pytest.mark.parametrize(("fmt", "n"), [("arrow", 100_000), ("json", 20_000)])
def test_events_through_a_faulty_network_arrive_exactly_once(node_factory: NodeFactory, fmt: str, n: int) -> None:
    node = node_factory("n1")
    events = random_events(random.Random(4), n, categories=CATEGORIES, span=SPAN)
    faults = {"reset_before": 0.1, "reset_after_forward": 0.1, "truncate_response": 0.1, "delay": 0.1}
    # discover=False: the cluster map would teach the client the node's own URL, past the proxy.
    config = {"format": fmt, "batch_events": 500, "discover": False, "backoff_base_s": 0.01, "backoff_cap_s": 0.2}
    with (
        FaultProxy("127.0.0.1", node.port, seed=4, delay_s=0.02, **faults) as proxy,
        Producer(proxy.url, **config) as producer,
    ):
        head = n // 10  # a tenth as dicts, one at a time; the rest as Arrow tables
        for row in events.slice(0, head).to_pylist():
            producer.send(row)
        producer.send_many(events.slice(head))
        assert producer.flush(240)
        stats = producer.stats
    print(f"\n{figures(f'{n:,} {fmt} events through the fault proxy', stats)}; proxy {proxy.counts}")
    assert (stats.sent, stats.acknowledged, stats.failed, stats.dropped) == (n, n, 0, 0)
    assert min(proxy.counts[k] for k in faults) > 0  # every kind of fault did happen
    assert stats.duplicates > 0  # lost responses after commit were retried and recognised
    assert_matches_oracle(node, events)


PRODUCER = r"""
import json, logging, sys
import pyarrow as pa
from dataclasses import asdict
from ingest.client import Producer

logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
url, spool, path, config = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
with pa.OSFile(path) as f:
    rows = pa.ipc.open_file(f).read_all().to_pylist()
producer = Producer(url, spool_dir=spool, **config)
for line in sys.stdin:
    cmd = json.loads(line)
    ok = None
    if cmd["op"] == "send":
        for row in rows[cmd["lo"]:cmd["hi"]]:
            producer.send(row)
    elif cmd["op"] == "flush":
        ok = producer.flush(cmd["timeout"])
    elif cmd["op"] == "close":
        producer.close(cmd["timeout"])
    print(json.dumps({"ok": ok, "stats": asdict(producer.stats)}), flush=True)
    if cmd["op"] == "close":
        break
"""


class ProducerProcess:
    """A producer in its own process, driven one JSON command per line."""

    def __init__(self, url: str, spool: Path, events_path: Path, config: dict[str, Any], log: Path) -> None:
        self._log = open(log, "ab")  # noqa: SIM115 - the child's stderr for its whole life
        args = [sys.executable, "-c", PRODUCER, url, str(spool), str(events_path), json.dumps(config)]
        self.proc = subprocess.Popen(
            args, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True
        )

    def call(self, op: str, **kw: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"producer process exited with {self.proc.wait()}"
        return json.loads(line)

    def close(self, timeout: float) -> dict[str, Any]:
        answer = self.call("close", timeout=timeout)
        assert self.proc.wait(30) == 0
        self._log.close()
        return answer

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def test_producer_offline_and_restarted_with_a_spool_delivers_exactly_once(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    node = node_factory("n1")
    n = 30_000
    events = random_events(random.Random(11), n, categories=CATEGORIES, span=SPAN)
    path = tmp_path / "events.arrow"
    with pa.OSFile(str(path), "wb") as f, pa.ipc.new_file(f, events.schema) as w:
        w.write_table(events)
    spool = tmp_path / "spool"
    config = {
        "discover": False,
        "batch_events": 500,
        "request_timeout_s": 2.0,
        "connect_timeout_s": 1.0,
        "spool_after_s": 2.0,
        "probe_interval_s": 0.1,
        "backoff_base_s": 0.02,
        "backoff_cap_s": 0.5,
    }
    procs: list[ProducerProcess] = []

    def producer(name: str) -> ProducerProcess:
        procs.append(ProducerProcess(node.url, spool, path, config, tmp_path / f"{name}.log"))
        return procs[-1]

    try:
        first = producer("first")
        first.call("send", lo=0, hi=8_000)
        assert first.call("flush", timeout=60)["ok"]

        node.stop()  # frozen: connections open, requests time out, nothing answers
        first.call("send", lo=8_000, hi=16_000)
        assert not first.call("flush", timeout=3)["ok"]
        a = first.close(timeout=0)["stats"]  # what is undelivered goes to the spool
        assert a["spooled"] > 0 and a["spool_files"] > 0 and a["failed"] == 0

        node.cont()
        node.terminate()  # and now gone: connections refused
        second = producer("second")  # the restarted producer process, same spool
        second.call("send", lo=16_000, hi=24_000)
        assert not second.call("flush", timeout=2)["ok"]

        node.start().wait_ready()
        second.call("send", lo=24_000, hi=n)
        assert second.call("flush", timeout=120)["ok"]
        b = second.close(timeout=10)["stats"]
    finally:
        for p in procs:
            p.kill()
    print(
        f"\n{figures('producer process 1 (node frozen)', a)}\n{figures('producer process 2 (node down, returns)', b)}"
    )
    assert a["sent"] + b["sent"] == n
    assert b["spool_files"] == 0 and b["failed"] == a["failed"] == 0
    assert b["replayed"] >= a["spooled"] - a["replayed"]  # the second process delivered the first's leftovers
    assert not list(spool.glob("*.spool"))
    assert_matches_oracle(node, events)


def test_node_killed_while_sending_loses_and_doubles_nothing(node_factory: NodeFactory) -> None:
    node = node_factory("n1")
    n = 50_000
    events = random_events(random.Random(23), n, categories=CATEGORIES, span=SPAN)
    with Producer(node.url, batch_events=500, discover=False, backoff_base_s=0.02, backoff_cap_s=0.5) as producer:
        sender = threading.Thread(target=producer.send_many, args=(events,))
        sender.start()
        deadline = time.monotonic() + 60
        while producer.stats.acknowledged < n // 5:  # kill it mid-stream, not before or after
            assert time.monotonic() < deadline
            time.sleep(0.01)
        node.kill()
        node.start().wait_ready()
        sender.join(120)
        assert producer.flush(120)
        stats = producer.stats
    print(f"\n{figures('node killed and restarted mid-stream', stats)}")
    assert (stats.acknowledged, stats.failed) == (n, 0)
    assert_matches_oracle(node, events)
