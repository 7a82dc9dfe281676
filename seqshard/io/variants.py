"""Variant sets as seqshard reads them: a VCF or BCF against the reference FASTA it was called on (DNA), or a table
of amino-acid mutations against a protein FASTA; every variant checked and turned into the unit its scores depend on,
or into a reject with its reason.

VCF, BCF and indexed FASTA are read with pysam (htslib): plain or bgzipped VCF, BCF, plain or bgzipped FASTA with its
`.fai` (and `.gzi`) index, used when present and built when missing. A multi-allelic record gives one variant per
ALT. Every (record, ALT) gets an answer: a `DnaUnit` to score, or a reason it cannot be scored (REF not matching the
reference, contig missing from the reference, symbolic, breakend, `*` or missing alleles, a change longer than
`max_length`). A record without ALT ('.') counts as one variant, refused.

A DNA variant is placed as a `DnaUnit`: REF and ALT are trimmed of the bases they share (prefix first, then suffix),
leaving the changed bases `ref` and `alt` at reference position q; the window is `left + allele + right` with
`half = window // 2` reference bases on each side of the change (clamped at the contig ends by taking more on the
other side). Both alleles share the same flanks, so REF and ALT swapped give the same two windows swapped, and the
reverse complement of a genome gives the reverse-complemented windows: the scores' symmetries follow from this.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from seqshard.io.fasta import iter_valid_records
from seqshard.io.sequences import ALPHABETS, InputPolicy
from seqshard.io.textfiles import TextFileError, TextLines

log = logging.getLogger(__name__)

STRANDS = ("both", "forward")
COMPLEMENT = str.maketrans("ACGTNRYSWKMBDHVacgtnryswkmbdhv", "TGCANYRSWMKVHDBtgcanyrswmkvhdb")
REJECTS_HEADER = "file\trecord\tvariant\treason\n"
# Alleles longer than this in messages are shortened (a 190 bp REF would bury the reason).
SHOWN_ALLELE = 20


class VariantFileError(TextFileError):
    """A variant file, reference or mutation table cannot be read as a whole (one line saying what and where)."""


@dataclass(frozen=True)
class VariantSettings:
    """How variants are placed in windows and scored; these settings shape the numbers.

    `window`: reference bases of context around the change, `window // 2` on each side (clamped at contig ends);
    `flank`: bases on each side of the change whose tokens are scored; `strand`: `both` (forward and reverse
    complement, averaged) or `forward`; `max_length`: the longest REF or ALT change (after trimming shared bases)
    scored; `pooling`: of the window embeddings (mean, max, cls); `wild_type_marginal`: proteins, also the score
    from one unmasked pass of the wild type.
    """

    window: int = 512
    flank: int = 5
    strand: str = "both"
    max_length: int = 50
    pooling: str = "mean"
    wild_type_marginal: bool = False

    def __post_init__(self) -> None:
        if self.window < 2:
            raise ValueError(f"variant_window must be at least 2 bases, got {self.window}")
        if self.flank < 0 or self.max_length < 1:
            raise ValueError(
                f"need variant_flank >= 0 and max_variant_length >= 1, got {self.flank}, {self.max_length}"
            )
        if self.strand not in STRANDS:
            raise ValueError(f"strand must be one of {', '.join(STRANDS)}, got {self.strand!r}")

    @property
    def half(self) -> int:
        return self.window // 2

    @property
    def strands(self) -> tuple[str, ...]:
        return ("forward", "reverse") if self.strand == "both" else ("forward",)


def reverse_complement(bases: str) -> str:
    return bases.translate(COMPLEMENT)[::-1]


def _digest(*parts: object) -> bytes:
    return hashlib.blake2b("\0".join(map(str, parts)).encode(), digest_size=16).digest()


@dataclass(frozen=True)
class AlleleWindow:
    """One allele's model input: the window's bases and where the changed bases sit in it, `[start, stop)`."""

    bases: str
    start: int
    stop: int

    def span(self, flank: int) -> tuple[int, int]:
        """The bases whose covering tokens are scored: the change plus `flank` bases each side, inside the window.
        An empty change with no flank (an insertion's REF, a deletion's ALT) is the junction: the base each side."""
        low, high = max(0, self.start - flank), min(len(self.bases), self.stop + flank)
        if low >= high:
            low, high = max(0, self.start - 1), min(len(self.bases), self.start + 1)
        return low, high


@dataclass(frozen=True)
class DnaUnit:
    """What a DNA variant's scores depend on: the reference bases left of the change, the changed REF and ALT bases
    (shared bases trimmed), and the bases right of it. Variants with equal units get equal scores."""

    left: str
    ref: str
    alt: str
    right: str

    def digest(self) -> bytes:
        return _digest("dna", self.left, self.ref, self.alt, self.right)

    def windows(self, strand: str) -> tuple[AlleleWindow, AlleleWindow]:
        """(REF window, ALT window) on `strand`: the reverse strand's are the reverse complements."""
        if strand == "forward":
            left, ref, alt, right = self.left, self.ref, self.alt, self.right
        else:
            left, ref, alt = reverse_complement(self.right), reverse_complement(self.ref), reverse_complement(self.alt)
            right = reverse_complement(self.left)
        start = len(left)
        return (
            AlleleWindow(left + ref + right, start, start + len(ref)),
            AlleleWindow(left + alt + right, start, start + len(alt)),
        )


