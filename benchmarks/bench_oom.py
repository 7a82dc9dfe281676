"""A real GPU out-of-memory, recovered: seqshard's production path under a memory cap that its first batch passes.

On a CUDA device, the suite runs `score_records` (task `embed`, seqshard's Runner) three times over the same
seeded DNA mix with a random-weight DNABERT-2 of `--size` in the published layout:
1. at `--batch-tokens / 2`, uncapped: the peak memory of a half-size batch;
2. at `--batch-tokens`, uncapped: the reference embeddings and the peak of a full batch;
3. at `--batch-tokens`, with `torch.cuda.set_per_process_memory_fraction` set halfway between the two peaks, so
   the caching allocator refuses the first (largest) full batch: a real `torch.OutOfMemoryError` from CUDA's
   allocator, not a simulation.
Printed: out-of-memory splits, budget changes (lowered after the failure, raised back a quarter of the way after
a run of batches that fit; a raise that fails again is another split), batches, seconds of each run, and the
largest difference between the capped run's embeddings and the reference (same dtype). The CPU tests simulate the
same with a memory budget; this is the check that needs the device (`benchmarks/gpu_check.sh` runs it).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import LengthMix, synthetic_records, write_checkpoint  # noqa: E402

from seqshard.engine.chunks import score_records  # noqa: E402
from seqshard.engine.types import RunFigures, TaskSettings  # noqa: E402
from seqshard.models import get_loader  # noqa: E402
from seqshard.runtime.devices import resolve_precision  # noqa: E402


def run(loaded, records, batch_tokens: int, dtype: str, device: str) -> tuple[np.ndarray, RunFigures, float, int]:
    """Embeddings, figures, seconds and peak allocated bytes of one score_records call."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    figures = RunFigures({}, device, dtype, torch.get_num_threads(), batch_tokens)
    started = time.perf_counter()
    columns = score_records(loaded, records, TaskSettings(), molecule="dna", batch_tokens=batch_tokens,
                            dtype=dtype, figures=figures).columns["embed"]  # fmt: skip
    torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    values = np.asarray(columns["embedding"].flatten(), dtype=np.float32).reshape(len(records), -1)
    return values, figures, seconds, int(torch.cuda.max_memory_allocated(device))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", default="full", help="DNABERT-2 size (bench_inference.DNABERT2_SIZES)")
    parser.add_argument("--sequences", type=int, default=4000)
    parser.add_argument("--batch-tokens", type=int, default=131072, help="large, so that the peaks differ clearly")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 from compute capability 8.0), fp16 or fp32")
    parser.add_argument("--cache-dir", type=Path, help="keep the written checkpoint here (default: a temp dir)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if not args.device.startswith("cuda") or not torch.cuda.is_available():
        print("bench_oom.py needs a CUDA device: the out-of-memory it recovers from is the GPU allocator's")
        return 2
    precision = resolve_precision(args.device, args.dtype, None)
    device, dtype = precision.device, precision.dtype
    with tempfile.TemporaryDirectory(prefix="seqshard-oom-") as scratch:
        root = args.cache_dir or Path(scratch)
        checkpoint = write_checkpoint("dnabert2", args.size, root, seed=0)
        loaded = get_loader("dnabert2")(str(checkpoint), device, torch.float32)
        records = synthetic_records("dna", LengthMix(600, 1.0, 50, 10_000), args.sequences, seed=3)
        run(loaded, records[:64], args.batch_tokens, dtype, device)  # warm-up: kernels, allocator
        _, _, half_seconds, half_peak = run(loaded, records, args.batch_tokens // 2, dtype, device)
        reference, ref_figures, ref_seconds, full_peak = run(loaded, records, args.batch_tokens, dtype, device)
        total = torch.cuda.get_device_properties(device).total_memory
        cap = (half_peak + full_peak) // 2
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(cap / total, device)
        try:
            capped, figures, capped_seconds, capped_peak = run(loaded, records, args.batch_tokens, dtype, device)
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0, device)
    result = {
        "device": precision.device_name or device,
        "dtype": dtype,
        "size": args.size,
        "sequences": args.sequences,
        "batch_tokens": args.batch_tokens,
        "peak_bytes_half_budget": half_peak,
        "peak_bytes_full_budget": full_peak,
        "cap_bytes": cap,
        "peak_bytes_capped": capped_peak,
        "oom_splits": figures.n_oom_splits,
        "budget_changes": figures.n_budget_changes,
        "batches_capped": figures.n_batches,
        "batches_reference": ref_figures.n_batches,
        "seconds_half_budget": half_seconds,
        "seconds_reference": ref_seconds,
        "seconds_capped": capped_seconds,
        "max_abs_diff_vs_reference": float(np.abs(capped - reference).max()),
    }
    for name, value in result.items():
        print(f"{name:>28}: {value}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if figures.n_oom_splits >= 1 else 1


if __name__ == "__main__":
    sys.exit(main())
