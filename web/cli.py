"""The ``tributary`` command: serve a node, generate load, ask questions.

Every ``serve`` flag has a ``TRIBUTARY_<NAME>`` environment twin; ``--help`` documents each.
"""

from __future__ import annotations

import json
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

__all__ = ["app", "main"]

app = typer.Typer(help="Tributary: durable event aggregation with exact range analytics.", no_args_is_help=True)
cluster_app = typer.Typer(help="Run a local cluster; add or remove nodes.", no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")
console = Console(stderr=True)


def _opt(help: str, env: str, **kw: Any) -> Any:
    return typer.Option(help=help, envvar=f"TRIBUTARY_{env}", show_default=True, **kw)


@app.command()
def serve(
    host: Annotated[str, _opt("Address to listen on.", "HOST")] = "127.0.0.1",
    port: Annotated[int, _opt("Port to listen on.", "PORT")] = 8321,
    data: Annotated[Path, _opt("Data directory (WAL, partitions, manifest).", "DATA")] = Path("./data"),
    node_id: Annotated[str, _opt("This node's id in the cluster.", "NODE_ID")] = "n1",
    peers: Annotated[str, _opt("Cluster members: n1=http://h1:8321,n2=http://h2:8321.", "PEERS")] = "",
    rf: Annotated[int, _opt("Replication factor (cluster).", "RF")] = 2,
    shards: Annotated[int, _opt("Shard count, fixed at cluster creation.", "SHARDS")] = 256,
    fsync: Annotated[bool, _opt("fsync the WAL before acknowledging (turn off only for tests).", "FSYNC")] = True,
    max_body_bytes: Annotated[int, _opt("Largest ingest body accepted, bytes.", "MAX_BODY_BYTES")] = 64 << 20,
    max_rows: Annotated[int, _opt("Most events in one batch.", "MAX_ROWS")] = 1_000_000,
    max_decompressed_bytes: Annotated[
        int, _opt("Largest ingest body after gzip/zstd decoding, bytes.", "MAX_DECOMPRESSED_BYTES")
    ] = 256 << 20,
    max_future_s: Annotated[float, _opt("How far ahead of now a timestamp may be, s.", "MAX_FUTURE_S")] = 86_400.0,
    retention_s: Annotated[float, _opt("Keep data this long, s (0 = forever).", "RETENTION_S")] = 0.0,
    max_buffer_bytes: Annotated[int, _opt("Live buffer cap; beyond it ingest answers 503.", "MAX_BUFFER_BYTES")] = 64
    << 20,
    persist_bytes: Annotated[int, _opt("Persist the buffer at this size, bytes.", "PERSIST_BYTES")] = 16 << 20,
    persist_interval_s: Annotated[float, _opt("Persist the buffer at this age, s.", "PERSIST_INTERVAL_S")] = 10.0,
    persist_workers: Annotated[int, _opt("Threads writing a persist's pieces at once.", "PERSIST_WORKERS")] = 2,
    compact_min_parts: Annotated[int, _opt("Compact an hour with this many parts.", "COMPACT_MIN_PARTS")] = 4,
    compact_cold_s: Annotated[
        float, _opt("Merge an hour into one part once its parts are this old, s (0 = never).", "COMPACT_COLD_S")
    ] = 60.0,
    idempotency_window_s: Annotated[
        float, _opt("How long Idempotency-Keys are remembered, s.", "IDEMPOTENCY_WINDOW_S")
    ] = 3600.0,
    idempotency_max_keys: Annotated[int, _opt("Most Idempotency-Keys remembered.", "IDEMPOTENCY_MAX_KEYS")] = 500_000,
    slice_index_max_bytes: Annotated[
        int, _opt("Slice index (replica idempotency, repair) kept in memory, bytes.", "SLICE_INDEX_MAX_BYTES")
    ] = 64 << 20,
    max_concurrent_ingest: Annotated[
        int, _opt("Concurrent ingest requests; beyond, 503.", "MAX_CONCURRENT_INGEST")
    ] = 64,
    query_timeout_s: Annotated[float, _opt("Time limit of a count/sum/top-k query, s.", "QUERY_TIMEOUT_S")] = 30.0,
    sql_timeout_s: Annotated[float, _opt("Time limit of a SQL query, s.", "SQL_TIMEOUT_S")] = 10.0,
    sql_memory_limit: Annotated[str, _opt("Memory limit of a SQL query.", "SQL_MEMORY_LIMIT")] = "512MB",
    sql_max_rows: Annotated[int, _opt("Rows returned by a JSON SQL answer.", "SQL_MAX_ROWS")] = 10_000,
    sql_max_export_rows: Annotated[
        int, _opt("Rows streamed by a SQL answer in a file format (csv, arrow, parquet).", "SQL_MAX_EXPORT_ROWS")
    ] = 10_000_000,
    max_concurrent_sql: Annotated[int, _opt("SQL queries running at once; beyond, 503.", "MAX_CONCURRENT_SQL")] = 4,
    sketches: Annotated[bool, _opt("Build sketch files beside parts, for approx=true answers.", "SKETCHES")] = True,
    sketch_hll_lg_k: Annotated[
        int, _opt("Distinct-producer CPC sketches: k = 2^lg_k (7..21), error ~0.7/sqrt(k).", "SKETCH_HLL_LG_K")
    ] = 12,
    sketch_frequent_lg_max_k: Annotated[
        int, _opt("Top-k frequent-items sketches: 2^k slots (3..26).", "SKETCH_FREQUENT_LG_MAX_K")
    ] = 10,
    sketch_kll_k: Annotated[
        int, _opt("Quantile KLL sketches: k (8..65535), rank error 1.33% at 200.", "SKETCH_KLL_K")
    ] = 200,
    max_quantiles: Annotated[int, _opt("Most quantiles one /v1/quantiles query may ask.", "MAX_QUANTILES")] = 64,
    log_format: Annotated[str, _opt("auto | json | console.", "LOG_FORMAT")] = "auto",
    tokens_file: Annotated[
        str, _opt("Bearer tokens, one 'TOKEN scope[,scope]' a line (ingest, query, admin).", "TOKENS_FILE")
    ] = "",
    tokens: Annotated[
        str,
        typer.Option(
            help="Bearer tokens inline, same format, ';' between entries (prefer the environment).",
            envvar="TRIBUTARY_TOKENS",
            show_default=False,
        ),
    ] = "",
    insecure: Annotated[
        bool, _opt("Serve without tokens on a non-loopback address: anyone can read and write.", "INSECURE")
    ] = False,
    metrics_auth: Annotated[bool, _opt("/metrics needs a token with the query scope.", "METRICS_AUTH")] = False,
    max_concurrent_requests: Annotated[
        int, _opt("Requests in flight; beyond, 503 (probes exempt).", "MAX_CONCURRENT_REQUESTS")
    ] = 256,
    body_read_timeout_s: Annotated[
        float, _opt("Time to receive a whole request body, s; beyond, 408.", "BODY_READ_TIMEOUT_S")
    ] = 30.0,
    keep_alive_s: Annotated[int, _opt("Close idle keep-alive connections after this, s.", "KEEP_ALIVE_S")] = 30,
    retention_interval_s: Annotated[
        float, _opt("How often retention looks for expired hours, s.", "RETENTION_INTERVAL_S")
    ] = 60.0,
    topk_max_k: Annotated[int, _opt("Largest k a top-k query may ask for.", "TOPK_MAX_K")] = 10_000,
    cluster_secret: Annotated[
        str,
        typer.Option(
            help="Secret shared by the cluster's nodes for /internal/* (prefer the environment).",
            envvar="TRIBUTARY_CLUSTER_SECRET",
            show_default=False,
        ),
    ] = "",
    advertise_url: Annotated[
        str, _opt("URL peers reach this node at (default http://HOST:PORT).", "ADVERTISE_URL")
    ] = "",
    peer_timeout_s: Annotated[
        float, _opt("A peer that does not answer a write or read within this is skipped, s.", "PEER_TIMEOUT_S")
    ] = 3.0,
    probe_interval_s: Annotated[float, _opt("How often peers' /health is probed, s.", "PROBE_INTERVAL_S")] = 0.5,
    probe_timeout_s: Annotated[float, _opt("A probe unanswered this long fails, s.", "PROBE_TIMEOUT_S")] = 1.0,
    repair_interval_s: Annotated[
        float, _opt("How often replicas compare digests (anti-entropy), s.", "REPAIR_INTERVAL_S")
    ] = 5.0,
) -> None:
    """Run one node (a cluster of one unless --peers is given)."""
    # First, before anything imports pyarrow: Arrow's C++ allocator is chosen when it loads, and
    # pandas (installed beside dev tools only) would be pulled in by DuckDB (storage/memory.py).
    from storage.memory import exclude_modules, tune_process_memory

    tune_process_memory()
    exclude_modules(("pandas",))
    import uvicorn

    from cluster.node import Node
    from web.app import create_app
    from web.logging import configure_logging
    from web.settings import Settings

    settings = Settings(**{k: v for k, v in locals().items() if k in Settings.__dataclass_fields__})
    configure_logging(settings.log_format)
    from web.auth import InvalidTokens, exposure_refusal, load_tokens

    try:
        token_table = load_tokens(settings.tokens_file, settings.tokens)
    except InvalidTokens as e:
        console.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from None
    refusal = exposure_refusal(host, token_table, insecure)
    if refusal is not None:
        console.print(f"[red]error:[/] {refusal}")
        raise typer.Exit(2)
    from cluster.errors import MembershipError
    from web.internal import secret_refusal

    refusal = secret_refusal(peers, cluster_secret, insecure)
    if refusal is not None:
        console.print(f"[red]error:[/] {refusal}")
        raise typer.Exit(2)
    try:
        node = Node(settings.node_config())
    except MembershipError as e:
        console.print(f"[red]error:[/] {e.detail}")
        raise typer.Exit(2) from None
    application = create_app(node, settings)
    console.print(f"[bold green]tributary[/] node {node_id} on http://{host}:{port}  data={data}")
    uvicorn.run(application, host=host, port=port, log_level="warning", timeout_keep_alive=keep_alive_s)


@app.command()
def load(
    url: Annotated[list[str], typer.Option(help="Node URL(s); repeat for failover.", envvar="TRIBUTARY_URL")] = [  # noqa: B006
        "http://127.0.0.1:8321"
    ],
    events: Annotated[int, typer.Option(help="Events to send in all (0 = until Ctrl-C).")] = 100_000,
    rate: Annotated[float, typer.Option(help="Events per second (0 = as fast as possible).")] = 0.0,
    producers: Annotated[int, typer.Option(help="Distinct producers (Zipf popularity).")] = 10_000,
    categories: Annotated[int, typer.Option(help="Distinct categories.")] = 20,
    zipf: Annotated[float, typer.Option(help="Zipf exponent of producer popularity.")] = 1.1,
    format: Annotated[str, typer.Option(help="arrow | json.")] = "arrow",
    batch: Annotated[int, typer.Option(help="Events per request.")] = 10_000,
    seed: Annotated[int, typer.Option(help="Seed: the same seed sends the same events.")] = 42,
    start: Annotated[str, typer.Option(help="First timestamp (RFC 3339, ns, or 'now').")] = "now",
    span_s: Annotated[float, typer.Option(help="Spread timestamps over this many seconds (0 = real time).")] = 0.0,
    token: Annotated[str, typer.Option(help="Bearer token.", envvar="TRIBUTARY_TOKEN")] = "",
) -> None:
    """Send a seeded synthetic workload through the producer client, with a progress bar."""
    from ingest.client import Producer
    from query.timerange import parse_time
    from web.workload import Workload, WorkloadConfig

    wl = Workload(WorkloadConfig(producers=producers, categories=categories, zipf_s=zipf, seed=seed))
    t_start = parse_time(start, now_ns=time.time_ns(), name="start")
    total = events if events > 0 else 2**62
    sent = 0
    t0 = time.perf_counter()
    with (
        Producer(
            url,
            token or None,
            batch_events=batch,
            batch_bytes=64 << 20,
            format=format,
            linger_s=0.2,
            queue_max_events=max(batch * 8, 100_000),
        ) as producer,
        Progress(
            TextColumn("[bold]load"),
            BarColumn(),
            TextColumn("{task.completed:,.0f}" + (f"/{events:,}" if events > 0 else " sent")),
            TextColumn("[cyan]{task.fields[rate]:,.0f} ev/s"),
            TimeElapsedColumn(),
            console=console,
        ) as progress,
    ):
        task = progress.add_task("load", total=events if events > 0 else None, rate=0.0)
        try:
            while sent < total:
                n = min(batch, total - sent)
                if span_s > 0:
                    lo = t_start + int(span_s * 1e9 * sent / max(total, 1))
                    hi = t_start + int(span_s * 1e9 * (sent + n) / max(total, 1))
                else:
                    lo = time.time_ns() - 1_000_000_000
                    hi = time.time_ns()
                producer.send_many(wl.batch(n, lo, max(hi, lo + 1)))
                sent += n
                elapsed = time.perf_counter() - t0
                progress.update(task, completed=sent, rate=sent / max(elapsed, 1e-9))
                if rate > 0:
                    ahead = sent / rate - elapsed
                    if ahead > 0:
                        time.sleep(ahead)
        except KeyboardInterrupt:
            pass
        producer.flush()
        st = producer.stats
    elapsed = time.perf_counter() - t0
    console.print(
        f"sent {st.sent:,} acknowledged {st.acknowledged:,} retried {st.retried:,} failed {st.failed:,} "
        f"in {elapsed:.1f}s ({st.acknowledged / max(elapsed, 1e-9):,.0f} ev/s)"
    )
    if st.failed:
        raise typer.Exit(1)


def _get(url: str, path: str, params: dict[str, Any], token: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = httpx.get(url.rstrip("/") + path, params=params, headers=headers, timeout=60)
    body: dict[str, Any] = r.json()
    if r.status_code >= 400:
        console.print(f"[red]{r.status_code}[/] {body.get('title')}: {body.get('detail')}")
        raise typer.Exit(1)
    return body


def _query(kind: str, url: str, category: str, start: str, end: str, k: int, token: str, as_json: bool) -> None:
    params: dict[str, Any] = {"category": category, "start": start, "end": end}
    if kind == "topk":
        params["k"] = k
    body = _get(url, f"/v1/{kind}", params, token)
    if as_json:
        sys.stdout.write(json.dumps(body) + "\n")
        return
    if kind == "topk":
        t = Table("#", "producer_id", "count", title=f"top {k} of {category}")
        for i, p in enumerate(body["producers"], 1):
            t.add_row(str(i), p["producer_id"], f"{p['count']:,}")
        Console().print(t)
    else:
        Console().print(f"{kind}({category}) = [bold]{body['value']:,}[/]")
    note = " [yellow]partial[/]" if body.get("partial") else ""
    console.print(f"took {body['took_ms']} ms{note}")


_URL = typer.Option("--url", envvar="TRIBUTARY_URL", help="Node URL.")
_CAT = typer.Option(help="Category.")
_START = typer.Option(help="Start (ns, RFC 3339 or now-1h).")
_END = typer.Option(help="End, exclusive.")
_TOKEN = typer.Option(envvar="TRIBUTARY_TOKEN", help="Bearer token.")


class QueryKind(StrEnum):
    count = "count"  # type: ignore[assignment]  # shadows str.count on purpose: it is the CLI's word
    sum = "sum"
    topk = "topk"


@app.command("query")
def query(
    kind: Annotated[QueryKind, typer.Argument(help="count: events; sum: of value; topk: the K busiest producers.")],
    category: Annotated[str, _CAT],
    start: Annotated[str, _START] = "now-1h",
    end: Annotated[str, _END] = "now",
    k: Annotated[int, typer.Option(help="How many producers (topk).")] = 10,
    url: Annotated[str, _URL] = "http://127.0.0.1:8321",
    token: Annotated[str, _TOKEN] = "",
    json_: Annotated[bool, typer.Option("--json", help="Print the raw JSON answer.")] = False,
) -> None:
    """Ask a node for the count, sum or top-k producers of CATEGORY in [start, end)."""
    _query(kind.value, url, category, start, end, k, token, json_)


@cluster_app.command("up")
def cluster_up(
    nodes: Annotated[int, typer.Option(help="How many nodes.")] = 3,
    rf: Annotated[int, typer.Option(help="Replication factor.")] = 2,
    host: Annotated[str, typer.Option(help="Address every node listens on.")] = "127.0.0.1",
    base_port: Annotated[int, typer.Option(help="Port of n1; n2 gets the next one, and so on.")] = 8321,
    data: Annotated[Path, typer.Option(help="Parent of the nodes' data directories (DATA/n1, ...).")] = Path(
        "./cluster"
    ),
    secret: Annotated[
        str, typer.Option(help="Cluster secret (random if unset).", envvar="TRIBUTARY_CLUSTER_SECRET")
    ] = "",
    restart: Annotated[bool, typer.Option(help="Restart a node that exits on its own.")] = True,
    serve_args: Annotated[
        list[str] | None, typer.Argument(help="More `serve` flags for every node (after --).")
    ] = None,
) -> None:
    """Run NODES nodes on consecutive ports as one cluster; logs prefixed per node; Ctrl-C stops all."""
    from web.supervisor import ClusterSpec, Supervisor

    spec = ClusterSpec(nodes, rf, host, base_port, data, secret, tuple(serve_args or ()), restart)
    Supervisor(spec).run()


def _admin(method: str, url: str, path: str, token: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = httpx.request(method, url.rstrip("/") + path, json=body, headers=headers, timeout=30)
    out: dict[str, Any] = r.json()
    if r.status_code >= 400:
        console.print(f"[red]{r.status_code}[/] {out.get('title')}: {out.get('detail')}")
        raise typer.Exit(1)
    return out


def _wait_settled(url: str, token: str, epoch: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = _admin("GET", url, "/v1/cluster", token)
        if info["epoch"] > epoch and not info.get("in_transition"):
            console.print(f"settled at epoch {info['epoch']}: " + ", ".join(n["node_id"] for n in info["nodes"]))
            return
        time.sleep(0.5)
    console.print("[yellow]not settled yet[/]; watch GET /v1/cluster")
    raise typer.Exit(1)


@cluster_app.command("join")
def cluster_join(
    node_id: Annotated[str, typer.Option(help="Id of the node to add.")],
    node_url: Annotated[str, typer.Option(help="URL the new node listens on.")],
    url: Annotated[str, _URL] = "http://127.0.0.1:8321",
    token: Annotated[str, _TOKEN] = "",
    wait: Annotated[bool, typer.Option(help="Wait until the node is active.")] = True,
    timeout: Annotated[float, typer.Option(help="How long to wait, s.")] = 600.0,
) -> None:
    """Add a running node (started with the cluster's secret) to the cluster at URL."""
    cmap = _admin("POST", url, "/v1/cluster/nodes", token, {"node_id": node_id, "url": node_url})
    console.print(f"{node_id} joining at epoch {cmap['epoch']}")
    if wait:
        _wait_settled(url, token, cmap["epoch"], timeout)


@cluster_app.command("leave")
def cluster_leave(
    node_id: Annotated[str, typer.Option(help="Id of the node to remove.")],
    url: Annotated[str, _URL] = "http://127.0.0.1:8321",
    token: Annotated[str, _TOKEN] = "",
    wait: Annotated[bool, typer.Option(help="Wait until the node is gone from the map.")] = True,
    timeout: Annotated[float, typer.Option(help="How long to wait, s.")] = 600.0,
) -> None:
    """Remove a node: its shards move to the others first, then it drops its data."""
    cmap = _admin("DELETE", url, f"/v1/cluster/nodes/{node_id}", token)
    console.print(f"{node_id} leaving at epoch {cmap['epoch']}")
    if wait:
        _wait_settled(url, token, cmap["epoch"], timeout)


@cluster_app.command("status")
def cluster_status(url: Annotated[str, _URL] = "http://127.0.0.1:8321", token: Annotated[str, _TOKEN] = "") -> None:
    """The cluster map as the node at URL sees it."""
    info = _admin("GET", url, "/v1/cluster", token)
    t = Table("node", "url", "state", "up", "serving", "shards", title=f"epoch {info['epoch']}, rf {info['rf']}")
    for n in info["nodes"]:
        t.add_row(n["node_id"], n["url"], n["state"], str(n["up"]), str(n.get("serving")), str(n.get("shards")))
    Console().print(t)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
