"""Variant effects (`variant_effect`) through the engine's own runner: the windows of a chunk of variants become one
`EncodedChunk`, their masked copies and unmasked windows go through `Runner` in token-budget batches, and each
variant's scores are read off the per-token results.

DNA (a `DnaUnit`: left flank, REF bases, ALT bases, right flank; `seqshard.io.variants`): each allele's window is
tokenized on its own, so a change that re-tokenizes its neighbourhood (DNABERT-2's BPE) is scored on each allele's
own tokens. The scored tokens of an allele's window are those covering its span: the changed bases plus `flank` bases
each side, in that window's coordinates (for an empty change with no flank, the base each side of the junction).

- `llr`: sum over the ALT window's scored tokens of log P(token | window with that token masked), minus the same sum
  over the REF window's. Each scored token is masked once, alone (one model input per token).
- `embedding_cosine` / `embedding_l2`: cosine distance (1 - cosine similarity) and Euclidean distance between the
  pooled embeddings of the REF and ALT windows (pooling as configured; `mean` over the window's tokens).
- `change_cosine` / `change_l2`: the same between the means of the scored tokens' last hidden states.
With `strand: both` every score is computed on the reverse-complement windows too; the row has both and their mean.

Proteins (a `ProteinUnit`: wild type and mutations): `masked_marginal` is the sum over mutated positions of
log P(mutant | wild type with that position masked) - log P(wild type | same); `wild_type_marginal` (optional) the
same sum from one unmasked pass of the wild type; embedding and change distances between wild type and mutant.

Work is shared within a chunk: each distinct window (DNA: the REF window of a site is shared by its ALTs, the reverse
windows are distinct inputs) is run unmasked once, each distinct (window, token) masked once, whatever the number of
variants reading it; a protein's masked positions are shared by every mutation at them. Chunks are cut where the
REF window or the wild type changes, so what variants share falls in one chunk.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from seqshard.engine.pooling import pool
from seqshard.engine.runner import BatchOutputs, HostBatch, ModelInputs, Reduce, Runner
from seqshard.engine.tasks import mlm_reduce
from seqshard.engine.types import VARIANT_TASK, Hardware, RunFigures, RunFiles, VariantWork
from seqshard.engine.windows import EncodedChunk
from seqshard.io.parquet import DNA_SCORES, PROTEIN_SCORES, TableWriter, provenance_metadata, variant_schema
from seqshard.io.variants import DnaUnit, ProteinUnit, Unit
from seqshard.models import LoadedModel, get_loader
from seqshard.plan.variants import (
    VariantSetInput,
    iter_unit_chunks,
    merge_variant_sets,
    pack_variant_sets,
    read_variant_manifest,
)
from seqshard.runtime.cache import CacheHits, CacheWriter, ResultCache, cache_key
from seqshard.runtime.devices import precision_provenance
from seqshard.runtime.monitoring import GpuSampler

log = logging.getLogger(__name__)

CHUNK_UNITS = 2048  # variants scored together: their windows share batches (see iter_unit_chunks)


@dataclass
class UnitScores:
    """Scores of a chunk of units, one row per unit (`variant_schema(kind, scored=True)` but `failed`), and the
    units that could not be scored, with why."""

    columns: dict[str, np.ndarray]
    failed: dict[int, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------
# Reductions


def _real_tokens(hidden: torch.Tensor, batch: HostBatch, frame: tuple[int, int]) -> torch.Tensor:
    """[B, W] bool: each row's own tokens, between the tokenizer's frame ([CLS] ... [SEP], or [CLS] ... for a model
    without an end token); a variant window is one whole model input."""
    rows, width = hidden.shape[:2]
    positions = torch.arange(width, device=hidden.device)
    if batch.attention_mask is None:
        lengths = torch.full((rows,), width, device=hidden.device)
    else:
        lengths = batch.attention_mask.to(hidden.device).sum(dim=1)
    before, after = frame
    return (positions[None, :] >= before) & (positions[None, :] < lengths[:, None] - after)


def window_reduce(pooling: str, frame: tuple[int, int], head: torch.nn.Module | None = None) -> Reduce:
    """The unmasked pass: each window's pooled embedding, its owned (scored) tokens' hidden states, and with a
    masked-LM `head` their log-probabilities over the vocabulary."""

    def reduce(hidden: torch.Tensor, batch: HostBatch) -> BatchOutputs:
        owned = batch.owned.to(hidden.device, non_blocking=hidden.device.type == "cuda")
        selected = hidden[owned]
        result: BatchOutputs = {
            "embed": pool(hidden, _real_tokens(hidden, batch, frame), pooling),
            "owned_hidden": selected.float(),
        }
        if head is not None:
            result["owned_log_probs"] = torch.log_softmax(head(selected).float(), dim=-1)
        return result

    return reduce


def masked_log_probs_reduce(head: torch.nn.Module) -> Reduce:
    """The log-probabilities of every vocabulary entry at each input's masked position."""

    def reduce(hidden: torch.Tensor, batch: HostBatch) -> BatchOutputs:
        assert batch.masked is not None
        positions = batch.masked.to(hidden.device, non_blocking=hidden.device.type == "cuda")
        rows = torch.arange(len(positions), device=hidden.device)
        return {"log_probs": torch.log_softmax(head(hidden[rows, positions]).float(), dim=-1)}

    return reduce


