"""Run a model's tasks over one FASTA file (a shard or a user's file) and write one Parquet per task plus run figures.

This is the one code path behind the workflow's `infer_shard` rule and the `seqshard` command: validate the whole
file first (cheap, streaming: a bad record at the end fails in seconds, not after hours of scoring), then read it
again in chunks; fit each sequence to the model's length limit (truncate or overlapping windows); sort the model
inputs by length into token-budget batches; run under `torch.inference_mode()`; reduce per task; write rows in
input order.

Tasks:
- `embed`: pooled last hidden state (`mean` over the sequence's own tokens, `max`, or `cls`), optionally every
  token's vector (`per_token`, float16).
- `mlm_score`: pseudo-log-likelihood from the masked-LM head: every token is masked once and scored, several
  masked copies sharing a forward pass. Costs one forward pass of the whole input per token.
- `classify` / `regress`: a fine-tuned head's probabilities per label and predicted label, or its values.
With windows, pooled and head outputs combine the windows weighted by the tokens each window owns.

Work not done twice:
- `embed`, `classify` and `regress` read the same last hidden state: asked for together they share one forward
  pass (`run_tasks`), each still written to its own file with its own schema and provenance. `mlm_score` needs
  masked inputs and runs its own passes.
- Identical sequences (after upper-casing) are computed once; every record still gets its row, with its own id, in
  input order. The validation pass finds them; results a later record will need are kept until its row is written.

Feeding a fast device: tokenizing, windowing and batch assembly work on numpy arrays (no per-token Python
objects) in background threads — the next chunk is read and tokenized, and the next batches are assembled, while
the model computes. Results come back from the GPU through pinned buffers and events, so the only host-device
synchronisation in the loop is the one that collects a finished batch, one batch behind the one running.

Out of memory on a GPU: the failed batch's tensors are released before anything else runs (the recovery happens
after the `except` block, whose traceback would otherwise keep them alive), the batch runs again in two halves,
and the token budget is lowered for the rest of the job (raised back after a run of batches that fit). cuBLAS and
cuDNN allocation failures count as out of memory. A single input that cannot fit on its own is a per-record
outcome (a reject row or an error naming the record), never a lost shard.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from seqshard.batching import TokenBudgetBatcher, gather_rows
from seqshard.cache import CacheWriter, ResultCache, cache_key
from seqshard.devices import DTYPES, check_run_precision, precision_provenance, resolve_precision, run_key
from seqshard.devices import resolve_device as resolve_device  # re-exported: callers found it here before
from seqshard.devices import resolve_dtype as resolve_dtype  # re-exported: callers found it here before
from seqshard.fasta import (
    DEFAULT_POLICY,
    InputPolicy,
    Rejected,
    SequenceRecord,
    ValidationReport,
    iter_valid_records,
    log_report,
    write_rejects,
)
from seqshard.heads import head_digest, load_linear_head
from seqshard.models import LoadedModel, SequenceHead, get_loader
from seqshard.monitoring import GpuSampler, usable_cpus
from seqshard.packing import iter_packed_shard
from seqshard.parquet import (
    INPUT_SETTINGS,
    TASK_SETTINGS,
    TASKS,
    TableWriter,
    per_token_array,
    task_table,
    vectors_array,
)
from seqshard.pooling import POOLINGS, pool
from seqshard.storage import StorageSettings, warm_up
from seqshard.windows import EncodedChunk, EncodedSequence, encode_chunk

log = logging.getLogger(__name__)

# Records per chunk on the CPU (see score_chunks and chunk_limits). A chunk's rows are written in row groups of at
# most parquet.ROW_GROUP_ROWS, whatever the chunk's size, so a reader's memory does not grow with it.
CHUNK_RECORDS = 4096
GPU_CHUNK_OUTPUT_BYTES = 2**28  # float32 output rows a GPU job's chunk may hold (see chunk_limits)
# Tasks that read the last hidden state of the unmasked input, and so share one forward pass.
HIDDEN_TASKS = ("embed", "classify", "regress")


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

    def relevant(self) -> dict[str, object]:
        """The settings this task's numbers depend on."""
        return {name: getattr(self, name) for name in ("task", *INPUT_SETTINGS, *TASK_SETTINGS[self.task])}


@dataclass
class RunFigures:
    """What one run measured; written next to the output as JSON for the resource report."""

    labels: dict[str, str]
    device: str
    dtype: str
    threads: int
    batch_tokens: int
    n_records: int = 0  # rows written (each record once, duplicates included)
    n_sequences: int = 0  # distinct sequences scored (a duplicate is scored once)
    n_duplicates: int = 0  # records whose sequence an earlier record already had
    n_cached: int = 0  # distinct sequences whose results came from the result cache
    n_rejected: int = 0  # records that could not be scored (e.g. too large for the GPU even alone)
    n_tokens: int = 0
    n_computed_tokens: int = 0
    n_batches: int = 0
    n_windows: int = 0
    n_truncated: int = 0
    n_oom_splits: int = 0  # batches halved after a GPU out-of-memory
    n_budget_changes: int = 0  # times the token budget was lowered after an out-of-memory, or raised back
    n_fp32_reruns: int = 0  # fp16 batches whose output overflowed (inf/NaN), computed again in fp32
    batch_shapes: set[tuple[int, int]] = field(default_factory=set)  # distinct (rows, width) run
    warmup_seconds: float = 0.0  # bringing the shard and checkpoint onto local disk (seqshard.storage), before load
    load_seconds: float = 0.0
    compute_seconds: float = 0.0  # in batches: forward passes and the task's reductions
    run_seconds: float = 0.0  # reading the file to closing the output, model load excluded
    peak_gpu_memory_bytes: int | None = None
    extra: dict[str, object] = field(default_factory=dict)
    # When and where the run happened, and its GPU's telemetry (seqshard.monitoring), for the resource report.
    host: str = field(default_factory=socket.gethostname)
    cpu_count: int = field(default_factory=usable_cpus)
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    gpu: dict[str, object] | None = None

    def as_dict(self) -> dict[str, object]:
        compute = self.compute_seconds
        return {
            **self.labels,
            "device": self.device,
            "dtype": self.dtype,
            "threads": self.threads,
            "batch_tokens": self.batch_tokens,
            "n_records": self.n_records,
            "n_sequences": self.n_sequences,
            "n_duplicates": self.n_duplicates,
            "n_cached": self.n_cached,
            "n_rejected": self.n_rejected,
            "n_tokens": self.n_tokens,
            "n_computed_tokens": self.n_computed_tokens,
            "useful_token_fraction": self.n_tokens / self.n_computed_tokens if self.n_computed_tokens else None,
            "n_batches": self.n_batches,
            "n_batch_shapes": len(self.batch_shapes),
            "n_windows": self.n_windows,
            "n_truncated": self.n_truncated,
            "n_oom_splits": self.n_oom_splits,
            "n_budget_changes": self.n_budget_changes,
            "n_fp32_reruns": self.n_fp32_reruns,
            "warmup_seconds": round(self.warmup_seconds, 4),
            "load_seconds": round(self.load_seconds, 4),
            "compute_seconds": round(compute, 4),
            "run_seconds": round(self.run_seconds, 4),
            "sequences_per_second": round(self.n_sequences / compute, 3) if compute else None,
            "tokens_per_second": round(self.n_tokens / compute, 1) if compute else None,
            "peak_gpu_memory_bytes": self.peak_gpu_memory_bytes,
            "host": self.host,
            "cpu_count": self.cpu_count,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "gpu": self.gpu,
            **self.extra,
        }


