"""Read and validate FASTA files: one reader for the whole package, every fault located by file and line.

Lines come from `seqshard.io.textfiles` (plain, gzip, bzip2 or xz; a corrupt, truncated or non-UTF-8 file is an
error naming the line and byte). Records are then checked one by one: identifier, duplicates, the molecule's
alphabet, and alignment gaps and stop symbols as the user's `InputPolicy` declares. A record that fails is
either an error or a row of the rejects table, by the user's declared choice. Nothing is dropped or rewritten
without being counted: line endings, a byte-order mark, stripped stops and removed gaps all show in the
`ValidationReport` and the log.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from seqshard.io.interface import PYTHON, Interface
from seqshard.io.sequences import DEFAULT_POLICY, InputPolicy, sequence_checker
from seqshard.io.textfiles import TextFileError, TextLines

log = logging.getLogger(__name__)

# Faults listed one by one in the log; the rest are counted (all of them are in the error or rejects table).
LOGGED_FAULTS = 20

# Text before the first header that looks like another format, with a hint.
OTHER_FORMATS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"@"), "it looks like FASTQ (or SAM); convert it to FASTA first, e.g. `seqtk seq -A`"),
    (re.compile(r"LOCUS\s"), "it looks like GenBank; convert it to FASTA first"),
    (re.compile(r"ID {3}"), "it looks like EMBL; convert it to FASTA first"),
    (
        re.compile(r"\s*<(!DOCTYPE|html|\?xml|head|body)", re.IGNORECASE),
        "it looks like an HTML or XML page, such as an error page saved by a failed download",
    ),
    (re.compile(r"\s*[{\[]"), "it looks like JSON, such as an error response saved by a failed download"),
    (re.compile(r"##gff"), "it looks like GFF annotation, not sequence"),
    (re.compile(r"CLUSTAL|# STOCKHOLM|#NEXUS"), "it looks like an alignment format; convert it to FASTA first"),
    (re.compile(r"[ACGTUNacgtun]+\s*$"), "it looks like a bare sequence; each record needs a '>id' header line"),
]


class FastaFormatError(TextFileError):
    """The file as a whole cannot be read as FASTA: not text, corrupt or truncated compression, no records."""


@dataclass(frozen=True)
class SequenceRecord:
    """One valid record: `index` is its position among the sample's valid records (0-based, input order)."""

    index: int
    id: str
    sequence: str
    line: int  # 1-based line of the header in the source file


@dataclass(frozen=True)
class Rejected:
    """One invalid record and why it was refused."""

    file: str
    record_id: str
    line: int
    reason: str

    def describe(self) -> str:
        return f"{self.file}: record {self.record_id!r} (line {self.line}): {self.reason}"


class FastaValidationError(ValueError):
    """Raised with `on_invalid: error`: one line naming the file, the count and the first fault; all are in `faults`
    (and the first ones in the log, one line each)."""

    def __init__(self, faults: list[Rejected], interface: Interface = PYTHON) -> None:
        self.faults = faults
        super().__init__(
            f"{len(faults)} invalid FASTA record(s); the first: {faults[0].describe()}. Fix the input, or set "
            f"{interface.setting('on_invalid', 'skip')} to leave invalid records out and list them in a rejects table"
        )


@dataclass
class ValidationReport:
    """What one pass over a FASTA file found."""

    path: Path
    compression: str | None = None
    n_records: int = 0
    n_valid: int = 0
    crlf_lines: int = 0  # Windows line endings
    cr_lines: int = 0  # classic Mac line endings (a lone carriage return)
    byte_order_mark: bool = False
    end_of_file_mark: bool = False  # a final Ctrl-Z (DOS end of file), not read as part of the text
    n_terminal_stops: int = 0  # valid protein records whose one terminal '*' was stripped
    n_internal_stops: int = 0  # valid protein records with internal '*' read as X (internal_stops: unknown)
    n_gapped: int = 0  # valid records whose gaps were removed (gaps: remove)
    rejected: list[Rejected] = field(default_factory=list)


@dataclass
class _RawRecord:
    header_line: int
    title: str
    lines: list[str] = field(default_factory=list)  # sequence lines, at header_line + 1, + 2, ...


def _raw_records(lines: TextLines, path: Path) -> Iterator[_RawRecord]:
    record: _RawRecord | None = None
    for line in lines:
        if line.startswith(">"):
            if record is not None:
                yield record
            record = _RawRecord(lines.number, line[1:])
        elif record is not None:
            record.lines.append(line)
        elif line.strip():
            hint = next((f"; {text}" for pattern, text in OTHER_FORMATS if pattern.match(line)), "")
            raise FastaFormatError(
                f"{path}: line {lines.number}: text before the first '>' header: {line.strip()[:40]!r}{hint}"
            )
    if record is not None:
        yield record


def _where(record: _RawRecord, index: int | None) -> str:
    """ "at line L, column C" of character `index` of a record's joined sequence lines ("" for no position)."""
    if index is None:
        return ""
    for number, line in enumerate(record.lines, start=record.header_line + 1):
        length = len(line.rstrip(" \t"))
        if index < length:
            return f"at line {number}, column {index + 1}"
        index -= length
    raise IndexError(index)