@dataclass(frozen=True)
class ProteinUnit:
    """What a protein variant's scores depend on: the wild-type sequence and its mutations (0-based positions,
    increasing; the wild-type and mutant letter at each)."""

    sequence: str
    positions: tuple[int, ...]
    wild_type: str
    mutant: str

    def digest(self) -> bytes:
        return _digest("protein", self.sequence, self.positions, self.mutant)

    def mutant_sequence(self) -> str:
        residues = list(self.sequence)
        for position, letter in zip(self.positions, self.mutant, strict=True):
            residues[position] = letter
        return "".join(residues)


Unit = DnaUnit | ProteinUnit


@dataclass(frozen=True)
class VariantRow:
    """One variant as read: the columns its output row names it by, and its unit or why it is refused."""

    record: int  # 1-based: the n-th data record of the VCF, or of the mutation table
    fields: dict[str, object]
    label: str  # how messages name it: "chr1:100 rs1 A>G" or "P12345 A24G:K30R"
    unit: Unit | None = None
    reason: str | None = None


@dataclass(frozen=True)
class VariantReject:
    """A variant that gets no row, and why."""

    file: str
    record: int
    variant: str
    reason: str

    def describe(self) -> str:
        return f"{self.file}: record {self.record} ({self.variant}): {self.reason}"


def write_variant_rejects(rejects: list[VariantReject], out: Path | str) -> None:
    """The rejects table of a variant set: one row per variant without a row, header always present."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as handle:
        handle.write(REJECTS_HEADER)
        for reject in rejects:
            handle.write(f"{reject.file}\t{reject.record}\t{reject.variant}\t{reject.reason}\n")


def read_variant_rejects(path: Path | str) -> list[VariantReject]:
    with open(path, encoding="utf-8") as handle:
        next(handle)
        rows = [line.rstrip("\n").split("\t", 3) for line in handle if line.strip()]
    return [VariantReject(file, int(record), variant, reason) for file, record, variant, reason in rows]


# ---------------------------------------------------------------------------------------------------------------
# DNA: placing one variant


def _shown(allele: str) -> str:
    return allele if len(allele) <= SHOWN_ALLELE else f"{allele[:SHOWN_ALLELE]}...({len(allele)} bp)"


def allele_problem(alt: str, letters: frozenset[str]) -> str | None:
    """Why an ALT allele cannot be scored as a sequence change, or None."""
    if alt == "*":
        return "ALT '*' (the site is deleted by an overlapping upstream deletion): not a sequence change to score"
    if alt.startswith("<") and alt.endswith(">"):
        return f"symbolic ALT {alt}: only alleles spelled out as bases can be scored"
    if "[" in alt or "]" in alt or (len(alt) > 1 and (alt.startswith(".") or alt.endswith("."))):
        return f"breakend ALT {_shown(alt)}: a rearrangement, not a sequence change in one window"
    odd = sorted(set(alt.upper()) - letters)
    if odd:
        return (
            f"ALT {_shown(alt)} has {', '.join(repr(c) for c in odd)}: not a DNA base "
            f"(accepted: {''.join(sorted(letters))})"
        )
    return None


def trim_alleles(ref: str, alt: str) -> tuple[int, str, str]:
    """(offset of the change from POS, changed REF bases, changed ALT bases): shared prefix, then suffix, removed."""
    prefix = 0
    while prefix < min(len(ref), len(alt)) and ref[prefix] == alt[prefix]:
        prefix += 1
    ref, alt = ref[prefix:], alt[prefix:]
    suffix = 0
    while suffix < min(len(ref), len(alt)) and ref[-1 - suffix] == alt[-1 - suffix]:
        suffix += 1
    return prefix, ref[: len(ref) - suffix], alt[: len(alt) - suffix]


def window_bounds(available_left: int, available_right: int, half: int) -> tuple[int, int]:
    """Bases of context left and right of a change: `half` each, or more on one side where the other side meets a
    contig end (2 x half in all when the contig allows). Symmetric: swapping the sides swaps the result."""
    left = min(available_left, max(half, 2 * half - available_right))
    right = min(available_right, max(half, 2 * half - available_left))
    return left, right


def change_kind(ref: str, alt: str) -> str:
    if not ref:
        return f"insertion of {len(alt)} bp"
    if not alt:
        return f"deletion of {len(ref)} bp"
    if len(ref) == len(alt):
        return f"substitution of {len(ref)} bp"
    return f"change of {len(ref)} bp to {len(alt)} bp"


@dataclass(frozen=True)
class PlacedVariant:
    """A DNA variant's unit and its REF window on the reference, `[window_start, window_end)`, 0-based."""

    unit: DnaUnit
    window_start: int
    window_end: int


