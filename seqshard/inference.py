"""Run a model task over one FASTA file (a shard or a user's file) and write its Parquet plus run figures.

This is the one code path behind the workflow's `infer_shard` rule and the `seqshard` command: validate,
fit each sequence to the model's length limit (truncate or overlapping windows), sort the model inputs by length
into token-budget batches, run under `torch.inference_mode()`, reduce per task, and write rows in input order.

Tasks:
- `embed`: pooled last hidden state (`mean` over the sequence's own tokens, `max`, or `cls`), optionally every
  token's vector (`per_token`, float16).
- `mlm_score`: pseudo-log-likelihood from the masked-LM head: every token is masked once and scored, several
  masked copies sharing a forward pass. Costs one forward pass of the whole input per token.
- `classify` / `regress`: a fine-tuned head's probabilities per label and predicted label, or its values.
With windows, pooled and head outputs combine the windows weighted by the tokens each window owns.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from seqshard.batching import TokenBudgetBatcher, padded_tokens
from seqshard.fasta import SequenceRecord, ValidationReport, iter_valid_records
from seqshard.heads import head_digest, load_linear_head
from seqshard.models import LoadedModel, get_loader
from seqshard.parquet import TASKS, TableWriter, per_token_array, results_table, task_schema, vectors_array
from seqshard.pooling import POOLINGS, pool
from seqshard.windows import EncodedSequence, encode_sequences

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Records per chunk (see score_chunks); one chunk becomes one Parquet row group.
CHUNK_RECORDS = 4096


@dataclass(frozen=True)
class TaskSettings:
    """What to compute and how sequences are fitted to the model; these settings shape the numbers."""

    task: str = "embed"
    pooling: str = "mean"
    per_token: bool = False
    long_sequences: str = "window"  # or "truncate"
    window_length: int | None = None  # residues; None: the model's default
    window_overlap: int | None = None  # residues; None: a quarter of the window
    max_tokens: int | None = None  # None: the checkpoint's limit
    head: str | None = None  # classify/regress: a linear head directory (seqshard.heads); None: the checkpoint's

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; expected one of {TASKS}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; expected one of {POOLINGS}")


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
    n_windows: int = 0
    n_truncated: int = 0
    n_oom_splits: int = 0  # batches halved after a GPU out-of-memory
    load_seconds: float = 0.0
    compute_seconds: float = 0.0  # in batches: forward passes and the task's reductions
    run_seconds: float = 0.0  # reading the file to closing the output, model load excluded
    peak_gpu_memory_bytes: int | None = None
    extra: dict[str, object] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        compute = self.compute_seconds
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
            "n_windows": self.n_windows,
            "n_truncated": self.n_truncated,
            "n_oom_splits": self.n_oom_splits,
            "load_seconds": round(self.load_seconds, 4),
            "compute_seconds": round(compute, 4),
            "run_seconds": round(self.run_seconds, 4),
            "sequences_per_second": round(self.n_sequences / compute, 3) if compute else None,
            "tokens_per_second": round(self.n_tokens / compute, 1) if compute else None,
            "peak_gpu_memory_bytes": self.peak_gpu_memory_bytes,
            **self.extra,
        }


@dataclass
class ModelInput:
    """One row of a batch: token ids, which positions to read results from, and whose they are."""

    record: int
    ids: list[int]
    owned: list[bool]
    masked_position: int | None = None  # mlm_score: the position replaced by [MASK]


class Runner:
    """Runs batches of model inputs on one loaded model, keeping the run's figures."""

    def __init__(
        self, loaded: LoadedModel, *, molecule: str, batch_tokens: int, dtype: str, figures: RunFigures,
        max_padding: float = 0.03, progress_seconds: float = 30.0,
    ) -> None:  # fmt: skip
        self.loaded = loaded
        self.device = next(loaded.model.parameters()).device
        self.token_type = loaded.token_types.get(molecule, 0)
        self.batcher = TokenBudgetBatcher(batch_tokens, max_padding)
        self.dtype = dtype
        self.figures = figures
        self.progress_seconds = progress_seconds

    def autocast(self) -> object:
        if self.dtype == "fp32":
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=DTYPES[self.dtype])

    def batches(self, inputs: Sequence[ModelInput]) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
        """Yield (input indices, last hidden state [B, L, H], owned mask [B, L]) batch by batch."""
        lengths = [len(item.ids) for item in inputs]
        started = last_report = time.perf_counter()
        done = 0
        with torch.inference_mode(), self.autocast():
            for planned in self.batcher.batches(lengths):
                for batch, hidden, owned in self._forward(inputs, lengths, planned):
                    yield batch, hidden, owned
                    self.figures.n_batches += 1
                    self.figures.n_tokens += sum(lengths[i] for i in batch)
                    self.figures.n_computed_tokens += padded_tokens(lengths, batch)
                    done += len(batch)
                now = time.perf_counter()
                if now - last_report >= self.progress_seconds:
                    log.info(
                        "%d/%d model inputs of this chunk done (%.1f per second)",
                        done,
                        len(inputs),
                        done / (now - started),
                    )
                    last_report = now
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.figures.peak_gpu_memory_bytes = int(torch.cuda.max_memory_allocated(self.device))
        self.figures.compute_seconds += time.perf_counter() - started

    def _forward(
        self, inputs: Sequence[ModelInput], lengths: Sequence[int], batch: list[int]
    ) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
        """One batch through the model; on a GPU out-of-memory, the two halves one after the other instead."""
        width = max(lengths[i] for i in batch)
        ids = torch.full((len(batch), width), self.loaded.tokenizer.pad_id, dtype=torch.long)
        owned = torch.zeros((len(batch), width), dtype=torch.bool)
        for row, index in enumerate(batch):
            item = inputs[index]
            ids[row, : lengths[index]] = torch.tensor(item.ids)
            owned[row, : lengths[index]] = torch.tensor(item.owned)
            if item.masked_position is not None:
                ids[row, item.masked_position] = self.loaded.tokenizer.mask_id
        # The mask follows each row's length, so a pad id inside a sequence could never hide a position.
        attention_mask = torch.arange(width)[None, :] < torch.tensor([lengths[i] for i in batch])[:, None]
        token_types = torch.full_like(ids, self.token_type)
        try:
            hidden = self.loaded.model(ids.to(self.device), attention_mask.to(self.device), token_types.to(self.device))
        except torch.OutOfMemoryError:
            if len(batch) == 1:
                raise
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self.figures.n_oom_splits += 1
            log.warning("out of memory on a batch of %d x %d tokens: running it in two halves", len(batch), width)
            half = len(batch) // 2
            yield from self._forward(inputs, lengths, batch[:half])
            yield from self._forward(inputs, lengths, batch[half:])
            return
        yield batch, hidden, owned.to(self.device)


