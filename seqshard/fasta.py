"""Read and validate FASTA files: one reader for the whole package, with faults located by file, record and line.

Biopython splits the file into records; a thin line tracker around the file handle remembers where each record
starts and what its raw lines looked like, because Biopython silently removes spaces and carriage returns and
skips any text before the first header — and seqshard never drops or rewrites input without saying so.
"""

from __future__ import annotations

import gzip
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import IO, Literal

from Bio.SeqIO.FastaIO import SimpleFastaParser

Molecule = Literal["dna", "rna", "protein"]
OnInvalid = Literal["error", "skip"]

# Letters each molecule type accepts without question (upper case; input is compared case-insensitively).
ALPHABETS: dict[str, frozenset[str]] = {
    "dna": frozenset("ACGT"),
    "rna": frozenset("ACGU"),
    # The 20 standard amino acids plus the extra letters protein language models such as LucaOne carry in
    # their vocabulary: X unknown, B/Z/J ambiguous pairs, U selenocysteine, O pyrrolysine.
    "protein": frozenset("ACDEFGHIKLMNPQRSTVWYXBZJUO"),
}
# IUPAC nucleotide ambiguity codes. Whether they are accepted is the user's declared choice
# (config key `allowed_ambiguity`); none of them is accepted by accident.
NUCLEOTIDE_AMBIGUITY = frozenset("NRYSWKMBDHV")


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
    """Raised with `on_invalid: error`; the message lists the faults found (file, record, line, reason)."""

    def __init__(self, faults: list[Rejected], shown: int = 20) -> None:
        self.faults = faults
        head = "\n".join(f"  {fault.describe()}" for fault in faults[:shown])
        more = f"\n  ... and {len(faults) - shown} more" if len(faults) > shown else ""
        super().__init__(
            f"{len(faults)} invalid FASTA record(s):\n{head}{more}\n"
            "Fix the input, or set `on_invalid: skip` to write them to the sample's rejects table instead."
        )


class FastaFormatError(ValueError):
    """The file as a whole is not FASTA (no header, text before the first record, empty file)."""


@dataclass
class _RawRecord:
    header_line: int
    sequence_lines: list[tuple[int, str]] = field(default_factory=list)


class _LineTracker:
    """Iterates a text handle for Biopython while recording each record's header line and raw sequence lines."""

    def __init__(self, handle: IO[str], path: Path) -> None:
        self._handle = handle
        self._path = path
        self._number = 0
        self._seen_header = False
        self.records: deque[_RawRecord] = deque()
        self.crlf_lines = 0

    # An iterator, not a generator method: Biopython loops over the handle twice (header, then the rest),
    # and both loops must share one position and one line count.
    def __iter__(self) -> _LineTracker:
        return self

    def __next__(self) -> str:
        line = next(self._handle)
        self._number += 1
        if line.endswith("\r\n"):
            self.crlf_lines += 1
        if line.startswith(">"):
            self._seen_header = True
            self.records.append(_RawRecord(header_line=self._number))
        elif not self._seen_header:
            if line.strip():
                raise FastaFormatError(
                    f"{self._path}: line {self._number}: text before the first '>' header: {line.strip()[:40]!r}"
                )
        else:
            self.records[-1].sequence_lines.append((self._number, line.rstrip("\r\n")))
        return line


def open_text(path: Path) -> IO[str]:
    """Open plain or gzip-compressed text, keeping line endings as they are so CRLF can be noticed."""
    with open(path, "rb") as raw:
        magic = raw.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


@lru_cache(maxsize=16)
def _outside(allowed: frozenset[str]) -> re.Pattern[str]:
    """A pattern matching any character that is not an allowed letter in either case."""
    letters = "".join(sorted(allowed | {letter.lower() for letter in allowed}))
    return re.compile(f"[^{re.escape(letters)}]")


def _fault_in_sequence(raw: _RawRecord, allowed: frozenset[str], molecule: str) -> str | None:
    """The first reason this record's sequence lines are not acceptable, with its line, or None."""
    outside = _outside(allowed)
    for number, text in raw.sequence_lines:
        content = text.rstrip(" \t")
        if outside.search(content) is None:  # the usual case, checked in C; only a faulty line is walked
            continue
        for column, char in enumerate(content, start=1):
            if char in " \t\r\v\f":
                return f"whitespace inside the sequence at line {number}, column {column}"
            if char.upper() not in allowed:
                return (
                    f"character {char!r} at line {number}, column {column} is not in the {molecule} alphabet "
                    f"(accepted: {accepted_letters(molecule, allowed)}, case-insensitive)"
                )
    return None


def accepted_letters(molecule: str, allowed: frozenset[str]) -> str:
    """The letters `allowed` for `molecule`, written for messages: the alphabet, then the accepted extras."""
    extra = "".join(sorted(allowed - ALPHABETS[molecule]))
    return "".join(sorted(ALPHABETS[molecule])) + (f" + {extra}" if extra else "")


