"""The per-file driver: a model's tasks over every record of one FASTA file (a shard or a user's file), one Parquet
per task, plus the run's figures. It is the one code path behind the workflow's `infer_shard` rule and the
`seqshard embed` / `score` commands.

Validate the whole file first (cheap, streaming: a bad record at the end fails in seconds, not after hours of
scoring), load the model, then read the file again in chunks (`seqshard.engine.chunks`), writing each chunk's rows
in a background thread while the model computes the next. A run is described by three objects
(`seqshard.engine.types`): `Work` (what to compute), `RunFiles` (where the input and outputs are) and `Hardware`
(what it runs on). Warming files up onto local disk and checking a workflow shard's siblings are the callers' part
(`seqshard.runtime.storage.warm_up`, `seqshard.runtime.devices.check_run_precision`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from seqshard.engine.chunks import (
    ChunkLimits,
    Duplicates,
    Precomputed,
    RecordError,
    Reuse,
    ScoredChunk,
    chunk_table,
    score_chunks,
    sequence_digest,
)
from seqshard.engine.heads import head_digest
from seqshard.engine.runner import Runner
from seqshard.engine.seams import measure_seams
from seqshard.engine.tasks import check_molecule, fit_for, prepare_tasks
from seqshard.engine.types import CHUNK_RECORDS, PASSES, Hardware, RunFigures, RunFiles, TaskSettings, Work
from seqshard.engine.windows import ModelFit
from seqshard.io.fasta import Rejected, ValidationReport, iter_valid_records, log_report, write_rejects
from seqshard.io.parquet import TableWriter
from seqshard.io.sequences import DEFAULT_POLICY, InputPolicy
from seqshard.models import LoadedModel, get_loader, layer_numbers
from seqshard.plan.packing import iter_packed_shard
from seqshard.runtime.cache import CacheWriter, ResultCache, cache_key
from seqshard.runtime.devices import Precision, precision_provenance
from seqshard.runtime.monitoring import GpuSampler

log = logging.getLogger(__name__)

GPU_CHUNK_OUTPUT_BYTES = 2**28  # float32 output rows a GPU job's chunk may hold (see chunk_limits)


@dataclass
class InputCheck:
    """What the validation pass over a whole input found, before any model work."""

    report: ValidationReport
    duplicates: Duplicates
    digests: np.ndarray  # per record, 16 bytes (object array: numpy "S16" would drop trailing zero bytes)
    n_valid: int


def validate_input(
    fasta: Path | str, molecule: str, *, policy: InputPolicy = DEFAULT_POLICY, dedupe: bool = True
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


def task_metadata(loaded: LoadedModel, settings: TaskSettings, work: Work, precision: Precision) -> dict[str, object]:
    """The provenance a task's Parquet file carries: its settings as configured, the model, the precision, and the
    token limit the fit resolved to."""
    return {
        **asdict(settings),
        "architecture": work.architecture,
        "checkpoint": work.checkpoint,
        "checkpoint_digest": loaded.digest,
        "dtype": precision.dtype,
        "molecule": work.molecule,
        "hidden_size": loaded.hidden_size,
        "max_tokens": ModelFit.of(loaded, settings).max_tokens,
        **({"head_digest": head_digest(settings.head)} if settings.head else {}),
        # `layers` as given (above) and as the absolute numbers they came to (0: the embeddings, N: the last).
        **(
            {"layer_numbers": list(layer_numbers(settings.layers, loaded.num_layers)), "num_layers": loaded.num_layers}
            if settings.task == "embed" and settings.layers is not None
            else {}
        ),
        # The resolved device type joins the provenance: the merge then refuses shards computed on other hardware.
        **precision_provenance(precision),
        **work.provenance,
    }


def chunk_limits(hardware: Hardware, settings: Sequence[TaskSettings], hidden_size: int) -> ChunkLimits:
    """Records and residues per chunk: a chunk holds its records, token ids and one output row per record.

    On a GPU chunks are larger, unless asked otherwise: a batch plan over many thousands of inputs fills its
    batches from one width bucket (little padding, one shape per width; see seqshard.engine.batching). Their
    output rows stay within GPU_CHUNK_OUTPUT_BYTES (26,214 records of LucaOne's 2560 float32s, 65,536 of
    DNABERT-2's 768), and per-token outputs, which would make such a chunk gigabytes, keep the CPU's chunks.
    """
    device = hardware.precision.device if hardware.precision is not None else hardware.device
    default = hardware.chunk_records == CHUNK_RECORDS
    if device.startswith("cuda") and default and not any(s.per_token for s in settings):
        records = min(16 * CHUNK_RECORDS, max(CHUNK_RECORDS, GPU_CHUNK_OUTPUT_BYTES // (4 * hidden_size)))
        return ChunkLimits(records, 1024 * hardware.batch_tokens)
    return ChunkLimits.for_budget(hardware.batch_tokens, hardware.chunk_records)


def run_tasks(
    work: Work, files: RunFiles, hardware: Hardware | None = None, cache: ResultCache | None = None
) -> RunFigures:
    """Run `work`'s tasks over every record of `files.fasta`, writing task t's Parquet to `files.outputs[t]`.

    The whole file is validated first (and its repeated sequences found); then it is read, tokenized and scored
    chunk by chunk, each chunk's rows written (in row groups of at most `ROW_GROUP_ROWS`, per task) while the
    model computes the next. Tasks that share a forward pass get one. With `on_invalid="skip"` invalid records,
    and records that cannot be scored at all, go to `files.rejects` instead of stopping the run. With a result
    `cache`, sequences it already holds for every task are not computed again, and the rest are added to it.
    Device and dtype are `hardware`'s, resolved here unless the caller resolved them.
    """
    by_task = work.by_task()
    if set(by_task) != set(files.outputs):
        raise ValueError(f"outputs {sorted(files.outputs)} do not match the tasks {sorted(by_task)}")
    check_molecule(work.tasks, work.molecule)
    hardware = (hardware or Hardware()).resolved()
    precision = hardware.precision
    assert precision is not None
    torch.set_num_threads(max(1, hardware.threads))
    os.environ.setdefault("RAYON_NUM_THREADS", str(max(1, hardware.threads)))  # the DNABERT-2 tokenizer's pool
    log.info("running on %s in %s (%s)", precision.device_name or precision.device, precision.dtype, precision.reason)
    figures = _start_figures(work, files, hardware)

    started = time.perf_counter()
    check = packed_input(files.fasta) if files.packed else validate_input(
        files.fasta, work.molecule, policy=work.policy, dedupe=work.dedupe
    )  # fmt: skip
    log.info(
        "%s: %d records, %d valid (%d distinct sequences), %d rejected; validated in %.1f s",
        files.fasta, check.report.n_records, check.n_valid, check.n_valid - check.duplicates.n_duplicates,
        len(check.report.rejected), time.perf_counter() - started,
    )  # fmt: skip
    log_report(check.report)
    loaded = _load(work, precision, figures)

    metadata = {task: task_metadata(loaded, settings, work, precision) for task, settings in by_task.items()}
    keys = {}
    if cache is not None:
        keys = {task: cache_key(_cache_identity(loaded, s, work, precision)) for task, s in by_task.items()}
    precomputed = _cached_rows(cache, keys, check) if cache is not None else None
    records = iter_packed_shard(files.fasta) if files.packed else iter_valid_records(
        files.fasta, work.molecule, work.policy
    )  # fmt: skip
    bound = loaded.for_molecule(work.molecule)
    tasks = prepare_tasks(bound, list(by_task.values()))
    runner = Runner(bound, figures, batch_tokens=hardware.batch_tokens, dtype=precision.dtype)
    fit = fit_for(bound, tasks)
    scored = score_chunks(
        runner, records, tasks, fit, chunk_limits(hardware, work.tasks, loaded.hidden_size),
        Reuse(check.duplicates, precomputed),
    )  # fmt: skip
    # The seams are measured on a few windowed records of a pass that embeds (not on mlm_score's masked copies).
    seam_sample: list[str] = []
    if work.seam_sample and any(task.name in PASSES["hidden"] for task in tasks):
        scored = _sample_windowed(scored, work.seam_sample, seam_sample)
    rejected = _write(scored, _Outputs(work, files, check, metadata, loaded.hidden_size), figures, cache, keys)
    if files.rejects is not None:
        write_rejects(rejected, Path(files.rejects))
    figures.extra.update(measure_seams(runner, seam_sample, fit))
    _finish_figures(figures, files, check, started)
    return figures


def _sample_windowed(scored: Iterator[ScoredChunk], limit: int, sample: list[str]) -> Iterator[ScoredChunk]:
    """The scored chunks as they come, keeping (in `sample`) the first `limit` distinct sequences that were cut into
    several windows, for the seam probe (seqshard.engine.seams)."""
    seen: set[str] = set()
    for chunk in scored:
        if len(sample) < limit:
            for row in np.flatnonzero(chunk.base["n_windows"] > 1).tolist():
                sequence = chunk.records[row].sequence
                if row not in chunk.failed and sequence not in seen and len(sample) < limit:
                    seen.add(sequence)
                    sample.append(sequence)
        yield chunk


def _start_figures(work: Work, files: RunFiles, hardware: Hardware) -> RunFigures:
    """The run's figures as they stand before the model loads: precision, run key, warm-up."""
    precision = hardware.precision
    assert precision is not None
    figures = RunFigures(dict(files.labels), precision.device, precision.dtype, hardware.threads, hardware.batch_tokens)
    figures.extra.update({**precision.figures(), "run_key": work.run_key(hardware.dtype)})
    if files.warmup is not None:
        figures.warmup_seconds = files.warmup.seconds
        figures.extra.update(warmup=files.warmup.method, warmup_downloaded_bytes=files.warmup.downloaded_bytes)
    return figures


def _load(work: Work, precision: Precision, figures: RunFigures) -> LoadedModel:
    started = time.perf_counter()
    loaded = get_loader(work.architecture)(
        work.checkpoint, precision.device, torch.float32, interface=work.policy.interface
    )
    figures.load_seconds = time.perf_counter() - started
    log.info(
        "loaded %s from %s in %.2f s (%s)", work.architecture, loaded.checkpoint_dir, figures.load_seconds,
        precision.device,
    )  # fmt: skip
    if work.molecule not in loaded.molecules:
        raise ValueError(
            f"{work.architecture} does not accept {work.molecule} sequences (accepts {sorted(loaded.molecules)})"
        )
    return loaded


@dataclass
class _Outputs:
    """What writing a run's chunks needs to know: the tasks, their files and provenance, the input's check."""

    work: Work
    files: RunFiles
    check: InputCheck
    metadata: Mapping[str, Mapping[str, object]]
    hidden_size: int


def _write(
    scored: Iterator[ScoredChunk],
    outputs: _Outputs,
    figures: RunFigures,
    cache: ResultCache | None,
    keys: Mapping[str, str],
) -> list[Rejected]:
    """Write every scored chunk's rows, one chunk behind the model (in a background thread), and add what was
    computed to the result cache; returns the rejects (invalid records, and records that could not be scored)."""
    by_task = outputs.work.by_task()
    check = outputs.check
    rejected: list[Rejected] = list(check.report.rejected)
    writers = {task: TableWriter(outputs.files.outputs[task]) for task in by_task}
    cache_writers = {task: CacheWriter(cache, key) for task, key in keys.items()} if cache is not None else {}
    gpu_sampler = GpuSampler.for_device(figures.device)
    try:
        with gpu_sampler, ThreadPoolExecutor(max_workers=1, thread_name_prefix="seqshard-write") as pool_:
            written: Future[None] | None = None
            for chunk in scored:
                keep = _kept_rows(chunk, outputs.work.policy, rejected, outputs.files.fasta)
                tables = {
                    task: chunk_table(chunk, settings, outputs.hidden_size, outputs.metadata[task])
                    for task, settings in by_task.items()
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
    figures.gpu = gpu_sampler.summary()
    figures.extra["n_rows_written"] = next(iter(writers.values())).n_rows
    return rejected


def _finish_figures(figures: RunFigures, files: RunFiles, check: InputCheck, started: float) -> None:
    figures.run_seconds = time.perf_counter() - started
    figures.ended_at = time.time()
    n_rows = figures.extra.pop("n_rows_written")
    log.info(
        "wrote %d rows per task to %s (%d records read, %d CRLF lines, %d duplicates computed once): %d windows "
        "(%d sequences windowed), %d truncated; useful-token fraction %.3f, %.1f seq/s of model compute, %.1f s in all",
        n_rows, ", ".join(str(p) for p in files.outputs.values()), check.report.n_records, check.report.crlf_lines,
        figures.n_duplicates, figures.n_windows, figures.n_windowed, figures.n_truncated,
        figures.n_tokens / max(1, figures.n_computed_tokens), figures.n_sequences / max(figures.compute_seconds, 1e-9),
        figures.run_seconds,
    )  # fmt: skip
    if files.figures is not None:
        Path(files.figures).parent.mkdir(parents=True, exist_ok=True)
        Path(files.figures).write_text(json.dumps(figures.as_dict(), indent=2) + "\n")


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


def _cache_identity(loaded: LoadedModel, settings: TaskSettings, work: Work, precision: Precision) -> dict[str, object]:
    """Everything a task's cached numbers depend on: the checkpoint by digest (not by path), the relevant
    settings, the input fitting the model resolved to, dtype, device type (a GPU's fp32 differs from a CPU's in
    the last bits, and provenance names the device type) and molecule."""
    fit = ModelFit.of(loaded, settings)
    return {
        **settings.relevant(),
        "architecture": work.architecture,
        "checkpoint_digest": loaded.digest,
        "head_digest": head_digest(settings.head) if settings.head else None,
        "max_tokens": fit.max_tokens,
        "window_length": fit.window_length,
        "dtype": precision.dtype,
        "device_type": next(loaded.model.parameters()).device.type,
        "molecule": work.molecule,
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
