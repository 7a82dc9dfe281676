"""Serving benchmark: `seqshard serve` under concurrent single-sequence requests against `seqshard embed` over the
same sequences, in the same command, interleaved so that a drift in the machine's speed hits both alike.

Loopback only, bounded: `--repeats` x `--requests` requests, then it stops.
1. A random-weight checkpoint (`--size tiny` is the demo's size, `full` the published config) and `--requests`
   seeded DNA sequences (log-normal lengths, median 600 bp, clipped to 50-5,120 bp, the server's limit), or
   proteins (median 300 aa) for LucaOne.
2. `seqshard serve` with `--threads`, `--device`, `--batch-tokens`, `--max-wait-ms`; a warm-up pass over every
   sequence (memory reaches the working size of the batches the server forms); the server's RSS.
3. Each repeat: `seqshard embed` over a FASTA of the sequences (run in this process through the command-line
   entry point, so its CPU time has no start-up in it; its sequences/s is records / `run_seconds`: reading,
   tokenizing, computing and writing, model load excluded), then every sequence once through POST /predict
   (task `embedding`) from `--concurrency` clients (asyncio + httpx in this process), each client sending its
   next request when its previous one is answered; served sequences/s = requests / seconds from the first
   request to the last answer.
4. Figures: served / embed sequences/s per repeat and their median (the headline ratio); CPU seconds per
   sequence of embed, of the server process (event loop, worker, exporter) and of the clients; latency
   p50/p95/p99 (client side) and errors (any answer but 200, any transport error); server RSS after the
   warm-up and at the end; the server's mean batch, mean requests inside it, worker busy fraction; the largest
   difference between a served embedding and embed's (at most 1e-5 in fp32).

On a machine with few cores the clients compete with the server for them: the CPU figures show how much.

Before and after in one command: `--against REF` also starts the server of another commit (REF checked out into
a temporary `git worktree`, run with `PYTHONPATH` pointing at it) beside this tree's, and each repeat measures
embed, then both servers one after the other (the order alternating between repeats), so drift hits all alike.
Each server gets its own ratio against the same embed runs and its CPU seconds per 1,000 sequences.

    python benchmarks/bench_serving.py                                 # 2,000 requests, 32 clients, demo size
    python benchmarks/bench_serving.py --against main --repeats 4      # main's server against this tree's
    python benchmarks/bench_serving.py --size full --device cuda --out benchmarks/results/serving-gpu.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_against import REPO, remove_worktree, worktree  # noqa: E402
from bench_inference import LengthMix, machine_description, synthetic_records, write_checkpoint  # noqa: E402

from seqshard.cli import main as cli_main  # noqa: E402

MIXES = {
    "dna": LengthMix(median=600, sigma=1.0, minimum=50, maximum=5120),
    "protein": LengthMix(median=300, sigma=0.6, minimum=30, maximum=2000),
}


def run_embed(args: argparse.Namespace, checkpoint: Path, fasta: Path, work: Path) -> dict[str, Any]:
    """`seqshard embed` over the FASTA, in this process (its own CPU time is then measurable without start-up)."""
    out, figures = work / "embed.parquet", work / "embed-figures.json"
    cpu = time.process_time()
    status = cli_main(["embed", str(fasta), "-o", str(out), "--model", args.model, "--checkpoint", str(checkpoint),
                       "--molecule", args.molecule, "--threads", str(args.threads), "--device", args.device,
                       "--batch-tokens", str(args.batch_tokens), "--figures", str(figures)])  # fmt: skip
    cpu = time.process_time() - cpu
    logging.getLogger().setLevel(logging.WARNING)  # the command set up INFO logging; the clients must not log
    if status != 0:
        raise RuntimeError("seqshard embed failed")
    run = json.loads(figures.read_text())
    return {
        "run_seconds": run["run_seconds"],
        "load_seconds": run["load_seconds"],
        "cpu_seconds": cpu,  # model load included: a few hundredths of a second for the demo size
        "sequences_per_second": run["n_sequences"] / run["run_seconds"],
        "embeddings": np.stack(pq.read_table(out).column("embedding").to_numpy(zero_copy_only=False)),
    }


def start_server(
    args: argparse.Namespace, checkpoint: Path, log: Path, tree: Path, port: int
) -> subprocess.Popen[bytes]:
    """`seqshard serve` of the package in `tree` (this repository, or a worktree of another commit)."""
    command = [sys.executable, "-m", "seqshard", "serve", "--model", args.model, "--checkpoint", str(checkpoint),
               "--molecule", args.molecule, "--threads", str(args.threads), "--device", args.device,
               "--batch-tokens", str(args.batch_tokens), "--max-wait-ms", str(args.max_wait_ms), "--port",
               str(port), "--metrics-port", str(port + 1), "--rate-limit", "0", "--max-queue",
               str(max(1024, 4 * args.concurrency))]  # fmt: skip
    with open(log, "wb") as handle:
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=tree,
                                env={**os.environ, "PYTHONPATH": str(tree)})  # fmt: skip


def wait_healthy(url: str, server: subprocess.Popen[bytes], log: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).json()["data"]["status"] == "healthy":
                return
        except (httpx.TransportError, ValueError, KeyError):
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url} not healthy after {timeout} s")


async def _post(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str, body: bytes
) -> tuple[int, bytes]:
    """One HTTP/1.1 request on a kept-alive connection; status and body of the answer."""
    writer.write(
        b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (path.encode(), len(body), body)
    )
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def load(
    url: str, sequences: list[str], concurrency: int
) -> tuple[list[float], list[object], Counter[str], float]:
    """Send every sequence once through POST /predict with `concurrency` clients on kept-alive connections;
    latencies, results, errors by kind, wall seconds.

    The clients speak HTTP/1.1 over asyncio streams directly: on a machine with few cores, a full HTTP client
    library costs more CPU per request than the demo model does, and the clients share the cores with the server.
    """
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = [0.0] * len(sequences)
    results: list[object] = [None] * len(sequences)
    errors: Counter[str] = Counter()
    pending = iter(range(len(sequences)))

    async def client() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for index in pending:  # shared: each client takes the next sequence when it is free
                body = json.dumps({"sequence": sequences[index], "task_type": "embedding"}).encode()
                started = time.perf_counter()
                try:
                    status, answer = await _post(reader, writer, "/predict", body)
                except (OSError, asyncio.IncompleteReadError, ValueError) as error:
                    errors[f"{type(error).__name__}: {error}"] += 1
                    reader, writer = await asyncio.open_connection(host, int(port))
                    continue
                latencies[index] = time.perf_counter() - started
                if status == 200:
                    results[index] = json.loads(answer)["data"]["embedding"]
                else:
                    errors[f"HTTP {status} {answer[:200].decode(errors='replace')}"] += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies, results, errors, time.perf_counter() - started


class GaugeSampler:
    """Reads the server's in-flight and queue-depth gauges every `interval` seconds while the load runs."""

    def __init__(self, metrics_url: str, interval: float = 0.25) -> None:
        self.metrics_url, self.interval = metrics_url, interval
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.wait(self.interval):
                text = client.get(self.metrics_url).text
                in_flight = prometheus_sum(text, "seqshard_http_requests_in_flight")  # the exporter is not the API
                self.samples.append((in_flight, prometheus_sum(text, "seqshard_queue_depth")))

    def __enter__(self) -> GaugeSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def means(self) -> tuple[float, float]:
        if not self.samples:
            return 0.0, 0.0
        return (statistics.fmean(s[0] for s in self.samples), statistics.fmean(s[1] for s in self.samples))