# ---------------------------------------------------------------------------------------------------------------
# Shared: windows, their tokens, the chunk


@dataclass
class _Inputs:
    """The distinct model inputs of a chunk of units, tokenized, with the tokens read from each."""

    ids: list[np.ndarray]
    token_spans: list[np.ndarray]  # [n, 2] residue span of each token; (0, 0) for [CLS]/[SEP]
    reads: list[list[tuple[int, int]]]  # per input, token ranges [t0, t1) some unit reads
    valid: np.ndarray  # bool per input: fits the model's max_tokens
    chunk: EncodedChunk | None = None
    position: np.ndarray | None = None  # chunk input of each valid input (-1 for the others)
    _real: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)

    @classmethod
    def tokenize(cls, sequences: list[str], loaded: LoadedModel) -> _Inputs:
        encoded = loaded.tokenizer.encode_many_arrays(sequences)
        ids = [np.asarray(i, dtype=np.int32) for i, _ in encoded]
        spans = [np.asarray(s, dtype=np.int64).reshape(-1, 2) for _, s in encoded]
        valid = np.array([len(i) <= loaded.max_tokens for i in ids], dtype=bool)
        return cls(ids, spans, [[] for _ in sequences], valid)

    def covering(self, index: int, low: int, high: int) -> tuple[int, int]:
        """Token range [t0, t1) of input `index` whose tokens cover residues [low, high), noted as read."""
        if index not in self._real:
            spans = self.token_spans[index]
            real = np.flatnonzero(spans[:, 1] > spans[:, 0])
            self._real[index] = (real, spans[real, 0], spans[real, 1])
        real, begins, ends = self._real[index]
        first = int(np.searchsorted(ends, low, side="right"))
        last = int(np.searchsorted(begins, high, side="left"))
        if first >= last:
            raise RuntimeError(f"internal error: no token covers residues [{low}, {high}) of input {index}")
        t0, t1 = int(real[first]), int(real[last - 1]) + 1
        self.reads[index].append((t0, t1))
        return t0, t1

    def build(self) -> EncodedChunk:
        """The valid inputs as one chunk, each owning the tokens some unit reads."""
        keep = np.flatnonzero(self.valid)
        self.position = np.full(len(self.ids), -1, dtype=np.int64)
        self.position[keep] = np.arange(len(keep))
        lengths = np.array([len(self.ids[i]) for i in keep], dtype=np.int64)
        starts = np.zeros(len(keep) + 1, dtype=np.int64)
        np.cumsum(lengths, out=starts[1:])
        marks = np.zeros(int(starts[-1]) + 1, dtype=np.int64)
        for row, index in enumerate(keep.tolist()):
            for t0, t1 in self.reads[index]:
                marks[starts[row] + t0] += 1
                marks[starts[row] + t1] -= 1
        owned = np.cumsum(marks)[:-1] > 0
        flat_ids = np.concatenate([self.ids[i] for i in keep]) if len(keep) else np.zeros(0, dtype=np.int32)
        self.chunk = EncodedChunk(flat_ids, owned, starts, np.arange(len(keep)), len(keep), np.zeros(len(keep), bool))
        return self.chunk

    def flat(self, index: int, token: np.ndarray | int) -> np.ndarray:
        """Flat positions in the chunk of `token`(s) of input `index`."""
        assert self.chunk is not None and self.position is not None
        return self.chunk.starts[self.position[index]] + np.asarray(token)


