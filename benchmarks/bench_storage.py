"""Storage benchmark: what the node-local checkpoint cache saves each inference job, against object storage.

A JuiceFS volume (metadata in Redis, data in a local directory) served by `juicefs gateway` as S3 on loopback,
started here and stopped by PID at the end (tests/jfs/stack.py; the gateway keeps no block cache, so every read
comes from the volume's data store, as from a bucket). Two checkpoints are uploaded with `seqshard upload`:

- `demo`: the demo's random-weight DNABERT-2 checkpoint (published layout, about 1.7 MB);
- `big`: a checkpoint-sized file, `--big-gb` GB of random bytes as model.safetensors plus a config.json
  (default 1 GB; LucaOne's 1.8 B-parameter checkpoint is about 7 GB).

Per checkpoint, each "job" is a fresh Python process that does what an inference job's warm-up does for an
s3:// checkpoint, `seqshard.runtime.storage.fetch(url)`, and reports the time that call took (imports excluded):

- `cold`: an empty node cache, as the first job on a node: list the prefix, download every file (parallel ranged
  GETs), check size and sha256, move it into the cache;
- `warm`: the cache the cold job filled, as every later job on the node: list the prefix, find everything;
- `download` (baseline, in the same command): boto3's `download_file` of every object into a fresh directory,
  without the cache or any digest check, which is what a job that reads its checkpoint from the bucket pays
  every time.

Bytes read from the bucket per job are counted on the server side: the gateway's read counter (its Prometheus
metrics) before and after each job; its own configuration reads can add a few kB. Printed ratios:
cold / warm and download / warm (time per job), cold / download (what checking and caching add to a download),
and the bytes each warm job reads from the bucket relative to a cold one. Figures are medians of `--repeats`
jobs of each kind, interleaved. Output: a table on stdout and `--out` JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "benchmarks"), str(REPO / "tests")]

from bench_workflow import machine_description  # noqa: E402
from jfs.stack import VOLUME, Gateway, juicefs_stack  # noqa: E402

from seqshard.demo import write_demo  # noqa: E402

# Benchmark ports (the storage tests use 19010-19015 of the same range).
REDIS_PORT, GATEWAY_PORT, GATEWAY_METRICS = 19050, 19051, 19052

# One job: time seqshard.runtime.storage.fetch alone, in a fresh process, as an inference job's warm-up does it. Both
# kinds of job import boto3 before the clock starts, so that the times compare the work, not the imports.
FETCH_JOB = """
import json, sys, time
import boto3, boto3.s3.transfer
from seqshard.runtime.storage import fetch
started = time.perf_counter()
fetched = fetch(sys.argv[1])
print(json.dumps({"seconds": time.perf_counter() - started, "downloaded_bytes": fetched.downloaded_bytes}))
"""
DOWNLOAD_JOB = """
import json, sys, time
import boto3, boto3.s3.transfer
from pathlib import Path
bucket, prefix, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
started = time.perf_counter()
client = boto3.client("s3")
for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
    for item in page.get("Contents", []):
        target = out / item["Key"][len(prefix) + 1 :]
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, item["Key"], str(target))
print(json.dumps({"seconds": time.perf_counter() - started}))
"""


def make_big_checkpoint(directory: Path, size_bytes: int) -> Path:
    directory.mkdir(parents=True)
    (directory / "config.json").write_text('{"note": "a checkpoint-sized file of random bytes"}\n')
    block = os.urandom(16 * 2**20)
    with open(directory / "model.safetensors", "wb") as handle:
        written = 0
        while written < size_bytes:
            # A fresh first byte per block keeps the file from being blocks of one repeated pattern.
            chunk = os.urandom(1) + block[1 : min(len(block), size_bytes - written)]
            handle.write(chunk)
            written += len(chunk)
    return directory


def job(script: str, args: list[str], env: dict[str, str]) -> dict[str, Any]:
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"benchmark job failed: {result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure(
    name: str, url: str, prefix: str, size: int, gateway: Gateway, env: dict[str, str], scratch: Path, repeats: int
) -> dict[str, Any]:
    """Interleaved cold, warm and download jobs; medians of seconds and of bytes served per job."""
    rows: dict[str, list[dict[str, float]]] = {"cold": [], "warm": [], "download": []}
    for repeat in range(repeats):
        cache = scratch / f"cache-{name}-{repeat}"
        cache_env = {**env, "SEQSHARD_CACHE": str(cache)}
        for kind in ("cold", "warm", "download"):
            before = gateway.read_bytes()
            if kind == "download":
                target = scratch / f"download-{name}-{repeat}"
                figures = job(DOWNLOAD_JOB, [VOLUME, prefix, str(target)], env)
                shutil.rmtree(target)
            else:
                figures = job(FETCH_JOB, [url], cache_env)
            figures["served_bytes"] = gateway.read_bytes() - before
            rows[kind].append(figures)
            print(f"  {name} {kind} #{repeat + 1}: {figures['seconds']:.3f} s, {figures['served_bytes']:,} B served")
        shutil.rmtree(cache)
    medians = {
        kind: {key: statistics.median(row[key] for row in values) for key in ("seconds", "served_bytes")}
        for kind, values in rows.items()
    }
    cold, warm, download = medians["cold"], medians["warm"], medians["download"]
    return {
        "checkpoint": name,
        "bytes": size,
        "jobs": rows,
        "median": medians,
        "ratios": {
            "cold_over_warm_seconds": cold["seconds"] / warm["seconds"],
            "download_over_warm_seconds": download["seconds"] / warm["seconds"],
            "cold_over_download_seconds": cold["seconds"] / download["seconds"],
            "warm_over_cold_bytes_served": warm["served_bytes"] / cold["served_bytes"],
        },
    }


def create_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--big-gb", type=float, default=1.0, help="size of the checkpoint-sized file (GB)")
    parser.add_argument("--repeats", type=int, default=3, help="jobs of each kind per checkpoint (medians)")
    parser.add_argument("--quick", action="store_true", help="smoke run: a 50 MB file, one repeat")
    parser.add_argument("--out", type=Path, help="write the figures as JSON, e.g. benchmarks/results/<name>.json")
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    big_bytes = int((0.05 if args.quick else args.big_gb) * 1e9)
    repeats = 1 if args.quick else args.repeats
    result: dict[str, Any] = {"machine": machine_description(), "results": []}
    with tempfile.TemporaryDirectory(prefix="seqshard-bench-storage-") as temporary:
        scratch = Path(temporary)
        with juicefs_stack(scratch / "juicefs", REDIS_PORT) as stack:
            gateway = stack.start_gateway(GATEWAY_PORT, GATEWAY_METRICS, "--cache-size", "0")
            env = {**os.environ, **stack.env, "AWS_ENDPOINT_URL": gateway.endpoint}
            checkpoints = {
                "demo": write_demo("dnabert2-demo", scratch / "demo"),
                "big": make_big_checkpoint(scratch / "big", big_bytes),
            }
            for name, directory in checkpoints.items():
                prefix = f"bench/{name}"
                url = stack.upload(gateway, directory, prefix)
                size = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
                print(f"{name}: {size:,} bytes at {url}")
                result["results"].append(measure(name, url, prefix, size, gateway, env, scratch, repeats))
    result["machine"]["load_average_at_end"] = os.getloadavg()
    print_table(result["results"])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def print_table(results: list[dict[str, Any]]) -> None:
    print()
    print(f"{'checkpoint':<11}{'bytes':>15}{'job':>10}{'seconds/job':>13}{'bytes from bucket/job':>23}")
    for entry in results:
        for kind, figures in entry["median"].items():
            print(
                f"{entry['checkpoint']:<11}{entry['bytes']:>15,}{kind:>10}{figures['seconds']:>13.3f}"
                f"{int(figures['served_bytes']):>23,}"
            )
    print()
    for entry in results:
        ratios = entry["ratios"]
        print(
            f"{entry['checkpoint']}: cold/warm {ratios['cold_over_warm_seconds']:.1f}x, "
            f"download/warm {ratios['download_over_warm_seconds']:.1f}x, "
            f"cold/download {ratios['cold_over_download_seconds']:.2f}x (time per job); "
            f"warm/cold bytes from bucket {ratios['warm_over_cold_bytes_served']:.4f}"
        )


def main() -> None:
    run(create_parser().parse_args())


if __name__ == "__main__":
    main()
