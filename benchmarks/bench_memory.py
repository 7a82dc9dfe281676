"""Memory benchmark: host memory of loading a checkpoint, and the size of DNABERT-2's attention bias.

Two parts, each comparing seqshard's path with the previous one in the same command (every measurement in a fresh
process, so one cannot inherit another's memory):

- `load`: loading a random-weight checkpoint of the published architecture and layout with seqshard's loader on
  the CPU, then reading every weight once (as the first forward pass does). `mmap` is the current path (weights
  memory-mapped: safetensors, torch.load(mmap=True)); `read` is the previous one (`load_state_dict(...,
  mmap=False)`: .bin / .pth read into memory; safetensors was memory-mapped already, so its two rows should
  agree). Figures: peak RSS growth (VmHWM after minus RSS before) and peak anonymous-memory growth (RssAnon
  sampled every millisecond). Anonymous memory is what a memory limit (Slurm's cgroup) can only free by killing the job;
  the file-backed pages of a memory-mapped checkpoint are page cache the kernel may drop and re-read. Weights
  that go to a GPU are copied from the mapping tensor by tensor; that path needs a GPU and is not measured here.
- `attention`: one forward of a DNABERT-2 of the published width (hidden 768, 12 heads; 2 layers, since the bias
  does not depend on depth) in bf16 autocast on the CPU over a padded batch of random ids. `blocked` is the
  current model (the ALiBi + padding bias built for 512 query positions at a time); `whole` sets the block to the
  batch width, which materialises the [batch, heads, L, L] bias once per forward as the model did before.
  Figure: peak RSS growth of the forward (VmHWM after minus RSS before, inputs and weights already resident).

    python benchmarks/bench_memory.py --out benchmarks/results/memory-<machine>.json
    python benchmarks/bench_memory.py --parts attention --quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

LUCAONE_400M = {"hidden_size": 1280, "num_layers": 20, "num_heads": 20}  # the published width halved: 1.6 GB
# Checkpoints for the load part: DNABERT-2 at its published size, LucaOne at a size this machine holds twice.
LOAD_CASES = {
    "dnabert2-117M-bin": (
        "dnabert2",
        {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    ),
    "lucaone-400M-original-pth": ("lucaone", {"layout": "original", **LUCAONE_400M}),
    "lucaone-400M-hf-safetensors": ("lucaone", {"layout": "hf", **LUCAONE_400M}),
}
QUICK_LOAD_CASES = {
    "dnabert2-small-bin": ("dnabert2", {"hidden_size": 256, "num_hidden_layers": 4, "intermediate_size": 1024}),
    "lucaone-small-original-pth": ("lucaone", {"layout": "original", "hidden_size": 256, "num_layers": 4}),
}
# Padded batches for the attention part: (rows, width); the last row is a quarter shorter, so there is padding.
ATTENTION_SHAPES = [(32, 512), (2, 2048), (4, 4096)]
QUICK_ATTENTION_SHAPES = [(2, 1024)]


# ------------------------------------------------------------------------------------------------------------
# Measuring inside a child process


def _status(field: str) -> int:
    """A /proc/self/status figure in bytes (VmRSS, VmHWM, RssAnon, ...)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


class PeakAnonymous:
    """The highest RssAnon seen while the block runs, sampled every millisecond in a thread."""

    def __init__(self) -> None:
        self.peak = _status("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, _status("RssAnon"))

    def __enter__(self) -> PeakAnonymous:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _status("RssAnon"))


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := VmRSS


