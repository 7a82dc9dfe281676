"""Inference benchmark: seqshard's production path against the way the models' own examples run them.

For each model (DNABERT-2 on DNA, LucaOne and ESM-2 on proteins) the suite draws a seeded, realistic length mix
(or, with `--protein-fasta`, real proteins), writes a
random-weight checkpoint of the published architecture in the published layout, loads it with seqshard's loader
(timed: the model-load figure), and runs three rows over the *same model inputs*:

- `seqshard`: `seqshard.engine.chunks.score_records`, the production path (length-sorted token-budget batches with
  at most 3 % padding, SDPA attention, task `embed`, mean pooling).
- `fixed_batch`: the models' own examples — batches of 32 consecutive model inputs in input order, padded to the
  batch's longest, eager attention `softmax(Q·Kᵀ/√d + bias)·V` written out in full.
- `one_at_a_time`: each model input alone (no padding), eager attention; on a GPU over the first `--single-n`
  sequences only (compared by sequences/s), since it would take longer than the rest together.

ESM-2 is compared with its own two implementations instead, each running the same weights (converted to fair-esm's
keys; read by transformers from the published layout as written):
- `fair_esm`: fair-esm 2.0.0 the way its `scripts/extract.py` runs it: `FastaBatchedDataset.get_batch_indices(
  toks_per_batch, extra_toks_per_seq=1)` (sorted by length, 4,096 tokens a batch by default), its
  `BatchConverter` (truncation at 1,022 residues), the mean of the last layer over residues;
- `transformers`: `EsmModel.from_pretrained` with `EsmTokenizer`, batches of `--baseline-batch-size` in input order
  padded to their longest, as its documentation shows, and the same mean over residues.
Proteins are kept to 1,022 residues for ESM-2, so that every row runs each one whole.

Every row runs in the same precision, `dtype: auto` as seqshard resolves it on the device (fp32 on the CPU; on a
GPU bf16 autocast from compute capability 8.0, fp16 on 7.x), or `--dtype`; TF32 stays off in every row.

Same inputs: a sequence longer than the model's limit (DNABERT-2: 512 tokens; LucaOne: 4096) is cut by
`seqshard.engine.windows.encode_sequence` into the model's default windows (DNABERT-2: 1000 bp; LucaOne: 4094
residues) overlapping by a quarter; every row runs exactly those windows (checked) and combines them into one
vector per sequence, weighted by the tokens each window owns. Each row is timed from records to per-record
embeddings (tokenizing included). Before timing, on a GPU each row runs every distinct batch shape it will make
once (attention libraries build a plan per new shape; the shapes are found by running the row with a stand-in
model that only records its inputs); on the CPU, where nothing is planned per shape, a few records warm up.
`--drift N` also compares seqshard in its dtype with seqshard in fp32 on the first N sequences (max |difference|,
lowest cosine similarity of the embeddings).

Figures per row (a "model input" is one window; "tokens" include [CLS] and [SEP]):
- sequences/s = records / seconds; real tokens/s = tokens of the model inputs / seconds;
- useful-token fraction = real tokens / tokens computed (rows x longest row, summed over batches);
- peak memory: RSS high-water mark of this process during the row (CPU, reset between rows through
  /proc/self/clear_refs; model weights included) or torch.cuda.max_memory_allocated (GPU);
- FLOP/s: useful FLOPs / seconds, with per model input of L real tokens
      FLOPs = 2 · P · L + 4 · L² · hidden · layers
  P = parameters outside the embedding tables (every matmul weight does one multiply-add per token), and per
  layer Q·Kᵀ plus attention·V cost 2 · L² · hidden each. Padding FLOPs are not counted as useful.
- fraction of peak: useful FLOP/s / a dense matmul peak measured in this process (bf16 on GPU, fp32 on CPU).

`--quick` is a smoke run (tiny models, few sequences). Output: a table on stdout and `--out` JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

import seqshard.models.dnabert2 as dnabert2_module
import seqshard.models.esm2 as esm2_module
import seqshard.models.lucaone as lucaone_module
from seqshard.engine.batching import TokenBudgetBatcher
from seqshard.engine.chunks import score_records
from seqshard.engine.pooling import pool
from seqshard.engine.types import RunFigures, TaskSettings
from seqshard.engine.windows import EncodedSequence, ModelFit
from seqshard.io.fasta import SequenceRecord
from seqshard.models import LoadedModel, get_loader
from seqshard.runtime.devices import DTYPES, resolve_device, resolve_dtype

REPO = Path(__file__).resolve().parents[1]

# Architectures: the published configs ("full") and reduced ones for CPU runs and smoke tests.
DNABERT2_SIZES: dict[str, dict[str, int]] = {
    # zhihan1996/DNABERT-2-117M config.json
    "full": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    "small": {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 1024},
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128},
}
LUCAONE_SIZES: dict[str, dict[str, int]] = {
    # LucaOne (LucaGroup/LucaOne-default-step36M): 1.5 B parameters, 6 GB in fp32
    "full": {"hidden_size": 2560, "num_layers": 20, "num_heads": 40},
    # a twentieth of the published width-squared x depth: runs in about a minute on 2 CPU cores
    "small": {"hidden_size": 512, "num_layers": 6, "num_heads": 8},
    "tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 4},
}
ESM2_SIZES: dict[str, dict[str, int]] = {
    # facebook/esm2_t33_650M_UR50D config.json; t6_8M and t12_35M for smaller runs
    "full": {"hidden_size": 1280, "num_layers": 33, "num_heads": 20},
    "small": {"hidden_size": 480, "num_layers": 12, "num_heads": 20},
    "tiny": {"hidden_size": 320, "num_layers": 6, "num_heads": 20},
}
ESM2_MAX_RESIDUES = 1022  # what one ESM-2 input takes (1,024 tokens with <cls> and <eos>), fair-esm's truncation
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"


# ------------------------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class LengthMix:
    """Log-normal lengths in residues: median `median`, log-scale spread `sigma`, clipped to [minimum, maximum]."""

    median: float
    sigma: float
    minimum: int
    maximum: int

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        lengths = rng.lognormal(math.log(self.median), self.sigma, n)
        return np.clip(np.round(lengths), self.minimum, self.maximum).astype(int)


def synthetic_records(molecule: str, mix: LengthMix, n: int, seed: int) -> list[SequenceRecord]:
    """`n` seeded records of uniformly random residues with lengths from `mix`."""
    rng = np.random.default_rng(seed)
    alphabet = np.array(list("ACGT" if molecule == "dna" else AMINO_ACIDS))
    return [
        SequenceRecord(index, f"{molecule}{index:06d}", "".join(rng.choice(alphabet, length)), 2 * index + 1)
        for index, length in enumerate(mix.draw(rng, n))
    ]


def fasta_records(paths: Sequence[Path], n: int, seed: int, max_length: int) -> list[SequenceRecord]:
    """`n` records drawn (seeded, without replacement) from the FASTA files' valid proteins of at most `max_length`
    residues, in the drawn order; all of them when there are fewer."""
    from seqshard.io.fasta import iter_valid_records
    from seqshard.io.sequences import InputPolicy

    skip = InputPolicy(on_invalid="skip")
    proteins = [r.sequence for path in paths for r in iter_valid_records(path, "protein", skip)]
    proteins = [sequence for sequence in proteins if len(sequence) <= max_length]
    order = np.random.default_rng(seed).permutation(len(proteins))[:n]
    return [SequenceRecord(i, f"protein{i:06d}", proteins[j], 2 * i + 1) for i, j in enumerate(order.tolist())]


def encode_records(
    loaded: LoadedModel, records: Sequence[SequenceRecord], settings: TaskSettings
) -> list[EncodedSequence]:
    """The model inputs `score_records` makes for `records`: the same fit (window, overlap, limit)."""
    return ModelFit.of(loaded, settings).encode([record.sequence for record in records], loaded.tokenizer).sequences()


@dataclass
class WindowInput:
    """One model input of the baselines: a window and the record it belongs to."""

    record: int
    ids: list[int]
    owned: list[bool]


def window_inputs(encoded: Sequence[EncodedSequence]) -> list[WindowInput]:
    return [
        WindowInput(record, window.ids, window.owned)
        for record, sequence in enumerate(encoded)
        for window in sequence.windows
    ]


def weighted_rows(values: np.ndarray, inputs: Sequence[WindowInput], n_records: int) -> np.ndarray:
    """One row per record from one row per window, weighted by the tokens each window owns (as seqshard does)."""
    records = np.array([item.record for item in inputs])
    weights = np.array([sum(item.owned) for item in inputs], dtype=np.float64)
    out = np.zeros((n_records, values.shape[1]), dtype=np.float64)
    np.add.at(out, records, weights[:, None] * values)
    return out / np.bincount(records, weights=weights, minlength=n_records)[:, None]


# ------------------------------------------------------------------------------------------------------------
# Checkpoints: published layout, random weights


def write_checkpoint(architecture: str, size: str, directory: Path, seed: int) -> Path:
    """A random-weight checkpoint of `architecture` at `size` in the published layout, reused when present."""
    out = directory / f"{architecture}-{size}-seed{seed}"
    if (out / "special_tokens_map.json").exists():  # the last file both writers write
        return out
    started = time.perf_counter()
    if architecture == "dnabert2":
        dnabert2_module.write_demo_checkpoint(out, seed=seed, **DNABERT2_SIZES[size])
    elif architecture == "esm2":
        esm2_module.write_demo_checkpoint(out, seed=seed, **ESM2_SIZES[size])
    else:
        lucaone_module.write_demo_checkpoint(out, layout="hf", seed=seed, **LUCAONE_SIZES[size])
    print(f"  wrote {architecture} ({size}) checkpoint to {out} in {time.perf_counter() - started:.1f} s")
    return out


# ------------------------------------------------------------------------------------------------------------
# The eager-attention baseline: the model files call `F.scaled_dot_product_attention`; the benchmark swaps the
# `F` those modules see for one whose attention is written out the way the reference implementations write it.


def eager_scaled_dot_product_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """softmax(Q·Kᵀ·scale + bias)·V with every intermediate materialised, as MosaicBERT's PyTorch fallback and
    the LucaOne reference compute it (float masks are added, boolean masks mark the keys to attend to)."""
    if dropout_p or is_causal or enable_gqa:
        raise NotImplementedError("the benchmark's eager attention covers inference only")
    scores = torch.matmul(query, key.transpose(-2, -1)) * (scale or 1.0 / math.sqrt(query.shape[-1]))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attn_mask
    return torch.matmul(torch.softmax(scores, dim=-1), value)


class _FunctionalWithEagerAttention:
    """torch.nn.functional with scaled_dot_product_attention replaced by the eager one."""

    scaled_dot_product_attention = staticmethod(eager_scaled_dot_product_attention)

    def __getattr__(self, name: str) -> object:
        return getattr(torch.nn.functional, name)


@contextmanager
def eager_attention(enabled: bool = True) -> Iterator[None]:
    """Within the block, the model modules run eager attention instead of SDPA."""
    modules = (dnabert2_module, lucaone_module)
    saved = [module.F for module in modules]
    if enabled:
        for module in modules:
            module.F = _FunctionalWithEagerAttention()  # type: ignore[assignment]
    try:
        yield
    finally:
        for module, functional in zip(modules, saved, strict=True):
            module.F = functional


# ------------------------------------------------------------------------------------------------------------
# Measuring


class PeakMemory:
    """Peak memory over a block: CUDA allocator high-water mark, or this process's RSS high-water mark."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.device = device
        self.kind = "torch.cuda.max_memory_allocated" if self.cuda else "RSS high-water mark (VmHWM)"
        self.resettable = True

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:  # Linux: writing 5 resets VmHWM to the current RSS
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.resettable = False  # then every row reports the process's peak so far

    def read(self) -> int:
        if self.cuda:
            return int(torch.cuda.max_memory_allocated(self.device))
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def matmul_peak_flops(device: str, dtype: torch.dtype, quick: bool) -> float:
    """Best FLOP/s of a square dense matmul in `dtype` on `device` (the probe the fraction-of-peak refers to)."""
    n = 8192 if device.startswith("cuda") else (1024 if quick else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    repeats = 20 if device.startswith("cuda") else 2
    best = 0.0
    for _ in range(6):  # the best round: the first warms up (kernel selection, clocks), others catch a quiet moment
        synchronize(device)
        started = time.perf_counter()
        for _ in range(repeats):
            torch.matmul(a, b)
        synchronize(device)
        best = max(best, 2 * n**3 * repeats / (time.perf_counter() - started))
    return best


@dataclass(frozen=True)
class FlopModel:
    """FLOPs of one forward pass: 2·P per token for the matmul weights, 4·L²·hidden per layer for attention."""

    matmul_parameters: int
    hidden_size: int
    num_layers: int

    @classmethod
    def of(cls, loaded: LoadedModel) -> FlopModel:
        config = loaded.extra["config"]
        assert isinstance(config, dict)
        parameters = sum(p.numel() for name, p in loaded.model.named_parameters() if "embed" not in name)
        return cls(parameters, int(config["hidden_size"]), int(config["num_hidden_layers"]))

    def forward(self, length: int, rows: int = 1) -> float:
        return rows * (2.0 * self.matmul_parameters * length + 4.0 * length**2 * self.hidden_size * self.num_layers)


@dataclass
class Row:
    """One way of running the model over the inputs, and what it measured (seconds: one per repeat)."""

    name: str
    batching: str
    dtype: str
    attention: str
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)  # this process's CPU time: steadier on a busy machine
    n_sequences: int = 0
    n_inputs: int = 0
    n_batches: int = 0
    real_tokens: int = 0
    computed_tokens: int = 0
    useful_flops: float = 0.0
    computed_flops: float = 0.0
    peak_memory_bytes: list[int] = field(default_factory=list)
    max_abs_diff_vs_seqshard: float | None = None
    failed: str | None = None  # e.g. a padded eager batch that does not fit in GPU memory

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.seconds)

    def figures(self) -> dict[str, object]:
        if self.failed:
            return asdict(self)
        seconds = self.median_seconds
        return {
            **asdict(self),
            "median_seconds": round(seconds, 3),
            "sequences_per_second": self.n_sequences / seconds,
            "real_tokens_per_second": self.real_tokens / seconds,
            "useful_token_fraction": self.real_tokens / self.computed_tokens,
            "peak_memory_bytes_median": int(statistics.median(self.peak_memory_bytes)),
            "useful_flops_per_second": self.useful_flops / seconds,
        }


