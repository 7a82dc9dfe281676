"""Pack the samples a model runs on into token-balanced shards of distinct sequences, and gather the scored
shards back into one file per sample.

`pack_samples` validates every sample (one bad sample is reported with the others, before any model work),
gives each distinct sequence (per molecule, after upper-casing) one index in order of first appearance, and cuts
the distinct sequences of each molecule into contiguous shards of about `target_tokens` estimated tokens, so
many small samples share a shard and a large one spreads over several. A record map says, for every valid record
of every sample in input order, its id, length and where its sequence sits (shard and row).

`merge_model` writes each sample's file per task from the scored shards through that map: rows in the sample's
input order, each with the record's own id and length and its sequence's values (so duplicates, within or
across samples, get identical values), streaming the map one bounded batch at a time.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from seqshard.fasta import (
    DEFAULT_POLICY,
    FastaFormatError,
    FastaValidationError,
    InputPolicy,
    Rejected,
    SequenceRecord,
    ValidationReport,
    iter_valid_records,
    log_report,
    write_rejects,
)
from seqshard.parquet import ROW_GROUP_ROWS, TableWriter, provenance_metadata
from seqshard.sharding import estimate_tokens, plan_shards, shard_name

log = logging.getLogger(__name__)

RECORD_MAP_SCHEMA = pa.schema(
    [
        pa.field("sample", pa.string(), nullable=False),
        pa.field("record", pa.int64(), nullable=False),  # position among the sample's valid records
        pa.field("id", pa.string(), nullable=False),
        pa.field("line", pa.int64(), nullable=False),  # header line in the sample's FASTA
        pa.field("length", pa.int32(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("row", pa.int64(), nullable=False),  # the sequence's row in its shard
    ]
)
REJECTS_HEADER = "file\trecord_id\tline\treason\n"
MANIFEST_HEADER = "shard\tmolecule\tn_sequences\test_tokens\n"
SAMPLES_HEADER = "sample\tfasta\tmolecule\tn_records\tn_valid\tn_rejected\tcrlf_lines\n"


@dataclass(frozen=True)
class SampleInput:
    name: str
    fasta: str
    molecule: str


@dataclass(frozen=True)
class PackedShard:
    name: str
    molecule: str
    n_sequences: int
    est_tokens: int


@dataclass
class PackSummary:
    shards: list[PackedShard]
    reports: dict[str, ValidationReport] = field(default_factory=dict)
    n_records: int = 0
    n_distinct: int = 0


class SampleErrors(ValueError):
    """One or more samples cannot be used as they are; the message has one line per sample."""


def sequence_key(molecule: str, sequence: str) -> bytes:
    """What makes two records the same input: molecule and upper-cased sequence (validation upper-cases)."""
    return hashlib.blake2b(f"{molecule}\0{sequence}".encode(), digest_size=16).digest()


def pack_samples(
    samples: Sequence[SampleInput],
    out_dir: Path | str,
    *,
    target_tokens: int,
    max_sequences: int | None = None,
    policy: InputPolicy = DEFAULT_POLICY,
) -> PackSummary:
    """Validate `samples`, and write their distinct sequences as shards plus the record map and manifests.

    `out_dir` receives `shards/<name>.fa` (headers are the sequences' global indices), `manifest.tsv`,
    `records.parquet`, `samples.tsv` and `rejects.tsv` (every sample's invalid records, with a `sample` column;
    `merge_model` hands each sample its own table). Two passes over each input keep memory at the
    distinct sequences' digests: the first validates and counts, the second writes.
    """
    out_dir = Path(out_dir)
    summary = PackSummary(shards=[])
    seen: dict[bytes, int] = {}
    molecule_of: list[str] = []  # per distinct sequence
    tokens_of: list[int] = []
    problems: list[str] = []
    for sample in samples:
        report = ValidationReport(Path(sample.fasta))
        try:
            for record in iter_valid_records(sample.fasta, sample.molecule, policy, report=report):
                key = sequence_key(sample.molecule, record.sequence)
                if key not in seen:
                    seen[key] = len(molecule_of)
                    molecule_of.append(sample.molecule)
                    tokens_of.append(estimate_tokens(len(record.sequence)))
        except (FastaValidationError, FastaFormatError, OSError) as error:
            problems.append(f"sample {sample.name}: {error}")
        summary.reports[sample.name] = report
    if problems:
        raise SampleErrors("\n".join(problems))

    # Shards per molecule, distinct sequences in order of first appearance.
    shard_of = np.empty(len(molecule_of), dtype=np.int64)
    row_of = np.empty(len(molecule_of), dtype=np.int64)
    molecules = np.array(molecule_of, dtype=object)
    for molecule in dict.fromkeys(molecule_of):
        members = np.flatnonzero(molecules == molecule)
        for planned in plan_shards([tokens_of[i] for i in members.tolist()], target_tokens, max_sequences):
            number = len(summary.shards)
            chosen = members[planned.start : planned.stop]
            shard_of[chosen] = number
            row_of[chosen] = np.arange(len(chosen))
            summary.shards.append(PackedShard(shard_name(number), molecule, len(chosen), planned.est_tokens))

    shard_dir = out_dir / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    handles = {s.name: open(shard_dir / f"{s.name}.fa", "w", encoding="utf-8") for s in summary.shards}  # noqa: SIM115
    written = np.zeros(len(molecule_of), dtype=bool)
    try:
        with pq.ParquetWriter(out_dir / "records.parquet", RECORD_MAP_SCHEMA, compression="zstd") as map_writer:
            for sample in samples:
                columns: dict[str, list[object]] = {name: [] for name in RECORD_MAP_SCHEMA.names}
                for record in iter_valid_records(sample.fasta, sample.molecule, replace(policy, on_invalid="skip")):
                    unique = seen[sequence_key(sample.molecule, record.sequence)]
                    shard = summary.shards[shard_of[unique]].name
                    if not written[unique]:
                        written[unique] = True
                        handles[shard].write(f">u{unique}\n{record.sequence}\n")
                    for name, value in zip(
                        RECORD_MAP_SCHEMA.names,
                        (sample.name, record.index, record.id, record.line, len(record.sequence), shard,
                         int(row_of[unique])),
                        strict=True,
                    ):  # fmt: skip
                        columns[name].append(value)
                    if len(columns["id"]) >= 65536:
                        map_writer.write_table(pa.table(columns, schema=RECORD_MAP_SCHEMA))
                        columns = {name: [] for name in RECORD_MAP_SCHEMA.names}
                map_writer.write_table(pa.table(columns, schema=RECORD_MAP_SCHEMA))
                summary.n_records += summary.reports[sample.name].n_valid
    finally:
        for handle in handles.values():
            handle.close()
    summary.n_distinct = len(molecule_of)

    with open(out_dir / "manifest.tsv", "w", encoding="utf-8") as handle:
        handle.write(MANIFEST_HEADER)
        for shard in summary.shards:
            handle.write(f"{shard.name}\t{shard.molecule}\t{shard.n_sequences}\t{shard.est_tokens}\n")
    with open(out_dir / "samples.tsv", "w", encoding="utf-8") as handle:
        handle.write(SAMPLES_HEADER)
        for sample in samples:
            report = summary.reports[sample.name]
            handle.write(
                f"{sample.name}\t{sample.fasta}\t{sample.molecule}\t{report.n_records}\t{report.n_valid}\t{len(report.rejected)}\t"
                f"{report.crlf_lines}\n"
            )
    with open(out_dir / "rejects.tsv", "w", encoding="utf-8") as handle:
        handle.write("sample\t" + REJECTS_HEADER)
        for sample in samples:
            for fault in summary.reports[sample.name].rejected:
                handle.write(f"{sample.name}\t{fault.file}\t{fault.record_id}\t{fault.line}\t{fault.reason}\n")
    for sample in samples:
        log_report(summary.reports[sample.name])
    log.info(
        "%d sample(s), %d valid records, %d distinct sequences (%d duplicates computed once), %d shard(s)",
        len(samples), summary.n_records, summary.n_distinct, summary.n_records - summary.n_distinct,
        len(summary.shards),
    )  # fmt: skip
    return summary


def iter_packed_shard(path: Path | str) -> Iterator[SequenceRecord]:
    """The records of a shard `pack_samples` wrote (`>u<index>` and one sequence line each, validated and
    upper-cased when packed): read without validating again, which would cost an inference job more than its
    model on a fast GPU."""
    with open(path, encoding="utf-8") as handle:
        for index, (header, sequence) in enumerate(zip(handle, handle, strict=True)):
            if not header.startswith(">"):
                raise ValueError(f"{path}: line {2 * index + 1} is not a header; not a shard pack_samples wrote")
            yield SequenceRecord(index, header[1:].rstrip("\n"), sequence.rstrip("\n"), 2 * index + 1)


def read_pack_manifest(path: Path | str) -> list[PackedShard]:
    """The shards a `pack_samples` run wrote, in order."""
    shards = []
    with open(path, encoding="utf-8") as handle:
        next(handle)
        for line in handle:
            name, molecule, n_sequences, est_tokens = line.rstrip("\n").split("\t")
            shards.append(PackedShard(name, molecule, int(n_sequences), int(est_tokens)))
    return shards


def read_pack_samples(path: Path | str) -> dict[str, dict[str, str]]:
    """Per-sample validation figures of a pack (`samples.tsv`)."""
    with open(path, encoding="utf-8") as handle:
        header = next(handle).rstrip("\n").split("\t")
        return {
            row[0]: dict(zip(header, row, strict=True)) for row in (line.rstrip("\n").split("\t") for line in handle)
        }


class _RowGroupCache:
    """Decoded row groups of the scored shards of one task, least recently used dropped beyond a byte budget."""

    def __init__(self, files: Mapping[str, Path], budget_bytes: int = 16 * 2**20) -> None:
        self.files = {name: pq.ParquetFile(path, pre_buffer=False) for name, path in files.items()}
        self.bounds = {
            name: np.cumsum([0] + [f.metadata.row_group(i).num_rows for i in range(f.num_row_groups)])
            for name, f in self.files.items()
        }
        self.budget = budget_bytes
        self._cache: OrderedDict[tuple[str, int], pa.Table] = OrderedDict()
        self._bytes = 0

    def group(self, shard: str, index: int) -> pa.Table:
        key = (shard, index)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        table = self.files[shard].read_row_group(index)
        self._cache[key] = table
        self._bytes += table.nbytes
        while self._bytes > self.budget and len(self._cache) > 1:
            _, dropped = self._cache.popitem(last=False)
            self._bytes -= dropped.nbytes
        return table

    def take(self, shards: np.ndarray, rows: np.ndarray) -> pa.Table:
        """The rows (shard, row) in the order given."""
        parts: list[pa.Table] = []
        order: list[np.ndarray] = []
        for shard in dict.fromkeys(shards.tolist()):
            where = np.flatnonzero(shards == shard)
            wanted = rows[where]
            groups = np.searchsorted(self.bounds[shard], wanted, side="right") - 1
            for group in np.unique(groups).tolist():
                inside = groups == group
                table = self.group(shard, group)
                parts.append(table.take(pa.array(wanted[inside] - self.bounds[shard][group])))
                order.append(where[inside])
        combined = pa.concat_tables(parts)
        return combined.take(pa.array(np.argsort(np.concatenate(order), kind="stable")))

    def provenance(self) -> tuple[dict[str, str], pa.Schema]:
        """The provenance every shard shares (an error names a shard that differs), and the files' schema."""
        reference: dict[str, str] | None = None
        first = ""
        for shard, handle in self.files.items():
            raw = handle.schema_arrow.metadata or {}
            theirs = {
                key.decode().removeprefix("seqshard."): value.decode()
                for key, value in raw.items()
                if key.decode().startswith("seqshard.") and key != b"seqshard.seqshard_version"
            }
            if reference is None:
                reference, first = theirs, shard
            elif theirs != reference:
                raise ValueError(f"scored shard {shard} differs in provenance from shard {first}; cannot merge")
        assert reference is not None
        return reference, next(iter(self.files.values())).schema_arrow


def _inference_rejects(directory: Path, shard_fasta: Path) -> dict[int, str]:
    """Rows of a scored shard that could not be scored (its `rejects.tsv`, ids `u<index>`), row -> reason."""
    reasons: dict[str, str] = {}
    with open(directory / "rejects.tsv", encoding="utf-8") as handle:
        next(handle)
        for line in handle:
            _, record_id, _, reason = line.rstrip("\n").split("\t", 3)
            reasons[record_id] = reason
    if not reasons:
        return {}
    with open(shard_fasta, encoding="utf-8") as handle:
        headers = [line[1:].strip() for line in handle if line.startswith(">")]
    return {row: reasons[name] for row, name in enumerate(headers) if name in reasons}


def _per_sample(record_map: pq.ParquetFile, failed: Mapping[str, Mapping[int, str]]) -> dict[str, tuple[int, int]]:
    """For each sample: the shards its records sit in, and its records that could not be scored — known before
    any row is written, for the files' provenance."""
    used: dict[str, set[str]] = {}
    unscored: dict[str, int] = {}
    for batch in record_map.iter_batches(columns=["sample", "shard", "row"]):
        for sample, shard, row in zip(*(column.to_pylist() for column in batch.columns), strict=True):
            used.setdefault(sample, set()).add(shard)
            if row in failed.get(shard, {}):
                unscored[sample] = unscored.get(sample, 0) + 1
    return {sample: (len(shards), unscored.get(sample, 0)) for sample, shards in used.items()}


def _append(writer: TableWriter, scored: _RowGroupCache, schema: pa.Schema, rows: pa.Table,
            metadata: Mapping[bytes, bytes]) -> None:  # fmt: skip
    """Append records (rows of the record map) to a sample's file: their sequences' values, their own ids."""
    if rows.num_rows == 0:
        return
    shards = np.asarray(rows.column("shard").to_numpy(zero_copy_only=False), dtype=object)
    values = scored.take(shards, rows.column("row").to_numpy())
    values = values.set_column(0, schema.field("id"), rows.column("id"))
    values = values.set_column(1, schema.field("length"), rows.column("length"))
    writer.write(values.replace_schema_metadata(metadata))


def write_merge_summary(
    path: Path | str, outputs: Mapping[tuple[str, str], Path | str], written: Mapping[str, int]
) -> None:
    """One line per merged file (sample, task, rows, path): the merge's one small output that `rule all` and the
    report ask for. Naming thousands of per-sample files as targets makes Snakemake's planning quadratic (each
    target is matched against every output of the merge)."""
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("sample\ttask\trows\tpath\n")
        for (sample, task), file in outputs.items():
            handle.write(f"{sample}\t{task}\t{written.get(sample, 0)}\t{file}\n")


def merge_model(
    pack_dir: Path | str,
    scored: Mapping[str, Mapping[str, Path | str]],
    outputs: Mapping[tuple[str, str], Path | str],
    model_rejects: Mapping[str, Path | str],
    *,
    model: str,
    on_invalid: str = "error",
    sample_rejects: Mapping[str, Path | str] | None = None,
) -> dict[str, int]:
    """Write every sample's file for every task of one model from its scored shards.

    `scored[task][shard]` is the directory a shard's scoring wrote for the pass holding `task` (it has
    `<task>.parquet` and `rejects.tsv`); `outputs[(sample, task)]` the file to write; `model_rejects[sample]` the
    sample's table of records that could not be scored (an error naming them with `on_invalid="error"`);
    `sample_rejects[sample]` where to copy the sample's invalid records from the pack (each sample's table is
    written by one model entry's merge: a job with thousands of inputs and outputs is slow to plan and record).

    The record map is streamed in input order, a bounded batch at a time, each batch's rows gathered from the
    scored shards (through a small cache of decoded row groups) and appended to its sample's files: memory stays
    flat whatever the number of rows. Returns the rows written per sample.
    """
    pack_dir = Path(pack_dir)
    summaries = read_pack_samples(pack_dir / "samples.tsv")
    _split_rejects(pack_dir / "rejects.tsv", sample_rejects or {})
    tasks = list(dict.fromkeys(task for _, task in outputs))
    wanted = set(sample for sample, _ in outputs)
    # Rows of scored shards that could not be scored (too large for the device even alone), per shard.
    failed: dict[str, dict[int, str]] = {}
    for by_shard in scored.values():
        for shard, directory in by_shard.items():
            rows = _inference_rejects(Path(directory), pack_dir / "shards" / f"{shard}.fa")
            failed.setdefault(shard, {}).update(rows)
    caches = {
        task: _RowGroupCache({shard: Path(d) / f"{task}.parquet" for shard, d in scored[task].items()})
        for task in tasks
    }
    provenance = {task: cache.provenance() for task, cache in caches.items()}
    record_map = pq.ParquetFile(pack_dir / "records.parquet")
    per_sample = _per_sample(record_map, failed)
    written: dict[str, int] = {}
    writers: dict[str, TableWriter] = {}
    metadata: dict[str, dict[bytes, bytes]] = {}
    rejected: list[Rejected] = []
    current: str | None = None

    def close(sample: str) -> None:
        expected = int(summaries[sample]["n_valid"]) - len(rejected)
        if written.get(sample, 0) != expected:  # raised inside the writers, so no partial file is left behind
            raise RuntimeError(f"{sample}: merged {written.get(sample, 0)} rows but the sample has {expected}")
        for writer in writers.values():
            writer.__exit__(None)
        writers.clear()
        write_rejects(rejected, Path(model_rejects[sample]))
        log.info("%s: %d rows per task (%s)%s", sample, written[sample], ", ".join(tasks),
                 f", {len(rejected)} record(s) could not be scored" if rejected else "")  # fmt: skip
        rejected.clear()

    try:
        for batch in record_map.iter_batches(batch_size=ROW_GROUP_ROWS):
            part = pa.Table.from_batches([batch])
            samples_here = part.column("sample").to_numpy(zero_copy_only=False)
            for sample in dict.fromkeys(samples_here.tolist()):
                if sample not in wanted:
                    continue
                if sample != current:
                    if current is not None:
                        close(current)
                    current = sample
                    n_shards, unscored = per_sample[sample]
                    extra = {"model": model, "sample": sample, "n_shards": n_shards,
                             "n_rejected": int(summaries[sample]["n_rejected"]) + unscored}  # fmt: skip
                    for task in tasks:
                        writers[task] = TableWriter(outputs[(sample, task)])
                        metadata[task] = provenance_metadata({**provenance[task][0], **extra})
                rows, failures = _without_failed(
                    part.filter(pa.array(samples_here == sample)), failed, summaries[sample]["fasta"], on_invalid
                )
                rejected.extend(failures)
                for task in tasks:
                    _append(writers[task], caches[task], provenance[task][1], rows, metadata[task])
                written[sample] = written.get(sample, 0) + rows.num_rows
        if current is not None:
            close(current)
    except BaseException as error:
        for writer in writers.values():  # the sample being written, if any: no partial file stays behind
            writer.__exit__(type(error))
        raise
    missing = sorted(wanted - set(written))
    if missing:
        raise ValueError(f"samples {missing} have no records in {pack_dir / 'records.parquet'}")
    return written


def _split_rejects(table: Path, outputs: Mapping[str, Path | str]) -> None:
    """Each sample's own rejects table (header always present) from the pack's table of every sample."""
    rows: dict[str, list[str]] = {sample: [] for sample in outputs}
    with open(table, encoding="utf-8") as handle:
        next(handle)
        for line in handle:
            sample, rest = line.split("\t", 1)
            if sample in rows:
                rows[sample].append(rest)
    for sample, path in outputs.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(REJECTS_HEADER + "".join(rows[sample]), encoding="utf-8")


def _without_failed(
    part: pa.Table, failed: Mapping[str, Mapping[int, str]], fasta: str, on_invalid: str
) -> tuple[pa.Table, list[Rejected]]:
    """The sample's map rows minus records whose sequence could not be scored, rows renumbered to the scored
    files (which lack those rows), and the rejects (or, with `on_invalid="error"`, an error naming them)."""
    if not any(failed.values()):
        return part, []
    shards = part.column("shard").to_pylist()
    rows = part.column("row").to_numpy().copy()
    keep = np.ones(part.num_rows, dtype=bool)
    rejected: list[Rejected] = []
    ids, lines = part.column("id").to_pylist(), part.column("line").to_pylist()
    for i, (shard, row) in enumerate(zip(shards, rows.tolist(), strict=True)):
        reasons = failed.get(shard)
        if not reasons:
            continue
        if row in reasons:
            keep[i] = False
            rejected.append(Rejected(fasta, ids[i], lines[i], reasons[row]))
        else:
            rows[i] = row - sum(1 for r in reasons if r < row)
    if rejected and on_invalid != "skip":
        first = rejected[0]
        raise ValueError(
            f"{len(rejected)} record(s) could not be scored; first: {first.describe()}; lower max_tokens or "
            "window_length, use a device with more memory, or set `on_invalid: skip` to list them as rejects"
        )
    part = part.set_column(part.schema.get_field_index("row"), "row", pa.array(rows))
    return part.filter(pa.array(keep)), rejected
