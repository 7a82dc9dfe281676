"""Can the CPU side feed a GPU? The whole inference pipeline of one job with the model replaced by a no-op.

`seqshard embed`'s code path (`run_tasks`: validation pass, reading, tokenizing and windowing, batch planning and
assembly, host-to-device hand-over, result collection, Parquet writing) runs on a FASTA file with the model
swapped for one that returns a constant hidden state at once: an infinitely fast GPU. The pooling, which would
run on that GPU, is swapped for one that returns zeros of the right shape. What is left is everything the host
must do per token; its rate is the most tokens per second this job could ever feed a device.

Printed per model input kind (DNABERT-2 DNA: log-normal lengths, median 600 bp, 50 bp to 10 kb; LucaOne protein:
median 300 aa) and per thread count (`--threads`, 1 and 2: torch's threads and the tokenizer's pool):
tokens/s of the pipeline; its ceilings, the tokenizer alone on the whole sequences and the encoding alone (the
tokenizer work the pipeline must do, windows of the long sequences included, in its chunks); batches, distinct
batch shapes (and those the GPU's plan, fixed rows per width bucket over a GPU job's larger chunks, makes for
the same inputs: planned here, not run), and the ratio to a baseline run in the same command:
the per-token-list path seqshard used before (Python lists of ids and ownership per window, one
`torch.tensor(list)` per row to build a batch, results copied to the host after every batch), on the same inputs
and outputs. Output: a table on stdout and `--out` JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

import seqshard.engine.driver as driver
import seqshard.engine.tasks as tasks_module
from seqshard.engine.batching import TokenBudgetBatcher
from seqshard.engine.chunks import iter_chunks
from seqshard.engine.driver import chunk_limits, run_tasks
from seqshard.engine.types import Hardware, RunFiles, TaskSettings, Work
from seqshard.engine.windows import encode_chunk
from seqshard.io.fasta import SequenceRecord, iter_valid_records
from seqshard.io.parquet import TableWriter, results_table, task_schema, vectors_array
from seqshard.models import get_loader

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"


class NoOpModel(torch.nn.Module):
    """Returns a constant hidden state of the right shape at once (no memory is touched: an expanded view)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # so the runner finds the model's device
        self.hidden_size = hidden_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return torch.zeros(1, 1, self.hidden_size).expand(*input_ids.shape, self.hidden_size)


def device_pool(hidden: torch.Tensor, owned: torch.Tensor, pooling: str) -> torch.Tensor:
    """The pooling's output shape without its arithmetic, which a GPU would do."""
    return torch.zeros(hidden.shape[0], hidden.shape[2])


@contextmanager
def no_op_model(hidden_size: int):
    """Every model the loaders return is swapped for a NoOpModel, and pooling for device_pool, inside the block."""
    original_pool, loaders = tasks_module.pool, {}
    for architecture in ("dnabert2", "lucaone"):
        real = get_loader(architecture)

        def load(checkpoint: str, device: str, dtype: torch.dtype, real: Any = real) -> Any:
            loaded = real(checkpoint, device, dtype)
            if hasattr(loaded, "for_molecule"):
                original_for_molecule = loaded.for_molecule

                def bound(molecule: str, original: Any = original_for_molecule) -> Any:
                    return _swap(original(molecule), hidden_size)

                loaded = _swap(loaded, hidden_size)
                object.__setattr__(loaded, "for_molecule", bound)
            return loaded

        loaders[architecture] = load
    original_get_loader = driver.get_loader
    driver.get_loader = lambda architecture: loaders[architecture]
    tasks_module.pool = device_pool
    try:
        yield
    finally:
        driver.get_loader = original_get_loader
        tasks_module.pool = original_pool


def _swap(loaded: Any, hidden_size: int) -> Any:
    from dataclasses import replace

    return replace(loaded, model=NoOpModel(hidden_size), hidden_size=hidden_size)