# ------------------------------------------------------------------------------------------------------------
# The three ways of running


@dataclass
class Workload:
    loaded: LoadedModel  # bound to the molecule
    molecule: str
    settings: TaskSettings
    device: str
    seqshard_dtype: str
    batch_tokens: int
    baseline_batch_size: int
    flop_model: FlopModel
    encoded: dict[str, EncodedSequence] = field(default_factory=dict)  # model inputs by record id, for the rows
    references: dict[str, Any] = field(default_factory=dict)  # ESM-2's own implementations, by row name


def run_seqshard(work: Workload, records: Sequence[SequenceRecord], row: Row | None) -> np.ndarray:
    """The production path; fills `row` with its batch plan's figures."""
    figures = RunFigures({}, work.device, work.seqshard_dtype, torch.get_num_threads(), work.batch_tokens)
    scored = score_records(
        work.loaded, records, work.settings, molecule=work.molecule, batch_tokens=work.batch_tokens,
        dtype=work.seqshard_dtype, figures=figures,
    )  # fmt: skip
    embedding = scored.columns["embed"]["embedding"]
    values = np.asarray(embedding.flatten(), dtype=np.float32).reshape(len(records), -1)  # type: ignore[attr-defined]
    if row is not None:
        encoded = [work.encoded[record.id] for record in records]
        lengths = [len(item.ids) for item in window_inputs(encoded)]
        # score_records does not return its batches; the same batcher on the same lengths gives the same plan
        # (unless a GPU out-of-memory made it run a batch in halves: then its own token counts stand).
        batcher = TokenBudgetBatcher.for_device(work.device.split(":")[0], work.batch_tokens)
        plan = list(batcher.batches(lengths))
        fill_row(row, work, encoded, plan, batcher)
        planned = (row.n_batches, row.real_tokens, row.computed_tokens)
        if (figures.n_batches, figures.n_tokens, figures.n_computed_tokens) != planned:
            if not getattr(figures, "n_oom_splits", 0):
                raise RuntimeError("the benchmark's batch plan differs from the one score_records ran")
            row.n_batches, row.computed_tokens = figures.n_batches, figures.n_computed_tokens
    return values