def prometheus_sum(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " "))


@dataclass
class Served:
    """One server under test: which tree it runs, where, and its figures per repeat."""

    name: str
    tree: Path
    port: int
    process: subprocess.Popen[bytes] | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)
    rss_start: int = 0
    rss_end: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def serve_once(args: argparse.Namespace, server: Served, sequences: list[str]) -> dict[str, Any]:
    """One pass of every sequence through the running server, with its figures."""
    url, process = server.url, psutil.Process(server.process.pid)  # type: ignore[union-attr]
    metrics_url = f"http://127.0.0.1:{server.port + 1}/metrics"
    rss_before = process.memory_info().rss
    metrics_before = httpx.get(metrics_url).text
    server_cpu, client_cpu = sum(process.cpu_times()[:2]), time.process_time()
    with GaugeSampler(metrics_url) as gauges:
        latencies, results, errors, wall = asyncio.run(load(url, sequences, args.concurrency))
    server_cpu, client_cpu = sum(process.cpu_times()[:2]) - server_cpu, time.process_time() - client_cpu
    metrics_after = httpx.get(metrics_url).text

    def delta(name: str) -> float:
        return prometheus_sum(metrics_after, name) - prometheus_sum(metrics_before, name)

    in_flight, depth = gauges.means()
    quantiles = statistics.quantiles(latencies, n=100)
    return {
        "sequences_per_second": len(sequences) / wall,
        "wall_seconds": wall,
        "server_cpu_seconds": server_cpu,
        "client_cpu_seconds": client_cpu,
        "latency_seconds": {"p50": quantiles[49], "p95": quantiles[94], "p99": quantiles[98], "max": max(latencies)},
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "server_rss_bytes": {"before": rss_before, "after": process.memory_info().rss},
        "mean_sequences_per_server_batch": len(sequences) / max(delta("seqshard_batch_sequences_count"), 1),
        "model_worker_busy_fraction": delta("seqshard_batch_duration_seconds_sum") / wall,
        "mean_requests_in_server": in_flight,
        "mean_queue_depth": depth,
        "results": results,
    }


