"""Run a model over one FASTA file (a shard or a user's file) and write the task's Parquet plus run figures.

This is the one code path behind both the workflow's `infer_shard` rule and the `seqshard embed` command:
validate, tokenize, sort by length into token-budget batches, run under `torch.inference_mode()`, pool, and
write rows back in input order.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from seqshard.batching import TokenBudgetBatcher, padded_tokens
from seqshard.fasta import SequenceRecord, read_valid_records
from seqshard.models import LoadedModel, get_loader
from seqshard.parquet import embedding_table, write_table

log = logging.getLogger(__name__)

POOLINGS = ("mean", "cls")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def resolve_device(device: str) -> str:
    """`auto` picks the first CUDA device when one is visible, else the CPU."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but torch sees no CUDA device (CUDA_VISIBLE_DEVICES?)")
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    """`auto` is bf16 on GPU (autocast) and fp32 on CPU."""
    if dtype == "auto":
        return "bf16" if device.startswith("cuda") else "fp32"
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected auto, fp32 or bf16")
    return dtype


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool a [B, L, H] batch framed as `[CLS] content [SEP] pad...` into [B, H] float32.

    `mean` averages the sequence's own tokens only: [CLS], [SEP] and padding are excluded.
    `cls` takes the [CLS] row.
    """
    if pooling == "cls":
        return hidden[:, 0].float()
    if pooling != "mean":
        raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
    content = attention_mask.clone()
    content[:, 0] = False
    last = attention_mask.sum(dim=1) - 1
    content[torch.arange(content.shape[0], device=content.device), last] = False
    weights = content.unsqueeze(-1).to(torch.float32)
    return (hidden.float() * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


@dataclass
class RunFigures:
    """What one run measured; written next to the output as JSON for the resource report."""

    labels: dict[str, str]
    device: str
    dtype: str
    threads: int
    batch_tokens: int
    n_sequences: int = 0
    n_tokens: int = 0
    n_computed_tokens: int = 0
    n_batches: int = 0
    load_seconds: float = 0.0
    compute_seconds: float = 0.0
    peak_gpu_memory_bytes: int | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        compute = self.compute_seconds or float("nan")
        return {
            **self.labels,
            "device": self.device,
            "dtype": self.dtype,
            "threads": self.threads,
            "batch_tokens": self.batch_tokens,
            "n_sequences": self.n_sequences,
            "n_tokens": self.n_tokens,
            "n_computed_tokens": self.n_computed_tokens,
            "useful_token_fraction": self.n_tokens / self.n_computed_tokens if self.n_computed_tokens else None,
            "n_batches": self.n_batches,
            "load_seconds": round(self.load_seconds, 4),
            "compute_seconds": round(self.compute_seconds, 4),
            "sequences_per_second": round(self.n_sequences / compute, 3) if self.compute_seconds else None,
            "tokens_per_second": round(self.n_tokens / compute, 1) if self.compute_seconds else None,
            "peak_gpu_memory_bytes": self.peak_gpu_memory_bytes,
            **self.extra,
        }


def embed_records(
    loaded: LoadedModel,
    records: Sequence[SequenceRecord],
    *,
    pooling: str,
    batch_tokens: int,
    dtype: str,
    figures: RunFigures,
    max_padding: float = 0.03,
    progress_seconds: float = 30.0,
) -> tuple[np.ndarray, list[int]]:
    """Pooled embeddings [len(records), hidden] in input order, and each record's token count.

    Batches are planned by `TokenBudgetBatcher(batch_tokens, max_padding)`; results do not depend on the plan.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
    device = next(loaded.model.parameters()).device
    token_ids = [loaded.tokenizer.encode(record.sequence) for record in records]
    lengths = [len(ids) for ids in token_ids]
    out = np.empty((len(records), loaded.hidden_size), dtype=np.float32)
    autocast = torch.autocast(device_type=device.type, dtype=DTYPES[dtype]) if dtype != "fp32" else nullcontext()
    started = last_report = time.perf_counter()
    done = 0
    with torch.inference_mode(), autocast:
        for batch in TokenBudgetBatcher(batch_tokens, max_padding).batches(lengths):
            width = max(lengths[i] for i in batch)
            input_ids = torch.full((len(batch), width), loaded.tokenizer.pad_id, dtype=torch.long)
            for row, index in enumerate(batch):
                input_ids[row, : lengths[index]] = torch.tensor(token_ids[index])
            input_ids = input_ids.to(device)
            # The mask follows each row's length rather than comparing ids with [PAD], so a pad id that a
            # tokenizer might emit inside a sequence could never hide a real position.
            attention_mask = (
                torch.arange(width, device=device)[None, :]
                < torch.tensor([lengths[i] for i in batch], device=device)[:, None]
            )
            hidden = loaded.model(input_ids, attention_mask)
            out[batch] = pool(hidden, attention_mask, pooling).cpu().numpy()
            figures.n_batches += 1
            figures.n_computed_tokens += padded_tokens(lengths, batch)
            done += len(batch)
            now = time.perf_counter()
            if now - last_report >= progress_seconds:
                log.info("%d/%d sequences embedded (%.1f seq/s)", done, len(records), done / (now - started))
                last_report = now
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        figures.peak_gpu_memory_bytes = int(torch.cuda.max_memory_allocated(device))
    figures.compute_seconds += time.perf_counter() - started
    figures.n_sequences += len(records)
    figures.n_tokens += sum(lengths)
    return out, lengths


