"""What windows' seams cost, on the demo and on real sequences of over 100 kb: the seam figures a run records
(seqshard.engine.seams), and the same probe over whole long records, next to the compute each window costs.

Rows:

    demo              `run_tasks` over the demo's DNA samples (resources/demo sample_a, sample_b) as the demo's
                      `dnabert2` entry runs them (its default window, `seam_sample` 4): the run's own figures
    <record>/run      `run_tasks` over one long real record (default window): the run's own figures, the probe over
                      its first 16 windows' worth of residues, as every run does
    <record>/W        the probe over the whole record (`measure_seams(..., max_windows=None)`) with windows of W bp
                      (overlap a quarter), and the windows the record takes: what a window length costs in compute
                      and in how much the pooled embedding moves when the cuts move

The long records are real: Klebsiella pneumoniae HS11286's plasmid pKPHS1 (GenBank CP003223.1, 122,799 bp) from
Debian's `kleborate-examples`, and HMMER's tutorial target `humanchr1_frag` (330,000 bp of human chromosome 1) from
Debian's `hmmer-examples`; a missing one is left out and named. As a scale for the distances, the script also gives
the cosine distance between the pooled embeddings of two different records (the demo's records pairwise, and the
two long records). The model is DNABERT-2 with random weights in the published layout (`--model`: the shapes of
bench_workflow.py; the published weights cannot be downloaded here), so the distances say what the probe measures
and what it costs, not what the trained model's seams cost: run `seqshard embed --figures` with the real checkpoint
for that.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_workflow import MODELS  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEMO_SAMPLES = [ROOT / "resources/demo/sample_a.fa", ROOT / "resources/demo/sample_b.fa.gz"]
# (name, file, record id): real sequences of over 100 kb shipped by Debian packages.
LONG_RECORDS = [
    ("kpneumoniae_pKPHS1", Path("/usr/share/doc/kleborate/examples/data/Klebs_HS11286.fna.xz"), "CP003223.1"),
    ("human_chr1_frag", Path("/usr/share/doc/hmmer/examples/tutorial/dna_target.fa"), "humanchr1_frag"),
]
# The demo's records fit one input at the default window; these settings cut its longer ones into windows too.
DEMO_WINDOWED = {"window_length": 500, "max_tokens": 128}


def seam_figures(figures: dict[str, Any]) -> dict[str, Any]:
    return {
        key: value for key, value in figures.items() if key.startswith("seam_") or key in ("n_windows", "n_windowed")
    }


def read_record(path: Path, wanted: str) -> str | None:
    """One record's sequence from a FASTA (plain or .xz), upper case; None if the file or record is missing."""
    if not path.exists():
        return None
    text = lzma.open(path, "rt").read() if path.suffix == ".xz" else path.read_text()
    for block in text.split(">")[1:]:
        header, _, body = block.partition("\n")
        if header.split()[0] == wanted:
            return body.replace("\n", "").upper()
    return None