def is_out_of_memory(error: BaseException) -> bool:
    """torch's out-of-memory error, or a cuBLAS/cuDNN allocation failure, which arrive as plain RuntimeErrors."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        marker in text for marker in ("CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED", "out of memory")
    )


# ------------------------------------------------------------------------------------------------------------
# Model inputs and batches


@dataclass
class ModelInputs:
    """The inputs of one pass: windows of a chunk (`EncodedChunk`), each used as it is, or — for mlm_score —
    once per owned token with that token replaced by [MASK] (`base` names the window, `masked` the position)."""

    chunk: EncodedChunk
    base: np.ndarray  # int64 [n]: the chunk input (window) each model input is made from
    masked: np.ndarray | None = None  # int64 [n]: position replaced by [MASK], mlm_score only

    @classmethod
    def windows(cls, chunk: EncodedChunk) -> ModelInputs:
        return cls(chunk, np.arange(chunk.n_inputs))

    @classmethod
    def masked_copies(cls, chunk: EncodedChunk) -> ModelInputs:
        """One input per owned token of every window, that token masked."""
        positions = np.flatnonzero(chunk.owned)
        base = np.searchsorted(chunk.starts, positions, side="right") - 1
        return cls(chunk, base, positions - chunk.starts[base])

    def __len__(self) -> int:
        return len(self.base)

    @property
    def lengths(self) -> np.ndarray:
        return self.chunk.lengths[self.base]


@dataclass
class HostBatch:
    """A batch assembled on the host, ready to go to the device."""

    indices: np.ndarray  # which of the pass's inputs, in row order
    ids: torch.Tensor  # [B, W] long
    attention_mask: torch.Tensor | None  # [B, W] bool, None when no row is padded
    owned: torch.Tensor  # [B, W] bool
    masked: torch.Tensor | None  # [B] long, mlm_score only
    true_ids: torch.Tensor | None  # [B] long, mlm_score only
    n_tokens: int

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.ids.shape)  # type: ignore[return-value]


def assemble_batch(
    inputs: ModelInputs, indices: np.ndarray, width: int, pad_id: int, mask_id: int, pin: bool
) -> HostBatch:
    """Padded arrays for the inputs `indices`, built with array operations (no per-row Python work)."""
    chunk = inputs.chunk
    base = inputs.base[indices]
    lengths = chunk.lengths[base]
    starts = chunk.starts[base]
    ids = gather_rows(chunk.ids, starts, lengths, width, pad_id).astype(np.int64)
    owned = gather_rows(chunk.owned, starts, lengths, width, False)
    masked = true_ids = None
    if inputs.masked is not None:
        positions = inputs.masked[indices]
        rows = np.arange(len(indices))
        true_ids = torch.from_numpy(ids[rows, positions].copy())
        ids[rows, positions] = mask_id
        masked = torch.from_numpy(positions.astype(np.int64))
    # The mask follows each row's length, so a pad id inside a sequence could never hide a position.
    padded = bool((lengths < width).any())
    attention_mask = torch.from_numpy(np.arange(width)[None, :] < lengths[:, None]) if padded else None
    tensors = [torch.from_numpy(ids), attention_mask, torch.from_numpy(owned), masked, true_ids]
    if pin:
        tensors = [t.pin_memory() if t is not None else None for t in tensors]
    return HostBatch(indices, tensors[0], tensors[1], tensors[2], tensors[3], tensors[4], int(lengths.sum()))


class _Prefetcher:
    """Assembles the planned batches in a background thread, a few ahead of the model."""

    def __init__(self, plan: list[np.ndarray], build: Callable[[np.ndarray], HostBatch], depth: int = 3) -> None:
        self._queue: queue.Queue[HostBatch | BaseException | None] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(plan, build), name="seqshard-batch", daemon=True)
        self._thread.start()

    def _run(self, plan: list[np.ndarray], build: Callable[[np.ndarray], HostBatch]) -> None:
        try:
            for indices in plan:
                if self._stop.is_set():
                    return
                self._put(build(indices))
        except BaseException as error:  # handed to the consumer, which re-raises it
            self._put(error)
            return
        self._put(None)

    def _put(self, item: HostBatch | BaseException | None) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Iterator[HostBatch]:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


BatchOutputs = dict[str, torch.Tensor]
# What a pass computes from one batch: (last hidden state [B, W, H], batch) -> named per-row tensors.
Reduce = Callable[[torch.Tensor, HostBatch], BatchOutputs]


class Runner:
    """Runs the inputs of a pass through one loaded model in token-budget batches, keeping the run's figures.

    `run` returns, per output name, one host array with a row per input (rows of inputs that could not be run
    are left as they were allocated and listed in `failed`).
    """

    def __init__(
        self, loaded: LoadedModel, *, molecule: str, batch_tokens: int, dtype: str, figures: RunFigures,
        max_padding: float = 0.03, bucket_widths: bool = True, progress_seconds: float = 30.0,
        recover_after: int = 32,
    ) -> None:  # fmt: skip
        self.loaded = loaded
        self.device = next(loaded.model.parameters()).device
        self.max_batch_tokens = batch_tokens
        self.budget = batch_tokens  # lowered after an out-of-memory, raised back after `recover_after` good ones
        self.max_padding = max_padding
        self.bucket_widths = bucket_widths  # False: exact widths, for tests that compare plans
        self.dtype = dtype
        self.figures = figures
        self.progress_seconds = progress_seconds
        self.recover_after = recover_after
        self._good_batches = 0
        self.failed: dict[int, str] = {}  # input index -> why it could not be run

    def autocast(self) -> object:
        if self.dtype == "fp32":
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=DTYPES[self.dtype])

    def batcher(self) -> TokenBudgetBatcher:
        if not self.bucket_widths:
            return TokenBudgetBatcher(self.budget, self.max_padding, buckets_per_octave=None)
        return TokenBudgetBatcher.for_device(self.device.type, self.budget, self.max_padding)

    def _build(self, inputs: ModelInputs, indices: np.ndarray) -> HostBatch:
        width = self.batcher().width(int(inputs.lengths[indices].max()))
        tokenizer = self.loaded.tokenizer
        return assemble_batch(inputs, indices, width, tokenizer.pad_id, tokenizer.mask_id, self.device.type == "cuda")

    def run(self, inputs: ModelInputs, reduce: Reduce, outputs: dict[str, np.ndarray]) -> None:
        """Run every input and write its reduced outputs into `outputs` (arrays with one row per input)."""
        if len(inputs) == 0:
            return
        started = last_report = time.perf_counter()
        lengths = inputs.lengths
        pending = np.ones(len(inputs), dtype=bool)  # not yet run
        in_flight: deque[tuple[HostBatch, BatchOutputs, torch.cuda.Event | None]] = deque()
        with torch.inference_mode(), self.autocast():
            while pending.any():
                todo = np.flatnonzero(pending)
                plan = [todo[np.asarray(b)] for b in self.batcher().batches(lengths[todo])]
                budget = self.budget
                prefetch = _Prefetcher(plan, lambda indices: self._build(inputs, indices))
                try:
                    for batch in prefetch:
                        pending[batch.indices] = False
                        self._run_batch(batch, reduce, in_flight, outputs)
                        now = time.perf_counter()
                        if now - last_report >= self.progress_seconds:
                            done = len(inputs) - int(pending.sum())
                            log.info("%d/%d model inputs of this chunk done (%.1f per second)", done, len(inputs),
                                     done / (now - started))  # fmt: skip
                            last_report = now
                        if self.budget != budget:
                            break  # the budget changed: plan what is left again
                finally:
                    prefetch.close()
        while in_flight:
            self._collect(in_flight.popleft(), outputs)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.figures.peak_gpu_memory_bytes = max(
                self.figures.peak_gpu_memory_bytes or 0, int(torch.cuda.max_memory_allocated(self.device))
            )
        self.figures.compute_seconds += time.perf_counter() - started

    def _run_batch(
        self,
        batch: HostBatch,
        reduce: Reduce,
        in_flight: deque[tuple[HostBatch, BatchOutputs, torch.cuda.Event | None]],
        outputs: dict[str, np.ndarray],
    ) -> None:
        """One batch; after an out-of-memory, its halves (and the budget lowered), outside the handler."""
        result = self._forward(batch, reduce)
        if result is not None:
            self._launched(batch, result, in_flight, outputs)
            return
        # Out of memory. The failed attempt's tensors are gone by now (see _forward), so the halves have room.
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        rows, width = batch.shape
        if rows == 1:
            index = int(batch.indices[0])
            self.failed[index] = f"out of memory even alone ({width} tokens on {self.device})"
            log.warning("input of %d tokens does not fit on %s even alone", width, self.device)
            return
        self.figures.n_oom_splits += 1
        lowered = max(width, (rows // 2) * width)
        if lowered < self.budget:
            self.budget = lowered
            self.figures.n_budget_changes += 1
            self._good_batches = 0
            log.warning(
                "out of memory on a batch of %d x %d tokens: running it in two halves; token budget lowered to %d "
                "for the rest of the job", rows, width, self.budget,
            )  # fmt: skip
        half = rows // 2
        for part in (slice(0, half), slice(half, rows)):
            indices = batch.indices[part]
            self._run_batch(self._rebuild(batch, indices), reduce, in_flight, outputs)

    def _rebuild(self, batch: HostBatch, indices: np.ndarray) -> HostBatch:
        keep = np.isin(batch.indices, indices)
        selected = torch.from_numpy(np.flatnonzero(keep))
        owned = batch.owned.index_select(0, selected)
        width = int(owned.shape[1])
        mask = batch.attention_mask.index_select(0, selected) if batch.attention_mask is not None else None
        return HostBatch(
            batch.indices[keep],
            batch.ids.index_select(0, selected),
            mask,
            owned,
            batch.masked.index_select(0, selected) if batch.masked is not None else None,
            batch.true_ids.index_select(0, selected) if batch.true_ids is not None else None,
            int(mask.sum()) if mask is not None else len(indices) * width,
        )

    def _forward(self, batch: HostBatch, reduce: Reduce) -> BatchOutputs | None:
        """The batch's reduced outputs, still on the device; None after an out-of-memory.

        Nothing of the failed attempt survives this call: the exception (and its traceback, which holds the
        forward's frames and their tensors) is dropped when the `except` block ends, so the caller's retry runs
        with that memory free.
        """
        device = self.device
        non_blocking = device.type == "cuda"
        try:
            ids = batch.ids.to(device, non_blocking=non_blocking)
            mask = batch.attention_mask
            if mask is not None:
                mask = mask.to(device, non_blocking=non_blocking)
            # No token types: every backbone is bound to its molecule (LucaOne's type 1 for proteins included).
            hidden = self.loaded.model(ids, mask)
            if self.dtype == "fp16":
                hidden = self._fp16_guard(hidden, ids, mask)
            return reduce(hidden, batch)
        except (torch.OutOfMemoryError, RuntimeError) as error:
            if not is_out_of_memory(error):
                raise
        return None

    def _fp16_guard(self, hidden: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """fp16 overflows past 65,504: a batch with inf/NaN at a real token is computed again in fp32 and counted.

        One more wait for the device per batch, in fp16 runs only (GPUs below compute capability 8.0).
        """
        finite = torch.isfinite(hidden).all(dim=-1)
        if bool((finite if mask is None else finite | ~mask).all()):
            return hidden
        self.figures.n_fp32_reruns += 1
        log.warning("fp16 overflow (inf/NaN) in a batch of %d x %d tokens: computing it again in fp32", *ids.shape)
        with torch.autocast(device_type=self.device.type, enabled=False):
            return self.loaded.model(ids, mask)

    def _launched(
        self,
        batch: HostBatch,
        result: BatchOutputs,
        in_flight: deque[tuple[HostBatch, BatchOutputs, torch.cuda.Event | None]],
        outputs: dict[str, np.ndarray],
    ) -> None:
        figures = self.figures
        figures.n_batches += 1
        figures.n_tokens += batch.n_tokens
        figures.n_computed_tokens += batch.ids.numel()
        figures.batch_shapes.add(batch.shape)
        self._good_batches += 1
        if self.budget < self.max_batch_tokens and self._good_batches >= self.recover_after:
            # A run of batches fit: try a larger budget again, a quarter of the way back at a time.
            self.budget = min(self.max_batch_tokens, self.budget + max(1, (self.max_batch_tokens - self.budget) // 4))
            self._good_batches = 0
            figures.n_budget_changes += 1
        if self.device.type != "cuda":
            self._collect((batch, result, None), outputs)
            return
        # Copy into pinned host memory without waiting; collect the batch once the next one is queued.
        copies = {}
        for name, tensor in result.items():
            host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            host.copy_(tensor, non_blocking=True)
            copies[name] = host
        event = torch.cuda.Event()
        event.record()
        in_flight.append((batch, copies, event))
        while len(in_flight) > 1:
            self._collect(in_flight.popleft(), outputs)

    @staticmethod
    def _collect(item: tuple[HostBatch, BatchOutputs, torch.cuda.Event | None], outputs: dict[str, np.ndarray]) -> None:
        batch, result, event = item
        if event is not None:
            event.synchronize()  # the one wait per batch, a batch behind the one the device is running
        for name, tensor in result.items():
            values = tensor.numpy()
            if name == "per_token":  # [B, W, H] float16: keep each input's own rows
                owned = batch.owned.numpy()
                target = outputs[name]
                for row, index in enumerate(batch.indices.tolist()):
                    target[index] = values[row][owned[row]]
            else:
                outputs[name][batch.indices] = values


# ------------------------------------------------------------------------------------------------------------
# Tasks: what each pass computes per batch, and how per-input rows become per-record columns


@dataclass
class PassTask:
    """One task inside a shared forward pass, with what it needs loaded (a head for classify/regress)."""

    settings: TaskSettings
    head: SequenceHead | None = None

    @property
    def name(self) -> str:
        return self.settings.task


def _head_for(loaded: LoadedModel, settings: TaskSettings) -> SequenceHead:
    device = next(loaded.model.parameters()).device
    head = load_linear_head(settings.head, loaded.hidden_size, device) if settings.head else loaded.sequence_head
    if head is None:
        raise ValueError(
            f"{loaded.checkpoint_dir}: the checkpoint has no fine-tuned head; {settings.task} needs one "
            "(a sequence-classification checkpoint, or a linear head directory: README, 'Heads')"
        )
    if head.kind != settings.task:
        raise ValueError(f"{settings.head or loaded.checkpoint_dir}: its head is for {head.kind}, not {settings.task}")
    return head


def weighted_rows(values: np.ndarray, records: np.ndarray, weights: np.ndarray, n_records: int) -> np.ndarray:
    """Combine one row per input into one row per record, weighted by the tokens each input owns (a record's
    inputs are consecutive, in `records` order). Rows of several inputs are summed in float64; the result has
    `values`' dtype."""
    out = np.empty((n_records, values.shape[1]), dtype=values.dtype)
    counts = np.bincount(records, minlength=n_records)
    alone = counts[records] == 1  # one input: the weighted mean of one row is the row
    out[records[alone]] = values[alone]
    if not alone.all():
        several = ~alone
        rows, part = records[several], values[several]
        starts = np.flatnonzero(np.diff(rows, prepend=-1))
        sums = np.add.reduceat(weights[several][:, None] * part.astype(np.float64), starts, axis=0)
        out[rows[starts]] = sums / np.add.reduceat(weights[several], starts)[:, None]
    return out


def _hidden_reduce(tasks: Sequence[PassTask]) -> Reduce:
    def reduce(hidden: torch.Tensor, batch: HostBatch) -> BatchOutputs:
        owned = batch.owned.to(hidden.device, non_blocking=hidden.device.type == "cuda")
        result: BatchOutputs = {}
        for task in tasks:
            if task.name == "embed":
                result["embed"] = pool(hidden, owned, task.settings.pooling)
                if task.settings.per_token:
                    result["per_token"] = hidden.to(torch.float16)
            else:
                assert task.head is not None
                result[task.name] = task.head.module(hidden, owned).float()
        return result

    return reduce


def _mlm_reduce(head: torch.nn.Module) -> Reduce:
    def reduce(hidden: torch.Tensor, batch: HostBatch) -> BatchOutputs:
        assert batch.masked is not None and batch.true_ids is not None
        non_blocking = hidden.device.type == "cuda"
        positions = batch.masked.to(hidden.device, non_blocking=non_blocking)
        true_ids = batch.true_ids.to(hidden.device, non_blocking=non_blocking)
        rows = torch.arange(len(positions), device=hidden.device)
        logits = head(hidden[rows, positions]).float()
        return {"mlm_score": torch.log_softmax(logits, dim=-1)[rows, true_ids].double()}

    return reduce


def _embed_columns(task: PassTask, chunk: EncodedChunk, per_input: dict[str, np.ndarray]) -> dict[str, object]:
    values = per_input["embed"]
    if task.settings.pooling == "max":
        embedding = np.full((chunk.n_records, values.shape[1]), -np.inf, dtype=np.float32)
        np.maximum.at(embedding, chunk.record, values)
    else:  # a window's mean (or [CLS] row) counts as many times as it has tokens of its own
        embedding = weighted_rows(values, chunk.record, chunk.n_owned.astype(np.float64), chunk.n_records)
    columns: dict[str, object] = {"embedding": vectors_array(embedding)}
    if task.settings.per_token:
        by_record: list[list[np.ndarray]] = [[] for _ in range(chunk.n_records)]
        for index, record in enumerate(chunk.record.tolist()):  # inputs are in window order within each record
            by_record[record].append(per_input["per_token"][index])
        columns["per_token"] = per_token_array([np.concatenate(parts) for parts in by_record], values.shape[1])
    return columns


def _head_columns(task: PassTask, chunk: EncodedChunk, per_input: dict[str, np.ndarray]) -> dict[str, object]:
    assert task.head is not None
    labels = task.head.labels
    logits = per_input[task.name].astype(np.float64)  # a few columns: combined and softmaxed in float64
    combined = weighted_rows(logits, chunk.record, chunk.n_owned.astype(np.float64), chunk.n_records)
    if task.name == "regress":
        return {label: combined[:, i].astype(np.float32) for i, label in enumerate(labels)}
    probabilities = torch.softmax(torch.from_numpy(combined), dim=-1).numpy().astype(np.float32)
    columns: dict[str, object] = {f"prob_{label}": probabilities[:, i] for i, label in enumerate(labels)}
    columns["predicted_label"] = [labels[i] for i in probabilities.argmax(axis=1)]
    return columns


def _mlm_columns(inputs: ModelInputs, scores: np.ndarray) -> dict[str, object]:
    chunk = inputs.chunk
    records = chunk.record[inputs.base]
    log_likelihood = np.bincount(records, weights=scores, minlength=chunk.n_records)
    n_scored = np.bincount(records, minlength=chunk.n_records)
    return {"pll": log_likelihood, "pll_per_token": log_likelihood / n_scored, "n_scored": n_scored}


def score_encoded(
    runner: Runner, chunk: EncodedChunk, tasks: Sequence[PassTask]
) -> tuple[dict[str, dict[str, object]], dict[int, str]]:
    """Every task's columns for the records of `chunk`, and the records that could not be scored (with why).

    The hidden-state tasks share one pass; mlm_score runs its own. Columns hold a row for every record; a failed
    record's values are meaningless and must be dropped by the caller.
    """
    columns: dict[str, dict[str, object]] = {}
    failed_inputs: dict[int, str] = {}
    hidden_tasks = [task for task in tasks if task.name in HIDDEN_TASKS]
    if hidden_tasks:
        inputs = ModelInputs.windows(chunk)
        hidden_size = runner.loaded.hidden_size
        per_input: dict[str, np.ndarray] = {}
        for task in hidden_tasks:
            if task.name == "embed":
                per_input["embed"] = np.zeros((len(inputs), hidden_size), dtype=np.float32)
                if task.settings.per_token:
                    per_input["per_token"] = np.empty(len(inputs), dtype=object)
            else:
                assert task.head is not None
                per_input[task.name] = np.zeros((len(inputs), len(task.head.labels)), dtype=np.float32)
        runner.failed = {}
        runner.run(inputs, _hidden_reduce(hidden_tasks), per_input)
        failed_inputs.update(runner.failed)
        if "per_token" in per_input:
            for index in runner.failed:  # an empty block keeps the concatenation going; the record is dropped
                per_input["per_token"][index] = np.zeros((0, hidden_size), dtype=np.float16)
        for task in hidden_tasks:
            builder = _embed_columns if task.name == "embed" else _head_columns
            columns[task.name] = builder(task, chunk, per_input)
    if any(task.name == "mlm_score" for task in tasks):
        head = runner.loaded.mlm_head
        if head is None:
            raise ValueError(
                f"{runner.loaded.checkpoint_dir}: the checkpoint has no masked-LM head; mlm_score needs one"
            )
        inputs = ModelInputs.masked_copies(chunk)
        scores = {"mlm_score": np.zeros(len(inputs), dtype=np.float64)}
        runner.failed = {}
        runner.run(inputs, _mlm_reduce(head), scores)
        failed_inputs.update({int(inputs.base[i]): reason for i, reason in runner.failed.items()})
        columns["mlm_score"] = _mlm_columns(inputs, scores["mlm_score"])
    failed_records = {int(chunk.record[index]): reason for index, reason in failed_inputs.items()}
    return columns, failed_records


# ------------------------------------------------------------------------------------------------------------
# Chunks of records: read and tokenized in the background, scored, duplicates filled in


def sequence_digest(sequence: str) -> bytes:
    """Identity of a sequence for de-duplication and the result cache (sequences are upper-cased by validation)."""
    return hashlib.blake2b(sequence.encode(), digest_size=16).digest()


@dataclass
class Duplicates:
    """Which records repeat an earlier record's sequence: `first[i]` is the earliest record with record i's
    sequence (i itself for a first occurrence), `last[f]` the last record that needs first occurrence f's row."""

    first: np.ndarray
    last: np.ndarray

    @classmethod
    def none(cls, n: int) -> Duplicates:
        every = np.arange(n)
        return cls(every, every.copy())

    @property
    def n_duplicates(self) -> int:
        return int((self.first != np.arange(len(self.first))).sum())


Rows = tuple[dict[str, np.ndarray], dict[str, dict[str, object]]]  # base columns, and each task's columns


@dataclass
class Precomputed:
    """Rows of some first occurrences, found in the result cache, in record order: `cached[i]` says whether
    record i's row is here; `rows` hold them one after the other."""

    cached: np.ndarray  # bool per record
    rows: Rows
    _cursor: int = 0

    def take(self, positions: Sequence[int]) -> Rows:
        """The next rows, for `positions` (cached records, increasing, the next ones in record order)."""
        rows = np.arange(self._cursor, self._cursor + len(positions))
        self._cursor += len(positions)
        return _take_rows(self.rows, rows)


@dataclass
class ScoredChunk:
    """One chunk of consecutive records with each task's columns, in input order; `failed` names the records
    (by position in the chunk) that could not be scored, whose values must not be used; `computed` the chunk's
    rows that were computed here (not copied from a duplicate or the cache), for the result cache."""

    records: list[SequenceRecord]
    base: dict[str, np.ndarray]  # n_tokens, n_windows, truncated per record
    columns: dict[str, dict[str, object]]
    failed: dict[int, str] = field(default_factory=dict)
    computed: np.ndarray | None = None


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


def _take(values: object, rows: np.ndarray) -> object:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        return values.take(pa.array(rows, pa.int64()))
    if isinstance(values, np.ndarray):
        return values[rows]
    return [values[i] for i in rows.tolist()]  # type: ignore[index]


def _take_rows(rows: Rows, which: np.ndarray) -> Rows:
    base, columns = rows
    return (
        {name: values[which] for name, values in base.items()},
        {task: {name: _take(v, which) for name, v in cols.items()} for task, cols in columns.items()},
    )


def _concatenate(parts: Sequence[object]) -> object:
    if isinstance(parts[0], pa.Array | pa.ChunkedArray):
        chunks = [p.combine_chunks() if isinstance(p, pa.ChunkedArray) else p for p in parts]
        return pa.concat_arrays(chunks)
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    return [value for part in parts for value in part]  # type: ignore[attr-defined]


def _concatenate_rows(parts: Sequence[Rows]) -> Rows:
    base = {name: np.concatenate([p[0][name] for p in parts]) for name in parts[0][0]}
    columns = {
        task: {name: _concatenate([p[1][task][name] for p in parts]) for name in cols}
        for task, cols in parts[0][1].items()
    }
    return base, columns


def prepare_tasks(loaded: LoadedModel, settings: Sequence[TaskSettings]) -> list[PassTask]:
    """Tasks ready to share passes: heads loaded, and one set of input settings for all."""
    if not settings:
        raise ValueError("no task to run")
    first = settings[0]
    for other in settings[1:]:
        differing = [name for name in INPUT_SETTINGS if getattr(other, name) != getattr(first, name)]
        if differing:
            raise ValueError(f"tasks {first.task} and {other.task} differ in {differing}; run them separately")
    if len({s.task for s in settings}) != len(settings):
        raise ValueError(f"each task may be asked for once, got {[s.task for s in settings]}")
    return [PassTask(s, _head_for(loaded, s) if s.task in ("classify", "regress") else None) for s in settings]


def score_chunks(
    loaded: LoadedModel,
    records: Iterable[SequenceRecord],
    settings: TaskSettings | Sequence[TaskSettings],
    *,
    molecule: str,
    batch_tokens: int,
    dtype: str,
    figures: RunFigures,
    max_padding: float = 0.03,
    chunk_records: int = CHUNK_RECORDS,
    chunk_residues: int | None = None,
    progress_seconds: float = 30.0,
    duplicates: Duplicates | None = None,
    precomputed: Precomputed | None = None,
    runner: Runner | None = None,
) -> Iterator[ScoredChunk]:
    """Score `records` chunk by chunk, in input order, overlapping the CPU work around the model with compute.

    `records` may be lazy (a FASTA being read): a background thread takes the next chunk from it and tokenizes
    it while the model runs on the current one. Inside a chunk, inputs are length-sorted into token-budget
    batches; a chunk holds at most `chunk_records` records and `chunk_residues` residues (default
    64 x `batch_tokens`), enough for many full batches while bounding memory whatever the input's size.
    With `duplicates` (record positions in the whole input, see `validate_input`), a record whose sequence an
    earlier record had is not computed again: its row is copied from that record's. With `precomputed`, the
    records it holds are not computed either.
    """
    loaded = loaded.for_molecule(molecule)
    tasks = prepare_tasks(loaded, [settings] if isinstance(settings, TaskSettings) else list(settings))
    first = tasks[0].settings
    max_tokens = first.max_tokens or loaded.max_tokens
    window = first.window_length or loaded.default_window
    overlap = first.window_overlap if first.window_overlap is not None else window // 4
    chunks = iter_chunks(records, chunk_records, chunk_residues or 64 * batch_tokens)
    kept: dict[int, tuple[Rows, int]] = {}  # first occurrence -> its row and the last record needing it
    failed_firsts: dict[int, str] = {}  # records that could not be scored, by position: their duplicates neither

    def prepare() -> tuple[list[SequenceRecord], np.ndarray, np.ndarray, EncodedChunk] | None:
        """Runs in the background thread: read the next chunk and tokenize the sequences it must compute."""
        chunk = next(chunks, None)
        if chunk is None:
            return None
        positions = np.array([r.index for r in chunk])
        firsts = positions if duplicates is None else duplicates.first[positions]
        is_first = firsts == positions
        cached = is_first & precomputed.cached[positions] if precomputed is not None else np.zeros_like(is_first)
        fresh = np.flatnonzero(is_first & ~cached)
        encoded = encode_chunk(
            [chunk[i].sequence for i in fresh.tolist()], loaded.tokenizer, max_tokens=max_tokens,
            mode=first.long_sequences, window=window, overlap=overlap,
        )  # fmt: skip
        return chunk, fresh, np.flatnonzero(cached), encoded

    runner = runner or Runner(
        loaded, molecule=molecule, batch_tokens=batch_tokens, dtype=dtype, figures=figures, max_padding=max_padding
    )
    started = last_report = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="seqshard-read") as background:
        upcoming = background.submit(prepare)
        while (prepared := upcoming.result()) is not None:
            upcoming = background.submit(prepare)
            chunk, fresh, cached, encoded = prepared
            figures.n_windows += int(encoded.n_inputs)
            figures.n_truncated += int(encoded.truncated.sum())
            columns, failed = score_encoded(runner, encoded, tasks) if len(fresh) else ({}, {})
            computed: Rows = (
                {"n_tokens": encoded.n_tokens, "n_windows": encoded.n_windows, "truncated": encoded.truncated},
                columns,
            )
            failed = {int(fresh[i]): reason for i, reason in failed.items()}
            if len(fresh) == len(chunk):
                rows = computed
            else:
                rows = _chunk_rows(chunk, fresh, computed, cached, precomputed, duplicates, kept, tasks)
            if duplicates is not None:
                _keep_for_later(chunk, rows, duplicates, kept)
            failed = _failed_rows(chunk, failed, duplicates, failed_firsts)
            figures.n_records += len(chunk)
            figures.n_sequences += len(fresh)
            figures.n_duplicates += len(chunk) - len(fresh) - len(cached)
            figures.n_cached += len(cached)
            now = time.perf_counter()
            if now - last_report >= progress_seconds:
                log.info("%d records scored (%.1f per second)", figures.n_records, figures.n_records / (now - started))
                last_report = now
            yield ScoredChunk(chunk, rows[0], rows[1], failed, fresh)
    if figures.n_truncated:
        log.warning("%d sequence(s) longer than %d tokens were truncated", figures.n_truncated, max_tokens)