def window_inputs(encoded: Sequence[EncodedSequence]) -> list[ModelInput]:
    return [
        ModelInput(record, window.ids, window.owned)
        for record, sequence in enumerate(encoded)
        for window in sequence.windows
    ]


def weighted_rows(values: np.ndarray, inputs: Sequence[ModelInput], n_records: int) -> np.ndarray:
    """Combine one row per input into one row per record, weighted by the tokens each input owns."""
    records = np.fromiter((item.record for item in inputs), dtype=np.int64, count=len(inputs))
    weights = np.fromiter((sum(item.owned) for item in inputs), dtype=np.float64, count=len(inputs))
    out = np.zeros((n_records, values.shape[1]), dtype=np.float64)
    np.add.at(out, records, weights[:, None] * values)
    return out / np.bincount(records, weights=weights, minlength=n_records)[:, None]


def run_embed_task(runner: Runner, encoded: Sequence[EncodedSequence], settings: TaskSettings) -> dict[str, object]:
    inputs = window_inputs(encoded)
    hidden_size = runner.loaded.hidden_size
    per_input = np.zeros((len(inputs), hidden_size), dtype=np.float32)
    tokens: list[np.ndarray | None] = [None] * len(inputs)
    for batch, hidden, owned in runner.batches(inputs):
        pooled = pool(hidden, owned, settings.pooling)
        per_input[batch] = pooled.cpu().numpy()
        if settings.per_token:
            for row, index in enumerate(batch):
                tokens[index] = hidden[row][owned[row]].float().cpu().numpy()
    if settings.pooling == "max":
        embedding = np.full((len(encoded), hidden_size), -np.inf, dtype=np.float32)
        for row, item in enumerate(inputs):
            embedding[item.record] = np.maximum(embedding[item.record], per_input[row])
    else:  # a window's mean (or [CLS] row) counts as many times as it has tokens of its own
        embedding = weighted_rows(per_input, inputs, len(encoded)).astype(np.float32)
    columns: dict[str, object] = {"embedding": vectors_array(embedding)}
    if settings.per_token:
        by_record: list[list[np.ndarray]] = [[] for _ in encoded]
        for index, item in enumerate(inputs):  # inputs are in window order within each record
            by_record[item.record].append(tokens[index])
        columns["per_token"] = per_token_array([np.concatenate(parts) for parts in by_record], hidden_size)
    return columns