def place_dna_variant(
    fetch: Callable[[int, int], str],
    contig_length: int,
    start: int,
    alleles: tuple[str, str],
    settings: VariantSettings,
    letters: frozenset[str],
) -> PlacedVariant | str:
    """The unit of REF>ALT (`alleles`) at 0-based `start` of a contig of `contig_length` bases whose bases
    `fetch(lo, hi)` returns, or why it cannot be scored."""
    ref, alt = (allele.upper() for allele in alleles)
    problem = allele_problem(alt, letters)
    if problem:
        return problem
    if not ref:
        return "empty REF"
    if start < 0 or start + len(ref) > contig_length:
        return f"REF {_shown(ref)} at position {start + 1} runs past the contig's end ({contig_length} bp)"
    found = fetch(start, start + len(ref)).upper()
    if found != ref:
        return f"REF {_shown(ref)} does not match the reference, which has {_shown(found)} at position {start + 1}"
    if alt == ref:
        return "ALT equals REF: no change to score"
    offset, changed_ref, changed_alt = trim_alleles(ref, alt)
    if max(len(changed_ref), len(changed_alt)) > settings.max_length:
        return f"{change_kind(changed_ref, changed_alt)} is longer than max_variant_length ({settings.max_length} bp)"
    q = start + offset
    left, right = window_bounds(q, contig_length - q - len(changed_ref), settings.half)
    if left + right + min(len(changed_ref), len(changed_alt)) == 0:
        return "the change spans the whole contig: no bases left to score it in"
    unit = DnaUnit(
        fetch(q - left, q).upper(),
        changed_ref,
        changed_alt,
        fetch(q + len(changed_ref), q + len(changed_ref) + right).upper(),
    )
    return PlacedVariant(unit, q - left, q + len(changed_ref) + right)


def dna_label(chrom: str, pos: int, variant_id: str, ref: str, alt: str) -> str:
    return f"{chrom}:{pos} {variant_id} {_shown(ref)}>{_shown(alt)}"


def dna_letters(allowed_ambiguity: str) -> frozenset[str]:
    return frozenset("ACGT") | frozenset(allowed_ambiguity.upper())


# ---------------------------------------------------------------------------------------------------------------
# DNA: the files


def _compression(path: Path) -> str:
    """'bgzf', 'gzip', 'bzip2', 'xz' or 'none', from the first bytes."""
    with open(path, "rb") as handle:
        head = handle.read(18)
    if head[:2] == b"\x1f\x8b":
        # BGZF: gzip with the FEXTRA flag and a 'BC' subfield.
        return "bgzf" if len(head) >= 14 and head[3] & 4 and head[12:14] == b"BC" else "gzip"
    if head[:3] == b"BZh":
        return "bzip2"
    if head[:6] == b"\xfd7zXZ\x00":
        return "xz"
    return "none"