def _chunk_rows(
    chunk: list[SequenceRecord],
    fresh: np.ndarray,
    computed: Rows,
    cached: np.ndarray,
    precomputed: Precomputed | None,
    duplicates: Duplicates | None,
    kept: dict[int, tuple[Rows, int]],
    tasks: Sequence[PassTask],
) -> Rows:
    """Rows for every record of the chunk: computed here, taken from the cache, or copied from the first
    occurrence of the same sequence (in this chunk, or kept from an earlier one)."""
    positions = np.array([r.index for r in chunk])
    firsts = positions if duplicates is None else duplicates.first[positions]
    sources: list[Rows] = []
    source_row: dict[int, int] = {}
    if len(fresh):
        sources.append(computed)
        source_row.update({int(positions[i]): k for k, i in enumerate(fresh.tolist())})
    if len(cached):
        assert precomputed is not None
        offset = sum(len(s[0]["n_tokens"]) for s in sources)
        sources.append(precomputed.take(positions[cached].tolist()))
        source_row.update({int(positions[i]): offset + k for k, i in enumerate(cached.tolist())})
    for first_index in sorted({int(f) for f in firsts.tolist()} - set(source_row)):
        if first_index not in kept:
            raise RuntimeError(f"internal error: the row of record {first_index} was needed again but not kept")
        source_row[first_index] = sum(len(s[0]["n_tokens"]) for s in sources)
        sources.append(kept[first_index][0])
    combined = _concatenate_rows(sources) if len(sources) > 1 else sources[0]
    return _take_rows(combined, np.array([source_row[int(f)] for f in firsts.tolist()], dtype=np.int64))


