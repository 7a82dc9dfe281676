"""Pack the samples a model runs on into token-balanced shards of distinct sequences (`seqshard.plan.merge`
gathers the scored shards back into one file per sample).

`pack_samples` validates every sample (one bad sample is reported with the others, before any model work),
gives each distinct sequence (per molecule, after upper-casing) one index in order of first appearance, and cuts
the distinct sequences of each molecule into contiguous shards of about `target_tokens` estimated tokens, so
many small samples share a shard and a large one spreads over several. A record map says, for every valid record
of every sample in input order, its id, length and where its sequence sits (shard and row).

A sample that cannot be used (a file that is not readable FASTA, or holds no valid record) stops the pack with
`on_invalid: error`, naming the samples it holds back. With `on_invalid: skip` it fails alone: it is recorded as
`unreadable` with its reason (`samples.tsv`, and a row of its rejects) and the others are packed; the merge
writes it empty files that say so and `check_merged` ends the run naming it. Only when no sample can be used
does the pack stop.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from seqshard.io.fasta import (
    FastaFormatError,
    FastaValidationError,
    SequenceRecord,
    ValidationReport,
    iter_valid_records,
    log_report,
)
from seqshard.io.sequences import DEFAULT_POLICY, InputPolicy
from seqshard.plan.sharding import estimate_tokens, plan_shards, shard_name

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
SAMPLES_HEADER = "sample\tfasta\tmolecule\tn_records\tn_valid\tn_rejected\tcrlf_lines\tstatus\terror\n"
# A sample's status in samples.tsv and in its files' provenance: `ok`, or `unreadable` (with on_invalid: skip, its file
# could not be read as FASTA or held no valid record; its reason is in the `error` column).
OK, UNREADABLE = "ok", "unreadable"
# Samples named in a message before the rest are counted.
NAMED_SAMPLES = 10


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
    unreadable: dict[str, str] = field(default_factory=dict)  # sample -> why it could not be used (on_invalid: skip)


class SampleErrors(ValueError):
    """One or more samples cannot be used as they are; one line per sample (`lines`, each told on its own), and a
    last line naming the samples held back with them, if any."""

    def __init__(self, lines: Sequence[str]) -> None:
        self.lines = list(lines)
        super().__init__("\n".join(self.lines))


def name_samples(names: Sequence[str]) -> str:
    """`a, b, c` or, past NAMED_SAMPLES, the first ones and how many more."""
    shown = ", ".join(names[:NAMED_SAMPLES])
    return shown + (f" and {len(names) - NAMED_SAMPLES} more" if len(names) > NAMED_SAMPLES else "")


def _reason(error: BaseException, fasta: str) -> str:
    """The error's message without the file name it starts with (the file has its own column), on one line."""
    text = " ".join(str(error).split("\n")).replace("\t", " ")
    return text.removeprefix(f"{fasta}: ")


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
    failed: dict[str, BaseException] = {}
    for sample in samples:
        report = ValidationReport(Path(sample.fasta))
        added: list[bytes] = []  # this sample's new distinct sequences, forgotten again if it fails part-way
        try:
            for record in iter_valid_records(sample.fasta, sample.molecule, policy, report=report):
                key = sequence_key(sample.molecule, record.sequence)
                if key not in seen:
                    seen[key] = len(molecule_of)
                    molecule_of.append(sample.molecule)
                    tokens_of.append(estimate_tokens(len(record.sequence)))
                    added.append(key)
        except (FastaValidationError, FastaFormatError, OSError) as error:
            failed[sample.name] = error
            for key in added:
                del seen[key]
            del molecule_of[len(molecule_of) - len(added) :], tokens_of[len(tokens_of) - len(added) :]
        summary.reports[sample.name] = report
    if failed:
        _stop_or_set_aside(samples, failed, policy, summary)

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
                if sample.name in summary.unreadable:
                    continue
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
            error = summary.unreadable.get(sample.name)
            n_valid = 0 if error is not None else report.n_valid
            handle.write(
                f"{sample.name}\t{sample.fasta}\t{sample.molecule}\t{report.n_records}\t{n_valid}\t{len(report.rejected)}\t"
                f"{report.crlf_lines}\t{UNREADABLE if error is not None else OK}\t{error or ''}\n"
            )
    with open(out_dir / "rejects.tsv", "w", encoding="utf-8") as handle:
        handle.write("sample\t" + REJECTS_HEADER)
        for sample in samples:
            for fault in summary.reports[sample.name].rejected:
                handle.write(f"{sample.name}\t{fault.file}\t{fault.record_id}\t{fault.line}\t{fault.reason}\n")
            if sample.name in summary.unreadable:  # the file as a whole: no record id, line 0
                handle.write(f"{sample.name}\t{sample.fasta}\t\t0\t{summary.unreadable[sample.name]}\n")
    for sample in samples:
        log_report(summary.reports[sample.name])
    log.info(
        "%d sample(s), %d valid records, %d distinct sequences (%d duplicates computed once), %d shard(s)%s",
        len(samples), summary.n_records, summary.n_distinct, summary.n_records - summary.n_distinct,
        len(summary.shards), f"; {len(summary.unreadable)} sample(s) unreadable" if summary.unreadable else "",
    )  # fmt: skip
    return summary


def _stop_or_set_aside(
    samples: Sequence[SampleInput], failed: Mapping[str, BaseException], policy: InputPolicy, summary: PackSummary
) -> None:
    """Samples that cannot be used: with `on_invalid: error` (or when no sample is left) an error naming each and
    the samples it holds back; with `skip`, each is set aside in `summary.unreadable` and the others go on."""
    lines = [f"sample {name}: {error}" for name, error in failed.items()]
    held_back = [sample.name for sample in samples if sample.name not in failed]
    if not held_back:
        raise SampleErrors(lines)
    if policy.on_invalid == "error":
        them = "it" if len(failed) == 1 else "them"
        raise SampleErrors(
            [
                *lines,
                f"held back: the {len(held_back)} other sample(s) of this model entry, packed with {them}: "
                f"{name_samples(held_back)}; fix the file(s) named, or set "
                f"{policy.interface.setting('on_invalid', 'skip')} so that a bad record or file stops only itself",
            ]
        )
    fasta = {sample.name: sample.fasta for sample in samples}
    for (name, error), line in zip(failed.items(), lines, strict=True):
        log.warning("%s; set aside, the other samples are packed", line)
        summary.unreadable[name] = _reason(error, fasta[name])


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