def iter_valid_records(
    path: Path | str,
    molecule: str,
    policy: InputPolicy = DEFAULT_POLICY,
    *,
    report: ValidationReport | None = None,
) -> Iterator[SequenceRecord]:
    """Yield the valid records of a FASTA file (plain, gzip, bzip2 or xz) in input order, sequences upper-cased.

    Each record is checked for an empty identifier, an empty sequence, an identifier already used in this file,
    whitespace inside sequence lines and letters outside the molecule's alphabet, with alignment gaps and stop
    symbols treated as `policy` declares. With `on_invalid="error"` the first full pass raises
    `FastaValidationError` naming every fault; with `"skip"` faults are collected in `report.rejected` (pass a
    `ValidationReport` to receive them) and the record is not yielded. A fault of the file as a whole (not
    text, corrupt or truncated compression, no records) raises `FastaFormatError` whatever the policy, even
    after records were yielded: check the whole file (`validate_fasta`) before acting on any of them.
    """
    path = Path(path)
    checker = sequence_checker(molecule, policy)
    report = report if report is not None else ValidationReport(path)
    first_seen: dict[str, int] = {}
    faults: list[Rejected] = []
    lines = TextLines(path, FastaFormatError)
    for raw in _raw_records(lines, path):
        report.n_records += 1
        record_id = raw.title.split(maxsplit=1)[0] if raw.title.strip() else ""
        if not record_id:
            reason = "empty identifier after '>'"
        elif record_id in first_seen:
            reason = f"duplicate id (first seen at line {first_seen[record_id]})"
        else:
            checked = checker.check("".join(line.rstrip(" \t") for line in raw.lines))
            first_seen[record_id] = raw.header_line
            reason = None if checked.fault is None else checked.fault.describe(_where(raw, checked.fault.position))
        if reason is not None:
            fault = Rejected(str(path), record_id, raw.header_line, reason)
            faults.append(fault)
            report.rejected.append(fault)
            continue
        report.n_terminal_stops += checked.terminal_stop
        report.n_internal_stops += checked.internal_stops
        report.n_gapped += checked.gapped
        if faults and policy.on_invalid == "error":
            continue  # keep scanning so the error counts every fault, but yield nothing more
        yield SequenceRecord(report.n_valid, record_id, checked.sequence, raw.header_line)
        report.n_valid += 1
    report.compression = lines.compression
    report.crlf_lines, report.cr_lines, report.byte_order_mark = lines.crlf, lines.cr, lines.byte_order_mark
    report.end_of_file_mark = lines.end_of_file_mark
    if report.n_records == 0:
        raise FastaFormatError(f"{path}: no FASTA records found (no line starts with '>')")
    if faults and policy.on_invalid == "error":
        _log_faults(faults, logging.ERROR)  # the error itself names only the first
        raise FastaValidationError(faults, policy.interface)
    if report.n_valid == 0:
        raise FastaFormatError(
            f"{path}: none of its {report.n_records} record(s) is valid, so the sample would be empty; "
            f"the first fault: {faults[0].describe()}"
        )


def _log_faults(faults: list[Rejected], level: int) -> None:
    for fault in faults[:LOGGED_FAULTS]:
        log.log(level, "invalid record: %s", fault.describe())
    if len(faults) > LOGGED_FAULTS:
        log.log(level, "... and %d more invalid record(s)", len(faults) - LOGGED_FAULTS)


def validate_fasta(path: Path | str, molecule: str, policy: InputPolicy = DEFAULT_POLICY) -> ValidationReport:
    """One streaming pass over the whole file, keeping nothing but the report; raises as `iter_valid_records`."""
    report = ValidationReport(Path(path))
    for _ in iter_valid_records(path, molecule, policy, report=report):
        pass
    return report


def read_valid_records(
    path: Path | str, molecule: str, policy: InputPolicy = DEFAULT_POLICY
) -> tuple[list[SequenceRecord], ValidationReport]:
    """All valid records of a file in memory, with the validation report."""
    report = ValidationReport(Path(path))
    records = list(iter_valid_records(path, molecule, policy, report=report))
    return records, report


def log_report(report: ValidationReport) -> None:
    """One line for every way the input was read other than as plain FASTA, and the refused records."""
    if report.compression:
        log.info("%s: read through %s decompression", report.path, report.compression)
    notes = [
        (report.byte_order_mark, "starts with a UTF-8 byte-order mark; skipped"),
        (report.end_of_file_mark, "ends with a DOS end-of-file mark (Ctrl-Z, byte 0x1a); read as the end of the text"),
        (report.crlf_lines, f"{report.crlf_lines} line(s) had Windows (CRLF) line endings; read as plain newlines"),
        (report.cr_lines, f"{report.cr_lines} line(s) ended in a lone carriage return (classic Mac); read as newlines"),
        (report.n_terminal_stops, f"{report.n_terminal_stops} protein record(s) ended in '*'; that stop was stripped"),
        (report.n_internal_stops, f"{report.n_internal_stops} protein record(s) had internal '*'; read as X"),
        (report.n_gapped, f"{report.n_gapped} record(s) had alignment gaps; removed"),
    ]
    for present, note in notes:
        if present:
            log.warning("%s: %s", report.path, note)
    _log_faults(report.rejected, logging.WARNING)


def write_rejects(rejected: list[Rejected], out: Path | str) -> None:
    """The rejects table: one row per refused record, header always present so an empty table is explicit."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as handle:
        handle.write("file\trecord_id\tline\treason\n")
        for fault in rejected:
            handle.write(f"{fault.file}\t{fault.record_id}\t{fault.line}\t{fault.reason}\n")