def write_inputs(path: Path, kind: str, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    median, minimum, maximum = (600, 50, 10_000) if kind == "dna" else (300, 30, 3_000)
    lengths = np.clip(np.round(rng.lognormal(math.log(median), 0.8, n)), minimum, maximum).astype(int)
    letters = np.frombuffer(b"ACGT" if kind == "dna" else AMINO_ACIDS.encode(), dtype=np.uint8)
    with open(path, "w", encoding="ascii") as handle:
        for index, length in enumerate(lengths):
            handle.write(f">{kind}{index:06d}\n{letters[rng.integers(0, len(letters), length)].tobytes().decode()}\n")


def list_baseline(fasta: Path, out: Path, architecture: str, checkpoint: str, molecule: str, hidden: int,
                  batch_tokens: int) -> int:  # fmt: skip
    """The per-token-list pipeline seqshard had before, with the same no-op model: returns tokens fed."""
    loaded = get_loader(architecture)(checkpoint, "cpu", torch.float32).for_molecule(molecule)
    model = NoOpModel(hidden)
    tokenizer = loaded.tokenizer
    max_tokens, window = loaded.max_tokens, loaded.default_window
    records = list(iter_valid_records(fasta, molecule))
    inputs: list[tuple[int, list[int], list[bool]]] = []
    for index, (ids, _offsets) in enumerate(tokenizer.encode_many_with_offsets([r.sequence for r in records])):
        if len(ids) <= max_tokens:
            inputs.append((index, ids, [False, *([True] * (len(ids) - 2)), False]))
            continue
        sequence = records[index].sequence
        for start in range(0, len(sequence), window - window // 4):
            piece_ids, piece_offsets = tokenizer.encode_with_offsets(sequence[start : start + window])
            inputs.append((index, piece_ids[:max_tokens], [b < e for b, e in piece_offsets][:max_tokens]))
    lengths = [len(ids) for _, ids, _ in inputs]
    pooled = np.zeros((len(inputs), hidden), dtype=np.float32)
    for batch in TokenBudgetBatcher(batch_tokens, buckets_per_octave=None).batches(lengths):
        width = max(lengths[i] for i in batch)
        ids = torch.full((len(batch), width), tokenizer.pad_id, dtype=torch.long)
        owned = torch.zeros((len(batch), width), dtype=torch.bool)
        for row, index in enumerate(batch):
            ids[row, : lengths[index]] = torch.tensor(inputs[index][1])
            owned[row, : lengths[index]] = torch.tensor(inputs[index][2])
        attention_mask = torch.arange(width)[None, :] < torch.tensor([lengths[i] for i in batch])[:, None]
        hidden_state = model(ids, attention_mask)
        pooled[batch] = device_pool(hidden_state, owned, "mean").cpu().numpy()
    embedding = np.zeros((len(records), hidden), dtype=np.float32)
    for row, (record, _, _) in enumerate(inputs):
        embedding[record] = pooled[row]
    schema = task_schema("embed", hidden)
    with TableWriter(out) as writer:
        writer.write(results_table(schema, {
            "id": [r.id for r in records], "length": [len(r.sequence) for r in records],
            "n_tokens": [0] * len(records), "n_windows": [1] * len(records), "truncated": [False] * len(records),
            "embedding": vectors_array(embedding),
        }, {}))  # fmt: skip
    return sum(lengths)


def job_chunks(records: list[SequenceRecord], device: str, batch_tokens: int, hidden: int) -> list[list[str]]:
    """The sequences of `records` in the chunks a job on `device` reads them in (`chunk_limits`)."""
    limits = chunk_limits(Hardware(device, batch_tokens=batch_tokens), [TaskSettings("embed")], hidden)
    chunks = iter_chunks(iter(records), limits.records, limits.residues)
    return [[record.sequence for record in chunk] for chunk in chunks]


def encode_for_job(loaded: Any, sequences: list[str]) -> Any:
    """`encode_chunk` as a job calls it with the model's defaults (windows of the long sequences)."""
    window = loaded.default_window
    return encode_chunk(sequences, loaded.tokenizer, max_tokens=loaded.max_tokens, mode="window", window=window,
                        overlap=window // 4)  # fmt: skip


def gpu_plan(loaded: Any, records: list[SequenceRecord], batch_tokens: int, hidden: int) -> tuple[int, int, float]:
    """Batches, distinct shapes and useful-token fraction of the GPU's batch plan for these inputs, chunked as a
    GPU job chunks them (computed from the real encodings; no GPU needed to plan)."""
    batcher = TokenBudgetBatcher.for_device("cuda", batch_tokens)
    shapes, batches, real, computed = set(), 0, 0, 0
    for sequences in job_chunks(records, "cuda", batch_tokens, hidden):
        encoded = encode_for_job(loaded, sequences)
        lengths = encoded.lengths
        for batch in batcher.batches(lengths):
            width = batcher.width(int(lengths[batch].max()))
            shapes.add((len(batch), width))
            batches += 1
            real += int(lengths[batch].sum())
            computed += len(batch) * width
    return batches, len(shapes), real / computed


def checkpoints(root: Path, hidden: int) -> dict[str, str]:
    """Small random checkpoints in the published layouts whose hidden size is the full models' (768 / 2560): the
    loaders read them, then the model is swapped; the tokenizers are the real code paths."""
    from seqshard.models.dnabert2 import write_demo_checkpoint as dnabert2_demo
    from seqshard.models.lucaone import write_demo_checkpoint as lucaone_demo

    dnabert2 = dnabert2_demo(root / "dnabert2", hidden_size=768, num_hidden_layers=1, num_attention_heads=12,
                             intermediate_size=64)  # fmt: skip
    lucaone = lucaone_demo(root / "lucaone", layout="hf", hidden_size=hidden, num_layers=1, num_heads=8, ffn=64)
    return {"dnabert2": str(dnabert2), "lucaone": str(lucaone)}


def measure(architecture: str, threads: int, root: Path, sequences: int, batch_tokens: int, repeats: int) -> dict:
    """One row, in a process of its own: the tokenizer's thread pool (RAYON_NUM_THREADS) is sized once per process."""
    kind, molecule, hidden = {"dnabert2": ("dna", "dna", 768), "lucaone": ("protein", "protein", 2560)}[architecture]
    torch.set_num_threads(threads)
    # LucaOne's hidden size is 2560; its checkpoint here is 256 wide to stay small, and the no-op model returns
    # 2560-wide states so that the outputs written are the real ones' size.
    paths = {name: str(root / name) for name in ("dnabert2", "lucaone")}  # written once by main, see checkpoints
    fasta = root / f"{kind}.fa"
    if not fasta.exists():
        write_inputs(fasta, kind, sequences, seed=7)
    rates, baseline_rates, tokenize_rates, encode_rates, figures = [], [], [], [], None
    loaded = get_loader(architecture)(paths[architecture], "cpu", torch.float32).for_molecule(molecule)
    records = list(iter_valid_records(fasta, molecule))
    texts = [record.sequence for record in records]
    cpu_chunks = job_chunks(records, "cpu", batch_tokens, hidden)
    for _ in range(repeats):
        with no_op_model(hidden):
            started = time.perf_counter()
            figures = run_tasks(
                Work(architecture, paths[architecture], molecule=molecule),
                RunFiles(fasta, {"embed": root / f"out-{threads}.parquet"}),
                Hardware(threads=threads, batch_tokens=batch_tokens),
            )
            rates.append(figures.n_tokens / (time.perf_counter() - started - figures.load_seconds))
        started = time.perf_counter()
        fed = list_baseline(fasta, root / f"baseline-{threads}.parquet", architecture, paths[architecture],
                            molecule, hidden, batch_tokens)  # fmt: skip
        baseline_rates.append(fed / (time.perf_counter() - started))
        # The tokenizer alone (ids as arrays, 4096 records per call as a job's chunks), whole sequences only.
        started, tokens = time.perf_counter(), 0
        for first in range(0, len(texts), 4096):
            ids, _ = loaded.tokenizer.encode_flat(texts[first : first + 4096])
            tokens += len(ids)
        tokenize_rates.append(tokens / (time.perf_counter() - started))
        # Encoding alone: the tokenizer work the pipeline must do (windows of the long sequences included), in
        # the pipeline's chunks, rated by the pipeline's own token count: the ceiling of this job on these cores.
        started = time.perf_counter()
        for sequences in cpu_chunks:
            encode_for_job(loaded, sequences)
        encode_rates.append(figures.n_tokens / (time.perf_counter() - started))
    assert figures is not None
    rate, baseline = float(np.median(rates)), float(np.median(baseline_rates))
    gpu_batches, gpu_shapes, gpu_useful = gpu_plan(loaded, records, batch_tokens, hidden)
    return {"input": f"{architecture}/{kind}", "threads": threads, "tokens_per_second": rate,
            "list_path_tokens_per_second": baseline, "ratio": rate / baseline,
            "tokenizer_alone_tokens_per_second": float(np.median(tokenize_rates)),
            "encoding_alone_tokens_per_second": float(np.median(encode_rates)),
            "n_tokens": figures.n_tokens, "n_batches": figures.n_batches,
            "n_batch_shapes": len(figures.batch_shapes),
            "useful_token_fraction": figures.n_tokens / figures.n_computed_tokens,
            "gpu_plan": {"n_batches": gpu_batches, "n_batch_shapes": gpu_shapes,
                         "useful_token_fraction": gpu_useful}}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, default=10_000)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--batch-tokens", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--worker", nargs=3, metavar=("ARCHITECTURE", "THREADS", "SCRATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        architecture, threads, scratch = args.worker
        row = measure(architecture, int(threads), Path(scratch), args.sequences, args.batch_tokens, args.repeats)
        print(json.dumps(row))
        return 0
    results: dict[str, Any] = {"arguments": vars(args) | {"out": str(args.out)}, "cpu_cores": os.cpu_count(),
                               "rows": []}  # fmt: skip
    print(
        f"{'input':<16} {'threads':>7} {'pipeline tok/s':>15} {'list path tok/s':>16} {'ratio':>6} "
        f"{'tokenizer tok/s':>16} {'encoding tok/s':>15} {'batches':>8} {'shapes':>7} {'useful':>7}   "
        f"GPU plan: {'batches':>7} {'shapes':>7} {'useful':>7}"
    )
    with tempfile.TemporaryDirectory(prefix="seqshard-feed-") as scratch:
        checkpoints(Path(scratch), 256)
        for architecture in ("dnabert2", "lucaone"):
            for threads in [int(t) for t in args.threads.split(",")]:
                command = [sys.executable, __file__, "--worker", architecture, str(threads), scratch,
                           "--sequences", str(args.sequences), "--batch-tokens", str(args.batch_tokens),
                           "--repeats", str(args.repeats)]  # fmt: skip
                env = {**os.environ, "RAYON_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "true"}
                done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
                row = json.loads(done.stdout.strip().splitlines()[-1])
                results["rows"].append(row)
                plan = row["gpu_plan"]
                print(f"{row['input']:<16} {threads:>7} {row['tokens_per_second']:>15,.0f} "
                      f"{row['list_path_tokens_per_second']:>16,.0f} {row['ratio']:>6.2f} "
                      f"{row['tokenizer_alone_tokens_per_second']:>16,.0f} "
                      f"{row['encoding_alone_tokens_per_second']:>15,.0f} {row['n_batches']:>8} "
                      f"{row['n_batch_shapes']:>7} {row['useful_token_fraction']:>7.3f}             "
                      f"{plan['n_batches']:>7} {plan['n_batch_shapes']:>7} {plan['useful_token_fraction']:>7.3f}",
                      flush=True)  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
