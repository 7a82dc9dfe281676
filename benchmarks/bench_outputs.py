"""What the richer embed outputs cost: several layers from one forward pass, both strands, per-token rows with spans
and per-base rows, each against the plain one-layer `embed` run in the same process.

Every row runs `seqshard.engine.driver.run_tasks` (the `seqshard embed` / workflow code path: validation, chunks,
tokenizer, batches, model, reductions, Parquet) over the same seeded synthetic DNA (log-normal lengths, median
600 bp, 50 bp to 10 kb, so that some records are windowed) with a random-weight model in the published layout. Rows
are run in turn, `--repeats` times, interleaved, so that a slower minute of a shared machine falls on every row;
the figure is the median over repeats of each row's ratio to the baseline of the same repeat, for the run's CPU
time (the process's, file to file: on a busy shared machine the steadiest measure of the work done, with one torch
thread by default), its wall time, and its model compute (`compute_seconds`: batches through the model and the
reductions, wall time).

    baseline          embed, last layer (`embedding`)
    layers            embed, `layers` = three layers (-1, -4 and the middle one, as fair-esm counts), one pass
    per_token         embed with `per_token` (last layer): vectors, spans and texts per token
    per_token_layers  the same, three layers
    per_base          embed with `per_base` (last layer)
    strand_both       embed with `strand: both`: the reverse complement embedded too (expected about 2x)

The seam probe is off (`seam_sample` 0) so that every row does only its own work.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_workflow import MODELS  # noqa: E402

ROWS = ("baseline", "layers", "per_token", "per_token_layers", "per_base", "strand_both")


def random_dna(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.round(rng.lognormal(np.log(600), 1.0, n)), 50, 10_000).astype(int)
    bases = np.frombuffer(b"ACGT", dtype=np.uint8)
    return [bases[rng.integers(0, 4, length)].tobytes().decode() for length in lengths]


def three_layers(num_layers: int) -> tuple[int, ...]:
    """-1, -4 and the middle layer (fair-esm's numbering), distinct whatever the depth."""
    wanted = [-1, -min(4, num_layers), max(1, num_layers // 2)]
    absolute = {(layer + num_layers + 1) % (num_layers + 1): layer for layer in wanted}
    return tuple(absolute.values())


def settings_of(row: str, layers: tuple[int, ...]) -> dict[str, Any]:
    return {
        "baseline": {},
        "layers": {"layers": layers},
        "per_token": {"per_token": True},
        "per_token_layers": {"per_token": True, "layers": layers},
        "per_base": {"per_base": True},
        "strand_both": {"strand": "both"},
    }[row]


def run_row(checkpoint: Path, fasta: Path, out: Path, settings: dict[str, Any], threads: int) -> dict[str, float]:
    from seqshard.engine.driver import run_tasks
    from seqshard.engine.types import Hardware, RunFiles, TaskSettings, Work

    work = Work("dnabert2", str(checkpoint), (TaskSettings(**settings),), "dna", seam_sample=0)
    started, cpu = time.perf_counter(), time.process_time()
    figures = run_tasks(work, RunFiles(fasta, {"embed": out}), Hardware("cpu", "fp32", threads=threads))
    return {"wall_seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu,
            "compute_seconds": figures.compute_seconds, "n_tokens": figures.n_tokens, "n_windows": figures.n_windows,
            "bytes": out.stat().st_size}  # fmt: skip


def machine() -> dict[str, Any]:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")  # fmt: skip
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {"cpu": cpu, "cpu_cores": os.cpu_count(), "torch": torch.__version__, "commit": commit,
            "load_average": os.getloadavg()}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="medium", choices=list(MODELS), help="DNABERT-2 shape (random weights)")
    parser.add_argument("--n", type=int, default=300, help="sequences")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from {', '.join(ROWS)}")
    parser.add_argument("--out", type=Path, help="write every figure as JSON here")
    args = parser.parse_args(argv)
    rows = [row for row in args.rows.split(",") if row]
    if rows[0] != "baseline":
        rows = ["baseline", *[row for row in rows if row != "baseline"]]

    from seqshard.models.dnabert2 import write_demo_checkpoint

    shape = MODELS[args.model]
    layers = three_layers(shape["num_hidden_layers"])
    with tempfile.TemporaryDirectory(prefix="bench-outputs-") as tmp:
        root = Path(tmp)
        checkpoint = write_demo_checkpoint(root / "checkpoint", **shape)
        sequences = random_dna(args.n, 7)
        fasta = root / "input.fa"
        fasta.write_text("".join(f">s{i}\n{sequence}\n" for i, sequence in enumerate(sequences)))
        run_row(checkpoint, fasta, root / "warm-up.parquet", {}, args.threads)  # imports, allocator, page cache
        runs: dict[str, list[dict[str, float]]] = {row: [] for row in rows}
        for repeat in range(args.repeats):
            for row in rows:
                figures = run_row(checkpoint, fasta, root / f"{row}.parquet", settings_of(row, layers), args.threads)
                runs[row].append(figures)
                print(f"repeat {repeat + 1}/{args.repeats} {row:>16}: CPU {figures['cpu_seconds']:.2f} s, "
                      f"wall {figures['wall_seconds']:.2f} s, compute {figures['compute_seconds']:.2f} s",
                      flush=True)  # fmt: skip

    summary: dict[str, dict[str, float]] = {}
    for row in rows:
        ratios = {
            key: statistics.median(r[key] / b[key] for r, b in zip(runs[row], runs["baseline"], strict=True))
            for key in ("cpu_seconds", "wall_seconds", "compute_seconds", "n_tokens", "bytes")
        }
        summary[row] = {
            "cpu_ratio": ratios["cpu_seconds"], "wall_ratio": ratios["wall_seconds"],
            "compute_ratio": ratios["compute_seconds"], "token_ratio": ratios["n_tokens"],
            "file_ratio": ratios["bytes"], "cpu_seconds": statistics.median(r["cpu_seconds"] for r in runs[row]),
            "wall_seconds": statistics.median(r["wall_seconds"] for r in runs[row]),
        }  # fmt: skip
    print(f"\nDNABERT-2 '{args.model}' ({shape['num_hidden_layers']} layers, hidden {shape['hidden_size']}), "
          f"{args.n} sequences, {sum(map(len, sequences)):,} bp, layers {list(layers)}; medians of {args.repeats}, "
          f"ratios to baseline in the same repeat")  # fmt: skip
    print(f"{'row':>16} {'CPU s':>7} {'wall s':>7} {'CPU x':>7} {'wall x':>7} {'compute x':>10} {'tokens x':>9} "
          f"{'file x':>7}")  # fmt: skip
    for row, figures in summary.items():
        print(f"{row:>16} {figures['cpu_seconds']:7.2f} {figures['wall_seconds']:7.2f} {figures['cpu_ratio']:7.3f} "
              f"{figures['wall_ratio']:7.3f} {figures['compute_ratio']:10.3f} {figures['token_ratio']:9.3f} "
              f"{figures['file_ratio']:7.2f}")  # fmt: skip
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        record = {"model": args.model, "shape": shape, "n": args.n, "repeats": args.repeats, "threads": args.threads,
                  "layers": list(layers), "summary": summary, "runs": runs, "machine": machine()}  # fmt: skip
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