def _keep_for_later(
    chunk: list[SequenceRecord], rows: Rows, duplicates: Duplicates, kept: dict[int, tuple[Rows, int]]
) -> None:
    """Keep the rows of first occurrences that a record in a later chunk repeats; drop those no longer needed."""
    last_here = chunk[-1].index
    for row, record in enumerate(chunk):
        if duplicates.first[record.index] == record.index and duplicates.last[record.index] > last_here:
            kept[record.index] = (_take_rows(rows, np.array([row])), int(duplicates.last[record.index]))
    for first_index in [f for f, (_, last) in kept.items() if last <= last_here]:
        del kept[first_index]


def _failed_rows(
    chunk: list[SequenceRecord],
    failed: dict[int, str],
    duplicates: Duplicates | None,
    failed_firsts: dict[int, str],
) -> dict[int, str]:
    """Failures by row of the chunk: records that could not be scored, and duplicates of any such record (in
    this chunk or an earlier one; `failed_firsts` remembers them by record position)."""
    positions = np.array([r.index for r in chunk])
    failed_firsts.update({int(positions[row]): reason for row, reason in failed.items()})
    if not failed_firsts:
        return {}
    firsts = positions if duplicates is None else duplicates.first[positions]
    return {row: failed_firsts[int(f)] for row, f in enumerate(firsts.tolist()) if int(f) in failed_firsts}