def _distances(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosine distance (1 - cosine similarity) and Euclidean distance between rows, in float64."""
    a, b = first.astype(np.float64), second.astype(np.float64)
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    cosine = 1.0 - (a * b).sum(axis=-1) / np.where(norms > 0, norms, 1.0)
    return cosine, np.linalg.norm(a - b, axis=-1)


@dataclass
class _PassResults:
    """What the two passes of a chunk gave: the masked pass's outputs (one row per masked input), the unmasked
    pass's (one row per chunk input), and the chunk inputs that could not be run."""

    masked: dict[str, np.ndarray]
    windows: dict[str, np.ndarray]
    failed: set[int]


def _run_passes(
    runner: Runner,
    chunk: EncodedChunk,
    masked: ModelInputs,
    reduces: tuple[Reduce, Reduce],
    masked_outputs: dict[str, np.ndarray],
) -> _PassResults:
    """The masked inputs, then every input of `chunk` unmasked, through the runner; timed in the run's figures."""
    figures = runner.figures
    started = time.perf_counter()
    runner.failed = {}
    runner.run(masked, reduces[0], masked_outputs)
    failed = {int(masked.base[i]) for i in runner.failed}
    middle = time.perf_counter()
    windows = ModelInputs.windows(chunk)
    outputs: dict[str, np.ndarray] = {
        "embed": np.zeros((len(windows), runner.loaded.hidden_size), dtype=np.float32),
        "owned_hidden": np.empty(len(windows), dtype=object),
        "owned_log_probs": np.empty(len(windows), dtype=object),
    }
    runner.failed = {}
    runner.run(windows, reduces[1], outputs)
    failed |= set(runner.failed)
    extra = figures.extra
    for key, value in (
        ("masked_pass_seconds", middle - started),
        ("window_pass_seconds", time.perf_counter() - middle),
        ("n_masked_inputs", len(masked)),
        ("n_window_inputs", len(windows)),
    ):
        extra[key] = extra.get(key, 0) + value
    return _PassResults(masked_outputs, outputs, failed)


def _mlm_head(runner: Runner) -> torch.nn.Module:
    head = runner.loaded.mlm_head
    if head is None:
        raise ValueError(
            f"{runner.loaded.checkpoint_dir}: the checkpoint has no masked-LM head; variant_effect scores with it"
        )
    return head


def _timed_tokenize(runner: Runner, sequences: list[str]) -> _Inputs:
    started = time.perf_counter()
    inputs = _Inputs.tokenize(sequences, runner.loaded)
    extra = runner.figures.extra
    extra["tokenize_seconds"] = extra.get("tokenize_seconds", 0.0) + time.perf_counter() - started
    extra["n_distinct_windows"] = extra.get("n_distinct_windows", 0) + len(sequences)
    return inputs


def _too_long(inputs: _Inputs, index: int, max_tokens: int, what: str) -> str:
    return (
        f"{what} tokenizes to {len(inputs.ids[index])} tokens, more than the model's {max_tokens} "
        "(lower variant_window)"
    )


# ---------------------------------------------------------------------------------------------------------------
# DNA


def _score_dna(
    runner: Runner, units: Sequence[DnaUnit], flank: int, strands: tuple[str, ...], pooling: str
) -> UnitScores:
    """llr and distances of each DNA unit on each strand (see the module's docstring)."""
    head = _mlm_head(runner)
    n, n_strands = len(units), len(strands)
    index: dict[str, int] = {}
    slot_input = np.empty((n, n_strands, 2), dtype=np.int64)  # [unit, strand, REF/ALT] -> input
    spans = np.empty((n, n_strands, 2, 2), dtype=np.int64)  # residue span scored
    for u, unit in enumerate(units):
        for s, strand in enumerate(strands):
            for a, allele in enumerate(unit.windows(strand)):
                slot_input[u, s, a] = index.setdefault(allele.bases, len(index))
                spans[u, s, a] = allele.span(flank)
    inputs = _timed_tokenize(runner, list(index))
    tokens = np.zeros((n, n_strands, 2, 2), dtype=np.int64)  # token range [t0, t1) scored
    for slot in np.ndindex(n, n_strands, 2):
        tokens[slot] = inputs.covering(int(slot_input[slot]), *spans[slot].tolist())
    chunk = inputs.build()
    failed: dict[int, str] = {}
    for u in range(n):
        bad = [i for i in slot_input[u].ravel().tolist() if not inputs.valid[i]]
        if bad:
            failed[u] = _too_long(inputs, bad[0], runner.loaded.max_tokens, "a window")
    masked = ModelInputs.masked_copies(chunk)
    results = _run_passes(
        runner,
        chunk,
        masked,
        (mlm_reduce(head), window_reduce(pooling, runner.loaded.tokenizer.frame)),
        {"mlm_score": np.zeros(len(masked), dtype=np.float64)},
    )
    # Sums of log-probabilities over a slot's tokens: every token in its range is owned, so they are consecutive
    # masked inputs; `before[f]` counts owned tokens before flat position f.
    before = np.concatenate([[0], np.cumsum(chunk.owned)])
    cumulative = np.concatenate([[0.0], np.cumsum(results.masked["mlm_score"])])
    position = inputs.position
    assert position is not None
    valid = inputs.valid[slot_input]
    row = np.where(valid, position[slot_input], 0)
    # A slot of a window too long to run reads nothing (its unit is failed above): an empty range at 0.
    first = np.where(valid, chunk.starts[row] + tokens[..., 0], 0)
    last = np.where(valid, chunk.starts[row] + tokens[..., 1], 0)
    log_likelihood = cumulative[before[last]] - cumulative[before[first]]
    pooled = results.windows["embed"]
    if len(pooled) == 0:  # every window of the chunk was too long to run: nothing to read, every unit failed
        pooled = np.zeros((1, runner.loaded.hidden_size), dtype=np.float32)
    embed = pooled[row]  # [n, strands, 2, H]
    owned_hidden = results.windows["owned_hidden"]
    change = np.zeros_like(embed)
    for slot in np.ndindex(n, n_strands, 2):
        if not valid[slot] or owned_hidden[row[slot]] is None:
            continue
        own = before[first[slot]] - before[chunk.starts[row[slot]]]
        change[slot] = owned_hidden[row[slot]][own : own + before[last[slot]] - before[first[slot]]].mean(axis=0)
    for input_row in results.failed:
        for u in np.flatnonzero((row == input_row).any(axis=(1, 2))).tolist():
            failed.setdefault(u, "out of memory on the device even alone")
    scores = {
        "llr": log_likelihood[..., 1] - log_likelihood[..., 0],
        "embedding": _distances(embed[..., 0, :], embed[..., 1, :]),
        "change": _distances(change[..., 0, :], change[..., 1, :]),
    }
    columns: dict[str, np.ndarray] = {}
    per_score = {
        "llr": scores["llr"],
        "embedding_cosine": scores["embedding"][0],
        "embedding_l2": scores["embedding"][1],
        "change_cosine": scores["change"][0],
        "change_l2": scores["change"][1],
    }
    assert tuple(per_score) == DNA_SCORES
    for name, values in per_score.items():  # values [n, strands]
        columns[name] = values.mean(axis=1)
        columns[f"{name}_forward"] = values[:, 0]
        columns[f"{name}_reverse"] = values[:, 1] if n_strands == 2 else np.full(n, np.nan)
    columns["n_ref_tokens"] = (tokens[:, 0, 0, 1] - tokens[:, 0, 0, 0]).astype(np.int32)
    columns["n_alt_tokens"] = (tokens[:, 0, 1, 1] - tokens[:, 0, 1, 0]).astype(np.int32)
    return UnitScores(columns, failed)


# ---------------------------------------------------------------------------------------------------------------
# Proteins


def _score_protein(runner: Runner, units: Sequence[ProteinUnit], pooling: str, wild_type_marginal: bool) -> UnitScores:
    """Masked marginals (and the wild-type marginal) and distances of each protein unit."""
    head = _mlm_head(runner)
    loaded = runner.loaded
    n = len(units)
    if loaded.tokenizer.max_residues_per_token != 1:
        reason = (
            f"masked marginals need one token per residue; {loaded.name}'s tokens span up to "
            f"{loaded.tokenizer.max_residues_per_token}"
        )
        return UnitScores(_empty_protein_columns(n), dict.fromkeys(range(n), reason))
    index: dict[str, int] = {}
    wild = np.array([index.setdefault(unit.sequence, len(index)) for unit in units], dtype=np.int64)
    mutant = np.array([index.setdefault(unit.mutant_sequence(), len(index)) for unit in units], dtype=np.int64)
    inputs = _timed_tokenize(runner, list(index))
    token_of: list[list[int]] = []  # per unit, the token of each mutated residue (the same in wild type and mutant)
    for u, unit in enumerate(units):
        token_of.append([inputs.covering(int(wild[u]), p, p + 1)[0] for p in unit.positions])
        for token in token_of[-1]:
            inputs.reads[int(mutant[u])].append((token, token + 1))
    chunk = inputs.build()
    failed: dict[int, str] = {}
    for u in range(n):
        if not (inputs.valid[wild[u]] and inputs.valid[mutant[u]]):
            failed[u] = _too_long(
                inputs, int(wild[u]), loaded.max_tokens, f"the wild type ({len(units[u].sequence)} residues)"
            )
    # Masked copies of the wild types only, at the mutated positions: one per distinct (protein, position).
    wanted = sorted({int(inputs.flat(int(wild[u]), t)) for u in range(n) if u not in failed for t in token_of[u]})
    masked = ModelInputs.masked_copies(chunk, np.array(wanted, dtype=np.int64))
    vocab = int(loaded.tokenizer.vocab_size)  # type: ignore[attr-defined]
    window_head = head if wild_type_marginal else None
    results = _run_passes(
        runner,
        chunk,
        masked,
        (masked_log_probs_reduce(head), window_reduce(pooling, loaded.tokenizer.frame, window_head)),
        {"log_probs": np.zeros((len(masked), vocab), dtype=np.float32)},
    )
    letter = _letter_ids(loaded)
    position = inputs.position
    assert position is not None
    columns = _empty_protein_columns(n)
    log_probs = results.masked["log_probs"]
    owned = results.windows["owned_hidden"]
    owned_lp = results.windows["owned_log_probs"]
    before = np.concatenate([[0], np.cumsum(chunk.owned)])
    for u, unit in enumerate(units):
        if u in failed:
            continue
        w, m = int(position[wild[u]]), int(position[mutant[u]])
        if w in results.failed or m in results.failed or owned[w] is None or owned[m] is None:
            failed[u] = "out of memory on the device even alone"
            continue
        flat = inputs.flat(int(wild[u]), np.array(token_of[u]))
        rows = np.searchsorted(wanted, flat)
        wt_ids = [letter[c] for c in unit.wild_type]
        mut_ids = [letter[c] for c in unit.mutant]
        columns["masked_marginal"][u] = float(
            sum(log_probs[r, b] - log_probs[r, a] for r, a, b in zip(rows.tolist(), wt_ids, mut_ids, strict=True))
        )
        in_wild = before[flat] - before[chunk.starts[w]]
        in_mutant = before[inputs.flat(int(mutant[u]), np.array(token_of[u]))] - before[chunk.starts[m]]
        if wild_type_marginal:
            lp = owned_lp[w].astype(np.float64)
            columns["wild_type_marginal"][u] = float(
                sum(lp[k, b] - lp[k, a] for k, a, b in zip(in_wild.tolist(), wt_ids, mut_ids, strict=True))
            )
        embed = results.windows["embed"]
        cosine, l2 = _distances(embed[w][None], embed[m][None])
        columns["embedding_cosine"][u], columns["embedding_l2"][u] = cosine[0], l2[0]
        cosine, l2 = _distances(owned[w][in_wild].mean(axis=0)[None], owned[m][in_mutant].mean(axis=0)[None])
        columns["change_cosine"][u], columns["change_l2"][u] = cosine[0], l2[0]
    columns["n_mutations"] = np.array([len(unit.positions) for unit in units], dtype=np.int32)
    return UnitScores(columns, failed)


def _empty_protein_columns(n: int) -> dict[str, np.ndarray]:
    columns = {name: np.full(n, np.nan) for name in PROTEIN_SCORES}
    columns["n_mutations"] = np.zeros(n, dtype=np.int32)
    return columns


def _letter_ids(loaded: LoadedModel) -> dict[str, int]:
    """The token id of each amino-acid letter (the tokenizer frames one letter as [CLS] x [SEP])."""
    from seqshard.io.sequences import ALPHABETS

    return {letter: int(loaded.tokenizer.encode(letter)[1]) for letter in ALPHABETS["protein"]}


def score_units(runner: Runner, units: Sequence[Unit], work: VariantWork) -> UnitScores:
    """The scores of a chunk of units of one kind (all DnaUnit or all ProteinUnit), through `runner`."""
    settings = work.settings
    if not units:
        return UnitScores({})
    if isinstance(units[0], DnaUnit):
        return _score_dna(runner, units, settings.flank, settings.strands, settings.pooling)  # type: ignore[arg-type]
    return _score_protein(runner, units, settings.pooling, settings.wild_type_marginal)  # type: ignore[arg-type]


def scores_table(kind: str, scores: UnitScores, metadata: dict[str, object]) -> pa.Table:
    """A scored shard's rows: the scores of each unit, null where they do not apply, and `failed`."""
    schema = variant_schema(kind, scored=True)
    n = len(next(iter(scores.columns.values()))) if scores.columns else 0
    arrays = []
    for column in schema:
        if column.name == "failed":
            arrays.append(pa.array([scores.failed.get(i) for i in range(n)], pa.string()))
            continue
        values = scores.columns[column.name]
        if pa.types.is_floating(column.type):
            dead = np.isnan(values)
            for i in scores.failed:  # a failed unit's numbers are meaningless; keep them out of the file
                dead[i] = True
            values = np.where(dead, 0.0, values) if not column.nullable else values
            arrays.append(pa.array(values, column.type, mask=dead if column.nullable else None))
        else:
            arrays.append(pa.array(values, column.type))
    return pa.Table.from_arrays(arrays, schema=schema.with_metadata(provenance_metadata(metadata)))


# ---------------------------------------------------------------------------------------------------------------
# Drivers: one scored shard, and a whole variant set (the command line)


def variant_metadata(work: VariantWork, loaded: LoadedModel, molecule: str, precision: object) -> dict[str, object]:
    """The provenance of a variant_effect file: model, checkpoint digest, the settings, the precision."""
    settings = work.settings
    return {
        "task": VARIANT_TASK,
        "architecture": work.architecture,
        "checkpoint": work.checkpoint,
        "checkpoint_digest": loaded.digest,
        "molecule": molecule,
        "hidden_size": loaded.hidden_size,
        "max_tokens": loaded.max_tokens,
        "variant_window": settings.window,
        "variant_flank": settings.flank,
        "strand": settings.strand,
        "max_variant_length": settings.max_length,
        "pooling": settings.pooling,
        "wild_type_marginal": settings.wild_type_marginal,
        "dtype": precision.dtype,  # type: ignore[attr-defined]
        **precision_provenance(precision),  # type: ignore[arg-type]
        **work.provenance,
    }


def variant_cache_key(work: VariantWork, loaded: LoadedModel, kind: str, precision: object) -> str:
    """The result cache's key for a unit's scores: everything but the unit that shapes them (the window and length
    settings are in the unit itself: a unit placed alike under other settings is the same unit)."""
    settings = work.settings
    return cache_key(
        {
            "task": VARIANT_TASK,
            "kind": kind,
            "architecture": work.architecture,
            "checkpoint_digest": loaded.digest,
            "max_tokens": loaded.max_tokens,
            "flank": settings.flank,
            "strand": settings.strand,
            "pooling": settings.pooling,
            "wild_type_marginal": settings.wild_type_marginal,
            "dtype": precision.dtype,  # type: ignore[attr-defined]
            "device_type": precision.device.split(":")[0],  # type: ignore[attr-defined]
        }
    )


@dataclass
class _ShardCache:
    """The result cache as one shard's scoring uses it: the rows it already held for the shard's units (looked up
    once), and the writer of the rows this job computes."""

    hits: CacheHits
    writer: CacheWriter
    offset: int = 0  # units of the shard handled so far

    @classmethod
    def open(cls, cache: ResultCache, key: str, path: Path | str) -> _ShardCache:
        digests = [unit.digest() for _, units in iter_unit_chunks(path, CHUNK_UNITS) for unit in units]
        hits = cache.lookup(key, digests)
        log.info("result cache: %d of %d variant units already scored", int(hits.found.sum()), len(digests))
        return cls(hits, CacheWriter(cache, key))

    def chunk(self, units: Sequence[Unit]) -> tuple[np.ndarray, pa.Table | None]:
        """Which of the next `units` the cache holds, and their rows (in order)."""
        found = self.hits.found[self.offset : self.offset + len(units)]
        rows = None
        if found.any():
            assert self.hits.table is not None
            before = int(self.hits.found[: self.offset].sum())
            rows = self.hits.table.slice(before, int(found.sum()))
        self.offset += len(units)
        return found, rows


def _chunk_table(kind: str, units: Sequence[Unit], runner: Runner, work: VariantWork, cached: tuple) -> pa.Table:
    """A chunk's rows: computed for the units the cache lacks, taken from it for the others, in order; what was
    computed (and not failed) is added to the cache's writer."""
    found, rows, shard_cache, metadata = cached
    fresh = np.flatnonzero(~found) if found is not None else np.arange(len(units))
    scores = score_units(runner, [units[i] for i in fresh.tolist()], work) if len(fresh) else UnitScores({})
    computed = scores_table(kind, scores, metadata) if len(fresh) else None
    figures = runner.figures
    figures.n_rejected += len(scores.failed)
    figures.n_cached += len(units) - len(fresh)
    if shard_cache is not None and computed is not None:
        good = np.array([i for i in range(len(fresh)) if i not in scores.failed], dtype=np.int64)
        shard_cache.writer.write([units[i].digest() for i in fresh[good].tolist()], computed.take(pa.array(good)))
    if rows is None:
        assert computed is not None
        return computed
    schema = variant_schema(kind, scored=True).with_metadata(provenance_metadata(metadata))
    parts = [rows.cast(schema.remove_metadata()).replace_schema_metadata(schema.metadata)]
    order = [np.flatnonzero(found)]
    if computed is not None:
        parts.append(computed)
        order.append(fresh)
    combined = pa.concat_tables(parts)
    return combined.take(pa.array(np.argsort(np.concatenate(order), kind="stable")))


def score_variant_shard(
    work: VariantWork, files: RunFiles, hardware: Hardware | None = None, cache: ResultCache | None = None
) -> RunFigures:
    """Score every unit of a shard `pack_variant_sets` wrote (`files.fasta`) into `files.outputs["variant_effect"]`:
    one row per unit, in order, with `failed` set for units the model could not score. Chunks of units (cut where
    the REF window or wild type changes) go through the runner's masked and unmasked passes. With a result `cache`,
    units it holds for the same model and settings are not computed again, and the rest are added to it."""
    hardware = (hardware or Hardware()).resolved()
    precision = hardware.precision
    assert precision is not None
    torch.set_num_threads(max(1, hardware.threads))
    os.environ.setdefault("RAYON_NUM_THREADS", str(max(1, hardware.threads)))
    figures = RunFigures(dict(files.labels), precision.device, precision.dtype, hardware.threads, hardware.batch_tokens)
    figures.extra.update({**precision.figures(), "run_key": work.run_key(hardware.dtype)})
    if files.warmup is not None:
        figures.warmup_seconds = files.warmup.seconds
    started = time.perf_counter()
    chunks = iter_unit_chunks(files.fasta, CHUNK_UNITS)
    kind, first = next(chunks, ("dna", []))
    molecule = kind  # the kind of a unit is the molecule of its model inputs: dna or protein
    loading = time.perf_counter()
    loaded = get_loader(work.architecture)(
        work.checkpoint, precision.device, torch.float32, interface=work.policy.interface
    )
    figures.load_seconds = time.perf_counter() - loading
    if molecule not in loaded.molecules:
        raise ValueError(
            f"{work.architecture} does not accept {molecule} variants (accepts {sorted(loaded.molecules)})"
        )
    bound = loaded.for_molecule(molecule)
    runner = Runner(bound, figures, batch_tokens=hardware.batch_tokens, dtype=precision.dtype)
    metadata = variant_metadata(work, loaded, molecule, precision)
    shard_cache = None
    if cache is not None:
        shard_cache = _ShardCache.open(cache, variant_cache_key(work, loaded, kind, precision), files.fasta)
    sampler = GpuSampler.for_device(figures.device)
    try:
        with sampler, TableWriter(files.outputs[VARIANT_TASK]) as writer:
            for units in itertools.chain([first], (units for _, units in chunks)) if first else ():
                found, rows = shard_cache.chunk(units) if shard_cache is not None else (None, None)
                writer.write(_chunk_table(kind, units, runner, work, (found, rows, shard_cache, metadata)))
                figures.n_records += len(units)
            if writer.n_rows == 0:
                empty = variant_schema(kind, scored=True).empty_table()
                writer.write(empty.replace_schema_metadata(provenance_metadata(metadata)))
        if shard_cache is not None:
            shard_cache.writer.publish()
    finally:
        if shard_cache is not None:
            shard_cache.writer.discard()
    figures.gpu = sampler.summary()
    figures.n_sequences = int(figures.extra.get("n_distinct_windows", 0))
    figures.run_seconds = time.perf_counter() - started - figures.load_seconds
    figures.ended_at = time.time()
    log.info(
        "scored %d variant units (%d from the result cache): %d distinct windows, %d masked inputs, %d unmasked "
        "inputs; %.1f s of model compute",
        figures.n_records,
        figures.n_cached,
        figures.n_sequences,
        figures.extra.get("n_masked_inputs", 0),
        figures.extra.get("n_window_inputs", 0),
        figures.compute_seconds,
    )
    if files.figures is not None:
        Path(files.figures).parent.mkdir(parents=True, exist_ok=True)
        Path(files.figures).write_text(json.dumps(figures.as_dict(), indent=2) + "\n")
    return figures


def run_variants(
    work: VariantWork,
    variant_set: VariantSetInput,
    files: RunFiles,
    hardware: Hardware | None = None,
    cache: ResultCache | None = None,
) -> RunFigures:
    """A variant set scored into one Parquet (`files.outputs["variant_effect"]`) and its rejects (`files.rejects`):
    the workflow's path in one process (pack, score the shards, merge; `cache` as in `score_variant_shard`). Every
    variant is read and checked before the model loads, so a bad one under `on_invalid: error` stops the run in
    seconds."""
    hardware = (hardware or Hardware()).resolved()
    out = Path(files.outputs[VARIANT_TASK])
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".seqshard-variants-", dir=out.parent) as scratch:
        pack_dir = Path(scratch)
        started = time.perf_counter()
        summary = pack_variant_sets([variant_set], pack_dir, work.settings, work.policy, max_units=2**62)
        pack_seconds = time.perf_counter() - started
        scores, figures = {}, None
        for shard in read_variant_manifest(pack_dir / "manifest.tsv"):
            scores[shard.name] = pack_dir / "scores" / f"{shard.name}.parquet"
            figures = score_variant_shard(
                work,
                RunFiles(
                    pack_dir / "shards" / f"{shard.name}.parquet",
                    {VARIANT_TASK: scores[shard.name]},
                    labels=files.labels,
                ),
                hardware,
                cache,
            )
        started = time.perf_counter()
        rejects = files.rejects or out.with_suffix(".rejects.tsv")
        merge_variant_sets(
            pack_dir,
            scores,
            {variant_set.name: out},
            {variant_set.name: rejects},
            policy=work.policy,
            provenance={**work.provenance, "n_shards": len(scores)},
        )
        merge_seconds = time.perf_counter() - started
    if figures is None:
        precision = hardware.precision
        assert precision is not None
        figures = RunFigures(
            dict(files.labels), precision.device, precision.dtype, hardware.threads, hardware.batch_tokens
        )
    figures.extra.update(
        pack_seconds=round(pack_seconds, 4),
        merge_seconds=round(merge_seconds, 4),
        n_variants=summary.n_variants,
        n_accepted=summary.n_accepted,
        n_units=summary.n_units,
    )
    if files.figures is not None:
        Path(files.figures).parent.mkdir(parents=True, exist_ok=True)
        Path(files.figures).write_text(json.dumps(figures.as_dict(), indent=2) + "\n")
    return figures