def child_load(architecture: str, checkpoint: str, variant: str) -> dict[str, object]:
    import functools

    import torch

    import seqshard.models.loading as loading
    from seqshard.models import get_loader

    if variant == "read":  # the loader as it was: every weights file read into memory
        loading.load_state_dict = functools.partial(loading.load_state_dict, mmap=False)  # type: ignore[assignment]
    torch.ones(1)  # allocator and threads up before the baseline
    rss, anon = _status("VmRSS"), _status("RssAnon")
    reset_peak_rss()
    started = time.perf_counter()
    with PeakAnonymous() as peak_anon:
        loaded = get_loader(architecture)(checkpoint, "cpu", torch.float32)
        seconds = time.perf_counter() - started
        # Read every weight once, as the first forward pass does: a mapped file's pages come in only now.
        with torch.inference_mode():
            checksum = sum(float(p.sum()) for p in loaded.model.parameters())
    parameters = sum(p.numel() for p in loaded.model.parameters())
    return {
        "peak_rss_growth_bytes": _status("VmHWM") - rss,
        "peak_anonymous_growth_bytes": peak_anon.peak - anon,
        "rss_after_load_bytes": _status("VmRSS"),
        "load_seconds": seconds,
        "parameters": parameters,
        "weights_checksum": checksum,
    }