# ------------------------------------------------------------------------------------------------------------
# Whole files


@dataclass
class InputCheck:
    """What the validation pass over a whole input found, before any model work."""

    report: ValidationReport
    duplicates: Duplicates
    digests: np.ndarray  # per record, 16 bytes (object array: numpy "S16" would drop trailing zero bytes)
    n_valid: int


def validate_input(
    fasta: Path | str,
    molecule: str,
    *,
    policy: InputPolicy = DEFAULT_POLICY,
    dedupe: bool = True,
) -> InputCheck:
    """Read the whole input once, cheaply: every fault is found before the first forward pass (with
    `on_invalid="error"` the first full pass raises, naming them), and repeated sequences are found too."""
    report = ValidationReport(Path(fasta))
    seen: dict[bytes, int] = {}
    first: list[int] = []
    digests: list[bytes] = []
    for record in iter_valid_records(fasta, molecule, policy, report=report):
        digest = sequence_digest(record.sequence)
        digests.append(digest)
        first.append(seen.setdefault(digest, record.index) if dedupe else record.index)
    first_array = np.array(first, dtype=np.int64)
    last = np.arange(len(first_array))
    np.maximum.at(last, first_array, np.arange(len(first_array)))
    return InputCheck(report, Duplicates(first_array, last), np.array(digests, dtype=object), len(first_array))


