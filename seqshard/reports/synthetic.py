"""A made-up workflow run of any size, written as the real one writes its files, for report tests and benchmarks.

Like the workflow, each of three model entries (two on GPUs, one on CPUs) packs its samples into shards, scores
every shard in one job per forward pass, and merges; jobs are scheduled on the earliest free slots of 8-core
hosts in dependency order, so the timeline, the critical path and the idle share have something real to find.
It is deterministic for a seed. Benchmark files follow Snakemake's format, job records `seqshard.runtime.jobs`, run
figures `seqshard.engine.types.RunFigures`.
"""

from __future__ import annotations

import heapq
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time"
_START = 1_767_225_600.0  # 2026-01-01 00:00 UTC: a fixed origin keeps the output identical for a seed
# model -> (forward pass, its tasks, device, threads, batch_tokens, GPU utilization range in %)
_MODELS = {
    "dnabert2": ("hidden", "embed", "cuda", 4, 65536, (70.0, 97.0)),
    "lucaone": ("hidden", "embed,classify", "cuda", 4, 2048, (20.0, 45.0)),
    "dnabert2_pll": ("mlm", "mlm_score", "cpu", 8, 16384, None),
}


@dataclass
class SyntheticRun:
    """Where the files of a synthetic run are."""

    benchmark_root: Path
    log_root: Path
    benchmarks: list[Path] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)


class _Cluster:
    """Hosts of `cores` slots each; a job takes the earliest time at which some host has its threads free."""

    def __init__(self, hosts: int, cores: int) -> None:
        self.cores = cores
        self.free = {f"node{i:03d}": [_START] * cores for i in range(hosts)}  # per host, when each slot frees

    def place(self, ready: float, threads: int, seconds: float) -> tuple[str, float]:
        best: tuple[float, str] | None = None
        for host, slots in self.free.items():
            start = max(ready, sorted(slots)[threads - 1])
            if best is None or start < best[0]:
                best = (start, host)
        start, host = best  # type: ignore[misc]
        slots = self.free[host]
        for _ in range(threads):  # the threads earliest free are the ones the job takes
            slots.remove(min(slots))
        slots += [start + seconds] * threads
        return host, start


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _benchmark_text(seconds: float, cpu_seconds: float, rss_mb: float) -> str:
    hms = f"{int(seconds) // 3600}:{int(seconds) % 3600 // 60:02d}:{int(seconds) % 60:02d}"
    load = 100.0 * cpu_seconds / seconds
    memory = [rss_mb, rss_mb * 3, rss_mb * 0.9, rss_mb * 0.95]  # max_rss, max_vms, max_uss, max_pss
    values = [f"{seconds:.4f}", hms, *(f"{v:.2f}" for v in memory), f"{rss_mb / 10:.2f}", f"{rss_mb / 20:.2f}",
              f"{load:.2f}", f"{cpu_seconds:.2f}"]  # fmt: skip
    return f"{_HEADER}\n" + "\t".join(values) + "\n"


def write_synthetic_run(directory: Path | str, n_jobs: int, seed: int = 0) -> SyntheticRun:
    """Write `n_jobs` jobs' benchmark files, job records and inference figures under `directory` (at least one
    inference job per model: 9 jobs for any smaller `n_jobs`)."""
    rng = np.random.default_rng(seed)
    root = Path(directory)
    run = SyntheticRun(root / "benchmarks", root / "logs")
    cluster = _Cluster(hosts=max(1, math.ceil(n_jobs / 625)), cores=8)
    # One pack and one merge per model; the rest are inference jobs, spread over the models.
    spread = max(len(_MODELS), n_jobs - 2 * len(_MODELS))
    shards = {model: spread // len(_MODELS) + (i < spread % len(_MODELS)) for i, model in enumerate(_MODELS)}

    def job(rule: str, key: str, ready: float, threads: int, seconds: float, efficiency: float) -> float:
        host, start = cluster.place(ready, threads, seconds)
        cpu = seconds * threads * efficiency
        run.benchmarks.append(_write(run.benchmark_root / rule / f"{key}.tsv",
                                     _benchmark_text(seconds, cpu, float(rng.uniform(50, 3000)))))  # fmt: skip
        record = {"rule": rule, "job": key, "host": host, "cpu_count": cluster.cores, "threads": threads,
                  "started_at": start, "ended_at": start + seconds, "status": "ok",
                  "load_average": float(rng.uniform(0.5, cluster.cores))}  # fmt: skip
        _write(run.log_root / rule / f"{key}.job.json", json.dumps(record))
        return start + seconds

    packed = {model: job("pack", model, _START, 1, float(rng.uniform(30, 300)), 0.3) for model in _MODELS}
    pending = [(ready, model, shard) for model, ready in packed.items() for shard in range(shards[model])]
    heapq.heapify(pending)
    finished: dict[str, float] = {}
    while pending:
        ready, model, shard = heapq.heappop(pending)
        pass_, tasks, device, threads, batch_tokens, utilization = _MODELS[model]
        sequences = int(rng.integers(2_000, 20_000))
        records = sequences + int(rng.integers(0, sequences // 20))  # a few duplicates, computed once
        compute = sequences / (400.0 if device == "cuda" else 20.0) * float(rng.uniform(0.7, 1.3))
        load = float(rng.uniform(3, 15))
        seconds = compute + load + float(rng.uniform(3, 8))
        key = f"{model}/{pass_}/{shard:04d}"
        end = job("infer_shard", key, ready, threads, seconds, float(rng.uniform(0.6, 0.95)))
        finished[model] = max(finished.get(model, 0.0), end)
        tokens = sequences * int(rng.integers(150, 400))
        computed = int(tokens / float(rng.uniform(0.9, 0.99)))
        if utilization is None:
            gpu: dict[str, object] = {"gpu_available": False, "gpu_reason": "the work ran on cpu, not on a GPU"}
        else:
            mean = float(rng.uniform(*utilization))
            gpu = {"gpu_available": True, "gpus": [{
                "index": 0, "name": "NVIDIA H100 80GB HBM3", "uuid": f"GPU-{shard:08d}",
                "samples": int(seconds * 4), "utilization_mean_percent": round(mean, 2),
                "utilization_peak_percent": min(100.0, mean + 20), "memory_used_mean_bytes": int(30e9),
                "memory_used_peak_bytes": int(float(rng.uniform(20e9, 60e9))), "memory_total_bytes": int(80e9),
                "power_mean_watts": round(150 + 4 * mean, 1), "power_peak_watts": 700.0}]}  # fmt: skip
        figures = {
            "rule": "infer_shard", "job": key, "model": model, "pass": pass_, "tasks": tasks,
            "shard": f"{shard:04d}", "device": device, "dtype": "bf16" if device == "cuda" else "fp32",
            "threads": threads, "batch_tokens": batch_tokens, "n_records": records, "n_sequences": sequences,
            "n_cached": 0, "n_tokens": tokens, "n_computed_tokens": computed,
            "n_batches": max(1, computed // min(batch_tokens, 1000)), "load_seconds": round(load, 3),
            "compute_seconds": round(compute, 3), "sequences_per_second": round(sequences / compute, 3),
            "tokens_per_second": round(tokens / compute, 1), "peak_gpu_memory_bytes": None,
            "cpu_count": cluster.cores, "gpu": gpu,
        }  # fmt: skip
        run.figures.append(_write(root / "figures" / f"{key}.json", json.dumps(figures)))
    for model, ready in sorted(finished.items(), key=lambda item: item[1]):
        job("merge", model, ready, 1, float(rng.uniform(20, 120)), 0.4)
    return run