def summarize(server: Served, embeds: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """A server's figures over the repeats: ratios to the embed run of the same repeat, CPU per 1,000 sequences,
    and the median repeat's own figures."""
    runs = server.runs
    ratios = [run["sequences_per_second"] / e["sequences_per_second"] for run, e in zip(runs, embeds, strict=True)]
    median = runs[ratios.index(statistics.median_low(ratios))]
    return {
        "tree": str(server.tree),
        "ratio_served_to_embed": round(statistics.median(ratios), 3),
        "ratios": [round(ratio, 3) for ratio in ratios],
        "server_cpu_seconds_per_1000": round(statistics.median(1000 * r["server_cpu_seconds"] / n for r in runs), 3),
        "client_cpu_seconds_per_1000": round(statistics.median(1000 * r["client_cpu_seconds"] / n for r in runs), 3),
        "sequences_per_second": round(statistics.median(r["sequences_per_second"] for r in server.runs), 2),
        "errors": sum(r["errors"] for r in server.runs),
        "server_rss_bytes": {"after_warm_up": server.rss_start, "end": server.rss_end},
        "median_repeat": {key: value for key, value in median.items() if key != "results"},
        "repeats": [{key: value for key, value in r.items() if key != "results"} for r in server.runs],
    }  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    args.molecule = "dna" if args.model == "dnabert2" else "protein"
    work = Path(tempfile.mkdtemp(prefix="seqshard-bench-serving-"))
    checkpoint = write_checkpoint(args.model, args.size, work, seed=0)
    records = synthetic_records(args.molecule, MIXES[args.molecule], args.requests, seed=args.seed)
    sequences = [record.sequence for record in records]
    fasta = work / "input.fa"
    fasta.write_text("".join(f">{record.id}\n{record.sequence}\n" for record in records))
    servers = [Served("new", REPO, args.port)]
    if args.against:
        servers.insert(0, Served("base", worktree(args.against, work), args.port + 2))
        commit = subprocess.run(["git", "-C", str(servers[0].tree), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
        print(f"base: {args.against} ({commit}) in a worktree; new: {REPO} (working tree)")
    print(f"{len(sequences)} {args.molecule} sequences, median {int(np.median([len(s) for s in sequences]))} "
          f"residues; {args.model} {args.size}; {args.threads} torch thread(s); {args.device}; "
          f"{args.concurrency} clients; {args.repeats} interleaved repeat(s)")  # fmt: skip
    machine = machine_description(args.device)
    embeds: list[dict[str, Any]] = []
    try:
        for server in servers:
            log = work / f"server-{server.name}.log"
            server.process = start_server(args, checkpoint, log, server.tree, server.port)
            wait_healthy(server.url, server.process, log)
            # Warm-up: one pass over every sequence, so the allocator reaches the working size the batches need.
            asyncio.run(load(server.url, sequences, args.concurrency))
            server.rss_start = psutil.Process(server.process.pid).memory_info().rss
        for repeat in range(args.repeats):
            embed = run_embed(args, checkpoint, fasta, work)
            embeds.append(embed)
            line = f"[{repeat + 1}] embed {embed['sequences_per_second']:.1f} seq/s, CPU {embed['cpu_seconds']:.2f} s"
            for server in servers if repeat % 2 == 0 else servers[::-1]:
                served = serve_once(args, server, sequences)
                server.runs.append(served)
                line += (f"; {server.name} {served['sequences_per_second']:.1f} seq/s (ratio "
                         f"{served['sequences_per_second'] / embed['sequences_per_second']:.3f}), server CPU "
                         f"{served['server_cpu_seconds']:.2f} s, {served['mean_sequences_per_server_batch']:.1f} "
                         f"per batch, {served['errors']} errors")  # fmt: skip
            print(line)
        for server in servers:
            server.rss_end = psutil.Process(server.process.pid).memory_info().rss  # type: ignore[union-attr]
    finally:
        for server in servers:
            if server.process is not None and server.process.poll() is None:
                server.process.send_signal(signal.SIGTERM)
                server.process.wait(timeout=120)
        if args.against:
            remove_worktree(servers[0].tree)

    n = len(sequences)
    figures = {server.name: summarize(server, embeds, n) for server in servers}
    new = servers[-1]
    results = new.runs[figures["new"]["ratios"].index(statistics.median_low(figures["new"]["ratios"]))]["results"]
    reference = embeds[figures["new"]["ratios"].index(statistics.median_low(figures["new"]["ratios"]))]["embeddings"]
    answered = [i for i, result in enumerate(results) if result is not None]
    difference = float(
        np.abs(np.array([results[i] for i in answered], dtype=np.float32) - reference[answered]).max()
    ) if answered else None  # fmt: skip
    embed_cpu = statistics.median(1000 * e["cpu_seconds"] / n for e in embeds)
    result = {
        "machine": machine,
        "settings": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        "embed_sequences_per_second": round(statistics.median(e["sequences_per_second"] for e in embeds), 2),
        "embed_cpu_seconds_per_1000": round(embed_cpu, 3),
        "servers": figures,
        "max_abs_difference_to_embed": difference,
        "embed_repeats": [{k: v for k, v in e.items() if k != "embeddings"} for e in embeds],
        "load_average_at_end": os.getloadavg(),
    }
    print(f"\nembed (this tree): {result['embed_sequences_per_second']:.1f} seq/s, CPU {embed_cpu:.2f} s per 1,000 "
          f"sequences (median of {len(embeds)})")  # fmt: skip
    for server in servers:
        f = figures[server.name]
        latency = f["median_repeat"]["latency_seconds"]
        print(f"{server.name:>4}: served/embed {f['ratio_served_to_embed']:.3f} {f['ratios']}; "
              f"{f['sequences_per_second']:.1f} seq/s; server CPU {f['server_cpu_seconds_per_1000']:.2f} s per 1,000 "
              f"sequences ({f['server_cpu_seconds_per_1000'] / embed_cpu:.2f} x embed's), clients "
              f"{f['client_cpu_seconds_per_1000']:.2f} s; latency p50 {latency['p50']:.4f} s, "
              f"p95 {latency['p95']:.4f} s; "
              f"{f['median_repeat']['mean_sequences_per_server_batch']:.1f} sequences per server batch; "
              f"errors {f['errors']}; RSS {f['server_rss_bytes']['after_warm_up'] / 2**20:.1f} -> "
              f"{f['server_rss_bytes']['end'] / 2**20:.1f} MiB")  # fmt: skip
    print(f"max |served - embed| (new): {difference}")
    return result


def create_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="dnabert2", choices=["dnabert2", "lucaone"])
    parser.add_argument("--size", default="tiny", choices=["tiny", "small", "full"], help="tiny: the demo's size")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, for embed and the server alike")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-tokens", type=int, default=16384)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--port", type=int, default=18090, help="the API; the metrics use the next port")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="embed and served runs, interleaved; medians")
    parser.add_argument("--against", metavar="REF", help="also serve from this git ref (a temporary worktree)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    return parser


def main() -> None:
    args = create_parser().parse_args()
    result = run(args)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