def packed_input(fasta: Path | str) -> InputCheck:
    """The InputCheck of a shard pack_samples wrote: nothing to validate, no sequence twice; digests for the cache."""
    report = ValidationReport(Path(fasta))
    digests = [sequence_digest(record.sequence) for record in iter_packed_shard(fasta)]
    report.n_records = report.n_valid = len(digests)
    return InputCheck(report, Duplicates.none(len(digests)), np.array(digests, dtype=object), len(digests))


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
    loaded = loaded.for_molecule(molecule)
    tasks = prepare_tasks(loaded, [settings])
    max_tokens = settings.max_tokens or loaded.max_tokens
    window = settings.window_length or loaded.default_window
    overlap = settings.window_overlap if settings.window_overlap is not None else window // 4
    encoded = encode_chunk(
        [r.sequence for r in records], loaded.tokenizer, max_tokens=max_tokens, mode=settings.long_sequences,
        window=window, overlap=overlap,
    )  # fmt: skip
    runner = Runner(
        loaded, molecule=molecule, batch_tokens=batch_tokens, dtype=dtype, figures=figures, max_padding=max_padding
    )
    columns, failed = score_encoded(runner, encoded, tasks)
    if failed:
        index, reason = next(iter(failed.items()))
        raise RecordError(f"record {records[index].id!r}: {reason}")
    figures.n_records += len(records)
    figures.n_sequences += len(records)
    figures.n_windows += encoded.n_inputs
    figures.n_truncated += int(encoded.truncated.sum())
    return columns[settings.task], encoded.sequences()


class RecordError(RuntimeError):
    """A valid record that could not be scored (too large for the device even alone), with `on_invalid: error`."""