def cosine_distances(vectors: np.ndarray) -> np.ndarray:
    """Pairwise cosine distances between rows (the upper triangle)."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return (1.0 - unit @ unit.T)[np.triu_indices(len(vectors), k=1)]


def embed(checkpoint: Path, fasta: Path, out: Path, threads: int, **settings: Any) -> tuple[dict[str, Any], Any]:
    from seqshard.engine.driver import run_tasks
    from seqshard.engine.types import Hardware, RunFiles, TaskSettings, Work
    from seqshard.io.sequences import InputPolicy

    # As the demo's config: its deliberately invalid records are left out (and listed), not a stop.
    policy = InputPolicy(on_invalid="skip")
    work = Work("dnabert2", str(checkpoint), (TaskSettings(**settings),), "dna", policy)
    figures = run_tasks(work, RunFiles(fasta, {"embed": out}), Hardware("cpu", "fp32", threads=threads))
    vectors = np.stack(pq.read_table(out, columns=["embedding"]).column("embedding").to_numpy(zero_copy_only=False))
    return seam_figures(figures.as_dict()), vectors


def probe_whole(checkpoint: Path, sequence: str, window: int, threads: int) -> dict[str, Any]:
    import torch

    from seqshard.engine.runner import Runner
    from seqshard.engine.seams import measure_seams
    from seqshard.engine.types import RunFigures, TaskSettings
    from seqshard.engine.windows import ModelFit
    from seqshard.models import get_loader

    torch.set_num_threads(threads)
    loaded = get_loader("dnabert2")(str(checkpoint), "cpu", torch.float32).for_molecule("dna")
    fit = ModelFit.of(loaded, TaskSettings(window_length=window))
    runner = Runner(loaded, RunFigures({}, "cpu", "fp32", threads, 16384), batch_tokens=16384, dtype="fp32")
    figures = measure_seams(runner, [sequence], fit, max_windows=None)
    figures["n_windows"] = int(len(fit.encode([sequence], loaded.tokenizer).record))
    return figures


def describe(name: str, figures: dict[str, Any]) -> str:
    def change(kind: str) -> str:
        mean = figures.get(f"seam_{kind}_cosine_mean")
        if mean is None:
            return f"{kind}: -"
        return (f"{kind} -> {figures[f'seam_{kind}_window_length']}/{figures[f'seam_{kind}_window_overlap']}: "
                f"mean {mean:.3g}, max {figures[f'seam_{kind}_cosine_max']:.3g}")  # fmt: skip

    window = f"{figures.get('seam_window_length', '-')}/{figures.get('seam_window_overlap', '-')}"
    return (f"{name:>52}: {figures.get('n_windowed', 1)} windowed, {figures['n_windows']} windows, probed "
            f"{figures.get('seam_records', 0)} record(s) / {figures.get('seam_residues', 0):,} bp at {window}; "
            f"{change('overlap')}; {change('length')}; probe {figures.get('seam_seconds', 0):.1f} s")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo", choices=list(MODELS), help="DNABERT-2 shape (random weights)")
    parser.add_argument("--windows", default="500,1000,2000", help="window lengths (bp) probed over whole records")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", type=Path, help="write every figure as JSON here")
    args = parser.parse_args(argv)
    windows = [int(value) for value in args.windows.split(",") if value]

    from seqshard.models.dnabert2 import write_demo_checkpoint

    record: dict[str, Any] = {"model": args.model, "shape": MODELS[args.model], "rows": {}, "scale": {}}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-seams-") as tmp:
        root = Path(tmp)
        checkpoint = write_demo_checkpoint(root / "checkpoint", **MODELS[args.model])
        demo_vectors = []
        for sample in DEMO_SAMPLES:
            for label, settings in (("", {}), (" (window 500, max_tokens 128)", DEMO_WINDOWED)):
                figures, vectors = embed(checkpoint, sample, root / f"{sample.name}.parquet", args.threads, **settings)
                record["rows"][f"demo/{sample.name}{label}"] = figures
                print(describe(f"demo/{sample.name}{label}", figures), flush=True)
            demo_vectors.append(vectors)
        between = cosine_distances(np.concatenate(demo_vectors).astype(np.float64))
        record["scale"]["demo_records_pairwise_cosine_median"] = float(np.median(between))
        record["scale"]["demo_records_pairwise_cosine_p10"] = float(np.quantile(between, 0.1))

        long_vectors = []
        for name, path, wanted in LONG_RECORDS:
            sequence = read_record(path, wanted)
            if sequence is None:
                print(f"{name}: {path} (record {wanted}) is not on this machine; left out", flush=True)
                record["rows"][name] = {"missing": str(path)}
                continue
            fasta = root / f"{name}.fa"
            fasta.write_text(f">{wanted}\n{sequence}\n")
            figures, vectors = embed(checkpoint, fasta, root / f"{name}.parquet", args.threads)
            figures["length"] = len(sequence)
            record["rows"][f"{name}/run"] = figures
            print(describe(f"{name}/run", figures), flush=True)
            long_vectors.append(vectors[0])
            for window in windows:
                figures = probe_whole(checkpoint, sequence, window, args.threads)
                record["rows"][f"{name}/{window}"] = figures
                print(describe(f"{name}/{window}", figures), flush=True)
        if len(long_vectors) == 2:
            record["scale"]["long_records_cosine"] = float(cosine_distances(np.stack(long_vectors))[0])
    print(f"scale: cosine distance between different records' pooled embeddings: {record['scale']}")
    if args.out is not None:
        record["seconds"] = time.perf_counter() - started
        record["machine"] = {"cpu_cores": os.cpu_count(), "load_average": os.getloadavg(), "threads": args.threads}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