def fixed_batches(n_inputs: int, batch_size: int) -> list[list[int]]:
    return [list(range(start, min(start + batch_size, n_inputs))) for start in range(0, n_inputs, batch_size)]


def autocast(work: Workload) -> object:
    """The autocast seqshard's Runner uses for the same dtype: the baselines compute in the same precision."""
    if work.seqshard_dtype == "fp32":
        return nullcontext()
    return torch.autocast(device_type=work.device.split(":")[0], dtype=DTYPES[work.seqshard_dtype])


def run_baseline(work: Workload, records: Sequence[SequenceRecord], batch_size: int, row: Row | None) -> np.ndarray:
    """Batches of `batch_size` consecutive model inputs in input order, padded to their longest, eager attention,
    in seqshard's dtype."""
    encoded = encode_records(work.loaded, records, work.settings)
    inputs = window_inputs(encoded)
    plan = fixed_batches(len(inputs), batch_size)
    loaded = work.loaded
    token_type = loaded.token_types.get(work.molecule, 0)
    pooled = np.zeros((len(inputs), loaded.hidden_size), dtype=np.float32)
    device = next(loaded.model.parameters()).device
    with torch.inference_mode(), eager_attention(), autocast(work):
        for batch in plan:
            width = max(len(inputs[i].ids) for i in batch)
            ids = torch.full((len(batch), width), loaded.tokenizer.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.bool)
            owned = torch.zeros((len(batch), width), dtype=torch.bool)
            for row_index, index in enumerate(batch):
                length = len(inputs[index].ids)
                ids[row_index, :length] = torch.tensor(inputs[index].ids)
                mask[row_index, :length] = True
                owned[row_index, :length] = torch.tensor(inputs[index].owned)
            types = torch.full_like(ids, token_type)
            hidden = loaded.model(ids.to(device), mask.to(device), types.to(device))
            pooled[batch] = pool(hidden, owned.to(device), "mean").cpu().numpy()
    values = weighted_rows(pooled, inputs, len(records)).astype(np.float32)
    if row is not None:
        fill_row(row, work, encoded, plan)
    return values


