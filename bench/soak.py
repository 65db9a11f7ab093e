"""``just soak``: a long steady ingest with queries beside it; does memory stay flat?

    uv run python -m bench.soak                          # 10 minutes (the issue's soak)
    uv run python -m bench.soak --duration-s 120         # a shorter run

Steps: start ``tributary serve`` on a fresh data directory; measure the maximum ingest rate for
``--calibrate-s`` seconds (``--senders`` threads posting Arrow batches as fast as they are
answered, backing off on 503: the sustained rate, persists included); then for ``--duration-s``
seconds ingest at ``--fraction`` of that rate (paced) while one thread runs count / sum / top-k
queries at ``--qps``. Every ``--sample-s`` seconds the server's RSS (its whole process tree), the
ingest rate achieved, and the ingest and query latency percentiles of that window are recorded.
The section goes to ``bench/SOAK.md`` with a chart (``bench/soak.png``); the verdict compares
the RSS of the last third with the middle third.
Every batch must be acknowledged in full, or the run aborts.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import shutil
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pyarrow as pa

from bench.queries import percentile
from bench.server import RssSampler, ServerProcess
from storage.schema import EVENT_SCHEMA
from web.workload import Workload, WorkloadConfig

__all__ = ["main"]

BENCH_DIR = Path(__file__).resolve().parent
ARROW = "application/vnd.apache.arrow.stream"
MB = 1 << 20


def _body(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, EVENT_SCHEMA) as w:
        w.write_table(table)
    return sink.getvalue()


@dataclass
class Window:
    """What happened in one sampling window (appended to by several threads under ``lock``)."""

    events: int = 0
    ingest_ms: list[float] = field(default_factory=list)
    query_ms: list[float] = field(default_factory=list)
    refused: int = 0
    query_errors: int = 0


@dataclass(frozen=True)
class Sample:
    t_s: float
    rss_mb: float
    events_per_s: float
    ingest_p50_ms: float
    ingest_p99_ms: float
    query_p50_ms: float
    query_p99_ms: float
    queries: int
    refused: int
    buffer_mb: float
    parts: int


class Soak:
    def __init__(self, url: str, args: argparse.Namespace) -> None:
        self.url = url
        self.args = args
        self.lock = threading.Lock()
        self.window = Window()
        self.stop = threading.Event()
        self.total_events = 0
        self.errors: list[str] = []

    def _take(self) -> Window:
        with self.lock:
            w, self.window = self.window, Window()
            return w

    def sender(self, seed: int, rate: float | None, until: float) -> None:
        """Post Arrow batches until ``until`` (monotonic); paced to ``rate`` events/s if given."""
        wl = Workload(WorkloadConfig(seed=seed))
        n = self.args.batch
        sent = 0
        t0 = time.monotonic()
        with httpx.Client(base_url=self.url, timeout=120) as http:
            while not self.stop.is_set() and time.monotonic() < until:
                now = time.time_ns()
                body = _body(wl.batch(n, now - 60 * 10**9, now))
                t = time.perf_counter()
                r = http.post("/v1/events", content=body, headers={"content-type": ARROW})
                ms = (time.perf_counter() - t) * 1000
                if r.status_code in (429, 503):
                    with self.lock:
                        self.window.refused += 1
                    time.sleep(float(r.headers.get("retry-after", "1")))
                    continue
                if r.status_code != 200 or r.json().get("accepted") != n:
                    self.errors.append(f"ingest answered {r.status_code}: {r.text[:300]}")
                    self.stop.set()
                    return
                sent += n
                with self.lock:
                    self.window.events += n
                    self.window.ingest_ms.append(ms)
                    self.total_events += n
                if rate:
                    ahead = t0 + sent / rate - time.monotonic()
                    if ahead > 0:
                        self.stop.wait(ahead)

    def querier(self, until: float) -> None:
        rng = random.Random(7)
        kinds = ["count", "sum", "topk"]
        spans = ["now-1m", "now-15m", "now-1h"]
        with httpx.Client(base_url=self.url, timeout=120) as http:
            while not self.stop.is_set() and time.monotonic() < until:
                kind = rng.choice(kinds)
                params = {"category": f"cat{rng.randrange(20):02d}", "start": rng.choice(spans), "end": "now"}
                if kind == "topk":
                    params["k"] = "10"
                t = time.perf_counter()
                r = http.get(f"/v1/{kind}", params=params)
                ms = (time.perf_counter() - t) * 1000
                with self.lock:
                    if r.status_code == 200:
                        self.window.query_ms.append(ms)
                    else:
                        self.window.query_errors += 1
                self.stop.wait(1.0 / self.args.qps)

    def calibrate(self) -> float:
        until = time.monotonic() + self.args.calibrate_s
        t0 = time.monotonic()
        threads = [threading.Thread(target=self.sender, args=(100 + i, None, until)) for i in range(self.args.senders)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        w = self._take()
        if self.errors:
            raise SystemExit("\n".join(self.errors))
        return w.events / (time.monotonic() - t0)

    def run(self, rate: float, rss: RssSampler) -> list[Sample]:
        start = time.monotonic()
        until = start + self.args.duration_s
        per_sender = rate / self.args.senders
        threads = [
            threading.Thread(target=self.sender, args=(200 + i, per_sender, until)) for i in range(self.args.senders)
        ]
        threads.append(threading.Thread(target=self.querier, args=(until,)))
        for th in threads:
            th.start()
        samples = []
        self._take()
        last = time.monotonic()
        with httpx.Client(base_url=self.url, timeout=30) as http:
            while time.monotonic() < until and not self.stop.is_set():
                self.stop.wait(min(self.args.sample_s, max(0.0, until - time.monotonic())))
                w = self._take()
                now = time.monotonic()
                stats = http.get("/v1/stats").json()
                samples.append(
                    Sample(
                        t_s=round(now - start, 1),
                        rss_mb=rss.sample() / MB,
                        events_per_s=w.events / max(now - last, 1e-9),
                        ingest_p50_ms=percentile(w.ingest_ms, 50) if w.ingest_ms else 0.0,
                        ingest_p99_ms=percentile(w.ingest_ms, 99) if w.ingest_ms else 0.0,
                        query_p50_ms=percentile(w.query_ms, 50) if w.query_ms else 0.0,
                        query_p99_ms=percentile(w.query_ms, 99) if w.query_ms else 0.0,
                        queries=len(w.query_ms),
                        refused=w.refused,
                        buffer_mb=float(stats.get("buffer_bytes", 0)) / MB,
                        parts=int(stats.get("parts", 0)),
                    )
                )
                last = now
                s = samples[-1]
                print(
                    f"  t={s.t_s:6.0f}s rss={s.rss_mb:7.1f}MB ingest={s.events_per_s:9.0f}/s "
                    f"p99={s.ingest_p99_ms:6.1f}ms query p50={s.query_p50_ms:6.1f}ms p99={s.query_p99_ms:6.1f}ms "
                    f"parts={s.parts}",
                    flush=True,
                )
        self.stop.set()
        for th in threads:
            th.join()
        if self.errors:
            raise SystemExit("\n".join(self.errors))
        return samples


def verdict(samples: list[Sample]) -> tuple[str, float, float]:
    """Median RSS of the middle third and of the last third; flat if the last grew < 10%."""
    third = max(1, len(samples) // 3)
    mid = statistics.median(s.rss_mb for s in samples[third : 2 * third] or samples)
    last = statistics.median(s.rss_mb for s in samples[-third:])
    growth = (last - mid) / mid if mid else 0.0
    return ("flat" if growth < 0.10 else "GROWING"), mid, last


def chart(samples: list[Sample], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s.t_s for s in samples]
    fig, (a, b) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    a.plot(t, [s.rss_mb for s in samples], marker=".", label="server RSS (MB)")
    a.set_ylim(bottom=0)
    a.set_ylabel("RSS, MB")
    a.legend(loc="lower right")
    b.plot(t, [s.query_p50_ms for s in samples], label="query p50")
    b.plot(t, [s.query_p99_ms for s in samples], label="query p99")
    b.plot(t, [s.ingest_p99_ms for s in samples], label="ingest p99")
    b.set_ylabel("latency, ms")
    b.set_xlabel("seconds into the soak")
    b.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def render(args: argparse.Namespace, max_rate: float, rate: float, samples: list[Sample], total: int) -> str:
    state, mid, last = verdict(samples)
    load = os.getloadavg()
    lines = [
        f"## Soak, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"- duration {args.duration_s:.0f} s, sampled every {args.sample_s:.0f} s; {args.senders} Arrow senders of "
        f"{args.batch:,}-event batches; queries at {args.qps:g}/s (count, sum, top-10 over the last 1 m to 1 h)",
        f"- measured maximum {max_rate:,.0f} events/s over {args.calibrate_s:.0f} s; soak target "
        f"{rate:,.0f} events/s ({args.fraction:g} of it); {total:,} events acknowledged during the soak",
        f"- machine: {os.cpu_count()} cores, load average at the end {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}",
        f"- **RSS {state}**: median {mid:.0f} MB over the middle third, {last:.0f} MB over the last third "
        f"(min {min(s.rss_mb for s in samples):.0f}, max {max(s.rss_mb for s in samples):.0f})",
        "",
        "![soak](soak.png)",
        "",
        "| t (s) | RSS (MB) | ingest events/s | ingest p50 / p99 (ms) | query p50 / p99 (ms) | queries | "
        "refused | buffer (MB) | parts |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in samples:
        lines.append(
            f"| {s.t_s:.0f} | {s.rss_mb:.0f} | {s.events_per_s:,.0f} | {s.ingest_p50_ms:.1f} / {s.ingest_p99_ms:.1f} "
            f"| {s.query_p50_ms:.1f} / {s.query_p99_ms:.1f} | {s.queries} | {s.refused} | {s.buffer_mb:.1f} | "
            f"{s.parts} |"
        )
    return "\n".join(lines) + "\n"


def write(section: str, path: Path) -> None:
    head = (
        "# Soak runs\n\n`just soak` (bench/soak.py): steady ingest at half the measured maximum with queries "
        "running; the server's RSS and latencies every 10 s. Newest run first.\n\n"
    )
    old = path.read_text().split("\n## ", 1) if path.exists() else [""]
    rest = ("## " + old[1]) if len(old) > 1 else ""
    rest = rest.replace("![soak](soak.png)\n\n", "")  # the chart is the newest run's only
    path.write_text(head + section + ("\n" + rest if rest else ""))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--duration-s", type=float, default=600.0)
    # Long enough to include persists and any back-pressure: a short burst only fills the buffer
    # and overstates what the node sustains (a 20 s burst measured twice the sustained rate).
    p.add_argument("--calibrate-s", type=float, default=60.0)
    p.add_argument("--sample-s", type=float, default=10.0)
    p.add_argument("--fraction", type=float, default=0.5, help="of the measured maximum")
    p.add_argument("--rate", type=float, default=0.0, help="events/s; skips calibration")
    p.add_argument("--senders", type=int, default=2)
    p.add_argument("--batch", type=int, default=10_000)
    p.add_argument("--qps", type=float, default=10.0)
    p.add_argument("--out", type=Path, default=BENCH_DIR / "SOAK.md")
    p.add_argument("--keep-data", action="store_true")
    args = p.parse_args(argv)

    data = Path(tempfile.mkdtemp(prefix="tributary-soak-"))
    try:
        with ServerProcess(data / "node") as server:
            assert server.proc is not None
            rss = RssSampler(server.proc.pid, interval_s=1.0)
            rss.start()
            soak = Soak(server.url, args)
            if args.rate > 0:
                max_rate, rate = 0.0, args.rate
            else:
                print(f"calibrating for {args.calibrate_s:.0f} s ...", flush=True)
                max_rate = soak.calibrate()
                rate = max_rate * args.fraction
            print(f"soaking at {rate:,.0f} events/s for {args.duration_s:.0f} s", flush=True)
            samples = soak.run(rate, rss)
            rss.close()
        if not samples:
            raise SystemExit("no samples: the soak was shorter than one sampling window")
        chart(samples, args.out.parent / "soak.png")
        write(render(args, max_rate, rate, samples, soak.total_events), args.out)
        state, mid, last = verdict(samples)
        print(f"RSS {state}: {mid:.0f} MB -> {last:.0f} MB; written to {args.out}")
    finally:
        if not args.keep_data:
            shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