def run_embed(
    fasta: Path | str,
    out: Path | str,
    *,
    architecture: str,
    checkpoint: str,
    molecule: str = "dna",
    pooling: str = "mean",
    batch_tokens: int = 16384,
    device: str = "auto",
    dtype: str = "auto",
    threads: int = 1,
    allowed_ambiguity: str = "N",
    figures_out: Path | str | None = None,
    labels: Mapping[str, str] | None = None,
    provenance: Mapping[str, object] | None = None,
) -> RunFigures:
    """Embed every record of `fasta` with one model and write the `embed` Parquet to `out`."""
    torch.set_num_threads(max(1, threads))
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    figures = RunFigures(dict(labels or {}), device, dtype, threads, batch_tokens)
    records, report = read_valid_records(fasta, molecule, allowed_ambiguity=allowed_ambiguity)
    log.info("%s: %d valid records", fasta, len(records))

    started = time.perf_counter()
    loaded = get_loader(architecture)(checkpoint, device, torch.float32)
    figures.load_seconds = time.perf_counter() - started
    log.info("loaded %s from %s in %.2f s (%s)", architecture, loaded.checkpoint_dir, figures.load_seconds, device)
    if molecule not in loaded.molecules:
        raise ValueError(f"{architecture} does not accept {molecule} sequences (accepts {sorted(loaded.molecules)})")

    embeddings, lengths = embed_records(
        loaded, records, pooling=pooling, batch_tokens=batch_tokens, dtype=dtype, figures=figures
    )
    metadata = {
        "task": "embed",
        "architecture": architecture,
        "checkpoint": str(checkpoint),
        "checkpoint_digest": loaded.digest,
        "pooling": pooling,
        "dtype": dtype,
        "molecule": molecule,
        "hidden_size": loaded.hidden_size,
        **(provenance or {}),
    }
    table = embedding_table([r.id for r in records], [len(r.sequence) for r in records], lengths, embeddings, metadata)
    write_table(table, out)
    log.info(
        "wrote %d rows to %s: %d tokens, useful-token fraction %.3f, %.1f seq/s",
        len(records),
        out,
        figures.n_tokens,
        figures.n_tokens / max(1, figures.n_computed_tokens),
        figures.n_sequences / max(figures.compute_seconds, 1e-9),
    )
    if figures_out is not None:
        Path(figures_out).parent.mkdir(parents=True, exist_ok=True)
        Path(figures_out).write_text(json.dumps(figures.as_dict(), indent=2) + "\n")
    return figures