class Reference:
    """A reference FASTA opened for random access through its index (pysam.FastaFile)."""

    def __init__(self, path: Path | str) -> None:
        import pysam

        self.path = Path(path)
        if not self.path.is_file():
            raise VariantFileError(f"{self.path}: no such reference FASTA")
        compression = _compression(self.path)
        if compression not in ("none", "bgzf"):
            raise VariantFileError(
                f"{self.path}: the reference is {compression}-compressed; random access needs it plain or "
                f"bgzip-compressed: decompress it, or recompress it with `bgzip` (htslib)"
            )
        fai, gzi = Path(f"{self.path}.fai"), Path(f"{self.path}.gzi")
        needed = [fai, gzi] if compression == "bgzf" else [fai]
        stale = [index for index in needed if index.is_file() and index.stat().st_mtime < self.path.stat().st_mtime]
        if all(index.is_file() for index in needed) and not stale:
            self._fasta = pysam.FastaFile(
                str(self.path),
                filepath_index=str(fai),
                filepath_index_compressed=str(gzi) if compression == "bgzf" else None,
            )
        else:
            if stale:
                log.warning("%s: its index %s is older than the FASTA; building it again", self.path, stale[0])
            self._fasta = self._build_index(needed, compression == "bgzf")
        self.lengths = dict(zip(self._fasta.references, self._fasta.lengths, strict=True))

    def _build_index(self, needed: list[Path], bgzf: bool) -> object:
        """Index next to the FASTA; where that cannot be written, in a temporary folder for this run (and say so)."""
        import pysam

        writable = os.access(self.path.parent, os.W_OK)
        if writable:
            for index in needed:
                index.unlink(missing_ok=True)
            arguments: list[str] = []
        else:
            self._scratch = tempfile.TemporaryDirectory(prefix="seqshard-fai-")
            fai, gzi = Path(self._scratch.name) / "reference.fai", Path(self._scratch.name) / "reference.gzi"
            arguments = ["--fai-idx", str(fai)] + (["--gzi-idx", str(gzi)] if bgzf else [])
            needed = [fai, gzi] if bgzf else [fai]
        previous = pysam.set_verbosity(0)  # htslib's own message is replaced by ours, which says where and what
        try:
            pysam.faidx(str(self.path), *arguments)
        except pysam.utils.SamtoolsError:
            raise VariantFileError(f"{self.path}: htslib cannot index it: {_unindexable(self.path)}") from None
        finally:
            pysam.set_verbosity(previous)
        if writable:
            log.info("%s: built its index %s", self.path, ", ".join(map(str, needed)))
            return pysam.FastaFile(str(self.path))
        log.warning(
            "%s: cannot write its index next to it (%s is not writable); built it in %s for this run only. Index it "
            "once where it can be written (`samtools faidx %s`) to skip this",
            self.path,
            self.path.parent,
            self._scratch.name,
            self.path.name,
        )
        return pysam.FastaFile(str(self.path), filepath_index=str(needed[0]),
                               filepath_index_compressed=str(needed[1]) if bgzf else None)  # fmt: skip

    def fetcher(self, contig: str) -> Callable[[int, int], str]:
        fasta = self._fasta
        return lambda start, end: fasta.fetch(contig, start, end)  # type: ignore[attr-defined]

    def missing_contig(self, contig: str) -> str:
        """Why `contig` is not scored: not in the reference, with the likely fix when only the naming differs."""
        names = list(self.lengths)
        other = contig[3:] if contig.lower().startswith("chr") else f"chr{contig}"
        for candidate in (other, {"chrM": "MT", "MT": "chrM", "chrMT": "MT", "M": "chrM"}.get(contig)):
            if candidate and candidate in self.lengths:
                style = "without" if contig.lower().startswith("chr") else "with"
                return (
                    f"contig {contig} is not in the reference {self.path.name}, which names it {candidate} ({style} "
                    f"'chr'): the VCF and the reference use different naming styles; rename the VCF's contigs "
                    f"(`bcftools annotate --rename-chrs`) or use a reference named like the VCF"
                )
        regions = [name for name in names if name.startswith(f"{contig}:")]
        if regions:
            return (
                f"contig {contig} is not in the reference {self.path.name}, which holds {regions[0]}: a region of it, "
                f"not the whole contig (positions would be offset); use the whole contig's sequence"
            )
        shown = ", ".join(names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "")
        return f"contig {contig} is not in the reference {self.path.name} (it has {shown})"


