"""Durable ingest of one format on a fresh node, for A/B comparisons of builds or settings.

    uv run python -m bench.ingest --format json --events 2000000 --rounds 3
    uv run python -m bench.ingest --format arrow --settle --server-cmd \
        "env PYTHONPATH=/other/tree .venv/bin/python -P -m web.cli serve --host 127.0.0.1 --port {port} --data {data}"

Another build is run from its tree with ``-P``: ``python -m`` otherwise puts the working
directory (this tree) first on the path, ahead of ``PYTHONPATH``, and runs this build (the A/B
pairs of the eighth and ninth sessions did, see ``bench/RESULTS.md``).

Each round starts a fresh server on an empty data directory, posts W20's first ``--events``
events in the chosen format with ``--clients`` client processes (the same bodies and batch sizes
as ``bench.run``), and prints: acknowledged events per second (the posting only, as ``bench.run``
measures it), the server's CPU per event, how busy the whole machine was while posting, and the
server's peak RSS while posting (``bench.server.RssSampler``, as ``bench.run``) and after it
(persisting, and compacting with ``--settle``); with ``--settle``, also the server's CPU per event
from the first post until background compaction has settled (persists, merges and sketches
included). ``bench.run`` measures the three formats one after another on one node, so each pays
for its predecessor's persisting and compaction; this measures one alone. Nothing is written to
``bench/RESULTS.md``: quote the figures with the command.
"""

from __future__ import annotations

import argparse
import shutil

import psutil

from bench import loader
from bench.run import OUT_DIR, batch_rows
from bench.server import DEFAULT_COMMAND, ServerProcess, wait_compacted, wait_persisted
from bench.workload import Workload, chunk_paths, ensure


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--format", choices=loader.FORMATS, default="json")
    ap.add_argument("--events", type=int, default=2_000_000, help="W20 events posted per round")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--clients", type=int, default=3, help="concurrent ingest client processes")
    ap.add_argument("--server-cmd", default=DEFAULT_COMMAND, help="as bench.run's; {port} and {data} filled in")
    ap.add_argument(
        "--settle",
        action="store_true",
        help="wait for background compaction to settle too, and print the server's CPU for all of it",
    )
    args = ap.parse_args()

    workload = Workload()
    data = ensure(workload)
    group = workload.row_group_rows
    rows = args.events // group * group
    batch = batch_rows(workload, args.format)
    batches = loader.plan(chunk_paths(data), 0, rows, batch, args.format, data / "bodies", workload.name)
    data_dir = OUT_DIR / workload.name / "ingest-data"
    for round_ in range(1, args.rounds + 1):
        shutil.rmtree(data_dir, ignore_errors=True)
        server = ServerProcess(data_dir, command=args.server_cmd)
        with loader.ClientPool(server.url, args.clients) as clients:
            clients.prepare(batches)
            sampler = server.start_sampled()
            try:
                assert server.proc is not None
                proc = psutil.Process(server.proc.pid)
                sampler.enter("ingest")
                cpu0, machine0 = sum(proc.cpu_times()[:2]), _busy()
                result = clients.ingest(batches)
                cpu, busy = sum(proc.cpu_times()[:2]) - cpu0, _busy() - machine0
                sampler.enter("persist")
                persisted = wait_persisted([server.url])
                settled = ""
                if args.settle:
                    compacted = wait_compacted([server.url])
                    total = sum(proc.cpu_times()[:2]) - cpu0
                    settled = (
                        f"; compaction settled {compacted} s after that, server CPU from the first post "
                        f"{total / result.events * 1e6:.2f} µs/event"
                    )
            finally:
                server.stop()
                peaks = sampler.close()
        cores = psutil.cpu_count() or 1
        print(
            f"round {round_}: {args.format} {result.events:,} events in {result.seconds:.2f} s = "
            f"{result.events_per_s / 1e6:.3f}M events/s ({result.retries} of {result.batches} posts refused "
            f"and sent again); server CPU {cpu / result.events * 1e6:.2f} µs/event; "
            f"machine {busy / (cores * result.seconds):.0%} busy; server peak RSS {peaks['ingest'] >> 20} MiB; "
            f"persisted {persisted} s after the last acknowledgement{settled}; server peak RSS after the "
            f"last post {peaks['persist'] >> 20} MiB",
            flush=True,
        )


def _busy() -> float:
    t = psutil.cpu_times()
    return float(t.user + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))


if __name__ == "__main__":
    main()