def run_mlm_score_task(runner: Runner, encoded: Sequence[EncodedSequence]) -> dict[str, object]:
    head = runner.loaded.mlm_head
    if head is None:
        raise ValueError(f"{runner.loaded.checkpoint_dir}: the checkpoint has no masked-LM head; mlm_score needs one")
    inputs = [
        ModelInput(record, window.ids, window.owned, masked_position=position)
        for record, sequence in enumerate(encoded)
        for window in sequence.windows
        for position, owned in enumerate(window.owned)
        if owned
    ]
    log_likelihood = np.zeros(len(encoded), dtype=np.float64)
    n_scored = np.zeros(len(encoded), dtype=np.int64)
    for batch, hidden, _ in runner.batches(inputs):
        positions = torch.tensor([inputs[i].masked_position for i in batch], device=hidden.device)
        rows = torch.arange(len(batch), device=hidden.device)
        logits = head(hidden[rows, positions]).float()
        true_ids = torch.tensor([inputs[i].ids[inputs[i].masked_position] for i in batch], device=hidden.device)
        scores = torch.log_softmax(logits, dim=-1)[rows, true_ids].double().cpu().numpy()
        for row, index in enumerate(batch):
            log_likelihood[inputs[index].record] += scores[row]
            n_scored[inputs[index].record] += 1
    return {"pll": log_likelihood, "pll_per_token": log_likelihood / n_scored, "n_scored": n_scored}


def run_head_task(runner: Runner, encoded: Sequence[EncodedSequence], task: str) -> dict[str, object]:
    head = runner.loaded.sequence_head
    if head is None:
        raise ValueError(f"{runner.loaded.checkpoint_dir}: the checkpoint has no fine-tuned head; {task} needs one")
    if head.kind != task:
        raise ValueError(f"{runner.loaded.checkpoint_dir}: its head is for {head.kind}, not {task}")
    inputs = window_inputs(encoded)
    outputs = np.zeros((len(inputs), len(head.labels)), dtype=np.float32)
    for batch, hidden, owned in runner.batches(inputs):
        outputs[batch] = head.module(hidden, owned).float().cpu().numpy()
    combined = weighted_rows(outputs, inputs, len(encoded))
    if task == "regress":
        return {label: combined[:, i].astype(np.float32) for i, label in enumerate(head.labels)}
    logits = torch.from_numpy(combined)
    probabilities = torch.softmax(logits, dim=-1).numpy().astype(np.float32)
    columns: dict[str, object] = {f"prob_{label}": probabilities[:, i] for i, label in enumerate(head.labels)}
    columns["predicted_label"] = [head.labels[i] for i in probabilities.argmax(axis=1)]
    return columns


@dataclass
class ScoredChunk:
    """One chunk of consecutive records with how each was encoded and its task columns, in input order."""

    records: list[SequenceRecord]
    encoded: list[EncodedSequence]
    columns: dict[str, object]


def iter_chunks(
    records: Iterable[SequenceRecord], max_records: int, max_residues: int
) -> Iterator[list[SequenceRecord]]:
    """Consecutive records, at most `max_records` and (unless one record alone is longer) `max_residues` a chunk."""
    chunk: list[SequenceRecord] = []
    residues = 0
    for record in records:
        if chunk and (len(chunk) >= max_records or residues + len(record.sequence) > max_residues):
            yield chunk
            chunk, residues = [], 0
        chunk.append(record)
        residues += len(record.sequence)
    if chunk:
        yield chunk


