"""Runs a pass's model inputs through one loaded model in token-budget batches: batches assembled on the host in a
background thread a few ahead of the model, results brought back from a GPU through pinned buffers one batch
behind (the only host-device wait in the loop), and a GPU out-of-memory survived.

Out of memory on a GPU: the failed batch's tensors are released before anything else runs (the recovery happens
after the `except` block, whose traceback would otherwise keep them alive), the batch runs again in two halves,
and the token budget is lowered for the rest of the job (raised back after a run of batches that fit). cuBLAS and
cuDNN allocation failures count as out of memory. A single input that cannot fit on its own is listed in
`Runner.failed`, never a lost shard.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from seqshard.engine.batching import TokenBudgetBatcher, gather_rows
from seqshard.engine.types import RunFigures
from seqshard.engine.windows import EncodedChunk
from seqshard.runtime.devices import DTYPES

if TYPE_CHECKING:
    from seqshard.models import LoadedModel

log = logging.getLogger(__name__)


class RunCancelled(Exception):
    """The run was stopped between two batches because `Runner.should_stop` said so (the server's client left)."""


def is_out_of_memory(error: BaseException) -> bool:
    """torch's out-of-memory error, or a cuBLAS/cuDNN allocation failure, which arrive as plain RuntimeErrors."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        marker in text for marker in ("CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED", "out of memory")
    )


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
    def masked_copies(cls, chunk: EncodedChunk, positions: np.ndarray | None = None) -> ModelInputs:
        """One input per chosen token, that token masked: `positions` (flat indices into `chunk.ids`, increasing),
        by default every owned token of every window (mlm_score; variant effects choose theirs)."""
        positions = np.flatnonzero(chunk.owned) if positions is None else np.asarray(positions, dtype=np.int64)
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


class Prefetcher:
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
# What a pass computes from one batch: (the model's output, batch) -> named per-row tensors. The model's output is
# the last hidden state [B, W, H], or, for a run with `layers`, the list of those layers' states. Two kinds of
# output are ragged, one array per input in an object array: names starting with `per_token` ([B, W, ...], the
# owned rows kept on the host) and with `owned_` (the owned tokens' rows only, [owned tokens of the batch, ...],
# selected on the device).
Hidden = torch.Tensor | list[torch.Tensor]
Reduce = Callable[[Hidden, HostBatch], BatchOutputs]


class Runner:
    """Runs the inputs of a pass through one loaded model in token-budget batches, keeping the run's figures.

    `run` returns, per output name, one host array with a row per input (rows of inputs that could not be run
    are left as they were allocated and listed in `failed`).
    """

    def __init__(
        self, loaded: LoadedModel, figures: RunFigures, *, batch_tokens: int, dtype: str, max_padding: float = 0.03,
        bucket_widths: bool = True, progress_seconds: float = 30.0, recover_after: int = 32,
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
        self.layers: tuple[int, ...] | None = None  # the run's layers (absolute numbers), while `run` runs
        # Consulted before every batch: True stops the run with RunCancelled (the server sets it to "every client of
        # this batch has gone"); a batch already started always finishes.
        self.should_stop: Callable[[], bool] | None = None

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

    def run(
        self, inputs: ModelInputs, reduce: Reduce, outputs: dict[str, np.ndarray], layers: tuple[int, ...] | None = None
    ) -> None:
        """Run every input and write its reduced outputs into `outputs` (arrays with one row per input). With
        `layers` (absolute numbers, seqshard.models.layer_numbers), `reduce` gets those layers' hidden states, all
        from one forward pass per batch, instead of the last hidden state."""
        if len(inputs) == 0:
            return
        self.layers = layers
        started = last_report = time.perf_counter()
        lengths = inputs.lengths
        pending = np.ones(len(inputs), dtype=bool)  # not yet run
        in_flight: deque[tuple[HostBatch, BatchOutputs, torch.cuda.Event | None]] = deque()
        with torch.inference_mode(), self.autocast():
            while pending.any():
                todo = np.flatnonzero(pending)
                plan = [todo[np.asarray(b)] for b in self.batcher().batches(lengths[todo])]
                budget = self.budget
                prefetch = Prefetcher(plan, lambda indices: self._build(inputs, indices))
                try:
                    for batch in prefetch:
                        if self.should_stop is not None and self.should_stop():
                            raise RunCancelled(f"stopped with {int(pending.sum())} of {len(inputs)} inputs left")
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
            hidden = self._model(ids, mask)
            if self.dtype == "fp16":
                hidden = self._fp16_guard(hidden, ids, mask)
            return reduce(hidden, batch)
        except (torch.OutOfMemoryError, RuntimeError) as error:
            if not is_out_of_memory(error):
                raise
        return None

    def _model(self, ids: torch.Tensor, mask: torch.Tensor | None) -> Hidden:
        if self.layers is None:
            return self.loaded.model(ids, mask)
        return self.loaded.model(ids, mask, layers=self.layers)

    def _fp16_guard(self, hidden: Hidden, ids: torch.Tensor, mask: torch.Tensor | None) -> Hidden:
        """fp16 overflows past 65,504: a batch with inf/NaN at a real token is computed again in fp32 and counted.

        One more wait for the device per batch, in fp16 runs only (GPUs below compute capability 8.0).
        """
        states = hidden if isinstance(hidden, list) else [hidden]
        finite = torch.stack([torch.isfinite(state).all(dim=-1) for state in states]).all(dim=0)
        if bool((finite if mask is None else finite | ~mask).all()):
            return hidden
        self.figures.n_fp32_reruns += 1
        log.warning("fp16 overflow (inf/NaN) in a batch of %d x %d tokens: computing it again in fp32", *ids.shape)
        with torch.autocast(device_type=self.device.type, enabled=False):
            return self._model(ids, mask)

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
            if name.startswith("per_token"):  # [B, W, H] float16: keep each input's own rows
                owned = batch.owned.numpy()
                target = outputs[name]
                for row, index in enumerate(batch.indices.tolist()):
                    target[index] = values[row][owned[row]]
            elif name.startswith("owned_"):  # [owned tokens of the batch, ...], row after row: split by row
                counts = batch.owned.numpy().sum(axis=1)
                target = outputs[name]
                for index, part in zip(batch.indices.tolist(), np.split(values, np.cumsum(counts)[:-1]), strict=True):
                    target[index] = part
            else:
                outputs[name][batch.indices] = values