# ------------------------------------------------------------------------------------------------------------
# ESM-2's own implementations, on the checkpoint seqshard loads

_TO_FAIR_ESM = (  # published (transformers) key pieces -> fair-esm's, applied in order
    ("esm.embeddings.word_embeddings.", "embed_tokens."),
    ("esm.encoder.emb_layer_norm_after.", "emb_layer_norm_after."),
    ("esm.contact_head.", "contact_head."),
    ("esm.encoder.layer.", "layers."),
    ("attention.self.rotary_embeddings.", "self_attn.rot_emb."),
    ("attention.self.query.", "self_attn.q_proj."),
    ("attention.self.key.", "self_attn.k_proj."),
    ("attention.self.value.", "self_attn.v_proj."),
    ("attention.output.dense.", "self_attn.out_proj."),
    ("attention.LayerNorm.", "self_attn_layer_norm."),
    ("intermediate.dense.", "fc1."),
    ("output.dense.", "fc2."),
    (".LayerNorm.", ".final_layer_norm."),
    ("lm_head.decoder.weight", "lm_head.weight"),
)


def fair_esm_model(checkpoint: Path, device: str) -> tuple[torch.nn.Module, Any]:
    """fair-esm's `ESM2` built as `esm.pretrained` builds ESM-2 models, with the checkpoint's tensors."""
    from esm.model.esm2 import ESM2

    config = json.loads((checkpoint / "config.json").read_text())
    model = ESM2(
        num_layers=config["num_hidden_layers"], embed_dim=config["hidden_size"],
        attention_heads=config["num_attention_heads"], alphabet="ESM-1b", token_dropout=config["token_dropout"],
    )  # fmt: skip
    state = {}
    for key, value in torch.load(checkpoint / "pytorch_model.bin", map_location="cpu", weights_only=True).items():
        for old, new in _TO_FAIR_ESM:
            key = key.replace(old, new)
        state[key] = value
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), model.alphabet


def run_fair_esm(work: Workload, records: Sequence[SequenceRecord], row: Row | None) -> np.ndarray:
    """fair-esm's extract.py: length-sorted batches of at most toks_per_batch tokens, its BatchConverter, the mean of
    the last layer over each protein's residues."""
    from esm.data import FastaBatchedDataset
    from torch.utils.data import DataLoader

    model, alphabet, toks_per_batch = work.references["fair_esm"]
    dataset = FastaBatchedDataset([record.id for record in records], [record.sequence for record in records])
    batches = dataset.get_batch_indices(toks_per_batch, extra_toks_per_seq=1)
    loader = DataLoader(dataset, collate_fn=alphabet.get_batch_converter(ESM2_MAX_RESIDUES), batch_sampler=batches)
    device = next(model.parameters()).device
    last = model.num_layers
    values = np.zeros((len(records), model.embed_dim), dtype=np.float32)
    with torch.no_grad(), autocast(work):
        for (_, strs, toks), batch in zip(loader, batches, strict=True):
            representations = model(toks.to(device, non_blocking=True), repr_layers=[last])["representations"][last]
            for i, (index, sequence) in enumerate(zip(batch, strs, strict=True)):
                values[index] = representations[i, 1 : len(sequence) + 1].float().mean(0).cpu().numpy()
    if row is not None:
        fill_row(row, work, [work.encoded[record.id] for record in records], batches)
    return values


