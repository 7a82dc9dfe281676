"""Less work at scale: what duplicates, shared forward passes, packed small samples and the result cache save.

Every figure is a ratio of two runs made by this command, one after the other, on the same machine:

(a) duplicates: a set of N DNA records where 80 % repeat others (drawn from a pool of N/5 distinct sequences)
    against its distinct subset, both through `run_tasks` in this process: wall-time ratio, and computed tokens
    of the full set / computed tokens of the distinct subset (1.0 means every duplicate cost nothing).
(b) one pass: `tasks: [embed, classify]` against `tasks: [embed]` alone on the same shard (a DNABERT-2 fine-tune
    layout with a classifier head): wall-time ratio.
(c) small samples: S samples of 20 records each through the whole workflow (`snakemake --cores C`: pack,
    inference, merge, report) against one `seqshard embed` over their concatenation with the same model and
    threads.
(d) planning: `snakemake --dry-run` wall time for a sheet of 10,000 samples (packed: the plan after the pack ran,
    with its inference and merge jobs) and for 10,000 shards (one sample of 10,000 records cut one per shard).
(e) cache: the workflow on a sample of N records, then again after appending 10 % new records: wall-time ratio
    of the second run to the first (the second packs again, scores only the new tenth and merges everything).

The model is a random-weight DNABERT-2 in the published layout (`--model`, see MODELS). Figures are medians of
`--repeats` runs. Output: tables on stdout and `--out` JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_workflow import MODELS, SNAKEFILE, machine_description  # noqa: E402

CHECKPOINT = "resources/checkpoints/dnabert2-bench"


def random_sequences(rng: np.random.Generator, n: int, median: int = 300) -> list[str]:
    lengths = np.clip(np.round(rng.lognormal(np.log(median), 0.5, n)), 30, 3000).astype(int)
    bases = np.frombuffer(b"ACGT", dtype=np.uint8)
    return [bases[rng.integers(0, 4, length)].tobytes().decode() for length in lengths]


def write_fasta(path: Path, items: list[tuple[str, str]]) -> Path:
    with open(path, "w", encoding="ascii") as handle:
        for name, sequence in items:
            handle.write(f">{name}\n{sequence}\n")
    return path


def checkpoint(root: Path, model: str, labels: list[str] | None = None) -> Path:
    from seqshard.models.dnabert2 import write_demo_checkpoint

    path = root / CHECKPOINT if labels is None else root / f"{CHECKPOINT}-classifier"
    if not path.exists():
        write_demo_checkpoint(path, labels=labels, seed=1 if labels else 0, **MODELS[model])
    return path


def timed(function: Any, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - started, result


def snakemake(workdir: Path, cores: int, *args: str) -> float:
    command = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(workdir),
               "--configfile", str(workdir / "config.yaml"), "--cores", str(cores), *args]  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=workdir)
    if result.returncode != 0:
        raise RuntimeError(f"snakemake {' '.join(args)} failed in {workdir}:\n{result.stderr[-4000:]}")
    return time.perf_counter() - started


def write_workflow(workdir: Path, sheet: list[tuple[str, Path]], model: str, **config: Any) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{name}\t{path}\tdna\n" for name, path in sheet)
    (workdir / "samples.tsv").write_text("sample\tfasta\tmolecule\n" + rows)
    settings = {
        "samples": "samples.tsv",
        "on_invalid": "error",
        "models": {"dnabert2": {"architecture": "dnabert2", "checkpoint": CHECKPOINT, "tasks": ["embed"]}},
        **config,
    }
    (workdir / "config.yaml").write_text(json.dumps(settings, indent=2) + "\n")
    checkpoint(workdir, model)


def median(values: list[float]) -> float:
    return float(statistics.median(values))


# ------------------------------------------------------------------------------------------------------------


def part_duplicates(root: Path, model: str, n: int, repeats: int, threads: int) -> dict[str, Any]:
    from seqshard.engine.driver import run_tasks
    from seqshard.engine.types import Hardware, RunFiles, Work

    rng = np.random.default_rng(1)
    pool = random_sequences(rng, n // 5)
    every = [pool[i] for i in range(len(pool))] + [pool[i] for i in rng.integers(0, len(pool), n - len(pool))]
    order = rng.permutation(len(every))
    full = write_fasta(root / "dups.fa", [(f"r{i}", every[j]) for i, j in enumerate(order)])
    distinct = write_fasta(root / "distinct.fa", [(f"d{i}", s) for i, s in enumerate(pool)])
    ckpt = str(checkpoint(root, model))
    rows: dict[str, list[float]] = {"full": [], "distinct": [], "tokens_full": [], "tokens_distinct": []}
    embed, hardware = Work("dnabert2", ckpt), Hardware(threads=threads)
    run_tasks(embed, RunFiles(distinct, {"embed": root / "warm-up.parquet"}), hardware)  # imports, first-use costs
    for repeat in range(repeats):
        for name, fasta in (("full", full), ("distinct", distinct)):
            seconds, figures = timed(run_tasks, embed, RunFiles(fasta, {"embed": root / f"{name}.parquet"}), hardware)
            rows[name].append(seconds)
            rows[f"tokens_{name}"].append(figures.n_computed_tokens)
        full_s, distinct_s = rows["full"][-1], rows["distinct"][-1]
        print(f"  repeat {repeat}: {n} records {full_s:.1f} s, {len(pool)} distinct {distinct_s:.1f} s")
    ratio = [a / b for a, b in zip(rows["full"], rows["distinct"], strict=True)]
    result = {
        "n_records": n, "n_distinct": len(pool), "seconds_full": rows["full"], "seconds_distinct": rows["distinct"],
        "wall_ratio": median(ratio), "computed_tokens_ratio": rows["tokens_full"][0] / rows["tokens_distinct"][0],
    }  # fmt: skip
    print(f"(a) duplicates: wall {n} records / {len(pool)} distinct = {result['wall_ratio']:.3f} (median); "
          f"computed tokens / distinct tokens = {result['computed_tokens_ratio']:.3f}")  # fmt: skip
    return result


def part_one_pass(root: Path, model: str, n: int, repeats: int, threads: int) -> dict[str, Any]:
    from seqshard.engine.driver import run_tasks
    from seqshard.engine.types import Hardware, RunFiles, TaskSettings, Work

    rng = np.random.default_rng(2)
    fasta = write_fasta(root / "shard.fa", [(f"s{i}", s) for i, s in enumerate(random_sequences(rng, n))])
    ckpt = str(checkpoint(root, model, labels=["non_promoter", "promoter"]))
    both, alone = [], []
    embed, hardware = Work("dnabert2", ckpt), Hardware(threads=threads)
    run_tasks(embed, RunFiles(fasta, {"embed": root / "warm-up.parquet"}), hardware)  # imports, first-use costs
    for repeat in range(repeats):
        tasks = [TaskSettings("embed"), TaskSettings("classify")]
        seconds, _ = timed(
            run_tasks,
            Work("dnabert2", ckpt, tasks),
            RunFiles(fasta, {t.task: root / f"both-{t.task}.parquet" for t in tasks}),
            hardware,
        )
        both.append(seconds)
        seconds, _ = timed(run_tasks, embed, RunFiles(fasta, {"embed": root / "alone.parquet"}), hardware)
        alone.append(seconds)
        print(f"  repeat {repeat}: [embed, classify] {both[-1]:.1f} s, [embed] {alone[-1]:.1f} s")
    result = {"n_records": n, "seconds_both": both, "seconds_embed": alone,
              "wall_ratio": median([a / b for a, b in zip(both, alone, strict=True)])}  # fmt: skip
    print(f"(b) one pass: [embed, classify] / [embed] = {result['wall_ratio']:.3f}")
    return result


def part_small_samples(root: Path, model: str, n_samples: int, repeats: int, cores: int) -> dict[str, Any]:
    rng = np.random.default_rng(3)
    inputs = root / "inputs"
    inputs.mkdir(exist_ok=True)
    sheet, everything = [], []
    for index in range(n_samples):
        items = [(f"s{index}_{i}", s) for i, s in enumerate(random_sequences(rng, 20))]
        everything += items
        sheet.append((f"sample{index:05d}", write_fasta(inputs / f"sample{index:05d}.fa", items)))
    concatenated = write_fasta(root / "all.fa", everything)
    workflow_seconds, embed_seconds = [], []
    for repeat in range(repeats):
        workdir = root / f"small-{repeat}"
        write_workflow(workdir, sheet, model, result_cache={"enabled": False})
        workflow_seconds.append(snakemake(workdir, cores))
        command = [sys.executable, "-m", "seqshard", "embed", "--checkpoint", str(workdir / CHECKPOINT),
                   str(concatenated), "-o", str(root / "all.parquet"), "--threads", "2"]  # fmt: skip
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        embed_seconds.append(time.perf_counter() - started)
        print(f"  repeat {repeat}: workflow {workflow_seconds[-1]:.1f} s, one seqshard embed {embed_seconds[-1]:.1f} s")
    result = {
        "n_samples": n_samples, "records_per_sample": 20, "seconds_workflow": workflow_seconds,
        "seconds_one_embed": embed_seconds,
        "wall_ratio": median([a / b for a, b in zip(workflow_seconds, embed_seconds, strict=True)]),
    }  # fmt: skip
    print(f"(c) small samples: {n_samples} x 20 records through the workflow / one seqshard embed = "
          f"{result['wall_ratio']:.2f}")  # fmt: skip
    return result


def part_planning(root: Path, model: str, n: int, repeats: int) -> dict[str, Any]:
    rng = np.random.default_rng(4)
    inputs = root / "plan-inputs"
    inputs.mkdir(exist_ok=True)
    sheet = [(f"p{index:05d}", write_fasta(inputs / f"p{index:05d}.fa", [(f"x{index}", s)]))
             for index, s in enumerate(random_sequences(rng, n, median=100))]  # fmt: skip
    samples_dir = root / "plan-samples"
    write_workflow(samples_dir, sheet, model, shards={"target_tokens": 10_000_000})
    before = [snakemake(samples_dir, 2, "--dry-run") for _ in range(repeats)]
    pack_seconds = snakemake(samples_dir, 2, "--until", "pack_dnabert2")
    after = [snakemake(samples_dir, 2, "--dry-run") for _ in range(repeats)]
    single = write_fasta(root / "plan-single.fa", [(f"y{i}", s) for i, s in enumerate(random_sequences(rng, n, 100))])
    shards_dir = root / "plan-shards"
    write_workflow(shards_dir, [("one", single)], model, shards={"target_tokens": 10_000_000, "max_sequences": 1})
    snakemake(shards_dir, 2, "--until", "pack_dnabert2")
    shards = [snakemake(shards_dir, 2, "--dry-run") for _ in range(repeats)]
    result = {
        "n": n, "dry_run_seconds_samples_before_pack": before, "pack_seconds": pack_seconds,
        "dry_run_seconds_samples_packed": after, "dry_run_seconds_shards": shards,
    }  # fmt: skip
    print(f"(d) planning: {n} samples: dry run {median(before):.1f} s before packing, {median(after):.1f} s after "
          f"(pack {pack_seconds:.1f} s); {n} shards: dry run {median(shards):.1f} s")  # fmt: skip
    return result


def part_cache(root: Path, model: str, n: int, repeats: int, cores: int) -> dict[str, Any]:
    rng = np.random.default_rng(5)
    sequences = random_sequences(rng, n + n // 10)
    first_seconds, grown_seconds = [], []
    for repeat in range(repeats):
        workdir = root / f"cache-{repeat}"
        fasta = write_fasta(root / f"cache-{repeat}.fa", [(f"c{i}", s) for i, s in enumerate(sequences[:n])])
        write_workflow(workdir, [("grows", fasta)], model)
        first_seconds.append(snakemake(workdir, cores))
        write_fasta(fasta, [(f"c{i}", s) for i, s in enumerate(sequences)])
        grown_seconds.append(snakemake(workdir, cores))
        print(f"  repeat {repeat}: first run {first_seconds[-1]:.1f} s, after +10 % {grown_seconds[-1]:.1f} s")
    result = {"n_records": n, "seconds_first": first_seconds, "seconds_grown": grown_seconds,
              "wall_ratio": median([b / a for a, b in zip(first_seconds, grown_seconds, strict=True)])}  # fmt: skip
    print(f"(e) cache: rerun after appending 10 % / first run = {result['wall_ratio']:.3f}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="duplicates,one_pass,small_samples,planning,cache")
    parser.add_argument("--model", default="small", choices=sorted(MODELS))
    parser.add_argument("--records", type=int, default=5000, help="records for (a), (b) and (e)")
    parser.add_argument("--samples", type=int, default=2000, help="samples of 20 records for (c)")
    parser.add_argument("--plan", type=int, default=10000, help="samples and shards for (d)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"machine": machine_description(), "model": {args.model: MODELS[args.model]},
                               "arguments": vars(args) | {"out": str(args.out)}}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="seqshard-bench-") as scratch:
        root = Path(scratch)
        for part in args.parts.split(","):
            if part == "duplicates":
                results[part] = part_duplicates(root, args.model, args.records, args.repeats, args.cores)
            elif part == "one_pass":
                results[part] = part_one_pass(root, args.model, args.records, args.repeats, args.cores)
            elif part == "small_samples":
                results[part] = part_small_samples(root, args.model, args.samples, args.repeats, args.cores)
            elif part == "planning":
                results[part] = part_planning(root, args.model, args.plan, max(1, args.repeats - 1))
            elif part == "cache":
                results[part] = part_cache(root, args.model, args.records, args.repeats, args.cores)
            else:
                parser.error(f"unknown part {part!r}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
