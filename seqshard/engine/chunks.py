"""Score records chunk by chunk, in input order: the next chunk is read and tokenized in a background thread while
the model computes the current one, and records that need no computing get their rows all the same.

Work not done twice: identical sequences (after upper-casing) are computed once, and sequences the result cache
holds are not computed at all; every record still gets its row, with its own id, in input order. Results a later
record will need are kept until its row is written. `score_records` is the in-memory form for a handful of
records (the HTTP server's batches).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from seqshard.engine.runner import Runner
from seqshard.engine.tasks import PassTask, check_molecule, fit_for, prepare_tasks, score_encoded
from seqshard.engine.types import CHUNK_RECORDS, RunFigures, TaskSettings
from seqshard.engine.windows import EncodedChunk, ModelFit
from seqshard.io.fasta import SequenceRecord
from seqshard.io.parquet import task_table
from seqshard.models import LoadedModel

log = logging.getLogger(__name__)


class RecordError(RuntimeError):
    """A valid record that could not be scored (too large for the device even alone), with `on_invalid: error`."""


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


@dataclass(frozen=True)
class ChunkLimits:
    """How much of the input one chunk holds: at most `records` records and (unless one record alone is longer)
    `residues` residues; enough for many full batches while bounding memory whatever the input's size."""

    records: int = CHUNK_RECORDS
    residues: int = 64 * 16384

    @classmethod
    def for_budget(cls, batch_tokens: int, records: int = CHUNK_RECORDS) -> ChunkLimits:
        """The CPU's chunks: `records` records and 64 batches' worth of residues."""
        return cls(records, 64 * batch_tokens)


@dataclass(frozen=True)
class Reuse:
    """Rows that are not computed: `duplicates` (record positions in the whole input, see
    `seqshard.engine.driver.validate_input`) copies a repeated sequence's row from its first occurrence;
    `precomputed` holds rows the result cache had."""

    duplicates: Duplicates | None = None
    precomputed: Precomputed | None = None


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


def score_chunks(
    runner: Runner,
    records: Iterable[SequenceRecord],
    tasks: Sequence[PassTask],
    fit: ModelFit,
    limits: ChunkLimits,
    reuse: Reuse = Reuse(),
    progress_seconds: float = 30.0,
) -> Iterator[ScoredChunk]:
    """Score `records` chunk by chunk, in input order, overlapping the CPU work around the model with compute.

    `runner` holds the model, bound to the records' molecule, and the run's figures; `tasks` share its passes
    (`prepare_tasks`), with the input fitted to the model as `fit` says. `records` may be lazy (a FASTA being
    read): a background thread takes the next chunk from it (`limits`) and tokenizes it while the model runs on
    the current one. Inside a chunk, inputs are length-sorted into token-budget batches. With `reuse`, repeated
    sequences and cached ones are not computed again: their rows are copied.
    """
    loaded, figures = runner.loaded, runner.figures
    duplicates, precomputed = reuse.duplicates, reuse.precomputed
    chunks = iter_chunks(records, limits.records, limits.residues)
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
        encoded = fit.encode([chunk[i].sequence for i in fresh.tolist()], loaded.tokenizer)
        return chunk, fresh, np.flatnonzero(cached), encoded

    started = last_report = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="seqshard-read") as background:
        upcoming = background.submit(prepare)
        while (prepared := upcoming.result()) is not None:
            upcoming = background.submit(prepare)
            chunk, fresh, cached, encoded = prepared
            figures.n_windows += _model_inputs(encoded)
            figures.n_windowed += int((encoded.n_windows > 1).sum())
            figures.n_truncated += int(encoded.truncated.sum())
            columns, failed = score_encoded(runner, encoded, tasks) if len(fresh) else ({}, {})
            computed: Rows = (_base_columns(encoded), columns)
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
        log.warning("%d sequence(s) longer than %d tokens were truncated", figures.n_truncated, fit.max_tokens)


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
) -> ScoredChunk:
    """`records` scored in memory, as one chunk: the base columns and the task's columns, in input order (the
    HTTP server's batches). A record that cannot be scored is a RecordError naming it."""
    if not records:
        raise ValueError("no records to score")
    loaded = loaded.for_molecule(molecule)
    check_molecule([settings], molecule)
    tasks = prepare_tasks(loaded, [settings])
    encoded = fit_for(loaded, tasks).encode([r.sequence for r in records], loaded.tokenizer)
    runner = Runner(loaded, figures, batch_tokens=batch_tokens, dtype=dtype, max_padding=max_padding)
    return score_encoded_records(runner, records, encoded, tasks)


def score_encoded_records(
    runner: Runner, records: Sequence[SequenceRecord], encoded: EncodedChunk, tasks: Sequence[PassTask]
) -> ScoredChunk:
    """`records`, already encoded as `encoded` (by `ModelFit.encode` with the runner's model), scored in memory as
    one chunk: `score_records` once the input is tokenized (the server tokenizes each request at admission, so
    that its queue counts real tokens). A record that cannot be scored is a RecordError naming it; a run that
    `runner.should_stop` stops raises RunCancelled."""
    figures = runner.figures
    columns, failed = score_encoded(runner, encoded, tasks)
    if failed:
        index, reason = next(iter(failed.items()))
        raise RecordError(f"record {records[index].id!r}: {reason}")
    figures.n_records += len(records)
    figures.n_sequences += len(records)
    figures.n_windows += _model_inputs(encoded)
    figures.n_windowed += int((encoded.n_windows > 1).sum())
    figures.n_truncated += int(encoded.truncated.sum())
    return ScoredChunk(list(records), _base_columns(encoded), columns)


def _model_inputs(encoded: EncodedChunk) -> int:
    """The model inputs of a chunk's records: their windows, and with both strands those of the other strand."""
    return int(encoded.n_inputs) + (int(encoded.reverse.n_inputs) if encoded.reverse is not None else 0)


def _base_columns(encoded: EncodedChunk) -> dict[str, np.ndarray]:
    return {"n_tokens": encoded.n_tokens, "n_windows": encoded.n_windows, "truncated": encoded.truncated}


def chunk_table(
    chunk: ScoredChunk, settings: TaskSettings, hidden_size: int, metadata: Mapping[str, object]
) -> pa.Table:
    """A chunk's output rows for one task, as the Parquet files hold them: the base columns, then the task's."""
    base = {
        "id": [record.id for record in chunk.records],
        "length": [len(record.sequence) for record in chunk.records],
        **chunk.base,
    }
    return task_table(settings.task, hidden_size, base, chunk.columns[settings.task], metadata)
