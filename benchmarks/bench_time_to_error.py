"""Time to error: how soon a bad input is refused, against the time it takes to score the good part of it.

Inputs (seeded): N good DNA records (log-normal lengths, median 600 bp, clipped to 50-2000 bp), then the same
file with one bad record appended at the end, and the N good records gzip-compressed with the last quarter of
the compressed stream cut off (a truncated download). The model is the demo's random-weight DNABERT-2
checkpoint (`seqshard demo-checkpoint --kind dnabert2-demo`), the one the workflow's demo runs.

Rows, each timed from the call to its return or its error:
- `score_good`: `run_tasks` over the N good records: the baseline, what a run costs before it could fail.
- `bad_at_end`: `run_tasks` over N good + 1 bad record; ends with FastaValidationError.
- `truncated_gzip`: `run_tasks` over the truncated .gz; ends with FastaFormatError.
and the same three through the `seqshard embed` command in a fresh process (`--cli`: what a user waits,
Python and torch start-up included).

Printed: seconds per row and each error row's time divided by `score_good`'s in the same process (or command
set), the figure the issue asks about (expected <= 0.1). `--repeats` interleaves the rows and reports medians.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from seqshard.demo import write_demo
from seqshard.engine.driver import run_tasks
from seqshard.engine.types import RunFiles, Work


def write_inputs(folder: Path, n: int, seed: int) -> dict[str, Path]:
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.round(rng.lognormal(math.log(600), 0.5, n)), 50, 2000).astype(int)
    bases = np.frombuffer(b"ACGT", dtype=np.uint8)
    good = b"".join(b">r%d\n%s\n" % (i, bases[rng.integers(0, 4, size)].tobytes()) for i, size in enumerate(lengths))
    paths = {"score_good": folder / "good.fa", "bad_at_end": folder / "bad.fa", "truncated_gzip": folder / "cut.fa.gz"}
    paths["score_good"].write_bytes(good)
    paths["bad_at_end"].write_bytes(good + b">bad_at_the_end\nACGTXACGT\n")
    packed = gzip.compress(good, mtime=0)
    paths["truncated_gzip"].write_bytes(packed[: len(packed) * 3 // 4])
    return paths


def in_process(path: Path, out: Path, checkpoint: Path) -> Callable[[], str]:
    def run() -> str:
        try:
            run_tasks(Work("dnabert2", checkpoint), RunFiles(path, {"embed": out}))
        except ValueError as error:  # FastaValidationError, FastaFormatError
            return type(error).__name__
        return "ok"

    return run


def command(path: Path, out: Path, checkpoint: Path) -> Callable[[], str]:
    def run() -> str:
        result = subprocess.run(
            [sys.executable, "-m", "seqshard", "embed", "--checkpoint", str(checkpoint), str(path), "-o", str(out)],
            capture_output=True,
            text=True,
        )
        return "ok" if result.returncode == 0 else f"exit {result.returncode}: {result.stderr.strip()[-80:]}"

    return run


def timed(run: Callable[[], str]) -> tuple[float, str]:
    started = time.perf_counter()
    outcome = run()
    return time.perf_counter() - started, outcome


def create_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000, help="good records (default 20000)")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repeats; medians are reported")
    parser.add_argument("--cli", action="store_true", help="also time the rows through `seqshard embed` processes")
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--out", type=Path, help="write every figure as JSON here")
    return parser


def run(args: argparse.Namespace) -> dict[str, object]:
    results: dict[str, object] = {
        "n_good": args.n,
        "repeats": args.repeats,
        "cpu_cores": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory(prefix="seqshard-tte-") as scratch:
        folder = Path(scratch)
        checkpoint = write_demo("dnabert2-demo", folder / "dnabert2-demo")
        paths = write_inputs(folder, args.n, args.seed)
        setups = {"in_process": in_process}
        if args.cli:
            setups["command"] = command
        for setup_name, setup in setups.items():
            runs = {row: setup(path, folder / f"{row}.parquet", checkpoint) for row, path in paths.items()}
            seconds: dict[str, list[float]] = {row: [] for row in runs}
            outcomes: dict[str, str] = {}
            for _ in range(args.repeats):
                for row, call in runs.items():
                    elapsed, outcomes[row] = timed(call)
                    seconds[row].append(elapsed)
            medians = {row: statistics.median(values) for row, values in seconds.items()}
            baseline = medians["score_good"]
            results[setup_name] = {
                row: {
                    "seconds": round(medians[row], 3),
                    "all_seconds": [round(value, 3) for value in seconds[row]],
                    "outcome": outcomes[row],
                    "ratio_to_score_good": round(medians[row] / baseline, 4),
                }
                for row in runs
            }
    results["load_average_at_end"] = os.getloadavg()
    return results


def main() -> None:
    args = create_parser().parse_args()
    results = run(args)
    print(f"time to error, {args.n} good records (+ 1 bad at the end / a truncated gzip), demo DNABERT-2, CPU")
    print(f"{'setup':<11} {'row':<15} {'seconds':>9} {'/ score_good':>13}  outcome")
    for setup in ("in_process", "command"):
        for row, figures in results.get(setup, {}).items():  # type: ignore[union-attr]
            print(
                f"{setup:<11} {row:<15} {figures['seconds']:>9.3f} {figures['ratio_to_score_good']:>13.4f}  "
                f"{figures['outcome']}"
            )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
