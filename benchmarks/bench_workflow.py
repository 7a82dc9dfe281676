"""Workflow benchmark: what Snakemake and sharding cost around the inference itself.

Three measurements, each in fresh temporary directories, each printed with its definition:

(a) overhead: the whole workflow (`snakemake --cores C`, every rule: pack_<model>, infer_shard, merge_<model>,
    resource_report) on N short DNA sequences with a tiny random-weight DNABERT-2 checkpoint (`--model`). Each
    inference job writes to its figures JSON `run_seconds` (reading its shard to closing its Parquet: FASTA
    validation, tokenizing, the model, Parquet writing; model load excluded) and `compute_seconds` (the model's
    batches alone). With T the workflow's wall time, t the threads of one inference job and C the cores,
        overhead = (T - sum(run_seconds) * t / C) / T
    is what the workflow adds around scoring the sequences: Snakemake itself, sharding, merging, the report, and
    each job's process start-up, imports and model load. The same with compute_seconds in place of run_seconds
    is printed too, and, as a baseline in the same command, the wall time of one `seqshard embed` process over
    the whole file (same model and threads, no Snakemake).
(b) DAG for many shards: a sample of S one-record shards (`shards.max_sequences: 1`), sharded for real by the
    workflow's checkpoint rule, then the wall time of `snakemake --dry-run` over the whole DAG (S inference jobs,
    merge, report), next to the same for a 10-shard sample: the difference is the cost of the shards.
(c) merge memory: peak RSS of a child process that runs `seqshard.plan.merge.merge_model` on R rows of `embed`
    output (hidden H float32 vectors), measured by the kernel (the child's VmHWM), for 10 k and 1 M rows, with shards
    of a fixed row count (so that only the total changes) and with the workflow's default shard size.

Figures are medians of `--repeats` runs. Output: tables on stdout and `--out` JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"
DEMO_CHECKPOINT = "resources/checkpoints/dnabert2-bench"
# DNABERT-2 layouts for (a), far smaller than the published 117 M-parameter model (hidden 768, 12 layers), so
# that the model's compute is small and whatever the workflow adds around it shows. `demo` is the workflow demo's.
MODELS: dict[str, dict[str, int]] = {
    "demo": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128},
    "small": {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 512},
    "medium": {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024},
    # The published DNABERT-2-117M's shape (random weights).
    "full": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    "tiny": {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 512},
}


# ------------------------------------------------------------------------------------------------------------
# Helpers


def machine_description() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    import snakemake

    return {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "snakemake": snakemake.__version__,
        "load_average_at_start": os.getloadavg(),
    }


def write_dna_fasta(path: Path, n: int, median: float, sigma: float, seed: int, minimum: int, maximum: int) -> int:
    """`n` seeded random DNA records with log-normal lengths; returns the total residues."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.round(rng.lognormal(math.log(median), sigma, n)), minimum, maximum).astype(int)
    bases = np.frombuffer(b"ACGT", dtype=np.uint8)
    with open(path, "w", encoding="ascii") as handle:
        for index, length in enumerate(lengths):
            handle.write(f">seq{index:07d}\n{bases[rng.integers(0, 4, length)].tobytes().decode()}\n")
    return int(lengths.sum())


def write_workdir(workdir: Path, fasta: Path, shards: dict[str, int], model: str = "demo") -> None:
    """A sample sheet and config that run a small random-weight DNABERT-2 checkpoint (written here) on one sample."""
    from seqshard.models.dnabert2 import write_demo_checkpoint

    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "samples.tsv").write_text(f"sample\tfasta\tmolecule\nbench\t{fasta}\tdna\n")
    config = {
        "samples": "samples.tsv",
        "on_invalid": "error",
        "shards": shards,
        "models": {"dnabert2": {"architecture": "dnabert2", "checkpoint": DEMO_CHECKPOINT, "tasks": ["embed"]}},
    }
    (workdir / "config.yaml").write_text(json.dumps(config, indent=2) + "\n")  # JSON is YAML
    if not (workdir / DEMO_CHECKPOINT).exists():
        write_demo_checkpoint(workdir / DEMO_CHECKPOINT, **MODELS[model])


def snakemake(workdir: Path, cores: int, *args: str) -> tuple[float, subprocess.CompletedProcess]:
    command = [
        sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(workdir),
        "--configfile", str(workdir / "config.yaml"), "--cores", str(cores), *args,
    ]  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=workdir)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"snakemake {' '.join(args)} failed in {workdir}:\n{result.stderr[-4000:]}")
    return seconds, result


