"""Old against new in one run: the same command from another commit's tree and from this one, alternately, on the
same machine, so that a change to the engine or a model shows its cost before it lands.

    python benchmarks/bench_against.py --base 5c06684 embed --repeats 3      # `seqshard embed`, whole commands
    python benchmarks/bench_against.py --base main inference --repeats 2     # bench_inference.py's seqshard row
    python benchmarks/bench_against.py --base main dryrun --repeats 5        # `snakemake -n` on the demo
    python benchmarks/bench_against.py --base main demo                      # the demo, outputs compared byte for byte

`--base` is any git ref; its tree is checked out into a temporary worktree and run with its own package
(`PYTHONPATH`) and its own scripts; "new" is this working tree, uncommitted changes included. Runs alternate
base, new, base, new, ... so drift in the machine's speed hits both alike, and each ratio pairs neighbours.

- `embed`: `python -m seqshard embed` with the published DNABERT-2 architecture (12 layers, hidden 768; random
  weights in the published layout, written once by this tree) over `--n` fragments of a real bacterial genome
  (the Klebsiella pneumoniae assemblies of Debian's `kleborate-examples`, else seeded random DNA), `--threads`
  threads: wall seconds per run, from the command's own process start to its exit. It is what a user runs.
- `inference`: each tree's own `benchmarks/bench_inference.py --models dnabert2 --skip-single` (same seed, so
  the same records): the seqshard row's sequences/s, model load excluded.
- `dryrun`: `snakemake -n --cores 2` on the demo in a fresh copy of each tree (nothing run yet): wall seconds and
  the peak memory of the Snakemake process (planning the DAG, parsing the workflow and what it imports).
- `demo`: the demo (`snakemake --cores 2`) in a fresh copy of each tree: wall seconds, and every merged Parquet file
  and pack table compared byte for byte between the two trees (`--repeats` is ignored: one run each).

Prints each pair and the median ratio new / base (seconds: below 1 is faster; sequences/s: above 1 is faster),
and with `--out` writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
GENOMES = Path("/usr/share/doc/kleborate/examples/data")


def worktree(ref: str, into: Path) -> Path:
    path = into / "base"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(path), ref], check=True)
    return path


def remove_worktree(path: Path) -> None:
    subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)], check=False)


def genome_fragments(n: int, seed: int) -> tuple[list[str], str]:
    """`n` fragments of 2 to 15 kb (log-uniform) of a real genome, or of seeded random DNA without one."""
    rng = np.random.default_rng(seed)
    lengths = np.exp(rng.uniform(np.log(2000), np.log(15000), n)).astype(int)
    genomes = sorted(GENOMES.glob("*.fna.xz"))
    if genomes:
        text = lzma.decompress(genomes[0].read_bytes()).decode()
        contigs = ["".join(chunk.splitlines()[1:]).upper() for chunk in text.split(">")[1:]]
        genome = max(contigs, key=len)
        source = f"{genomes[0].name}, longest contig ({len(genome)} bp)"
    else:
        genome = "".join(rng.choice(list("ACGT"), 5_000_000))
        source = "seeded random DNA (kleborate-examples not installed)"
    starts = rng.integers(0, len(genome) - int(lengths.max()), n)
    return [genome[s : s + length] for s, length in zip(starts, lengths, strict=True)], source


def fresh_copy(tree: Path, into: Path) -> Path:
    """The tracked and untracked-but-not-ignored files of `tree` (its working state, no results) copied to `into`."""
    listed = subprocess.run(["git", "-C", str(tree), "ls-files", "-co", "--exclude-standard", "-z"],
                            capture_output=True, check=True).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = tree / name
        if source.is_file():
            target = into / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return into


def run_snakemake(tree: Path, package: Path, *arguments: str) -> tuple[float, int]:
    """Wall seconds and peak memory (kB, the largest process) of `snakemake --cores 2 ARGS` in `tree`."""
    code = (
        "import resource, subprocess, sys, time; started = time.perf_counter(); "
        f"done = subprocess.run([sys.executable, '-m', 'snakemake', '--cores', '2', *{list(arguments)!r}], "
        "capture_output=True, text=True); seconds = time.perf_counter() - started; "
        "sys.stderr.write(done.stderr[-3000:] if done.returncode else ''); "
        "print(seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, done.returncode)"
    )
    env = {**os.environ, "PYTHONPATH": str(package)}
    done = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True)
    seconds, peak, status = done.stdout.split()
    if int(status):
        raise RuntimeError(f"{tree}: snakemake {' '.join(arguments)} failed:\n{done.stderr}")
    return float(seconds), int(peak)


def demo_outputs(tree: Path) -> dict[str, bytes]:
    results = tree / "results"
    files = [*results.glob("*/*/*.parquet"), *results.glob("*/*/rejects.tsv"), *results.glob("packs/*/*.tsv"),
             *results.glob("packs/*/records.parquet")]  # fmt: skip
    return {str(path.relative_to(tree)): path.read_bytes() for path in sorted(files)}


def full_dnabert2(directory: Path) -> Path:
    from seqshard.models.dnabert2 import write_demo_checkpoint

    # zhihan1996/DNABERT-2-117M's architecture; the demo's trained-on-synthetic tokenizer.
    return write_demo_checkpoint(directory, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                 intermediate_size=3072)  # fmt: skip


def run_embed(tree: Path, fasta: Path, checkpoint: Path, out: Path, threads: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    command = [sys.executable, "-m", "seqshard", "embed", str(fasta), "-o", str(out), "--model", "dnabert2",
               "--checkpoint", str(checkpoint), "--threads", str(threads), "--device", "cpu"]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"{tree}: seqshard embed failed:\n{done.stderr[-3000:]}")
    return seconds


def run_inference(tree: Path, out: Path, args: argparse.Namespace) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    command = [sys.executable, str(tree / "benchmarks" / "bench_inference.py"), "--models", "dnabert2",
               "--skip-single", "--repeats", "1", "--device", "cpu", "--out", str(out)]  # fmt: skip
    if args.n:
        command += ["--n-dna", str(args.n)]
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{tree}: bench_inference failed:\n{done.stderr[-3000:]}")
    (model,) = json.loads(out.read_text())["models"]
    return float(model["rows"]["seqshard"]["sequences_per_second"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="git ref of the old tree (commit, branch, tag)")
    parser.add_argument("what", choices=["embed", "inference", "dryrun", "demo"])
    parser.add_argument("--repeats", type=int, default=3, help="pairs of runs (default 3)")
    parser.add_argument("--n", type=int, default=150, help="embed: genome fragments; inference: --n-dna")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the figures as JSON")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-against-") as scratch:
        scratch_dir = Path(scratch)
        base = worktree(args.base, scratch_dir)
        try:
            trees = {"base": base, "new": REPO}
            commit = subprocess.run(["git", "-C", str(base), "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True, check=True).stdout.strip()  # fmt: skip
            print(f"base: {args.base} ({commit}); new: {REPO} (working tree); {args.what}, {args.repeats} pairs")
            figures: dict[str, list[float]] = {"base": [], "new": []}
            extra: dict[str, object] = {}
            if args.what == "embed":
                fragments, source = genome_fragments(args.n, args.seed)
                fasta = scratch_dir / "fragments.fa"
                fasta.write_text("".join(f">f{i}\n{s}\n" for i, s in enumerate(fragments)))
                checkpoint = full_dnabert2(scratch_dir / "dnabert2-full")
                print(f"{len(fragments)} fragments, {sum(map(len, fragments))} bp, from {source}")
                run_embed(REPO, fasta, checkpoint, scratch_dir / "warm-up.parquet", args.threads)  # page cache
                for repeat in range(args.repeats):
                    for name, tree in trees.items():
                        figures[name].append(
                            run_embed(tree, fasta, checkpoint, scratch_dir / f"{name}.parquet", args.threads)
                        )
                    print(f"  pair {repeat + 1}: base {figures['base'][-1]:.1f} s, new {figures['new'][-1]:.1f} s")
                unit, better = "seconds", "lower"
            elif args.what == "inference":
                for repeat in range(args.repeats):
                    for name, tree in trees.items():
                        figures[name].append(run_inference(tree, scratch_dir / f"{name}.json", args))
                    print(f"  pair {repeat + 1}: base {figures['base'][-1]:.3f} seq/s, "
                          f"new {figures['new'][-1]:.3f} seq/s")  # fmt: skip
                unit, better = "sequences_per_second", "higher"
            elif args.what == "dryrun":
                copies = {name: fresh_copy(tree, scratch_dir / f"copy-{name}") for name, tree in trees.items()}
                peaks: dict[str, list[int]] = {"base": [], "new": []}
                run_snakemake(copies["new"], copies["new"], "-n")  # page cache
                for repeat in range(args.repeats):
                    for name, copy in copies.items():
                        seconds, peak = run_snakemake(copy, copy, "-n")
                        figures[name].append(seconds)
                        peaks[name].append(peak)
                    print(f"  pair {repeat + 1}: base {figures['base'][-1]:.1f} s {peaks['base'][-1] / 1024:.0f} MB, "
                          f"new {figures['new'][-1]:.1f} s {peaks['new'][-1] / 1024:.0f} MB")  # fmt: skip
                extra["peak_memory_mb"] = {name: statistics.median(v) / 1024 for name, v in peaks.items()}
                unit, better = "seconds", "lower"
            else:
                copies = {name: fresh_copy(tree, scratch_dir / f"copy-{name}") for name, tree in trees.items()}
                for name, copy in copies.items():
                    figures[name].append(run_snakemake(copy, copy)[0])
                    print(f"  {name}: demo in {figures[name][-1]:.1f} s")
                base_files, new_files = demo_outputs(copies["base"]), demo_outputs(copies["new"])
                same = sorted(path for path in base_files if new_files.get(path) == base_files[path])
                differing = sorted(set(base_files) ^ set(new_files) | (set(base_files) - set(same)))
                print(f"  {len(same)} of {len(base_files)} output files byte-identical; "
                      f"differing: {differing or 'none'}")  # fmt: skip
                extra.update(identical_files=same, differing_files=differing)
                unit, better = "seconds", "lower"
        finally:
            remove_worktree(base)
    ratios = [new / old for old, new in zip(figures["base"], figures["new"], strict=True)]
    summary = {
        "benchmark": "bench_against", "what": args.what, "base": args.base, "base_commit": commit,
        "unit": unit, "better": better, "base_values": figures["base"], "new_values": figures["new"],
        "median_base": statistics.median(figures["base"]), "median_new": statistics.median(figures["new"]),
        "ratio_new_over_base": statistics.median(ratios), "ratios": ratios, "threads": args.threads,
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count()}, **extra,
    }  # fmt: skip
    print(
        f"median {unit}: base {summary['median_base']:.3f}, new {summary['median_new']:.3f}; "
        f"new / base = {summary['ratio_new_over_base']:.3f} (median of {len(ratios)} pairs; {better} is better)"
    )
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