def _unindexable(path: Path) -> str:
    """Why htslib could not index a FASTA: the first record whose lines differ in length (faidx needs every line
    of a record but its last to have one length), or the file is not FASTA at all."""
    lines = TextLines(path, VariantFileError)
    record, width, short = None, None, None
    for text in lines:
        if text.startswith(">"):
            record, width, short = text[1:].split(maxsplit=1)[0] if text[1:].strip() else "", None, None
            continue
        if record is None:
            return f"line {lines.number} comes before any '>' header: not a FASTA file"
        if not text:
            continue
        if short is not None or (width is not None and len(text) > width):
            return (
                f"the lines of record {record} differ in length (line {short or lines.number}), which faidx cannot "
                "index; rewrap it to one line length (e.g. `seqtk seq -l 60 in.fa > out.fa`)"
            )
        if width is None:
            width = len(text)
        elif len(text) < width:
            short = lines.number
    return "samtools faidx failed on it; check that it is FASTA"


def read_vcf(
    vcf: Path | str, reference: Path | str, settings: VariantSettings, allowed_ambiguity: str = "N"
) -> Iterator[VariantRow]:
    """Every (record, ALT) of a VCF/BCF, in file order, placed against `reference` or refused with its reason."""
    import pysam

    vcf = Path(vcf)
    genome = Reference(reference)
    letters = dna_letters(allowed_ambiguity)
    previous = pysam.set_verbosity(0)  # htslib's own warnings (undeclared contigs, ...) are not ours to print
    try:
        try:
            calls = pysam.VariantFile(str(vcf))
        except (ValueError, OSError) as error:
            raise VariantFileError(f"{vcf}: not a VCF or BCF file that htslib can read ({error})") from None
        _check_header_lengths(calls.header, genome, vcf)
        record = 0
        with calls:
            iterator = iter(calls)
            while True:
                try:
                    call = next(iterator)
                except StopIteration:
                    break
                except (ValueError, OSError) as error:
                    raise VariantFileError(f"{vcf}: cannot read the record after record {record}: {error}") from None
                record += 1
                yield from _record_variants(call, record, genome, settings, letters)
        if record == 0:
            log.warning("%s: no records", vcf)
    finally:
        pysam.set_verbosity(previous)


def _check_header_lengths(header: object, genome: Reference, vcf: Path) -> None:
    """A contig whose declared length differs from the reference's suggests the calls were made on another one."""
    for name, contig in header.contigs.items():  # type: ignore[attr-defined]
        length = contig.length  # htslib gives undeclared contigs (no ##contig length) the largest int32
        if length is not None and length < 2**31 - 1 and name in genome.lengths and genome.lengths[name] != length:
            log.warning(
                "%s: contig %s is %d bp in the VCF header but %d bp in %s: is this the reference the calls were made "
                "on? (REF bases are checked variant by variant)",
                vcf,
                name,
                length,
                genome.lengths[name],
                genome.path.name,
            )


def _record_variants(
    call: object, record: int, genome: Reference, settings: VariantSettings, letters: frozenset[str]
) -> Iterator[VariantRow]:
    chrom, pos, ref = call.chrom, call.pos, call.ref  # type: ignore[attr-defined]
    variant_id = call.id or "."  # type: ignore[attr-defined]
    alts = call.alts or (".",)  # type: ignore[attr-defined]
    missing = None if chrom in genome.lengths else genome.missing_contig(chrom)
    fetch = genome.fetcher(chrom) if missing is None else None
    for allele, alt in enumerate(alts, start=1):
        fields: dict[str, object] = {
            "chrom": chrom,
            "pos": pos,
            "id": variant_id,
            "ref": ref,
            "alt": alt,
            "allele": allele,
            "record": record,
            "window_start": None,
            "window_end": None,
        }
        label = dna_label(chrom, pos, variant_id, ref, alt)
        if alt == ".":
            yield VariantRow(record, fields, label, reason="no ALT allele (ALT is '.'): nothing to score")
            continue
        if missing is not None:
            yield VariantRow(record, fields, label, reason=missing)
            continue
        assert fetch is not None
        placed = place_dna_variant(fetch, genome.lengths[chrom], pos - 1, (ref, alt), settings, letters)
        if isinstance(placed, str):
            yield VariantRow(record, fields, label, reason=placed)
            continue
        fields.update(window_start=placed.window_start, window_end=placed.window_end)
        yield VariantRow(record, fields, label, unit=placed.unit)


# ---------------------------------------------------------------------------------------------------------------
# Proteins: mutation lists

MUTATION = re.compile(r"([A-Za-z*])(\d+)([A-Za-z*])")
MUTATION_COLUMNS = ("sequence_id", "mutations")


