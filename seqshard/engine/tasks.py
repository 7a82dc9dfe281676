"""The tasks of a pass: what each computes per batch from the model's output (pooled embeddings, a head's logits,
masked-LM log-probabilities), and how per-input rows become per-record columns, windows combined.

- `embed`: pooled last hidden state (`mean` over the sequence's own tokens, `max`, or `cls`), optionally every
  token's vector (`per_token`, float16).
- `mlm_score`: pseudo-log-likelihood from the masked-LM head: every token is masked once and scored, several
  masked copies sharing a forward pass. Costs one forward pass of the whole input per token.
- `classify` / `regress`: a fine-tuned head's probabilities per label and predicted label, or its values.
With windows, pooled and head outputs combine the windows weighted by the tokens each window owns.

`embed`, `classify` and `regress` read the same last hidden state: asked for together they share one forward
pass, each still written to its own file with its own schema and provenance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from seqshard.engine.heads import load_linear_head
from seqshard.engine.pooling import pool
from seqshard.engine.runner import BatchOutputs, HostBatch, ModelInputs, Reduce, Runner
from seqshard.engine.types import INPUT_SETTINGS, PASSES, TaskSettings
from seqshard.engine.windows import EncodedChunk
from seqshard.io.parquet import per_token_array, vectors_array
from seqshard.models import LoadedModel, SequenceHead


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


def mlm_reduce(head: torch.nn.Module) -> Reduce:
    """log P(true token) at each input's masked position, from the masked-LM head (float64)."""

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
    hidden_tasks = [task for task in tasks if task.name in PASSES["hidden"]]
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
        runner.run(inputs, mlm_reduce(head), scores)
        failed_inputs.update({int(inputs.base[i]): reason for i, reason in runner.failed.items()})
        columns["mlm_score"] = _mlm_columns(inputs, scores["mlm_score"])
    failed_records = {int(chunk.record[index]): reason for index, reason in failed_inputs.items()}
    return columns, failed_records