def score_chunks(
    loaded: LoadedModel,
    records: Iterable[SequenceRecord],
    settings: TaskSettings,
    *,
    molecule: str,
    batch_tokens: int,
    dtype: str,
    figures: RunFigures,
    max_padding: float = 0.03,
    chunk_records: int = CHUNK_RECORDS,
    chunk_residues: int | None = None,
    progress_seconds: float = 30.0,
) -> Iterator[ScoredChunk]:
    """Score `records` chunk by chunk, in input order, overlapping the CPU work around the model with compute.

    `records` may be lazy (a FASTA being read): a background thread takes the next chunk from it and tokenizes
    it while the model runs on the current one, so reading, validating and tokenizing cost no extra wall time
    as long as they are faster than the model. Inside a chunk, inputs are length-sorted into token-budget
    batches; a chunk holds at most `chunk_records` records and `chunk_residues` residues (default
    64 x `batch_tokens`), enough for many full batches while bounding memory whatever the input's size.
    """
    loaded = loaded.for_molecule(molecule)
    if settings.head is not None:
        device = next(loaded.model.parameters()).device
        loaded = replace(loaded, sequence_head=load_linear_head(settings.head, loaded.hidden_size, device))
    max_tokens = settings.max_tokens or loaded.max_tokens
    window = settings.window_length or loaded.default_window
    overlap = settings.window_overlap if settings.window_overlap is not None else window // 4
    chunks = iter_chunks(records, chunk_records, chunk_residues or 64 * batch_tokens)

    def prepare() -> tuple[list[SequenceRecord], list[EncodedSequence]] | None:
        """Runs in the background thread: read the next chunk and tokenize it."""
        chunk = next(chunks, None)
        if chunk is None:
            return None
        return chunk, encode_sequences(
            [record.sequence for record in chunk], loaded.tokenizer, max_tokens=max_tokens,
            mode=settings.long_sequences, window=window, overlap=overlap, record_ids=[record.id for record in chunk],
        )  # fmt: skip

    runner = Runner(
        loaded, molecule=molecule, batch_tokens=batch_tokens, dtype=dtype, figures=figures, max_padding=max_padding
    )
    started = last_report = time.perf_counter()
    n_truncated = figures.n_truncated
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="seqshard-read") as background:
        upcoming = background.submit(prepare)
        while (prepared := upcoming.result()) is not None:
            upcoming = background.submit(prepare)
            chunk, encoded = prepared
            figures.n_windows += sum(len(e.windows) for e in encoded)
            figures.n_truncated += sum(e.truncated for e in encoded)
            if settings.task == "embed":
                columns = run_embed_task(runner, encoded, settings)
            elif settings.task == "mlm_score":
                columns = run_mlm_score_task(runner, encoded)
            else:
                columns = run_head_task(runner, encoded, settings.task)
            figures.n_sequences += len(chunk)
            now = time.perf_counter()
            if now - last_report >= progress_seconds:
                log.info(
                    "%d sequences scored (%.1f per second)", figures.n_sequences, figures.n_sequences / (now - started)
                )
                last_report = now
            yield ScoredChunk(chunk, encoded, columns)
    if figures.n_truncated > n_truncated:
        log.warning(
            "%d sequence(s) longer than %d tokens were truncated", figures.n_truncated - n_truncated, max_tokens
        )


def _concatenate(parts: Sequence[object]) -> object:
    if isinstance(parts[0], pa.Array):
        return pa.concat_arrays(parts)
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    return [value for part in parts for value in part]  # type: ignore[attr-defined]


def score_records(
    loaded: LoadedModel,
    records: Sequence[SequenceRecord],
    settings: TaskSettings,
    *,
    molecule: str,
    batch_tokens: int,
    dtype: str,
    figures: RunFigures,
    max_padding: float = 0.03,
) -> tuple[dict[str, object], list[EncodedSequence]]:
    """Task columns (without the base columns) for `records`, in input order, and how each was encoded."""
    if not records:
        raise ValueError("no records to score")
    chunks = list(
        score_chunks(
            loaded, records, settings, molecule=molecule, batch_tokens=batch_tokens, dtype=dtype, figures=figures,
            max_padding=max_padding,
        )
    )  # fmt: skip
    columns = {name: _concatenate([chunk.columns[name] for chunk in chunks]) for name in chunks[0].columns}
    return columns, [encoded for chunk in chunks for encoded in chunk.encoded]