def task_metadata(
    loaded: LoadedModel, settings: TaskSettings, *, architecture: str, checkpoint: str, dtype: str, molecule: str,
    provenance: Mapping[str, object] | None,
) -> dict[str, object]:  # fmt: skip
    """The provenance a task's Parquet file carries."""
    return {
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


def chunk_limits(
    device: str, chunk_records: int, batch_tokens: int, settings: Sequence[TaskSettings], hidden_size: int
) -> tuple[int, int]:
    """Records and residues per chunk: a chunk holds its records, token ids and one output row per record.

    On a GPU chunks are larger, unless asked otherwise: a batch plan over many thousands of inputs fills its
    batches from one width bucket (little padding, one shape per width; see seqshard.batching). Their output
    rows stay within GPU_CHUNK_OUTPUT_BYTES (26,214 records of LucaOne's 2560 float32s, 65,536 of DNABERT-2's
    768), and per-token outputs, which would make such a chunk gigabytes, keep the CPU's chunks.
    """
    if device.startswith("cuda") and chunk_records == CHUNK_RECORDS and not any(s.per_token for s in settings):
        records = min(16 * CHUNK_RECORDS, max(CHUNK_RECORDS, GPU_CHUNK_OUTPUT_BYTES // (4 * hidden_size)))
        return records, 1024 * batch_tokens
    return chunk_records, 64 * batch_tokens


def run_tasks(
    fasta: Path | str,
    outputs: Mapping[str, Path | str],
    *,
    architecture: str,
    checkpoint: str,
    settings: Sequence[TaskSettings],
    molecule: str = "dna",
    batch_tokens: int = 16384,
    device: str = "auto",
    dtype: str = "auto",
    gpus: int | None = None,
    threads: int = 1,
    policy: InputPolicy = DEFAULT_POLICY,
    rejects_out: Path | str | None = None,
    figures_out: Path | str | None = None,
    check_sibling_shards: bool = False,
    labels: Mapping[str, str] | None = None,
    provenance: Mapping[str, object] | None = None,
    chunk_records: int = CHUNK_RECORDS,
    dedupe: bool = True,
    cache: ResultCache | None = None,
    packed: bool = False,
    storage: StorageSettings | None = None,
) -> RunFigures:
    """Run several tasks of one model over every record of `fasta`, writing task t's Parquet to `outputs[t]`.

    Before anything reads them, the shard, checkpoint and heads are warmed up onto local disk
    (`seqshard.storage.warm_up`, with `storage`'s cache and mounts). The whole file is validated first (and its
    repeated sequences found); then it is read, tokenized and scored chunk by chunk, each chunk's rows written
    (in row groups of at most `ROW_GROUP_ROWS`, per task) while the model computes the next. Tasks that share a forward
    pass get one. With `on_invalid="skip"` invalid records, and records that cannot be scored at all, go to
    `rejects_out` instead of stopping the run. With a result `cache`, sequences it already holds for every task
    are not computed again, and the rest are added to it. `packed` says `fasta` is a shard
    `seqshard.packing.pack_samples` wrote: validated, distinct sequences, read as such.

    Device and dtype are resolved by `seqshard.devices.resolve_precision` from `device`, `dtype` and `gpus` (the
    GPUs the job was given; None when unknown). With `check_sibling_shards`, the other figures files in
    `figures_out`'s folder are the other shards of the same run: the job stops at once, before validating or
    loading anything, if one of them ran on another device type or in another dtype (`check_run_precision`).
    """
    by_task = {s.task: s for s in settings}
    if set(by_task) != set(outputs):
        raise ValueError(f"outputs {sorted(outputs)} do not match the tasks {sorted(by_task)}")
    torch.set_num_threads(max(1, threads))
    os.environ.setdefault("RAYON_NUM_THREADS", str(max(1, threads)))  # the DNABERT-2 tokenizer's thread pool
    precision = resolve_precision(device, dtype, gpus)
    key = run_key({"architecture": architecture, "checkpoint": str(checkpoint), "dtype": dtype,
                   "tasks": [asdict(s) for s in settings]})  # fmt: skip
    if check_sibling_shards and figures_out is not None:
        check_run_precision(figures_out, precision, key)
    device, dtype = precision.device, precision.dtype
    log.info("running on %s in %s (%s)", precision.device_name or device, dtype, precision.reason)
    figures = RunFigures(dict(labels or {}), device, dtype, threads, batch_tokens)
    figures.extra.update({**precision.figures(), "run_key": key})

    warmed = warm_up([fasta, checkpoint, *(s.head for s in settings)], storage)
    figures.warmup_seconds = warmed.seconds
    figures.extra.update(warmup=warmed.method, warmup_downloaded_bytes=warmed.downloaded_bytes)
    log.info("warm-up (%s) took %.2f s, %d bytes downloaded", warmed.method, warmed.seconds, warmed.downloaded_bytes)

    started = time.perf_counter()
    if packed:
        check = packed_input(fasta)
    else:
        check = validate_input(fasta, molecule, policy=policy, dedupe=dedupe)
    log.info(
        "%s: %d records, %d valid (%d distinct sequences), %d rejected; validated in %.1f s",
        fasta, check.report.n_records, check.n_valid, check.n_valid - check.duplicates.n_duplicates,
        len(check.report.rejected), time.perf_counter() - started,
    )  # fmt: skip
    log_report(check.report)

    load_started = time.perf_counter()
    loaded = get_loader(architecture)(checkpoint, device, torch.float32)
    figures.load_seconds = time.perf_counter() - load_started
    log.info("loaded %s from %s in %.2f s (%s)", architecture, loaded.checkpoint_dir, figures.load_seconds, device)
    if molecule not in loaded.molecules:
        raise ValueError(f"{architecture} does not accept {molecule} sequences (accepts {sorted(loaded.molecules)})")

    # The resolved device type joins the provenance: the merge then refuses shards computed on different hardware.
    provenance = {**precision_provenance(precision), **(provenance or {})}
    metadata = {
        task: task_metadata(
            loaded,
            s,
            architecture=architecture,
            checkpoint=checkpoint,
            dtype=dtype,
            molecule=molecule,
            provenance=provenance,
        )
        for task, s in by_task.items()
    }
    rejected: list[Rejected] = list(check.report.rejected)
    keys = precomputed = None
    cache_writers: dict[str, CacheWriter] = {}
    if cache is not None:
        keys = {
            task: cache_key(_cache_identity(loaded, settings, architecture, dtype, molecule))
            for task, settings in by_task.items()
        }
        precomputed = _cached_rows(cache, keys, check)
        cache_writers = {task: CacheWriter(cache, key) for task, key in keys.items()}
    if packed:
        records = iter_packed_shard(fasta)
    else:
        records = iter_valid_records(fasta, molecule, policy)
    chunk_records, chunk_residues = chunk_limits(device, chunk_records, batch_tokens, settings, loaded.hidden_size)
    scored = score_chunks(
        loaded, records, list(by_task.values()), molecule=molecule, batch_tokens=batch_tokens, dtype=dtype,
        figures=figures, chunk_records=chunk_records, chunk_residues=chunk_residues, duplicates=check.duplicates,
        precomputed=precomputed,
    )  # fmt: skip
    writers = {task: TableWriter(outputs[task]) for task in by_task}
    gpu_sampler = GpuSampler.for_device(device)
    try:
        with gpu_sampler, ThreadPoolExecutor(max_workers=1, thread_name_prefix="seqshard-write") as pool_:
            written: Future[None] | None = None
            for chunk in scored:
                keep = _kept_rows(chunk, policy, rejected, fasta)
                tables = {
                    task: chunk_table(chunk, by_task[task], loaded.hidden_size, metadata[task]) for task in by_task
                }
                if written is not None:
                    written.result()
                written = pool_.submit(_write_all, writers, tables, keep, chunk, check, cache_writers)
            if written is not None:
                written.result()
        figures.n_rejected = len(rejected) - len(check.report.rejected)
        for writer in writers.values():
            writer.__exit__(None)
        for cache_writer in cache_writers.values():
            cache_writer.publish()
    except BaseException as error:
        for writer in writers.values():
            writer.__exit__(type(error))
        raise
    finally:
        for cache_writer in cache_writers.values():
            cache_writer.discard()
    if rejects_out is not None:
        write_rejects(rejected, Path(rejects_out))
    figures.run_seconds = time.perf_counter() - started
    figures.gpu = gpu_sampler.summary()
    figures.ended_at = time.time()
    n_rows = next(iter(writers.values())).n_rows
    log.info(
        "wrote %d rows per task to %s (%d records read, %d CRLF lines, %d duplicates computed once): %d windows, "
        "%d truncated; useful-token fraction %.3f, %.1f seq/s of model compute, %.1f s in all",
        n_rows, ", ".join(str(p) for p in outputs.values()), check.report.n_records, check.report.crlf_lines,
        figures.n_duplicates, figures.n_windows, figures.n_truncated,
        figures.n_tokens / max(1, figures.n_computed_tokens), figures.n_sequences / max(figures.compute_seconds, 1e-9),
        figures.run_seconds,
    )  # fmt: skip
    if figures_out is not None:
        Path(figures_out).parent.mkdir(parents=True, exist_ok=True)
        Path(figures_out).write_text(json.dumps(figures.as_dict(), indent=2) + "\n")
    return figures


def _write_all(
    writers: Mapping[str, TableWriter],
    tables: Mapping[str, pa.Table],
    keep: np.ndarray,
    chunk: ScoredChunk,
    check: InputCheck,
    cache_writers: Mapping[str, CacheWriter],
) -> None:
    """Write a chunk's rows (all but those that could not be scored), and add what it computed to the cache."""
    every_row = len(keep) == len(chunk.records)
    for task, table in tables.items():
        writers[task].write(table if every_row else table.take(pa.array(keep)))
    if cache_writers and chunk.computed is not None and len(chunk.computed):
        computed = np.array([row for row in chunk.computed.tolist() if row not in chunk.failed], dtype=np.int64)
        digests = check.digests[[chunk.records[row].index for row in computed.tolist()]].tolist()
        for task, table in tables.items():
            cache_writers[task].write(digests, table.take(pa.array(computed)).drop_columns(["id", "length"]))


def _cache_identity(
    loaded: LoadedModel, settings: TaskSettings, architecture: str, dtype: str, molecule: str
) -> dict[str, object]:
    """Everything a task's cached numbers depend on: the checkpoint by digest (not by path), the relevant
    settings, the input fitting the model resolved to, dtype, device type (a GPU's fp32 differs from a CPU's in
    the last bits, and provenance names the device type) and molecule."""
    return {
        **settings.relevant(),
        "architecture": architecture,
        "checkpoint_digest": loaded.digest,
        "head_digest": head_digest(settings.head) if settings.head else None,
        "max_tokens": settings.max_tokens or loaded.max_tokens,
        "window_length": settings.window_length or loaded.default_window,
        "dtype": dtype,
        "device_type": next(loaded.model.parameters()).device.type,
        "molecule": molecule,
    }


def _like_computed(column: pa.Array) -> object:
    """A cached column in the form a computed one has: vectors as Arrow arrays, text as a list, numbers numpy."""
    if pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type):
        return column
    if pa.types.is_string(column.type):
        return column.to_pylist()
    return column.to_numpy()


def _cached_rows(cache: ResultCache, keys: Mapping[str, str], check: InputCheck) -> Precomputed | None:
    """The first occurrences whose rows the cache holds for every task, with those rows."""
    firsts = np.flatnonzero(check.duplicates.first == np.arange(check.n_valid))
    digests = check.digests[firsts].tolist()
    hits = {task: cache.lookup(key, digests) for task, key in keys.items()}
    everywhere = np.logical_and.reduce([hit.found for hit in hits.values()])
    if not everywhere.any():
        return None
    cached = np.zeros(check.n_valid, dtype=bool)
    cached[firsts[everywhere]] = True
    columns: dict[str, dict[str, object]] = {}
    base: dict[str, np.ndarray] = {}
    for task, hit in hits.items():
        assert hit.table is not None
        # Rows of this task's hits that every task has, in record order.
        table = hit.table.take(pa.array(np.flatnonzero(everywhere[hit.found])))
        for name in ("n_tokens", "n_windows", "truncated"):
            base[name] = table.column(name).to_numpy()
        columns[task] = {
            name: _like_computed(table.column(name).combine_chunks()) for name in table.column_names if name not in base
        }
    log.info("result cache: %d of %d distinct sequences already scored for every task", int(everywhere.sum()),
             len(firsts))  # fmt: skip
    return Precomputed(cached, (base, columns))


def _kept_rows(chunk: ScoredChunk, policy: InputPolicy, rejected: list[Rejected], fasta: Path | str) -> np.ndarray:
    """Rows of the chunk to write: all but the records that could not be scored, which are rejects (skip) or an
    error naming the record (error)."""
    if not chunk.failed:
        return np.arange(len(chunk.records))
    for row, reason in sorted(chunk.failed.items()):
        record = chunk.records[row]
        if policy.on_invalid != "skip":
            skip = policy.interface.setting("on_invalid", "skip")
            raise RecordError(
                f"{fasta}: record {record.id!r} (line {record.line}): {reason}; lower max_tokens or window_length, "
                f"use a device with more memory, or skip such records with {skip}"
            )
        rejected.append(Rejected(str(fasta), record.id, record.line, reason))
        log.warning("rejected %s: record %r (line %d): %s", fasta, record.id, record.line, reason)
    return np.array([row for row in range(len(chunk.records)) if row not in chunk.failed], dtype=np.int64)


def run_task(
    fasta: Path | str,
    out: Path | str,
    *,
    settings: TaskSettings = TaskSettings(),
    **options: object,
) -> RunFigures:
    """Run one model task over every record of `fasta` and write the task's Parquet to `out` (see run_tasks)."""
    return run_tasks(fasta, {settings.task: out}, settings=[settings], **options)  # type: ignore[arg-type]


def chunk_table(
    chunk: ScoredChunk,
    settings: TaskSettings,
    hidden_size: int,
    metadata: Mapping[str, object],
    keep: np.ndarray | None = None,
) -> pa.Table:
    """A chunk's output rows for one task: the base columns, then the task's."""
    columns = chunk.columns[settings.task]
    rows = np.arange(len(chunk.records)) if keep is None else keep
    base = {
        "id": [chunk.records[i].id for i in rows.tolist()],
        "length": [len(chunk.records[i].sequence) for i in rows.tolist()],
        "n_tokens": chunk.base["n_tokens"][rows],
        "n_windows": chunk.base["n_windows"][rows],
        "truncated": chunk.base["truncated"][rows],
    }
    task_columns = columns if keep is None or len(rows) == len(chunk.records) else {
        name: _take(values, rows) for name, values in columns.items()
    }  # fmt: skip
    return task_table(settings.task, hidden_size, base, task_columns, metadata, settings.per_token)


def run_embed(fasta: Path | str, out: Path | str, *, pooling: str = "mean", **options: object) -> RunFigures:
    """`run_task` for task `embed`."""
    return run_task(fasta, out, settings=TaskSettings(task="embed", pooling=pooling), **options)
