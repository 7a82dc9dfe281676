"""Split a validated sample into contiguous shards of balanced estimated token count.

Shards are contiguous runs of the input, so merging them back in shard order restores input order while reading
one shard at a time. Cut points fall where the running token estimate crosses equal fractions of the total, which
keeps every shard within one record of the ideal size; the plan depends only on the record lengths and the
settings, so the same input and config always give the same shards.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from seqshard.fasta import SequenceRecord, ValidationReport, iter_valid_records, write_rejects

MANIFEST_NAME = "manifest.tsv"

log = logging.getLogger(__name__)


def estimate_tokens(length: int) -> int:
    """Upper-bound token estimate: one token per residue plus [CLS] and [SEP].

    Exact for character-level models (LucaOne); DNABERT-2's BPE gives about a quarter of that, so shards of
    DNA scored only with DNABERT-2 carry fewer real tokens than the target. One estimate for every model keeps
    shards independent of which models run on them.
    """
    return length + 2


@dataclass(frozen=True)
class Shard:
    """A contiguous run `[start, stop)` of a sample's valid records."""

    name: str
    start: int
    stop: int
    est_tokens: int

    @property
    def n_sequences(self) -> int:
        return self.stop - self.start


def shard_name(number: int) -> str:
    return f"{number:04d}"


def plan_shards(token_estimates: Sequence[int], target_tokens: int, max_sequences: int | None = None) -> list[Shard]:
    """Cut records into contiguous shards of about `target_tokens` each and at most `max_sequences` records.

    The shard count is the smallest that honours both limits on average; a record goes to the shard in which its
    token midpoint falls, so no shard exceeds `total / count` by more than one record.
    """
    if target_tokens < 1:
        raise ValueError(f"target_tokens must be positive, got {target_tokens}")
    if max_sequences is not None and max_sequences < 1:
        raise ValueError(f"max_sequences must be positive, got {max_sequences}")
    n = len(token_estimates)
    if n == 0:
        return []
    total = sum(token_estimates)
    count = max(1, math.ceil(total / target_tokens))
    if max_sequences:
        count = max(count, math.ceil(n / max_sequences))
    while True:
        shards = _cut(token_estimates, min(count, n), total)
        if not max_sequences or all(s.n_sequences <= max_sequences for s in shards) or count >= n:
            return shards
        count += 1  # very uneven lengths put too many short records in one shard: cut finer


def _cut(token_estimates: Sequence[int], count: int, total: int) -> list[Shard]:
    bins: list[int] = []
    running = 0
    for tokens in token_estimates:
        midpoint = running + tokens / 2
        bins.append(min(count - 1, int(midpoint * count // total)))
        running += tokens
    shards: list[Shard] = []
    start = 0
    for i in range(1, len(bins) + 1):
        if i == len(bins) or bins[i] != bins[start]:
            shards.append(Shard(shard_name(len(shards)), start, i, sum(token_estimates[start:i])))
            start = i
    return shards


def write_fasta(records: Iterable[SequenceRecord], out: Path, width: int = 80) -> None:
    with open(out, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(f">{record.id}\n")
            for offset in range(0, len(record.sequence), width):
                handle.write(record.sequence[offset : offset + width] + "\n")


def write_manifest(shards: Sequence[Shard], out: Path) -> None:
    with open(out, "w", encoding="utf-8") as handle:
        handle.write("shard\tfirst_record\tn_sequences\test_tokens\n")
        for shard in shards:
            handle.write(f"{shard.name}\t{shard.start}\t{shard.n_sequences}\t{shard.est_tokens}\n")


def read_manifest(path: Path) -> list[Shard]:
    """The shards a `shard_fasta` run wrote, in order."""
    shards = []
    with open(path, encoding="utf-8") as handle:
        next(handle)
        for line in handle:
            name, start, n_sequences, est_tokens = line.rstrip("\n").split("\t")
            shards.append(Shard(name, int(start), int(start) + int(n_sequences), int(est_tokens)))
    return shards


def shard_fasta(
    fasta: Path | str,
    molecule: str,
    out_dir: Path | str,
    rejects: Path | str,
    *,
    target_tokens: int,
    max_sequences: int | None = None,
    allowed_ambiguity: str = "N",
    on_invalid: str = "error",
    manifest: Path | str | None = None,
) -> tuple[list[Shard], ValidationReport]:
    """Validate a FASTA file and write its valid records as shard FASTA files plus a manifest.

    The manifest goes to `manifest` (default: `manifest.tsv` inside `out_dir`).

    Two passes over the input keep memory flat: the first validates and collects token estimates, the second
    writes each record into its shard. The rejects table is always written (empty with `on_invalid: error`).
    """
    fasta, out_dir, rejects = Path(fasta), Path(out_dir), Path(rejects)
    report = ValidationReport(fasta)
    estimates = [
        estimate_tokens(len(record.sequence))
        for record in iter_valid_records(
            fasta, molecule, allowed_ambiguity=allowed_ambiguity, on_invalid=on_invalid, report=report
        )
    ]
    write_rejects(report.rejected, rejects)
    shards = plan_shards(estimates, target_tokens, max_sequences)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = iter_valid_records(fasta, molecule, allowed_ambiguity=allowed_ambiguity, on_invalid=on_invalid)
    for shard in shards:
        write_fasta((next(records) for _ in range(shard.n_sequences)), out_dir / f"{shard.name}.fa")
    write_manifest(shards, Path(manifest) if manifest is not None else out_dir / MANIFEST_NAME)
    log.info(
        "%s: %d records, %d valid, %d rejected; %d shard(s) of about %d estimated tokens",
        fasta,
        report.n_records,
        report.n_valid,
        len(report.rejected),
        len(shards),
        sum(estimates) // max(1, len(shards)),
    )
    if report.crlf_lines:
        log.warning("%s: %d line(s) had Windows (CRLF) line endings; read as plain newlines", fasta, report.crlf_lines)
    for fault in report.rejected:
        log.warning("rejected %s", fault.describe())
    return shards, report
