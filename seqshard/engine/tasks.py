"""The tasks of a pass: what each computes per batch from the model's output (pooled embeddings, a head's logits,
masked-LM log-probabilities), and how per-input rows become per-record columns, windows combined.

- `embed`: pooled last hidden state (`mean` over the sequence's own tokens, `max`, or `cls`), optionally every
  token's vector (`per_token`, float16) with the residues each token is credited with and its text, and every
  residue's (`per_base`: the vector of the token credited with it); of chosen `layers` instead of the last, all
  from one forward pass; of `both` strands (DNA: the sequence and its reverse complement, averaged, per-token
  outputs aligned back to the forward strand's tokens).
- `mlm_score`: pseudo-log-likelihood from the masked-LM head: every token is masked once and scored, several
  masked copies sharing a forward pass. Costs one forward pass of the whole input per token.
- `classify` / `regress`: a fine-tuned head's probabilities per label and predicted label, or its values.
With windows, pooled and head outputs combine the windows weighted by the tokens each window owns.

`embed`, `classify` and `regress` read the same last hidden state: asked for together they share one forward
pass, each still written to its own file with its own schema and provenance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import torch

from seqshard.engine.heads import load_linear_head
from seqshard.engine.pooling import pool
from seqshard.engine.runner import BatchOutputs, Hidden, HostBatch, ModelInputs, Reduce, Runner
from seqshard.engine.types import INPUT_SETTINGS, PASSES, TaskSettings
from seqshard.engine.windows import EncodedChunk, ModelFit, owned_spans
from seqshard.io.parquet import layer_suffixes, per_token_array, ragged_array, vectors_array
from seqshard.models import LoadedModel, SequenceHead, layer_numbers


@dataclass
class PassTask:
    """One task inside a shared forward pass, with what it needs loaded (a head for classify/regress) and, for an
    embed task with `layers`, those layers as absolute numbers (seqshard.models.layer_numbers)."""

    settings: TaskSettings
    head: SequenceHead | None = None
    layers: tuple[int, ...] | None = None

    @property
    def name(self) -> str:
        return self.settings.task

    def outputs(self, last: int) -> list[tuple[str, int]]:
        """(column suffix, absolute layer) of each embedding this task writes: the last layer, unsuffixed, unless
        it asks for layers."""
        if self.layers is None:
            return [("", last)]
        return list(zip(layer_suffixes(self.settings.layers), self.layers, strict=True))

    @property
    def per_tokens(self) -> bool:
        """Whether it writes vectors per token or per residue (both come from each owned token's vector)."""
        return self.name == "embed" and (self.settings.per_token or self.settings.per_base)


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
    return [
        PassTask(
            s,
            _head_for(loaded, s) if s.task in ("classify", "regress") else None,
            layer_numbers(s.layers, loaded.num_layers) if s.task == "embed" and s.layers is not None else None,
        )
        for s in settings
    ]


def check_molecule(settings: Sequence[TaskSettings], molecule: str) -> None:
    """A one-line ValueError when a task's settings cannot run on `molecule` (TaskSettings.molecule_problem)."""
    for task in settings:
        problem = task.molecule_problem(molecule)
        if problem is not None:
            raise ValueError(problem)


def fit_for(loaded: LoadedModel, tasks: Sequence[PassTask]) -> ModelFit:
    """How the tasks' sequences are fitted to the model (their input settings are one, see prepare_tasks), and
    what the encoded chunks must carry for them: spans for per-token outputs, reverse complements for both strands."""
    fit = ModelFit.of(loaded, tasks[0].settings)
    spans = any(task.per_tokens for task in tasks)
    reverse = any(task.name == "embed" and task.settings.strand == "both" for task in tasks)
    return replace(fit, spans=spans, reverse=reverse)


def pass_layers(tasks: Sequence[PassTask], num_layers: int) -> tuple[int, ...] | None:
    """The layers a hidden pass returns for `tasks`: None (the last hidden state) unless the embed task asks for
    layers; then those, and the last as well when a head reads it."""
    layers = next((task.layers for task in tasks if task.layers is not None), None)
    if layers is None:
        return None
    heads = any(task.head is not None for task in tasks)
    return layers if not heads or num_layers in layers else (*layers, num_layers)


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


def _hidden_reduce(tasks: Sequence[PassTask], layers: tuple[int, ...] | None, last: int) -> Reduce:
    """What the hidden-state tasks take from one batch: per embedding (layer) `embed<suffix>` pooled and, for
    per-token outputs, `per_token<suffix>` (float16); per head its outputs. `layers`: the pass's (pass_layers)."""

    def reduce(output: Hidden, batch: HostBatch) -> BatchOutputs:
        states = {last: output} if layers is None else dict(zip(layers, output, strict=True))
        device = next(iter(states.values())).device  # type: ignore[union-attr]
        owned = batch.owned.to(device, non_blocking=device.type == "cuda")
        result: BatchOutputs = {}
        for task in tasks:
            if task.name == "embed":
                for suffix, layer in task.outputs(last):
                    result[f"embed{suffix}"] = pool(states[layer], owned, task.settings.pooling)
                    if task.per_tokens:
                        result[f"per_token{suffix}"] = states[layer].to(torch.float16)
            else:
                assert task.head is not None
                result[task.name] = task.head.module(states[last], owned).float()
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


def _pooled(pooling: str, chunk: EncodedChunk, values: np.ndarray) -> np.ndarray:
    """One pooled vector per record from one per input: windows combined."""
    if pooling == "max":
        embedding = np.full((chunk.n_records, values.shape[1]), -np.inf, dtype=np.float32)
        np.maximum.at(embedding, chunk.record, values)
        return embedding
    # A window's mean (or [CLS] row) counts as many times as it has tokens of its own.
    return weighted_rows(values, chunk.record, chunk.n_owned.astype(np.float64), chunk.n_records)


def _token_rows(chunk: EncodedChunk, rows: np.ndarray) -> list[np.ndarray]:
    """Each record's owned tokens' rows in sequence order, from one array of owned rows per input."""
    by_record: list[list[np.ndarray]] = [[] for _ in range(chunk.n_records)]
    for index, record in enumerate(chunk.record.tolist()):  # inputs are in window order within each record
        by_record[record].append(rows[index])
    return [np.concatenate(parts) for parts in by_record]


@dataclass
class _Tokens:
    """The owned tokens of a chunk's records: credited residues (`owned_spans`) and count per record."""

    spans: list[np.ndarray]  # per record, [tokens, 2]
    texts: list[str]  # every owned token's residues as its window read them, record after record

    @classmethod
    def of(cls, chunk: EncodedChunk) -> _Tokens:
        assert chunk.spans is not None and chunk.texts is not None
        credited = owned_spans(chunk)
        positions = np.flatnonzero(chunk.owned)
        records = chunk.record[np.searchsorted(chunk.starts, positions, side="right") - 1]
        counts = np.bincount(records, minlength=chunk.n_records)
        own = chunk.spans[positions].tolist()
        texts = [chunk.texts[record][begin:end] for record, (begin, end) in zip(records.tolist(), own, strict=True)]
        return cls(np.split(credited, np.cumsum(counts)[:-1]), texts)


def _both_strands(forward: np.ndarray, spans: np.ndarray, reverse: np.ndarray, reverse_spans: np.ndarray) -> tuple[
    np.ndarray, np.ndarray
]:  # fmt: skip
    """One record's per-token and per-residue vectors (float32) averaged over both strands: the reverse strand's
    tokens are spread over the residues they are credited with, turned to forward coordinates, and averaged over
    each forward token's residues; per residue, the two strands' vectors are averaged as they are."""
    rows = np.repeat(reverse.astype(np.float32), reverse_spans[:, 1] - reverse_spans[:, 0], axis=0)[::-1]
    sums = np.concatenate([np.zeros((1, rows.shape[1])), np.cumsum(rows, axis=0, dtype=np.float64)])
    widths = (spans[:, 1] - spans[:, 0])[:, None]
    means = ((sums[spans[:, 1]] - sums[spans[:, 0]]) / widths).astype(np.float32)
    per_base = (np.repeat(forward.astype(np.float32), widths[:, 0], axis=0) + rows) * np.float32(0.5)
    return (forward.astype(np.float32) + means) * np.float32(0.5), per_base


def _embed_columns(
    task: PassTask, chunk: EncodedChunk, per_input: dict[str, np.ndarray], reverse: dict[str, np.ndarray] | None
) -> dict[str, object]:
    """The embed task's columns from its outputs per input (`reverse`: the reverse strand's, for `strand: both`)."""
    settings = task.settings
    columns: dict[str, object] = {}
    hidden = per_input[next(name for name in per_input if name.startswith("embed"))].shape[1]
    tokens = _Tokens.of(chunk) if task.per_tokens else None
    reverse_tokens = _Tokens.of(chunk.reverse) if task.per_tokens and reverse is not None else None
    for suffix in layer_suffixes(settings.layers):
        embedding = _pooled(settings.pooling, chunk, per_input[f"embed{suffix}"])
        if reverse is not None:
            assert chunk.reverse is not None
            embedding = (embedding + _pooled(settings.pooling, chunk.reverse, reverse[f"embed{suffix}"])) * 0.5
        columns[f"embedding{suffix}"] = vectors_array(embedding.astype(np.float32))
        if tokens is None:
            continue
        per_token = _token_rows(chunk, per_input[f"per_token{suffix}"])
        if reverse is not None:
            assert chunk.reverse is not None and reverse_tokens is not None
            other = _token_rows(chunk.reverse, reverse[f"per_token{suffix}"])
            both = [_both_strands(*parts) for parts in zip(per_token, tokens.spans, other, reverse_tokens.spans,
                                                            strict=True)]  # fmt: skip
            per_token, per_base = [pair[0] for pair in both], [pair[1] for pair in both]
        elif settings.per_base:
            per_base = [np.repeat(rows, spans[:, 1] - spans[:, 0], axis=0) for rows, spans in
                        zip(per_token, tokens.spans, strict=True)]  # fmt: skip
        if settings.per_token:
            columns[f"per_token{suffix}"] = per_token_array(per_token, hidden)
        if settings.per_base:
            columns[f"per_base{suffix}"] = per_token_array(per_base, hidden)
    if tokens is not None and settings.per_token:
        counts = np.array([len(spans) for spans in tokens.spans])
        flat = np.concatenate(tokens.spans) if counts.sum() else np.zeros((0, 2), dtype=np.int64)
        columns["token_start"] = ragged_array(flat[:, 0].astype(np.int32), counts, pa.int32())
        columns["token_end"] = ragged_array(flat[:, 1].astype(np.int32), counts, pa.int32())
        columns["token_text"] = ragged_array(tokens.texts, counts, pa.string())
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
    failed_records: dict[int, str] = {}
    hidden_tasks = [task for task in tasks if task.name in PASSES["hidden"]]
    if hidden_tasks:
        per_input, failed = _hidden_pass(runner, chunk, hidden_tasks)
        failed_records.update(failed)
        reverse = None
        both = [task for task in hidden_tasks if task.name == "embed" and task.settings.strand == "both"]
        if both:  # the reverse strand: one more pass, of the embed task alone
            if chunk.reverse is None:
                raise ValueError("internal error: strand both needs the chunk encoded with its reverse complements")
            reverse, failed = _hidden_pass(runner, chunk.reverse, both)
            failed_records.update(failed)
        for task in hidden_tasks:
            if task.name == "embed":
                columns[task.name] = _embed_columns(task, chunk, per_input, reverse)
            else:
                columns[task.name] = _head_columns(task, chunk, per_input)
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
        failed_records.update({int(chunk.record[inputs.base[i]]): reason for i, reason in runner.failed.items()})
        columns["mlm_score"] = _mlm_columns(inputs, scores["mlm_score"])
    return columns, failed_records


def _hidden_pass(
    runner: Runner, chunk: EncodedChunk, tasks: Sequence[PassTask]
) -> tuple[dict[str, np.ndarray], dict[int, str]]:
    """One pass of `chunk`'s inputs for the hidden-state `tasks`: their outputs per input, and the records with an
    input that could not be run (with why)."""
    inputs = ModelInputs.windows(chunk)
    loaded = runner.loaded
    per_input: dict[str, np.ndarray] = {}
    for task in tasks:
        if task.name == "embed":
            for suffix, _ in task.outputs(loaded.num_layers):
                per_input[f"embed{suffix}"] = np.zeros((len(inputs), loaded.hidden_size), dtype=np.float32)
                if task.per_tokens:
                    per_input[f"per_token{suffix}"] = np.empty(len(inputs), dtype=object)
        else:
            assert task.head is not None
            per_input[task.name] = np.zeros((len(inputs), len(task.head.labels)), dtype=np.float32)
    layers = pass_layers(tasks, loaded.num_layers)
    runner.failed = {}
    runner.run(inputs, _hidden_reduce(tasks, layers, loaded.num_layers), per_input, layers)
    for name in [name for name in per_input if name.startswith("per_token")]:
        for index in runner.failed:  # zero rows keep the records' tokens aligned; the record is dropped
            per_input[name][index] = np.zeros((int(chunk.n_owned[index]), loaded.hidden_size), dtype=np.float16)
    return per_input, {int(chunk.record[index]): reason for index, reason in runner.failed.items()}