def child_attention(rows: int, width: int, variant: str) -> dict[str, object]:
    import torch

    import seqshard.models.dnabert2 as dnabert2_module
    from seqshard.models.dnabert2 import DNABERT2Config, DNABERT2Model

    torch.manual_seed(0)
    config = DNABERT2Config(num_hidden_layers=2)
    model = DNABERT2Model(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.02)
    model.eval()
    ids = torch.randint(5, config.vocab_size, (rows, width))
    mask = torch.ones(rows, width, dtype=torch.bool)
    mask[-1, width - width // 4 :] = False
    if variant == "whole":  # one block the width of the batch: the whole [B, heads, L, L] bias, as before
        dnabert2_module.ALIBI_QUERY_BLOCK = width
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(ids[:, :8], mask[:, :8])  # kernels and allocator warm, outside the measurement
        rss = _status("VmRSS")
        reset_peak_rss()
        started = time.perf_counter()
        hidden = model(ids, mask)
        seconds = time.perf_counter() - started
    heads, block = config.num_attention_heads, min(width, dnabert2_module.ALIBI_QUERY_BLOCK)
    # One [rows, heads, block, L] block at a time, plus the [heads, block, 2L] ALiBi table when there are several.
    bias_elements = rows * heads * block * width + (heads * block * 2 * width if block < width else 0)
    return {
        "peak_rss_growth_bytes": _status("VmHWM") - rss,
        "largest_bias_bytes": bias_elements * 2,  # bf16
        "forward_seconds": seconds,
        "finite": bool(torch.isfinite(hidden.float()).all()),
    }


# ------------------------------------------------------------------------------------------------------------
# The parent: writes checkpoints, runs children, prints ratios


def run_child(*args: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", *args], capture_output=True, text=True, cwd=REPO, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"child {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_checkpoint(architecture: str, options: dict[str, object], directory: Path) -> tuple[Path, int]:
    """The checkpoint, written once per cache folder, and its weights file size in bytes."""
    from seqshard.models import dnabert2, lucaone

    if not (directory / "config.json").exists():
        started = time.perf_counter()
        if architecture == "dnabert2":
            dnabert2.write_demo_checkpoint(directory, **options)  # type: ignore[arg-type]
        else:
            lucaone.write_demo_checkpoint(directory, **options)  # type: ignore[arg-type]
        print(f"  wrote {directory.name} in {time.perf_counter() - started:.1f} s")
    weights = [p for p in directory.iterdir() if p.suffix in (".bin", ".pth", ".safetensors")]
    return directory, sum(p.stat().st_size for p in weights)


def mib(value: object) -> str:
    return f"{float(value) / 2**20:,.0f} MiB"  # type: ignore[arg-type]


def bench_load(cases: dict[str, tuple[str, dict[str, object]]], cache: Path, repeats: int) -> dict[str, object]:
    results: dict[str, object] = {}
    for name, (architecture, options) in cases.items():
        checkpoint, size = write_checkpoint(architecture, options, cache / name)
        runs: dict[str, list[dict[str, object]]] = {"read": [], "mmap": []}
        for _ in range(repeats):
            for variant in runs:  # interleaved
                runs[variant].append(run_child("load", architecture, str(checkpoint), variant))
        best = {variant: min(r, key=lambda x: x["peak_rss_growth_bytes"]) for variant, r in runs.items()}
        ratio_rss = best["read"]["peak_rss_growth_bytes"] / best["mmap"]["peak_rss_growth_bytes"]
        anon_after = max(int(best["mmap"]["peak_anonymous_growth_bytes"]), 1)
        ratio_anon = int(best["read"]["peak_anonymous_growth_bytes"]) / anon_after
        results[name] = {"weights_bytes": size, "runs": runs, "read_over_mmap_peak_rss": ratio_rss,
                         "read_over_mmap_peak_anonymous": ratio_anon}  # fmt: skip
        print(f"\n{name}: weights file {mib(size)}, {best['mmap']['parameters'] / 1e6:.0f} M parameters")
        for variant, figures in best.items():
            rss, anon = int(figures["peak_rss_growth_bytes"]), int(figures["peak_anonymous_growth_bytes"])
            print(
                f"  {variant:<5} peak RSS growth {mib(rss):>10} ({rss / size:.2f} x weights), peak anonymous growth "
                f"{mib(anon):>10} ({anon / size:.2f} x weights), load {figures['load_seconds']:.2f} s"
            )
        print(f"  read / mmap: peak RSS {ratio_rss:.2f}x, peak anonymous memory {ratio_anon:.1f}x")
    return results


def bench_attention(shapes: list[tuple[int, int]]) -> dict[str, object]:
    results: dict[str, object] = {}
    for rows, width in shapes:
        runs = {variant: run_child("attention", str(rows), str(width), variant) for variant in ("whole", "blocked")}
        ratio = runs["whole"]["peak_rss_growth_bytes"] / runs["blocked"]["peak_rss_growth_bytes"]
        results[f"{rows}x{width}"] = {**runs, "whole_over_blocked_peak_rss": ratio}
        print(f"\n{rows} x {width} ({rows * width} tokens, last row padded by a quarter), bf16:")
        for variant, figures in runs.items():
            print(
                f"  {variant:<7} bias held {mib(figures['largest_bias_bytes']):>10}, forward peak RSS growth "
                f"{mib(figures['peak_rss_growth_bytes']):>10}, {figures['forward_seconds']:.1f} s"
            )
        print(f"  whole / blocked peak RSS growth: {ratio:.2f}x")
    return results


def create_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["load", "attention"], choices=["load", "attention"])
    parser.add_argument("--quick", action="store_true", help="small checkpoints and one small batch")
    parser.add_argument("--repeats", type=int, default=2, help="load runs per variant (the lowest peak counts)")
    parser.add_argument("--cache-dir", type=Path, help="keep the written checkpoints here (default: a temp dir)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    return parser


def main() -> None:
    args = create_parser().parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "load":
            result = child_load(*rest)
        else:
            result = child_attention(int(rest[0]), int(rest[1]), rest[2])
        print(json.dumps(result))
        return
    sys.stdout.reconfigure(line_buffering=True)
    from bench_inference import machine_description  # this folder is on sys.path when run as a script

    result: dict[str, object] = {"benchmark": "bench_memory", "machine": machine_description("cpu")}
    with tempfile.TemporaryDirectory(prefix="seqshard-bench-memory-") as scratch:
        cache = args.cache_dir or Path(scratch)
        cache.mkdir(parents=True, exist_ok=True)
        if "load" in args.parts:
            result["load"] = bench_load(QUICK_LOAD_CASES if args.quick else LOAD_CASES, cache, args.repeats)
        if "attention" in args.parts:
            result["attention"] = bench_attention(QUICK_ATTENTION_SHAPES if args.quick else ATTENTION_SHAPES)
    result["machine"]["load_average_at_end"] = os.getloadavg()  # type: ignore[index]
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