def protein_unit(sequence: str, mutations: str, name: str = "the sequence") -> ProteinUnit | str:
    """The unit of `mutations` (1-based, `A24G`, several joined by ':') on `sequence`, or why it cannot be scored."""
    text = mutations.strip()
    if not text:
        return "no mutation given"
    letters = ALPHABETS["protein"]
    found: dict[int, tuple[str, str]] = {}
    for token in text.split(":"):
        match = MUTATION.fullmatch(token.strip())
        if not match:
            return (
                f"mutation {token!r} is not of the form A24G (wild-type letter, 1-based position, mutant letter; "
                "several joined by ':')"
            )
        wild, number, mutant = match.group(1).upper(), int(match.group(2)), match.group(3).upper()
        if number < 1:
            return f"{token}: positions are 1-based"
        if number > len(sequence):
            return f"{token}: position {number} is past the end of {name} ({len(sequence)} residues)"
        if mutant not in letters:
            return (
                f"{token}: mutant {mutant!r} is not an amino-acid letter the models read ({''.join(sorted(letters))})"
            )
        if sequence[number - 1] != wild:
            return (
                f"{token}: wild-type letter {wild} does not match {name}, which has {sequence[number - 1]} at {number}"
            )
        if number - 1 in found:
            return f"{token}: position {number} is mutated twice"
        found[number - 1] = (wild, mutant)
    positions = tuple(sorted(found))
    return ProteinUnit(
        sequence, positions, "".join(found[p][0] for p in positions), "".join(found[p][1] for p in positions)
    )


@dataclass
class _ProteinSequences:
    sequences: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)


def _read_proteins(fasta: Path, policy: InputPolicy) -> _ProteinSequences:
    from dataclasses import replace

    from seqshard.io.fasta import ValidationReport

    proteins = _ProteinSequences()
    report = ValidationReport(fasta)
    for record in iter_valid_records(fasta, "protein", replace(policy, on_invalid="skip"), report=report):
        proteins.sequences[record.id] = record.sequence
    proteins.refused = {fault.record_id: fault.reason for fault in report.rejected}
    return proteins


def read_mutations(table: Path | str, fasta: Path | str, policy: InputPolicy) -> Iterator[VariantRow]:
    """Every row of a mutation table (tab-separated, header with `sequence_id` and `mutations`; other columns are
    ignored), in order, resolved against the protein FASTA or refused with its reason."""
    table, fasta = Path(table), Path(fasta)
    proteins = _read_proteins(fasta, policy)
    lines = TextLines(table, VariantFileError)
    columns: list[str] | None = None
    record = 0
    for text in lines:
        if not text.strip() or text.startswith("#"):
            continue
        values = text.split("\t")
        if columns is None:
            columns = values
            missing = [name for name in MUTATION_COLUMNS if name not in columns]
            if missing:
                raise VariantFileError(
                    f"{table}, line {lines.number}: the header lacks {', '.join(missing)} (it has "
                    f"{', '.join(columns)}); a mutation table is tab-separated with columns sequence_id and mutations"
                )
            continue
        record += 1
        if len(values) != len(columns):
            raise VariantFileError(
                f"{table}, line {lines.number}: {len(values)} field(s) but the header has {len(columns)}; columns "
                "must be separated by single tabs"
            )
        row = dict(zip(columns, values, strict=True))
        sequence_id, mutations = row["sequence_id"].strip(), row["mutations"].strip()
        sequence = proteins.sequences.get(sequence_id)
        fields: dict[str, object] = {
            "sequence_id": sequence_id,
            "mutations": mutations,
            "record": record,
            "length": len(sequence) if sequence is not None else None,
        }
        label = f"{sequence_id} {mutations}"
        if sequence is None:
            reason = (
                f"sequence {sequence_id} of {fasta.name} was refused: {proteins.refused[sequence_id]}"
                if sequence_id in proteins.refused
                else f"sequence_id {sequence_id!r} is not in {fasta.name}"
            )
            yield VariantRow(record, fields, label, reason=reason)
            continue
        unit = protein_unit(sequence, mutations, sequence_id)
        if isinstance(unit, str):
            yield VariantRow(record, fields, label, reason=unit)
        else:
            yield VariantRow(record, fields, label, unit=unit)
    if columns is None:
        raise VariantFileError(f"{table}: no header line (columns sequence_id and mutations, tab-separated)")