def run_transformers(work: Workload, records: Sequence[SequenceRecord], row: Row | None) -> np.ndarray:
    """transformers as its documentation shows: the tokenizer pads each batch (of consecutive proteins) to its
    longest, `EsmModel` returns `last_hidden_state`; the mean over residues (<cls>, <eos>, padding excluded)."""
    model, tokenizer = work.references["transformers"]
    device = next(model.parameters()).device
    plan = fixed_batches(len(records), work.baseline_batch_size)
    values = np.zeros((len(records), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode(), autocast(work):
        for batch in plan:
            inputs = tokenizer([records[i].sequence for i in batch], return_tensors="pt", padding=True).to(device)
            hidden = model(**inputs).last_hidden_state.float()
            residues = inputs["attention_mask"].bool()
            residues[:, 0] = False
            residues[torch.arange(len(batch)), residues.sum(1)] = False  # <eos>: the last real position
            weights = residues.unsqueeze(-1).float()
            values[batch] = ((hidden * weights).sum(1) / weights.sum(1)).cpu().numpy()
    if row is not None:
        fill_row(row, work, [work.encoded[record.id] for record in records], plan)
    return values


def fill_row(
    row: Row,
    work: Workload,
    encoded: Sequence[EncodedSequence],
    plan: Sequence[Sequence[int]],
    batcher: TokenBudgetBatcher | None = None,
) -> None:
    """Batch figures of `plan`; `batcher` rounds its widths (None for the baselines' exact widths)."""
    lengths = [len(item.ids) for item in window_inputs(encoded)]
    row.n_sequences = len(encoded)
    row.n_inputs = len(lengths)
    row.n_batches = len(plan)
    row.real_tokens = sum(lengths)
    width = {id(batch): max(lengths[i] for i in batch) for batch in plan}
    if batcher is not None:
        width = {key: batcher.width(longest) for key, longest in width.items()}
    row.computed_tokens = sum(len(batch) * width[id(batch)] for batch in plan)
    row.useful_flops = sum(work.flop_model.forward(length) for length in lengths)
    row.computed_flops = sum(work.flop_model.forward(width[id(b)], len(b)) for b in plan)


class ShapeRecorder:
    """Stands in for a backbone's forward to learn which batch shapes a row makes: keeps the first inputs of each
    (shape, padded or not) and returns zeros, so finding the shapes costs the row's CPU work only."""

    def __init__(self, hidden_size: int) -> None:
        self.hidden_size = hidden_size
        self.first: dict[tuple[tuple[int, ...], bool], tuple[tuple[object, ...], dict[str, object]]] = {}

    def __call__(self, input_ids: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        mask = args[0] if args else kwargs.get("attention_mask")
        padded = isinstance(mask, torch.Tensor) and not bool(mask.all())
        key = (tuple(input_ids.shape), padded)
        if key not in self.first:
            self.first[key] = ((_copy(input_ids), *map(_copy, args)), {k: _copy(v) for k, v in kwargs.items()})
        return torch.zeros(*input_ids.shape, self.hidden_size, device=input_ids.device)


def _copy(value: object) -> object:
    return value.clone() if isinstance(value, torch.Tensor) else value


# How every row is run: runner(workload, records, row to fill or None) -> one embedding per record.
Runner = Callable[["Workload", Sequence[SequenceRecord], "Row | None"], np.ndarray]


def warm_up_shapes(work: Workload, runner: Runner, records: Sequence[SequenceRecord]) -> int:
    """Run the real model once on every distinct batch shape `runner` makes for `records`; the number of shapes."""
    model = work.loaded.model
    backbone = getattr(model, "model", model)  # LucaOne's molecule binding wraps its backbone as `.model`
    recorder = ShapeRecorder(work.loaded.hidden_size)
    backbone.forward = recorder  # an instance attribute: nn.Module.__call__ now reaches the recorder
    try:
        runner(work, records, None)
    finally:
        del backbone.forward
    with torch.inference_mode(), autocast(work):
        for args, kwargs in recorder.first.values():
            backbone(*args, **kwargs)
    synchronize(work.device)
    return len(recorder.first)


def embedding_drift(work: Workload, records: Sequence[SequenceRecord]) -> dict[str, object]:
    """seqshard in its dtype against seqshard in fp32 on `records`: how far the lower precision moves embeddings."""
    ours = run_seqshard(work, records, None)
    reference = run_seqshard(replace(work, seqshard_dtype="fp32"), records, None)
    cosine = (ours * reference).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(reference, axis=1))
    return {
        "dtype": work.seqshard_dtype,
        "n_sequences": len(records),
        "max_abs_diff": float(np.abs(ours - reference).max()),
        "min_cosine": float(cosine.min()),
        "mean_cosine": float(cosine.mean()),
    }


def timed(
    work: Workload, memory: PeakMemory, runner: Runner, records: Sequence[SequenceRecord], row: Row
) -> tuple[float, float, int, np.ndarray]:
    """Wall seconds, CPU seconds, peak memory and per-record embeddings of one timed run of `runner`."""
    synchronize(work.device)
    memory.reset()
    started, cpu_started = time.perf_counter(), time.process_time()
    values = runner(work, records, row)
    synchronize(work.device)
    return time.perf_counter() - started, time.process_time() - cpu_started, memory.read(), values


# ------------------------------------------------------------------------------------------------------------
# One model


def bench_model(args: argparse.Namespace, architecture: str, cache: Path) -> dict[str, object]:
    molecule = "dna" if architecture == "dnabert2" else "protein"
    size = {"dnabert2": args.dnabert2_size, "lucaone": args.lucaone_size, "esm2": args.esm2_size}[architecture]
    n = args.n_dna if architecture == "dnabert2" else args.n_protein
    mix = args.dna_mix if architecture == "dnabert2" else args.protein_mix
    if architecture == "esm2":  # every row takes each protein whole (fair-esm's extract.py would truncate)
        mix = replace(mix, maximum=min(mix.maximum, ESM2_MAX_RESIDUES))
    device = args.device
    print(f"\n== {architecture} ({size}) on {molecule}: {n} sequences ==")

    checkpoint = write_checkpoint(architecture, size, cache, args.seed)
    loader = get_loader(architecture)
    synchronize(device)
    started = time.perf_counter()
    loaded = loader(str(checkpoint), device, torch.float32)
    synchronize(device)
    load_seconds = time.perf_counter() - started
    bound = loaded.for_molecule(molecule)
    flop_model = FlopModel.of(bound)
    n_parameters = sum(p.numel() for p in bound.model.parameters())

    settings = TaskSettings(task="embed", pooling="mean")
    if molecule == "protein" and args.protein_fasta:
        limit = ESM2_MAX_RESIDUES if architecture == "esm2" else mix.maximum
        records = fasta_records(args.protein_fasta, n, args.seed, limit)
    else:
        records = synthetic_records(molecule, mix, n, args.seed)
    work = Workload(
        bound, molecule, settings, device, resolve_dtype(args.dtype, device), args.batch_tokens,
        args.baseline_batch_size, flop_model,
    )  # fmt: skip
    encoded = encode_records(bound, records, settings)
    work.encoded.update((record.id, item) for record, item in zip(records, encoded, strict=True))
    lengths = [len(item.ids) for item in window_inputs(encoded)]
    residues = [len(record.sequence) for record in records]
    inputs = {
        "n_sequences": len(records),
        "n_model_inputs": len(lengths),
        "n_windowed_sequences": sum(len(e.windows) > 1 for e in encoded),
        "residues": {"median": float(np.median(residues)), "mean": float(np.mean(residues)), "max": max(residues)},
        "tokens_per_input": {"median": float(np.median(lengths)), "mean": float(np.mean(lengths)), "max": max(lengths)},
        "max_tokens": bound.max_tokens,
        "window_residues": bound.default_window,
        "window_overlap_residues": bound.default_window // 4,
        "length_mix": None if molecule == "protein" and args.protein_fasta else asdict(mix),
        "fasta": [str(path) for path in args.protein_fasta] if molecule == "protein" else None,
        "alphabet": "ACGT" if molecule == "dna" else AMINO_ACIDS,
    }
    print(
        f"  {n_parameters / 1e6:.1f} M parameters, loaded in {load_seconds:.2f} s; {len(lengths)} model inputs "
        f"({inputs['n_windowed_sequences']} sequences windowed), tokens per input median "
        f"{inputs['tokens_per_input']['median']:.0f} max {max(lengths)}"
    )

    budget = f"token budget {args.batch_tokens}, <=3% padding, sorted"
    dtype = work.seqshard_dtype
    rows = {
        "seqshard": Row("seqshard", budget, dtype, "sdpa"),
        "fixed_batch": Row("fixed_batch", f"{args.baseline_batch_size} in input order, padded", dtype, "eager"),
    }
    # Each runner takes the workload too, so that the shape warm-up can hand it a recording stand-in model.
    runners: dict[str, Runner] = {
        "seqshard": run_seqshard,
        "fixed_batch": lambda w, recs, row: run_baseline(w, recs, args.baseline_batch_size, row),
    }
    # Which records each row runs: all of them, but one at a time only the first --single-n on a GPU.
    subsets = {"seqshard": records, "fixed_batch": records}
    if architecture == "esm2":  # its own two implementations instead of the generic baselines
        from transformers import EsmModel, EsmTokenizer
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()  # its report of the lm_head.* tensors EsmModel leaves unused
        started = time.perf_counter()
        model, alphabet = fair_esm_model(checkpoint, device)
        work.references["fair_esm"] = (model, alphabet, args.toks_per_batch)
        reference = EsmModel.from_pretrained(checkpoint, add_pooling_layer=False).to(device).eval()
        work.references["transformers"] = (reference, EsmTokenizer.from_pretrained(checkpoint))
        print(f"  fair-esm and transformers models built in {time.perf_counter() - started:.1f} s")
        rows = {
            "seqshard": rows["seqshard"],
            "fair_esm": Row("fair_esm", f"extract.py: toks_per_batch {args.toks_per_batch}, sorted", dtype, "eager"),
            "transformers": Row(
                "transformers", f"{args.baseline_batch_size} in input order, padded", dtype,
                reference.config._attn_implementation,
            ),
        }  # fmt: skip
        runners = {"seqshard": run_seqshard, "fair_esm": run_fair_esm, "transformers": run_transformers}
        subsets = {name: records for name in rows}
    elif not args.skip_single:
        rows["one_at_a_time"] = Row("one_at_a_time", "1, no padding", dtype, "eager")
        runners["one_at_a_time"] = lambda w, recs, row: run_baseline(w, recs, 1, row)
        subsets["one_at_a_time"] = records[: args.single_n] if args.single_n else records

    # Same model inputs in every row, by construction (same encoder, same defaults); checked here once.
    scored = score_records(
        bound, records[:16], settings, molecule=molecule, batch_tokens=args.batch_tokens, dtype=work.seqshard_dtype,
        figures=RunFigures({}, device, work.seqshard_dtype, 1, args.batch_tokens),
    )  # fmt: skip
    if scored.base["n_tokens"].tolist() != [e.n_tokens for e in encoded[:16]]:
        raise RuntimeError("the baselines would not run the same model inputs as seqshard")

    memory = PeakMemory(device)
    results: dict[str, np.ndarray] = {}
    shapes: dict[str, int] = {}
    for repeat in range(-1, args.repeats):  # -1: warm-up (threads, allocator, kernels, shapes, ALiBi/rotary)
        for name, runner in runners.items():  # interleaved, so drift in machine speed hits every row alike
            if rows[name].failed:
                continue
            try:
                if repeat < 0:
                    if device.startswith("cuda"):  # every distinct batch shape once: per-shape plans are built now
                        shapes[name] = warm_up_shapes(work, runner, subsets[name])
                        print(f"  warm-up {name}: {shapes[name]} distinct batch shapes, each run once")
                    else:
                        runner(work, records[: args.warmup], None)
                    continue
                seconds, cpu_seconds, peak, values = timed(work, memory, runner, subsets[name], rows[name])
            except torch.OutOfMemoryError:
                if name == "seqshard":
                    raise
                rows[name].failed = "out of memory"
                print(f"  {name}: out of memory; row left out")
                if device.startswith("cuda"):
                    torch.cuda.empty_cache()
                continue
            rows[name].seconds.append(seconds)
            rows[name].cpu_seconds.append(cpu_seconds)
            rows[name].peak_memory_bytes.append(peak)
            results[name] = values
            print(f"  repeat {repeat + 1}/{args.repeats} {name}: {seconds:.1f} s")
    for name, values in results.items():
        rows[name].max_abs_diff_vs_seqshard = float(np.abs(values - results["seqshard"][: len(values)]).max())

    figures = {name: row.figures() for name, row in rows.items()}
    # Each repeat's ratio pairs runs made minutes apart, so drift in the machine's speed cancels; their median is
    # the speedup quoted: seqshard's sequences/s over the row's (a seconds ratio when both ran the same records).
    ours = rows["seqshard"]
    per_repeat = {
        name: [
            (ours.n_sequences / our_seconds) / (row.n_sequences / their_seconds)
            for our_seconds, their_seconds in zip(ours.seconds, row.seconds, strict=False)
        ]
        for name, row in rows.items()
        if name != "seqshard" and not row.failed
    }
    ratios = {name: statistics.median(values) for name, values in per_repeat.items()}
    cpu_ratios = {
        name: statistics.median(
            (ours.n_sequences / our_cpu) / (row.n_sequences / their_cpu)
            for our_cpu, their_cpu in zip(ours.cpu_seconds, row.cpu_seconds, strict=False)
        )
        for name, row in rows.items()
        if name in per_repeat
    }
    drift = embedding_drift(work, records[: args.drift]) if args.drift else None
    if drift:
        print(f"  {drift['dtype']} vs fp32 on {drift['n_sequences']} sequences: max |difference| "
              f"{drift['max_abs_diff']:.3e}, min cosine {drift['min_cosine']:.6f}")  # fmt: skip
    return {
        "architecture": architecture,
        "size": size,
        "config": bound.extra["config"],
        "parameters": n_parameters,
        "matmul_parameters": flop_model.matmul_parameters,
        "molecule": molecule,
        "load_seconds": load_seconds,
        "inputs": inputs,
        "rows": figures,
        "seqshard_speedup": ratios,
        "seqshard_speedup_per_repeat": per_repeat,
        "seqshard_cpu_time_ratio": cpu_ratios,
        "distinct_batch_shapes_warmed": shapes,
        "drift_vs_fp32": drift,
        "memory_measure": memory.kind + ("" if memory.resettable else " (not resettable: process peak so far)"),
    }


# ------------------------------------------------------------------------------------------------------------
# Reporting


def machine_description(device: str) -> dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    description: dict[str, object] = {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device,
        "load_average_at_start": os.getloadavg(),
    }
    if device.startswith("cuda"):
        description["gpu"] = torch.cuda.get_device_name(device)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        description["git_commit"] = commit.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return description


def format_bytes(value: float) -> str:
    return f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{value / 2**20:.0f} MiB"


def print_table(result: dict[str, Any]) -> None:
    inputs = result["inputs"]
    print(
        f"\n{result['architecture']} ({result['size']}, {result['parameters'] / 1e6:.1f} M parameters), model load "
        f"{result['load_seconds']:.2f} s; {inputs['n_sequences']} {result['molecule']} sequences -> "
        f"{inputs['n_model_inputs']} model inputs, every row the same ({inputs['n_windowed_sequences']} sequence(s) "
        f"over {inputs['max_tokens']} tokens cut into {inputs['window_residues']}-residue windows overlapping by "
        f"{inputs['window_overlap_residues']})"
    )
    header = (
        f"{'row':<14} {'batching':<40} {'dtype':<5} {'attn':<5} {'seconds':>8} {'seq/s':>8} {'tok/s':>9} "
        f"{'useful':>6} {'peak mem':>9} {'GFLOP/s':>9} {'%peak':>6} {'speedup':>8}"
    )
    print(header)
    print("-" * len(header))
    for name, row in result["rows"].items():
        lead = f"{name:<14} {row['batching']:<40} {row['dtype']:<5} {row['attention']:<5}"
        if row["failed"]:
            print(f"{lead} {row['failed']}")
            continue
        ratio = "-" if name == "seqshard" else f"{result['seqshard_speedup'][name]:.2f}x"
        print(
            f"{lead} {row['median_seconds']:>8.1f} {row['sequences_per_second']:>8.2f} "
            f"{row['real_tokens_per_second']:>9.0f} {row['useful_token_fraction']:>6.3f} "
            f"{format_bytes(row['peak_memory_bytes_median']):>9} {row['useful_flops_per_second'] / 1e9:>9.1f} "
            f"{100 * row['fraction_of_matmul_peak']:>5.1f}% {ratio:>8}"
        )
    print(
        "speedup = seqshard sequences/s / the row's (median over repeats of each repeat's ratio); seconds, seq/s, "
        "tok/s: medians\nuseful = real tokens / tokens computed; GFLOP/s = useful FLOPs (2·P·L + 4·L²·hidden·layers "
        "per input) / seconds; %peak = of the dense matmul probe"
    )
    for name, row in result["rows"].items():
        if name != "seqshard" and row["max_abs_diff_vs_seqshard"] is not None:
            print(
                f"  {name}: CPU-time ratio {result['seqshard_cpu_time_ratio'][name]:.2f}x; max |embedding "
                f"difference| vs seqshard {row['max_abs_diff_vs_seqshard']:.2e}"
            )


# ------------------------------------------------------------------------------------------------------------
# Command line


def create_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--models", nargs="+", default=["dnabert2", "lucaone"], choices=["dnabert2", "lucaone", "esm2"],
        help="esm2 runs against fair-esm (pip install --no-deps fair-esm==2.0.0) and transformers",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny models, few sequences")
    parser.add_argument("--n-dna", type=int, help="DNA sequences (default 80 on CPU, 50000 on GPU, 24 quick)")
    parser.add_argument("--n-protein", type=int, help="proteins (default 60 on CPU, 4000 on GPU, 16 quick)")
    parser.add_argument(
        "--single-n", type=int,
        help="sequences the one-at-a-time row runs (default: all on CPU, the first 2000 on GPU)",
    )  # fmt: skip
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", *DTYPES],
        help="precision of every row (default: seqshard's auto for the device)",
    )  # fmt: skip
    parser.add_argument("--drift", type=int, default=0, help="compare the dtype with fp32 on this many sequences")
    parser.add_argument("--dnabert2-size", choices=sorted(DNABERT2_SIZES), help="default full (tiny with --quick)")
    parser.add_argument(
        "--lucaone-size", choices=sorted(LUCAONE_SIZES),
        help="default full on GPU; small on CPU (the full 1.5 B model runs at a few tokens/s on a few cores)",
    )  # fmt: skip
    parser.add_argument(
        "--esm2-size", choices=sorted(ESM2_SIZES), help="default full: esm2_t33_650M_UR50D's shape (tiny with --quick)"
    )
    parser.add_argument(
        "--protein-fasta", type=Path, action="append", default=[],
        help="draw the proteins from these FASTA files (repeatable; e.g. /usr/share/doc/hmmer/examples/tutorial/"
        "globins45.fa from Debian's hmmer-examples) instead of the synthetic mix",
    )  # fmt: skip
    parser.add_argument("--toks-per-batch", type=int, default=4096, help="fair-esm's extract.py budget (its default)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count(),
        help="CPU threads for torch (default: every core; on a busy shared machine 1 gives steadier ratios)",
    )  # fmt: skip
    parser.add_argument("--batch-tokens", type=int, default=16384, help="seqshard's token budget (config default)")
    parser.add_argument("--baseline-batch-size", type=int, default=32, help="the fixed baseline's batch size")
    parser.add_argument(
        "--repeats", type=int, help="timed runs of each row, interleaved; medians quoted (default 1 on CPU, 3 on GPU)"
    )
    parser.add_argument("--warmup", type=int, default=8, help="CPU: records run by each row before timing")
    parser.add_argument("--skip-single", action="store_true", help="leave out the one-at-a-time baseline")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dna-median", type=float, default=600.0, help="bp")
    parser.add_argument("--dna-sigma", type=float, default=1.0, help="log-normal sigma of DNA lengths")
    parser.add_argument("--protein-median", type=float, default=300.0, help="aa")
    parser.add_argument("--protein-sigma", type=float, default=0.6, help="log-normal sigma of protein lengths")
    parser.add_argument(
        "--protein-max", type=int, default=2000,
        help="longest protein (aa); longer padded eager batches of 32 do not fit in memory",
    )  # fmt: skip
    parser.add_argument("--cache-dir", type=Path, help="keep the written checkpoints here (default: a temp dir)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON, e.g. benchmarks/results/<name>.json")
    return parser


def run(args: argparse.Namespace) -> dict[str, object]:
    torch.set_num_threads(max(1, args.threads))
    args.device = resolve_device(args.device)
    on_gpu = args.device.startswith("cuda")
    # On a GPU, enough work that the GPU, not start-up or the CPU side, decides the time.
    defaults = (24, 16) if args.quick else ((50_000, 4000) if on_gpu else (80, 60))
    args.n_dna = args.n_dna or defaults[0]
    args.n_protein = args.n_protein or defaults[1]
    args.single_n = args.single_n if args.single_n is not None else (2000 if on_gpu and not args.quick else 0)
    args.repeats = args.repeats or (3 if on_gpu and not args.quick else 1)
    args.dnabert2_size = args.dnabert2_size or ("tiny" if args.quick else "full")
    args.lucaone_size = args.lucaone_size or ("tiny" if args.quick else "full" if on_gpu else "small")
    args.esm2_size = args.esm2_size or ("tiny" if args.quick else "full")
    args.dna_mix = LengthMix(args.dna_median, args.dna_sigma, 50, 10_000)
    args.protein_mix = LengthMix(args.protein_median, args.protein_sigma, 30, args.protein_max)

    machine = machine_description(args.device)
    print(f"machine: {machine['cpu']} ({machine['cpu_cores']} cores, {machine['torch_threads']} torch threads), "
          f"device {args.device}, torch {machine['torch']}")  # fmt: skip
    if "lucaone" in args.models and args.lucaone_size != "full":
        print(
            f"note: LucaOne runs at size '{args.lucaone_size}' {LUCAONE_SIZES[args.lucaone_size]}, not the published "
            "1.5 B model (hidden 2560, 20 layers, 40 heads): on CPU the full model would take hours. Pass "
            "--lucaone-size full on a GPU (the default there)."
        )
    peak_dtype = torch.bfloat16 if on_gpu else torch.float32
    peak_flops = matmul_peak_flops(args.device, peak_dtype, args.quick)
    print(f"dense matmul peak ({str(peak_dtype).removeprefix('torch.')}): {peak_flops / 1e9:.1f} GFLOP/s")

    with tempfile.TemporaryDirectory(prefix="seqshard-bench-") as scratch:
        cache = args.cache_dir or Path(scratch)
        cache.mkdir(parents=True, exist_ok=True)
        models = [bench_model(args, architecture, cache) for architecture in args.models]
    # Probed again at the end: on a shared machine either probe may land in a busy moment; the best one counts.
    peak_flops = max(peak_flops, matmul_peak_flops(args.device, peak_dtype, args.quick))
    print(f"dense matmul peak, best of the probes before and after: {peak_flops / 1e9:.1f} GFLOP/s")
    for model in models:
        for row in model["rows"].values():  # type: ignore[attr-defined]
            if not row["failed"]:
                row["fraction_of_matmul_peak"] = row["useful_flops_per_second"] / peak_flops
    machine["load_average_at_end"] = os.getloadavg()

    result = {
        "benchmark": "bench_inference",
        "machine": machine,
        "settings": {
            key: (asdict(value) if isinstance(value, LengthMix) else value)
            for key, value in vars(args).items()
            if key not in ("out", "cache_dir")
        },
        "matmul_peak": {"dtype": str(peak_dtype).removeprefix("torch."), "flops_per_second": peak_flops},
        "flops_formula": "per model input of L real tokens: 2*P*L + 4*L^2*hidden*layers, P = non-embedding parameters",
        "models": models,
    }
    for model in models:
        print_table(model)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"\nwrote {args.out}")
    return result


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # progress shows as it happens, also when piped to a file
    run(create_parser().parse_args())


if __name__ == "__main__":
    sys.exit(main())
