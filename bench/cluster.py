"""``uv run python -m bench.cluster``: workload W20 through a 3-node RF=2 cluster on this machine.

    uv run python -m bench.cluster                       # 2M events of W20 (a few minutes)
    uv run python -m bench.cluster --events 20000000     # the full W20

Same workload, bodies, clients and queries as ``bench.run``. Steps: a single node takes 90% of
the events (the reference, measured in this same run); then a cluster of ``--nodes`` nodes with
``--rf`` takes the same 90% through one coordinator (n1); both answer the same queries, the
cluster through another coordinator (n2), each query asked of the single node and of the
cluster in turn (``loader.run_side_by_side``) — every answer must equal the single node's; then one
node is killed (``kill -9``), the last 10% are ingested without it, it is restarted on its data
directory, and the time until every replica holds the same batches is measured; finally a node
joins and the shards that moved, the rows shipped and the time to settle are measured. The
section is written to ``bench/RESULTS.md`` (``<!-- bench:cluster-... -->``).

All nodes share the machine's cores: the cluster's figures show the cost of replication and
coordination on one box, not the scaling of several.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench import loader
from bench.queries import KINDS, RANGES, Query, compare, latency_cells, make_queries
from bench.report import update_results
from bench.server import DEFAULT_COMMAND, ServerProcess, disk_usage, wait_compacted, wait_persisted
from bench.workload import Workload, chunk_paths, ensure

__all__ = ["main"]

BENCH_DIR = Path(__file__).resolve().parent
OUT_DIR = BENCH_DIR / "out"
SECRET_HEADER = "X-Tributary-Secret"


def _log(message: str) -> None:
    print(f"[bench.cluster {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.cluster", description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=2_000_000, help="workload size (default 2M)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--queries", type=int, default=30, help="queries per (kind, range) cell")
    p.add_argument("--clients", type=int, default=3, help="concurrent ingest client processes")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--rf", type=int, default=2)
    p.add_argument("--results", type=Path, default=BENCH_DIR / "RESULTS.md", help="Markdown file to update")
    return p.parse_args(argv)


class Cluster:
    """``n`` serve processes with one peer list and one secret (from the environment)."""

    def __init__(self, root: Path, n: int, rf: int) -> None:
        self.rf = rf
        self.root = root
        self.nodes = {f"n{i + 1}": ServerProcess(root / f"n{i + 1}") for i in range(n)}
        peers = ",".join(f"{k}={s.url}" for k, s in self.nodes.items())
        for k, s in self.nodes.items():
            s.command = f"{DEFAULT_COMMAND} --node-id {k} --peers {peers} --rf {rf} --repair-interval-s 2"

    def start(self) -> None:
        for s in self.nodes.values():
            s.start()
        self.wait("every node serving", self.serving, 120)

    def stop(self) -> None:
        for s in self.nodes.values():
            s.stop()

    def add(self, name: str) -> ServerProcess:
        s = ServerProcess(self.root / name)
        s.command = f"{DEFAULT_COMMAND} --node-id {name} --rf {self.rf} --repair-interval-s 2"
        s.start()
        self.nodes[name] = s
        return s

    def live(self) -> list[ServerProcess]:
        return [s for s in self.nodes.values() if s.proc is not None and s.proc.poll() is None]

    def serving(self) -> bool:
        return all(httpx.get(s.url + "/health", timeout=5).json().get("serving") for s in self.live())

    def info(self, s: ServerProcess) -> dict[str, Any]:
        out: dict[str, Any] = httpx.get(s.url + "/v1/cluster", timeout=10).json()
        return out

    def converged(self) -> bool:
        live = self.live()
        info = self.info(live[0])
        if info["in_transition"] or any(self.info(s)["epoch"] != info["epoch"] for s in live):
            return False
        secret = os.environ["TRIBUTARY_CLUSTER_SECRET"]
        digests = {}
        for name, s in self.nodes.items():
            if s in live:
                got = httpx.post(
                    s.url + "/internal/digests",
                    json={"shards": None, "level": "shard"},
                    headers={SECRET_HEADER: secret},
                    timeout=30,
                ).json()["digests"]
                digests[name] = {int(x[0]): (x[1], x[2]) for x in got}
        for shard, replicas in enumerate(info["replicas"]):
            if len({str(digests[r].get(shard)) for r in replicas if r in digests}) > 1:
                return False
        return True

    def stats_sum(self, field: str) -> int:
        return sum(int(httpx.get(s.url + "/v1/stats", timeout=10).json().get(field, 0)) for s in self.live())

    @staticmethod
    def wait(what: str, check: Any, timeout: float) -> float:
        t0 = time.monotonic()
        while True:
            try:
                if check():
                    return time.monotonic() - t0
            except httpx.HTTPError:
                pass
            if time.monotonic() - t0 > timeout:
                raise SystemExit(f"BENCH ABORTED: {what} not reached in {timeout}s")
            time.sleep(0.2)


def _cells(queries: list[Query], latencies: list[float]) -> dict[tuple[str, str], Any]:
    return latency_cells(queries, latencies)


def _section(name: str, r: dict[str, Any]) -> str:
    single, cluster, alone = r["single_cells"], r["cluster_cells"], r["alone_cells"]
    rows = []
    for kind in KINDS:
        for rng in RANGES:
            s, c, a = single.get((kind, rng)), cluster.get((kind, rng)), alone.get((kind, rng))
            if s and c and a:
                rows.append(
                    f"| {kind} {rng} | {s.p50_ms:.1f} / {s.p95_ms:.1f} ms | {c.p50_ms:.1f} / {c.p95_ms:.1f} ms | "
                    f"{c.p50_ms / max(s.p50_ms, 1e-9):.2f} | {a.p50_ms:.1f} / {a.p95_ms:.1f} ms | "
                    f"{c.p50_ms / max(a.p50_ms, 1e-9):.2f} |"
                )
    return "\n".join(
        [
            f"<!-- bench:{name} -->",
            f"## {name}: {r['events']:,} events through {r['nodes']} nodes, rf={r['rf']}",
            "",
            f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
            f"- command: `{r['command']}`",
            f"- machine: {os.cpu_count()} cores shared by every node, the clients and the bench",
            f"- correctness: {r['queries']} queries through n2, {r['mismatches']} answers differ from the single "
            f"node; after the join n4 and n1 differ on {r['after_join_mismatches']} of 60",
            f"- load average (1 min) at start {r['load'][0]:.1f}, at end {os.getloadavg()[0]:.1f}",
            "",
            "| figure | single node | cluster |",
            "|---|---|---|",
            f"| ingest, arrow, {r['ingest_events']:,} events via n1 | {r['single_eps']:,.0f} ev/s | "
            f"{r['cluster_eps']:,.0f} ev/s |",
            f"| disk after ingest | {r['single_disk'] / 1e6:,.0f} MB | {r['cluster_disk'] / 1e6:,.0f} MB (all nodes) |",
            "",
            "Single node and cluster asked each query in turn (the same moments); the single node also "
            "alone, before the cluster started (the machine to itself, minutes earlier):",
            "",
            "| query (p50 / p95 through a coordinator) | single node | cluster | cluster / single | "
            "single node alone | cluster / single alone |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            "| fault or change | measured |",
            "|---|---|",
            f"| kill -9 of n3, {r['tail_events']:,} events ingested while down, restart | converged "
            f"{r['converge_s']:.1f} s after the restart ({r['hints']} hints replayed) |",
            f"| n4 joins | {r['moved']} of {r['shards']} shards changed replicas (rf/n predicts "
            f"{r['shards'] * r['rf'] / (r['nodes'] + 1):.0f}); {r['shipped']:,} rows shipped; "
            f"settled in {r['join_s']:.1f} s |",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    load = os.getloadavg()
    workload = Workload(events=args.events, seed=args.seed)
    data = ensure(workload)
    queries = make_queries(workload, args.queries, args.seed)
    batches = loader.plan(
        chunk_paths(data), 0, workload.events, 2 * workload.row_group_rows, "arrow", data / "bodies", workload.name
    )
    cut = max(1, len(batches) * 9 // 10)
    head, tail = batches[:cut], batches[cut:]
    out = OUT_DIR / workload.name / "cluster"
    shutil.rmtree(out, ignore_errors=True)
    os.environ.setdefault("TRIBUTARY_CLUSTER_SECRET", secrets.token_urlsafe(24))
    command = " ".join(["uv run python -m bench.cluster", shlex.join(argv if argv is not None else sys.argv[1:])])
    r: dict[str, Any] = {"events": workload.events, "nodes": args.nodes, "rf": args.rf, "load": load}
    r["command"] = command.strip()

    _log("single node: ingest (the reference)")
    single = ServerProcess(out / "single")
    single.start()
    cluster = Cluster(out, args.nodes, args.rf)
    try:
        with loader.ClientPool(single.url, args.clients) as pool:
            pool.prepare(batches)
            res = pool.ingest(head)
        r["single_eps"], r["ingest_events"] = res.events_per_s, res.events
        _log(f"single node: {res.events:,} events in {res.seconds:.1f}s = {res.events_per_s:,.0f} ev/s")
        if wait_persisted([single.url]) is None:
            raise SystemExit("BENCH ABORTED: the single node did not persist in 300s")
        # Queried at rest, as bench.run does: once background compaction has settled.
        _log(f"single node: compaction settled after {wait_compacted([single.url])} s")
        r["single_disk"] = disk_usage(out / "single")
        r["alone_cells"] = _cells(queries, loader.run_queries(single.url, queries).latencies_ms)

        _log(f"cluster: starting {args.nodes} nodes, rf={args.rf}")
        cluster.start()
        n1, n2, n3 = (cluster.nodes[k] for k in ("n1", "n2", "n3"))
        with loader.ClientPool(n1.url, args.clients) as pool:
            res = pool.ingest(head)
            r["cluster_eps"] = res.events_per_s
            _log(f"cluster: {res.events:,} events in {res.seconds:.1f}s = {res.events_per_s:,.0f} ev/s via n1")
            # Queried once everything acknowledged is on disk and compacted, on both sides (as
            # bench.run does); the single node (idle meanwhile) and the cluster are asked each
            # query in turn, so their ratio compares the same moments of a shared machine.
            if wait_persisted([s.url for s in cluster.live()]) is None:
                raise SystemExit("BENCH ABORTED: the cluster did not persist in 300s")
            _log(f"cluster: compaction settled after {wait_compacted([s.url for s in cluster.live()])} s")
            ref, run = loader.run_side_by_side([single.url, n2.url], queries)
            single.stop()
            r["single_cells"] = _cells(queries, ref.latencies_ms)
            r["cluster_cells"] = _cells(queries, run.latencies_ms)
            r["queries"], r["mismatches"] = len(queries), len(compare(queries, ref.answers, run.answers))
            _log(f"cluster: {len(queries)} queries via n2, {r['mismatches']} mismatches against the single node")
            r["cluster_disk"] = sum(disk_usage(s.data_dir) for s in cluster.nodes.values())

            _log("cluster: kill -9 n3, ingest the last 10%, restart n3")
            assert n3.proc is not None
            os.killpg(n3.proc.pid, signal.SIGKILL)
            n3.proc.wait()
            r["tail_events"] = pool.ingest(tail).events if tail else 0
        replayed0 = cluster.stats_sum("hints_replayed")
        n3.start()
        t0 = time.monotonic()
        cluster.wait("replicas converge after the restart", cluster.converged, 600)
        r["converge_s"] = time.monotonic() - t0
        r["hints"] = cluster.stats_sum("hints_replayed") - replayed0
        _log(f"cluster: converged {r['converge_s']:.1f}s after restarting n3")

        before = cluster.info(n1)
        shipped0 = cluster.stats_sum("repair_shipped_rows")
        n4 = cluster.add("n4")
        t0 = time.monotonic()
        httpx.post(n1.url + "/v1/cluster/nodes", json={"node_id": "n4", "url": n4.url}, timeout=30).raise_for_status()
        cluster.wait(
            "the join settles", lambda: cluster.info(n1)["epoch"] > before["epoch"] + 1 and cluster.converged(), 1800
        )
        r["join_s"] = time.monotonic() - t0
        after = cluster.info(n1)
        r["shards"] = len(after["replicas"])
        r["moved"] = sum(1 for a, b in zip(before["replicas"], after["replicas"], strict=True) if set(a) != set(b))
        r["shipped"] = cluster.stats_sum("repair_shipped_rows") - shipped0
        _log(f"cluster: n4 joined in {r['join_s']:.1f}s, {r['moved']} shards moved, {r['shipped']:,} rows shipped")
        sample = queries[: min(60, len(queries))]  # after the join, n4 (new) and n1 must agree
        r["after_join_mismatches"] = len(
            compare(sample, loader.run_queries(n1.url, sample).answers, loader.run_queries(n4.url, sample).answers)
        )
    finally:
        cluster.stop()
        single.stop()
    section = _section(f"cluster-{workload.name}", r)
    print(section)
    update_results(args.results, f"cluster-{workload.name}", section)
    return 1 if r["mismatches"] or r["after_join_mismatches"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