def first_invalid_position(sequence: str, allowed: frozenset[str]) -> int | None:
    """0-based position of the first character of `sequence` that is not an allowed letter (either case), or
    None: the check of a FASTA line, for one sequence given as a string (the HTTP server's requests)."""
    match = _outside(allowed).search(sequence)
    return None if match is None else match.start()


def allowed_letters(molecule: str, allowed_ambiguity: str = "N") -> frozenset[str]:
    """The letters a record of `molecule` may contain, given the ambiguity codes the user accepts."""
    if molecule not in ALPHABETS:
        raise ValueError(f"unknown molecule {molecule!r}; expected one of {sorted(ALPHABETS)}")
    extra = frozenset(allowed_ambiguity.upper())
    if molecule != "protein":
        unknown = extra - NUCLEOTIDE_AMBIGUITY
        if unknown:
            raise ValueError(
                f"allowed_ambiguity {allowed_ambiguity!r} has letters that are not IUPAC nucleotide ambiguity "
                f"codes: {''.join(sorted(unknown))} (codes: {''.join(sorted(NUCLEOTIDE_AMBIGUITY))})"
            )
        return ALPHABETS[molecule] | extra
    return ALPHABETS[molecule]


@dataclass
class ValidationReport:
    """What one pass over a FASTA file found."""

    path: Path
    n_records: int = 0
    n_valid: int = 0
    crlf_lines: int = 0
    rejected: list[Rejected] = field(default_factory=list)


def iter_valid_records(
    path: Path | str,
    molecule: str,
    *,
    allowed_ambiguity: str = "N",
    on_invalid: OnInvalid = "error",
    report: ValidationReport | None = None,
) -> Iterator[SequenceRecord]:
    """Yield the valid records of a FASTA file in input order, sequences upper-cased.

    Each record is checked for an empty identifier, an empty sequence, an identifier already used in this file,
    whitespace inside sequence lines and letters outside the molecule's alphabet. With `on_invalid="error"` the
    first full pass raises `FastaValidationError` listing every fault; with `"skip"` faults are collected in
    `report.rejected` (pass a `ValidationReport` to receive them) and the record is not yielded. Windows line
    endings are accepted and counted in `report.crlf_lines`.
    """
    path = Path(path)
    allowed = allowed_letters(molecule, allowed_ambiguity)
    report = report if report is not None else ValidationReport(path)
    first_seen: dict[str, int] = {}
    faults: list[Rejected] = []
    with open_text(path) as handle:
        tracker = _LineTracker(handle, path)
        for title, sequence in SimpleFastaParser(tracker):
            raw = tracker.records.popleft()
            report.n_records += 1
            record_id = title.split(maxsplit=1)[0] if title.strip() else ""
            reason: str | None
            if not record_id:
                reason = "empty identifier after '>'"
            elif record_id in first_seen:
                reason = f"duplicate id (first seen at line {first_seen[record_id]})"
            elif not sequence:
                reason = "empty sequence"
            else:
                reason = _fault_in_sequence(raw, allowed, molecule)
            if record_id and record_id not in first_seen:
                first_seen[record_id] = raw.header_line
            if reason is not None:
                fault = Rejected(str(path), record_id, raw.header_line, reason)
                faults.append(fault)
                report.rejected.append(fault)
                continue
            if faults and on_invalid == "error":
                continue  # keep scanning so the error lists every fault, but yield nothing more
            yield SequenceRecord(report.n_valid, record_id, sequence.upper(), raw.header_line)
            report.n_valid += 1
        report.crlf_lines = tracker.crlf_lines
    if report.n_records == 0:
        raise FastaFormatError(f"{path}: no FASTA records found (is it empty, or not FASTA?)")
    if faults and on_invalid == "error":
        raise FastaValidationError(faults)
    if report.n_valid == 0:
        raise FastaFormatError(
            f"{path}: none of its {report.n_records} record(s) is valid, so the sample would be empty; "
            f"first fault: {faults[0].describe()}"
        )


def read_valid_records(
    path: Path | str, molecule: str, *, allowed_ambiguity: str = "N", on_invalid: OnInvalid = "error"
) -> tuple[list[SequenceRecord], ValidationReport]:
    """All valid records of a file in memory, with the validation report."""
    report = ValidationReport(Path(path))
    records = list(
        iter_valid_records(path, molecule, allowed_ambiguity=allowed_ambiguity, on_invalid=on_invalid, report=report)
    )
    return records, report


def write_rejects(rejected: list[Rejected], out: Path) -> None:
    """The rejects table: one row per refused record, header always present so an empty table is explicit."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as handle:
        handle.write("file\trecord_id\tline\treason\n")
        for fault in rejected:
            handle.write(f"{fault.file}\t{fault.record_id}\t{fault.line}\t{fault.reason}\n")
