"""Variant effects at scale: N SNVs on a bacterial genome through `seqshard variants`' own path, and where the time
goes.

The genome is a real Klebsiella pneumoniae assembly from Debian's `kleborate-examples` (default
/usr/share/doc/kleborate/examples/data/Klebs_HS11286.fna.xz, about 5.7 Mbp in 7 contigs), decompressed once into a
temporary folder (htslib reads FASTA plain or bgzipped, not xz). The variants are drawn with a fixed seed: sites
uniform over the genome, about a fifth of them multi-allelic (two or three ALTs, as callers report them), every ALT
a base other than the reference's, until there are N variants (split ALTs), written as a bgzipped VCF.

They run through `seqshard.engine.variants.run_variants`, the code behind `seqshard variants` (pack: read and place
every variant; score: the masked and unmasked passes through the runner; merge: the rows in input order), with a
random-weight DNABERT-2 of the demo's size (`--model demo`: hidden 64, 2 layers) or the published shape (`full`).

Printed (and written with `--out`): variants/s end to end and of model compute alone; distinct windows computed
against variants (each SNV has 2 alleles x 2 strands = 4 windows; the REF windows of a multi-allelic site are
computed once for all its ALTs), masked inputs against the naive count (each scored token of each window of each
variant masked on its own); the time of each stage (reading and placing, tokenizing, masked pass, unmasked pass,
merge, model load, the rest).

    python benchmarks/bench_variants.py --n 100000 --out benchmarks/results/variants.json
    python benchmarks/bench_variants.py --device cuda --model full --n 100000       # on a GPU
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_workflow import MODELS, machine_description  # noqa: E402

GENOME = Path("/usr/share/doc/kleborate/examples/data/Klebs_HS11286.fna.xz")


def read_genome(path: Path, out: Path) -> dict[str, str]:
    """The assembly decompressed to `out` (plain FASTA, 60 columns), and its contigs."""
    contigs: dict[str, list[str]] = {}
    name = None
    with lzma.open(path, "rt") as handle:
        for line in handle:
            if line.startswith(">"):
                name = line[1:].split()[0]
                contigs[name] = []
            elif name is not None:
                contigs[name].append(line.strip().upper())
    sequences = {key: "".join(parts) for key, parts in contigs.items()}
    with open(out, "w", encoding="ascii") as handle:
        for key, sequence in sequences.items():
            handle.write(f">{key}\n")
            for start in range(0, len(sequence), 60):
                handle.write(sequence[start : start + 60] + "\n")
    return sequences


def write_snvs(genome: dict[str, str], n: int, seed: int, out: Path) -> dict[str, int]:
    """A bgzipped VCF of sorted SNV sites, about a fifth multi-allelic, `n` variants (ALTs) in all."""
    import pysam

    rng = np.random.default_rng(seed)
    names = list(genome)
    lengths = np.array([len(genome[c]) for c in names])
    records: list[tuple[int, int, str, str]] = []
    total = 0
    seen: set[tuple[int, int]] = set()
    while total < n:
        contig = int(rng.choice(len(names), p=lengths / lengths.sum()))
        position = int(rng.integers(0, lengths[contig]))
        ref = genome[names[contig]][position]
        if (contig, position) in seen or ref not in "ACGT":
            continue
        seen.add((contig, position))
        alts = [b for b in "ACGT" if b != ref]
        count = min(n - total, int(rng.choice([1, 2, 3], p=[0.8, 0.12, 0.08])))
        records.append((contig, position, ref, ",".join(rng.permutation(alts)[:count])))
        total += count
    records.sort()
    plain = out.with_suffix("")
    with open(plain, "w", encoding="ascii") as handle:
        handle.write("##fileformat=VCFv4.2\n##source=seqshard bench_variants (random SNVs)\n")
        for name, length in zip(names, lengths, strict=True):
            handle.write(f"##contig=<ID={name},length={length}>\n")
        handle.write("#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n")
        for contig, position, ref, alt in records:
            handle.write(f"{names[contig]}\t{position + 1}\tsnv{contig}_{position + 1}\t{ref}\t{alt}\t.\tPASS\t.\n")
    pysam.tabix_compress(str(plain), str(out), force=True)
    plain.unlink()
    return {"sites": len(records), "variants": total, "multi_allelic_sites": sum("," in r[3] for r in records)}


def run(args: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    import pandas as pd
    import torch

    from seqshard.engine.types import VARIANT_TASK, Hardware, RunFiles, VariantWork
    from seqshard.engine.variants import run_variants
    from seqshard.io.sequences import InputPolicy
    from seqshard.io.variants import VariantSettings
    from seqshard.models.dnabert2 import write_demo_checkpoint
    from seqshard.plan.variants import VariantSetInput

    machine = machine_description()  # the load average now, before this run adds to it
    started = time.perf_counter()
    genome = read_genome(args.genome, work_dir / "genome.fa")
    calls = write_snvs(genome, args.n, args.seed, work_dir / "calls.vcf.gz")
    checkpoint = write_demo_checkpoint(work_dir / "checkpoint", **MODELS[args.model])
    prepare_seconds = time.perf_counter() - started
    torch.set_num_threads(args.threads)
    settings = VariantSettings(window=args.window, flank=args.flank, strand=args.strand)
    work = VariantWork("dnabert2", str(checkpoint), settings, InputPolicy(on_invalid="skip"))
    out = work_dir / "out.parquet"
    hardware = Hardware(args.device, args.dtype, threads=args.threads, batch_tokens=args.batch_tokens).resolved()
    precision = hardware.precision
    assert precision is not None
    started = time.perf_counter()
    figures = run_variants(
        work, VariantSetInput("bench", "vcf", str(work_dir / "calls.vcf.gz"), str(work_dir / "genome.fa")),
        RunFiles(work_dir / "calls.vcf.gz", {VARIANT_TASK: out}), hardware,
    )  # fmt: skip
    wall = time.perf_counter() - started
    rows = pd.read_parquet(out, columns=["n_ref_tokens", "n_alt_tokens"])
    extra = figures.extra
    strands = len(settings.strands)
    # Without sharing: each variant's 2 x strands windows run unmasked, and each scored token masked on its own
    # (the forward strand's counts stand for both strands).
    naive_masked = int((rows["n_ref_tokens"] + rows["n_alt_tokens"]).sum()) * strands
    stages = {
        "read_and_place": extra["pack_seconds"],
        "tokenize": extra.get("tokenize_seconds", 0.0),
        "masked_pass": extra.get("masked_pass_seconds", 0.0),
        "window_pass": extra.get("window_pass_seconds", 0.0),
        "merge": extra["merge_seconds"],
        "model_load": figures.load_seconds,
    }
    stages["other"] = max(0.0, wall - sum(stages.values()))
    return {
        "machine": machine,
        "torch": torch.__version__,
        "settings": {
            "n": args.n,
            "model": args.model,
            "device": precision.device,
            "dtype": precision.dtype,
            "threads": args.threads,
            "batch_tokens": args.batch_tokens,
            "window": args.window,
            "flank": args.flank,
            "strand": args.strand,
            "genome": str(args.genome),
            "genome_bp": sum(len(s) for s in genome.values()),
            "seed": args.seed,
        },
        "calls": calls,
        "rows": len(rows),
        "wall_seconds": round(wall, 2),
        "prepare_seconds": round(prepare_seconds, 2),
        "variants_per_second": round(len(rows) / wall, 1),
        "variants_per_second_of_compute": round(len(rows) / figures.compute_seconds, 1),
        "units": extra["n_units"],
        "distinct_windows": extra.get("n_distinct_windows", 0),
        "windows_without_sharing": len(rows) * 2 * strands,
        "masked_inputs": extra.get("n_masked_inputs", 0),
        "masked_inputs_without_sharing": naive_masked,
        "tokens": figures.n_tokens,
        "computed_tokens": figures.n_computed_tokens,
        "batches": figures.n_batches,
        "stage_seconds": {key: round(value, 2) for key, value in stages.items()},
        "load_average_at_end": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="variants (split ALTs)")
    parser.add_argument("--genome", type=Path, default=GENOME, help="assembly, .fna.xz")
    parser.add_argument("--model", default="demo", choices=list(MODELS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-tokens", type=int, default=16384)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--flank", type=int, default=5)
    parser.add_argument("--strand", default="both", choices=["both", "forward"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not args.genome.is_file():
        sys.exit(f"{args.genome} not found: install Debian's kleborate-examples or pass --genome")
    work_dir = Path(tempfile.mkdtemp(prefix="seqshard-bench-variants-"))
    try:
        result = run(args, work_dir)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    print(f"{result['rows']} variants ({result['calls']['sites']} sites, {result['calls']['multi_allelic_sites']} "
          f"multi-allelic) on {result['settings']['genome_bp']:,} bp, DNABERT-2 {args.model} on "
          f"{result['settings']['device']} ({result['settings']['dtype']}, {args.threads} threads)")  # fmt: skip
    print(f"  wall {result['wall_seconds']} s: {result['variants_per_second']} variants/s end to end, "
          f"{result['variants_per_second_of_compute']} variants/s of model compute")  # fmt: skip
    print(f"  distinct windows computed: {result['distinct_windows']:,} (without sharing: "
          f"{result['windows_without_sharing']:,}); masked inputs: {result['masked_inputs']:,} (without sharing: "
          f"{result['masked_inputs_without_sharing']:,}); tokens {result['tokens']:,}, computed (padding included) "
          f"{result['computed_tokens']:,} in {result['batches']:,} batches")  # fmt: skip
    print("  where the time goes: " + ", ".join(f"{k} {v} s" for k, v in result["stage_seconds"].items()))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