def median(values: list[float]) -> float:
    return float(statistics.median(values))


# ------------------------------------------------------------------------------------------------------------
# (a) Snakemake overhead


def bench_overhead(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    fasta = scratch / "overhead.fa"
    residues = write_dna_fasta(fasta, args.n_sequences, args.median_length, 0.5, args.seed, 50, 2000)
    shards = {"target_tokens": args.target_tokens, "max_sequences": args.max_sequences}
    print(
        f"\n(a) overhead: {args.n_sequences} sequences ({residues / 1e6:.1f} Mbp, median {args.median_length:.0f} bp), "
        f"shards {shards}, --cores {args.cores}"
    )
    runs, direct = [], []
    for repeat in range(args.repeats):
        workdir = scratch / f"overhead{repeat}"
        write_workdir(workdir, fasta, shards, args.model)
        wall, _ = snakemake(workdir, args.cores)
        runs.append(overhead_figures(workdir, wall, args.cores))
        direct.append(direct_run(workdir, fasta, runs[-1]["threads_per_infer_job"]))
        print(
            f"  run {repeat + 1}/{args.repeats}: workflow {wall:.1f} s, overhead {100 * runs[-1]['overhead']:.1f} % "
            f"(vs model compute alone {100 * runs[-1]['overhead_vs_model_compute']:.1f} %); one `seqshard embed` "
            f"process on the whole file {direct[-1]['wall_seconds']:.1f} s"
        )
        shutil.rmtree(workdir)
    best = sorted(runs, key=lambda run: run["overhead"])[len(runs) // 2]  # the median run, whole
    return {
        "n_sequences": args.n_sequences,
        "residues": residues,
        "model": args.model,
        "model_config": MODELS[args.model],
        "shards_config": shards,
        "cores": args.cores,
        "runs": runs,
        "median_run": best,
        "overhead_median": median([run["overhead"] for run in runs]),
        "overhead_vs_model_compute_median": median([run["overhead_vs_model_compute"] for run in runs]),
        "direct_runs": direct,
        "workflow_over_direct_median": median(
            [r["wall_seconds"] / d["wall_seconds"] for r, d in zip(runs, direct, strict=True)]
        ),
        "definition": (
            "overhead = (T - sum(run_seconds) * threads_per_infer_job / cores) / T, where run_seconds is each "
            "inference job's in-process scoring time (reading its shard to closing its Parquet, model load excluded)"
        ),
    }


def overhead_figures(workdir: Path, wall: float, cores: int) -> dict[str, Any]:
    figures = [json.loads(path.read_text()) for path in sorted(workdir.glob("results/bench/*/*/figures/*.json"))]
    jobs = []
    for path in sorted((workdir / "benchmarks").rglob("*.tsv")):
        rule = path.relative_to(workdir / "benchmarks").parts[0]
        seconds = float(pd.read_csv(path, sep="\t")["s"].iloc[0])
        jobs.append((rule, seconds))
    by_rule: dict[str, float] = {}
    for rule, seconds in jobs:
        by_rule[rule] = by_rule.get(rule, 0.0) + seconds
    threads = int(figures[0]["threads"])
    compute = sum(float(f["compute_seconds"]) for f in figures)
    inference = sum(float(f["run_seconds"]) for f in figures)
    load = sum(float(f["load_seconds"]) for f in figures)
    job_seconds = sum(seconds for _, seconds in jobs)
    return {
        "wall_seconds": wall,
        "n_infer_jobs": len(figures),
        "threads_per_infer_job": threads,
        "inference_seconds": inference,
        "compute_seconds": compute,
        "overhead": (wall - inference * threads / cores) / wall,
        "overhead_vs_model_compute": (wall - compute * threads / cores) / wall,
        "load_seconds": load,
        "job_seconds_by_rule": by_rule,
        "snakemake_own_seconds": wall - job_seconds,
        "snakemake_own_fraction": (wall - job_seconds) / wall,
        "infer_start_up_seconds": by_rule.get("infer_shard", 0.0) - inference - load,
        "n_tokens": sum(int(f["n_tokens"]) for f in figures),
        "useful_token_fraction": sum(int(f["n_tokens"]) for f in figures)
        / sum(int(f["n_computed_tokens"]) for f in figures),
    }


def direct_run(workdir: Path, fasta: Path, threads: int) -> dict[str, Any]:
    """The baseline: the same sequences, model and threads through one `seqshard embed` process, no Snakemake."""
    out = workdir / "direct.parquet"
    figures_path = workdir / "direct.json"
    command = [
        sys.executable, "-m", "seqshard", "embed", str(fasta), "-o", str(out), "--checkpoint",
        str(workdir / DEMO_CHECKPOINT), "--threads", str(threads), "--figures", str(figures_path),
    ]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=workdir)
    wall = time.perf_counter() - started
    figures = json.loads(figures_path.read_text())
    out.unlink()
    return {
        "wall_seconds": wall,
        "inference_seconds": figures["run_seconds"],
        "compute_seconds": figures["compute_seconds"],
        "load_seconds": figures["load_seconds"],
    }


# ------------------------------------------------------------------------------------------------------------
# (b) DAG building for many shards


def bench_dag(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    print(f"\n(b) DAG: dry run over {args.dag_shards} shards vs 10 shards")
    result: dict[str, Any] = {}
    for n_shards in (10, args.dag_shards):
        fasta = scratch / f"dag{n_shards}.fa"
        write_dna_fasta(fasta, n_shards, 100, 0.0, args.seed, 50, 200)  # equal lengths: one record per shard
        workdir = scratch / f"dag{n_shards}"
        write_workdir(workdir, fasta, {"target_tokens": 10**9, "max_sequences": 1})
        shard_seconds, _ = snakemake(workdir, args.cores, "--until", "pack_dnabert2")
        times = []
        for _ in range(args.repeats):
            seconds, dry = snakemake(workdir, args.cores, "--dry-run")
            times.append(seconds)
        planned = dry.stdout.count("rule infer_shard:")
        if planned != n_shards:
            raise RuntimeError(f"dry run over {n_shards} shards planned {planned} inference jobs")
        result[str(n_shards)] = {"dry_run_seconds": times, "median": median(times), "sharding_seconds": shard_seconds}
        runs = ", ".join(f"{t:.1f}" for t in times)
        print(f"  {n_shards} shards: dry run {median(times):.1f} s (runs {runs}); sharding {shard_seconds:.1f} s")
        shutil.rmtree(workdir)
    small, large = result["10"]["median"], result[str(args.dag_shards)]["median"]
    result["per_shard_ms"] = 1000 * (large - small) / (args.dag_shards - 10)
    return result


# ------------------------------------------------------------------------------------------------------------
# (c) merge memory


# The child reports its own VmHWM: the kernel's high-water mark of the process's memory map since exec. (A
# parent's wait4 ru_maxrss would also count the parent's pages the child held between fork and exec.)
MERGE_CHILD = """
import json, sys
from pathlib import Path
from seqshard.plan.merge import merge_model
spec = json.loads(sys.argv[1])
if spec["scores"]:
    out = Path(spec["out"])
    merge_model(spec["pack"], {"embed": {Path(d).name: d for d in spec["scores"]}}, {("bench", "embed"): out},
                {"bench": out.with_suffix(".rejects.tsv")}, model="bench")
status = open("/proc/self/status").read().split("VmHWM:")[1].split()
print(int(status[0]) * 1024)
"""


def write_embed_shards(directory: Path, rows: int, rows_per_shard: int, hidden: int, seed: int) -> list[Path]:
    """A pack of one sample (record map, samples table) and its scored shards of task `embed`, as the workflow's
    pack and infer_shard write them (same writers, schemas and provenance); returns the shards' directories."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from seqshard.io.parquet import results_table, task_schema, vectors_array, write_table
    from seqshard.plan.packing import RECORD_MAP_SCHEMA, SAMPLES_HEADER

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    schema = task_schema("embed", hidden)
    metadata = {"task": "embed", "architecture": "dnabert2", "checkpoint_digest": "sha256:bench", "pooling": "mean"}
    lengths = rng.integers(50, 10_000, rows, dtype=np.int32)
    paths = []
    for number, start in enumerate(range(0, rows, rows_per_shard)):
        n = min(rows_per_shard, rows - start)
        columns = {
            "id": [f"u{start + i}" for i in range(n)],
            "length": lengths[start : start + n],
            "n_tokens": rng.integers(10, 2_000, n, dtype=np.int32),
            "n_windows": np.ones(n, dtype=np.int32),
            "truncated": np.zeros(n, dtype=bool),
            "embedding": vectors_array(rng.standard_normal((n, hidden), dtype=np.float32)),
        }
        shard = directory / "scores" / f"{number:04d}"
        write_table(results_table(schema, columns, metadata), shard / "embed.parquet")
        (shard / "rejects.tsv").write_text("file\trecord_id\tline\treason\n")
        paths.append(shard)
    index = np.arange(rows)
    record_map = pa.table(
        {
            "sample": ["bench"] * rows, "record": index, "id": [f"seq{i:08d}" for i in range(rows)],
            "line": 2 * index + 1, "length": lengths, "shard": [f"{i // rows_per_shard:04d}" for i in range(rows)],
            "row": index % rows_per_shard,
        },
        schema=RECORD_MAP_SCHEMA,
    )  # fmt: skip
    pq.write_table(record_map, directory / "records.parquet")
    (directory / "samples.tsv").write_text(SAMPLES_HEADER + f"bench\tbench.fa\tdna\t{rows}\t{rows}\t0\t0\n")
    return paths


def child_peak_rss(spec: dict[str, object]) -> tuple[int, float]:
    """Peak RSS (bytes) and wall seconds of one merge in a fresh Python process."""
    started = time.perf_counter()
    child = subprocess.run(
        [sys.executable, "-c", MERGE_CHILD, json.dumps(spec)], cwd=REPO, capture_output=True, text=True, check=True
    )
    return int(child.stdout.split()[-1]), time.perf_counter() - started


def bench_merge(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    hidden = args.merge_hidden
    size = args.merge_rows_large * hidden * 4 / 1e9
    print(
        f"\n(c) merge peak RSS, hidden {hidden} float32 ({size:.1f} GB of embeddings at {args.merge_rows_large} rows)"
    )
    free = shutil.disk_usage(scratch).free
    need = 3 * args.merge_rows_large * hidden * 4  # the shards, the merged file, headroom
    if free < need:
        raise SystemExit(
            f"(c) needs about {need / 1e9:.0f} GB free under {scratch}, has {free / 1e9:.0f} GB; "
            "pass --merge-hidden 64 or --scratch elsewhere"
        )
    floor = [child_peak_rss({"scores": [], "pack": "", "out": ""})[0] for _ in range(args.repeats)]
    print(f"  child that only imports seqshard.plan.packing: {median(floor) / 2**20:.0f} MiB")
    layouts = {
        # only the total changes: the same shard size for both totals
        f"shards of {args.merge_shard_rows} rows": (args.merge_shard_rows, args.merge_shard_rows),
        # what the workflow makes with its default max_sequences: one 10 k shard, or shards of max_sequences rows
        f"workflow default (max_sequences {args.max_sequences})": (args.merge_rows_small, args.max_sequences),
    }
    result: dict[str, Any] = {"hidden": hidden, "import_only_peak_rss": median(floor), "layouts": {}}
    for label, (small_shard_rows, large_shard_rows) in layouts.items():
        figures = {}
        for rows, shard_rows in ((args.merge_rows_small, small_shard_rows), (args.merge_rows_large, large_shard_rows)):
            directory = scratch / f"merge-{rows}-{shard_rows}"
            started = time.perf_counter()
            shards = write_embed_shards(directory, rows, shard_rows, hidden, args.seed)
            made = time.perf_counter() - started
            peaks, walls = [], []
            for _ in range(args.repeats):
                out = scratch / "merged.parquet"
                spec = {"scores": [str(p) for p in shards], "pack": str(directory), "out": str(out)}
                peak, wall = child_peak_rss(spec)
                peaks.append(peak)
                walls.append(wall)
                out.unlink()
            figures[str(rows)] = {
                "rows": rows,
                "shards": len(shards),
                "rows_per_shard": shard_rows,
                "peak_rss": peaks,
                "peak_rss_median": median(peaks),
                "seconds": walls,
            }
            runs = ", ".join(f"{p / 2**20:.0f}" for p in peaks)
            print(
                f"  {label}: {rows} rows in {len(shards)} shard(s): peak RSS {median(peaks) / 2**20:.0f} MiB "
                f"(runs {runs}), merge {median(walls):.1f} s, shards written in {made:.0f} s"
            )
            shutil.rmtree(directory)
        large, small = figures[str(args.merge_rows_large)], figures[str(args.merge_rows_small)]
        ratio = large["peak_rss_median"] / small["peak_rss_median"]
        result["layouts"][label] = {"figures": figures, "ratio_large_to_small": ratio}
        print(f"  {label}: peak RSS {args.merge_rows_large} rows / {args.merge_rows_small} rows = {ratio:.2f}")
    return result


# ------------------------------------------------------------------------------------------------------------
# Command line


def create_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parts = ["overhead", "dag", "merge"]
    parser.add_argument("--parts", nargs="+", default=parts, choices=parts, help="which measurements to run")
    parser.add_argument("--quick", action="store_true", help="smoke run: small sizes everywhere")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure; medians quoted")
    parser.add_argument("--cores", type=int, default=os.cpu_count(), help="snakemake --cores")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-sequences", type=int, default=100_000, help="(a) sequences in the sample")
    parser.add_argument("--median-length", type=float, default=200.0, help="(a) median length, bp")
    parser.add_argument("--model", default="tiny", choices=sorted(MODELS), help="(a) the checkpoint's size")
    parser.add_argument("--target-tokens", type=int, default=10_000_000, help="(a) shards.target_tokens")
    parser.add_argument("--max-sequences", type=int, default=100_000, help="(a, c) shards.max_sequences")
    parser.add_argument("--dag-shards", type=int, default=10_000, help="(b) shards in the large DAG")
    parser.add_argument("--merge-rows-small", type=int, default=10_000)
    parser.add_argument("--merge-rows-large", type=int, default=1_000_000)
    parser.add_argument("--merge-shard-rows", type=int, default=10_000, help="(c) rows per shard, fixed layout")
    parser.add_argument("--merge-hidden", type=int, default=768, help="(c) embedding width (DNABERT-2: 768)")
    parser.add_argument("--scratch", type=Path, help="where temporary directories go (default: the system's)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON, e.g. benchmarks/results/<name>.json")
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        args.repeats, args.n_sequences, args.target_tokens, args.dag_shards = 1, 2_000, 100_000, 200
        args.merge_rows_small, args.merge_rows_large, args.merge_shard_rows = 1_000, 20_000, 1_000
        args.merge_hidden = 64
    settings = {key: value for key, value in vars(args).items() if key not in ("out", "scratch")}
    result: dict[str, Any] = {"benchmark": "bench_workflow", "machine": machine_description(), "settings": settings}
    print(f"machine: {result['machine']['cpu']} ({os.cpu_count()} cores)")
    with tempfile.TemporaryDirectory(prefix="seqshard-bench-", dir=args.scratch) as scratch:
        if "overhead" in args.parts:
            result["overhead"] = bench_overhead(args, Path(scratch))
        if "dag" in args.parts:
            result["dag"] = bench_dag(args, Path(scratch))
        if "merge" in args.parts:
            result["merge"] = bench_merge(args, Path(scratch))
    print_summary(result)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"\nwrote {args.out}")
    return result


def print_summary(result: dict[str, Any]) -> None:
    print("\nsummary")
    if "overhead" in result:
        overhead = result["overhead"]
        run_ = overhead["median_run"]
        print(
            f"(a) {overhead['n_sequences']} sequences, {run_['n_infer_jobs']} inference jobs: overhead "
            f"{100 * overhead['overhead_median']:.1f} % (median of {len(overhead['runs'])} runs)"
        )
        print(f"    {overhead['definition']}")
        print(
            f"    against the model's compute alone (compute_seconds): "
            f"{100 * overhead['overhead_vs_model_compute_median']:.1f} %; workflow wall / one `seqshard embed` "
            f"process on the whole file: {overhead['workflow_over_direct_median']:.2f}x"
        )
        print(
            f"    Snakemake's own share, (T - the jobs' wall times) / T: {100 * run_['snakemake_own_fraction']:.1f} %"
        )
        jobs = "".join(f" + {rule} {seconds:.1f} s" for rule, seconds in run_["job_seconds_by_rule"].items())
        own = run_["snakemake_own_seconds"]
        print(f"    median run: T {run_['wall_seconds']:.1f} s = Snakemake itself {own:.1f} s{jobs}")
        print(
            f"    inside infer_shard: scoring {run_['inference_seconds']:.1f} s (of which model compute "
            f"{run_['compute_seconds']:.1f} s), model load {run_['load_seconds']:.1f} s, process start-up and "
            f"imports {run_['infer_start_up_seconds']:.1f} s"
        )
    if "dag" in result:
        dag = result["dag"]
        sizes = ", ".join(
            f"{key} shards {value['median']:.1f} s" for key, value in dag.items() if key != "per_shard_ms"
        )
        print(f"(b) dry run: {sizes}; {dag['per_shard_ms']:.1f} ms per shard")
    if "merge" in result:
        for label, layout in result["merge"]["layouts"].items():
            sizes = ", ".join(
                f"{v['rows']} rows {v['peak_rss_median'] / 2**20:.0f} MiB" for v in layout["figures"].values()
            )
            print(f"(c) {label}: {sizes}; ratio {layout['ratio_large_to_small']:.2f}")


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # progress shows as it happens, also when piped to a file
    run(create_parser().parse_args())


if __name__ == "__main__":
    main()