def run_task(
    fasta: Path | str,
    out: Path | str,
    *,
    architecture: str,
    checkpoint: str,
    settings: TaskSettings = TaskSettings(),
    molecule: str = "dna",
    batch_tokens: int = 16384,
    device: str = "auto",
    dtype: str = "auto",
    threads: int = 1,
    allowed_ambiguity: str = "N",
    figures_out: Path | str | None = None,
    labels: Mapping[str, str] | None = None,
    provenance: Mapping[str, object] | None = None,
    chunk_records: int = CHUNK_RECORDS,
) -> RunFigures:
    """Run one model task over every record of `fasta` and write the task's Parquet to `out`.

    The file is read, validated and tokenized chunk by chunk in a background thread, and each chunk's rows are
    written (one Parquet row group per chunk) in another, while the model computes: see `score_chunks`.
    """
    torch.set_num_threads(max(1, threads))
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    figures = RunFigures(dict(labels or {}), device, dtype, threads, batch_tokens)

    started = time.perf_counter()
    loaded = get_loader(architecture)(checkpoint, device, torch.float32)
    figures.load_seconds = time.perf_counter() - started
    log.info("loaded %s from %s in %.2f s (%s)", architecture, loaded.checkpoint_dir, figures.load_seconds, device)
    if molecule not in loaded.molecules:
        raise ValueError(f"{architecture} does not accept {molecule} sequences (accepts {sorted(loaded.molecules)})")

    started = time.perf_counter()
    report = ValidationReport(Path(fasta))
    records = iter_valid_records(fasta, molecule, allowed_ambiguity=allowed_ambiguity, report=report)
    metadata = {
        **asdict(settings),
        "architecture": architecture,
        "checkpoint": str(checkpoint),
        "checkpoint_digest": loaded.digest,
        "dtype": dtype,
        "molecule": molecule,
        "hidden_size": loaded.hidden_size,
        "max_tokens": settings.max_tokens or loaded.max_tokens,
        **({"head_digest": head_digest(settings.head)} if settings.head else {}),
        **(provenance or {}),
    }
    scored = score_chunks(
        loaded, records, settings, molecule=molecule, batch_tokens=batch_tokens, dtype=dtype, figures=figures,
        chunk_records=chunk_records,
    )  # fmt: skip
    with TableWriter(out) as writer, ThreadPoolExecutor(max_workers=1, thread_name_prefix="seqshard-write") as pool:
        written: Future[None] | None = None
        for chunk in scored:
            table = chunk_table(chunk, settings, loaded.hidden_size, metadata)
            if written is not None:
                written.result()
            written = pool.submit(writer.write, table)
        if written is not None:
            written.result()
    figures.run_seconds = time.perf_counter() - started
    log.info(
        "wrote %d rows to %s (%d records read, %d CRLF lines): %d windows, %d truncated; useful-token fraction "
        "%.3f, %.1f seq/s of model compute, %.1f s in all",
        writer.n_rows, out, report.n_records, report.crlf_lines, figures.n_windows, figures.n_truncated,
        figures.n_tokens / max(1, figures.n_computed_tokens), figures.n_sequences / max(figures.compute_seconds, 1e-9),
        figures.run_seconds,
    )  # fmt: skip
    if figures_out is not None:
        Path(figures_out).parent.mkdir(parents=True, exist_ok=True)
        Path(figures_out).write_text(json.dumps(figures.as_dict(), indent=2) + "\n")
    return figures


def chunk_table(
    chunk: ScoredChunk, settings: TaskSettings, hidden_size: int, metadata: Mapping[str, object]
) -> pa.Table:
    """A chunk's output rows: the base columns, then the task's."""
    columns = chunk.columns
    # A head's labels are its output columns: prob_<label> for classify, one column per target for regress.
    head_labels = {
        "classify": [name.removeprefix("prob_") for name in columns if name.startswith("prob_")],
        "regress": list(columns),
    }.get(settings.task, [])
    schema = task_schema(settings.task, hidden_size, head_labels, settings.per_token)
    base = {
        "id": [r.id for r in chunk.records],
        "length": [len(r.sequence) for r in chunk.records],
        "n_tokens": [e.n_tokens for e in chunk.encoded],
        "n_windows": [len(e.windows) for e in chunk.encoded],
        "truncated": [e.truncated for e in chunk.encoded],
    }
    return results_table(schema, base | columns, metadata)


def run_embed(fasta: Path | str, out: Path | str, *, pooling: str = "mean", **options: object) -> RunFigures:
    """`run_task` for task `embed`."""
    return run_task(fasta, out, settings=TaskSettings(task="embed", pooling=pooling), **options)  # type: ignore[arg-type]
