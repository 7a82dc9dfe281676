"""FASTA reading and validation: every fault is found, located and either raised or written to the rejects."""

import gzip

import pytest

from seqshard.io.fasta import (
    FastaFormatError,
    FastaValidationError,
    log_report,
    read_valid_records,
    write_rejects,
)
from seqshard.io.interface import CLI, WORKFLOW
from seqshard.io.sequences import InputPolicy

SKIP = InputPolicy(on_invalid="skip")


def write(tmp_path, text, name="in.fa"):
    path = tmp_path / name
    path.write_bytes(text.encode())
    return path


def test_valid_records_in_order_upper_cased(tmp_path):
    path = write(tmp_path, ">a first\nacgt\nAC\n>b\nGGNN\n")
    records, report = read_valid_records(path, "dna")
    assert [(r.index, r.id, r.sequence, r.line) for r in records] == [
        (0, "a", "ACGTAC", 1),
        (1, "b", "GGNN", 4),
    ]
    assert report.n_records == 2 and report.n_valid == 2 and report.rejected == []


def test_gzip_is_read_like_plain(tmp_path):
    path = tmp_path / "in.fa.gz"
    with gzip.open(path, "wt") as handle:
        handle.write(">a\nACGT\n>b\nTTTT\n")
    records, _ = read_valid_records(path, "dna")
    assert [r.sequence for r in records] == ["ACGT", "TTTT"]


def test_crlf_is_accepted_and_counted(tmp_path):
    path = write(tmp_path, ">a\r\nACGT\r\nAA\r\n>b\r\nCC\r\n")
    records, report = read_valid_records(path, "dna")
    assert [r.sequence for r in records] == ["ACGTAA", "CC"]
    assert [r.id for r in records] == ["a", "b"]
    assert report.crlf_lines == 5


@pytest.mark.parametrize(
    ("text", "record_id", "line", "reason"),
    [
        (">ok\nACGT\n>empty\n>next\nAC\n", "empty", 3, "empty sequence"),
        (">x\nACGT\n>y\nAA\n>x again\nCC\n", "x", 5, "duplicate id (first seen at line 1)"),
        (
            ">ok\nACGT\n>bad\nACGT\nACEGT\n",
            "bad",
            3,
            "character 'E' at line 5, column 3 is not in the dna alphabet",
        ),
        (">ok\nACGT\n>gap\nAC GT\n", "gap", 3, "whitespace inside the sequence at line 4, column 3"),
        (">ok\nACGT\n>tab\nAC\tGT\n", "tab", 3, "whitespace inside the sequence at line 4, column 3"),
        (">ok\nACGT\n> \nACGT\n", "", 3, "empty identifier"),
        (">ok\nACGT\n>amb\nACRT\n", "amb", 3, "character 'R' at line 4, column 3"),
    ],
)
def test_each_fault_is_located(tmp_path, text, record_id, line, reason):
    path = write(tmp_path, text)
    with pytest.raises(FastaValidationError) as raised:
        read_valid_records(path, "dna")
    (fault,) = raised.value.faults
    assert (fault.file, fault.record_id, fault.line) == (str(path), record_id, line)
    assert fault.reason.startswith(reason)
    message = str(raised.value)
    assert str(path) in message and f"(line {line})" in message and "`on_invalid='skip'`" in message
    assert "\n" not in message


def test_error_counts_every_fault_and_logs_each(tmp_path, caplog):
    path = write(tmp_path, ">a\n\n>b\nAXA\n>c\nACGT\n>d\n")
    with pytest.raises(FastaValidationError) as raised:
        read_valid_records(path, "dna")
    assert [f.record_id for f in raised.value.faults] == ["a", "b", "d"]
    assert str(raised.value).startswith(f"3 invalid FASTA record(s); the first: {path}: record 'a' (line 1)")
    logged = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert logged == [f"invalid record: {fault.describe()}" for fault in raised.value.faults]


def test_skip_keeps_valid_records_and_reports_the_rest(tmp_path):
    path = write(tmp_path, ">a\nACGT\n>b\nAXA\n>c\nGG\n>a\nTT\n")
    records, report = read_valid_records(path, "dna", SKIP)
    assert [(r.index, r.id) for r in records] == [(0, "a"), (1, "c")]
    assert [(f.record_id, f.line) for f in report.rejected] == [("b", 3), ("a", 7)]
    assert report.n_records == 4 and report.n_valid == 2
    rejects = tmp_path / "rejects.tsv"
    write_rejects(report.rejected, rejects)
    lines = rejects.read_text().splitlines()
    assert lines[0] == "file\trecord_id\tline\treason"
    assert lines[1].split("\t")[:3] == [str(path), "b", "3"]
    assert len(lines) == 3


def test_ambiguity_codes_are_a_declared_choice(tmp_path):
    path = write(tmp_path, ">a\nACNGT\n>b\nACRYT\n")
    with pytest.raises(FastaValidationError) as raised:
        read_valid_records(path, "dna", InputPolicy(allowed_ambiguity=""))
    assert [f.record_id for f in raised.value.faults] == ["a", "b"]
    records, _ = read_valid_records(path, "dna", InputPolicy(allowed_ambiguity="NRY"))
    assert [r.sequence for r in records] == ["ACNGT", "ACRYT"]
    with pytest.raises(ValueError, match="not IUPAC nucleotide ambiguity codes: E"):
        read_valid_records(path, "dna", InputPolicy(allowed_ambiguity="E"))


def test_rna_and_protein_alphabets(tmp_path):
    rna = write(tmp_path, ">r\nACGU\n>t\nACGT\n", "rna.fa")
    with pytest.raises(FastaValidationError, match="'T' at line 4"):
        read_valid_records(rna, "rna")
    protein = write(tmp_path, ">p\nmktayIAKQRX\n", "p.fa")
    records, _ = read_valid_records(protein, "protein")
    assert records[0].sequence == "MKTAYIAKQRX"


def test_zero_valid_records_is_an_error_even_when_skipping(tmp_path):
    path = write(tmp_path, ">a\n\n>b\nAXA\n")
    with pytest.raises(FastaFormatError, match="none of its 2 record"):
        read_valid_records(path, "dna", SKIP)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", r"empty file \(0 bytes\)"),
        ("\n\n", "no FASTA records found"),
        ("ACGT\n>a\nACGT\n", "line 1: text before the first '>' header: 'ACGT'; it looks like a bare sequence"),
        ("@r1\nACGT\n+\nIIII\n", "line 1: text before the first '>' header: '@r1'; it looks like FASTQ"),
        ("LOCUS       AB000001 10 bp DNA\n", "it looks like GenBank"),
        ("\n<!DOCTYPE html>\n<html>Not Found</html>\n", "line 2: .*it looks like an HTML or XML page"),
        ('{"error": "rate limited"}\n', "it looks like JSON"),
    ],
)
def test_not_fasta(tmp_path, text, match):
    with pytest.raises(FastaFormatError, match=match):
        read_valid_records(write(tmp_path, text), "dna")


def test_byte_order_mark_and_line_endings_are_accepted_and_counted(tmp_path, caplog):
    path = tmp_path / "in.fa"
    path.write_bytes(b"\xef\xbb\xbf>a\r\nAC\r\n\r\n>b\rGG\rTT\n>c\nAA")
    records, report = read_valid_records(path, "dna")
    assert [(r.id, r.sequence, r.line) for r in records] == [("a", "AC", 1), ("b", "GGTT", 4), ("c", "AA", 7)]
    assert (report.byte_order_mark, report.crlf_lines, report.cr_lines) == (True, 3, 2)
    log_report(report)
    notes = " ".join(r.getMessage() for r in caplog.records)
    assert "byte-order mark" in notes and "3 line(s) had Windows (CRLF)" in notes
    assert "2 line(s) ended in a lone carriage return" in notes


def test_a_final_dos_end_of_file_mark_is_read_as_the_end_and_counted(tmp_path, caplog):
    """Before issue 26 the Ctrl-Z that DOS tools end a file with refused the last record (character '\\x1a')."""
    path = tmp_path / "dos.fa"
    path.write_bytes(b">a\r\nACGT\r\n>b\r\nGGCC\r\n\x1a")
    records, report = read_valid_records(path, "dna")
    assert [(r.id, r.sequence) for r in records] == [("a", "ACGT"), ("b", "GGCC")]
    assert (report.end_of_file_mark, report.crlf_lines, report.rejected) == (True, 4, [])
    log_report(report)
    notes = [r.getMessage() for r in caplog.records]
    assert f"{path}: ends with a DOS end-of-file mark (Ctrl-Z, byte 0x1a); read as the end of the text" in notes
    # Anywhere but at the end it is a character of the sequence, and refused as one.
    path.write_bytes(b">a\nAC\x1aGT\n>b\nGGCC\n")
    _, report = read_valid_records(path, "dna", SKIP)
    assert not report.end_of_file_mark
    assert report.rejected[0].reason.startswith("character '\\x1a' at line 2, column 3 is not in the dna alphabet")


def test_one_terminal_stop_is_stripped_and_counted(tmp_path):
    path = write(tmp_path, ">p1 prodigal\nMKT\nAL*\n>p2\nMKV\n>p3\nMK**\n")
    records, report = read_valid_records(path, "protein", SKIP)
    assert [(r.id, r.sequence) for r in records] == [("p1", "MKTAL"), ("p2", "MKV")]
    assert report.n_terminal_stops == 1  # p3's stripped stop is not counted: the record was rejected
    (fault,) = report.rejected
    assert (fault.record_id, fault.line) == ("p3", 6)
    assert fault.reason.startswith("internal stop '*' at line 7, column 3 (only one terminal '*' is stripped)")
    assert "set `internal_stops='unknown'` to read internal stops as X" in fault.reason


def test_internal_stops_read_as_unknown_when_declared(tmp_path):
    path = write(tmp_path, ">p1\nMK*TA*\n>p2\nMKV\n")
    records, report = read_valid_records(path, "protein", InputPolicy(internal_stops="unknown"))
    assert [r.sequence for r in records] == ["MKXTA", "MKV"]
    assert (report.n_internal_stops, report.n_terminal_stops) == (1, 1)


def test_gaps_follow_the_declared_policy(tmp_path):
    path = write(tmp_path, ">a aligned\nAC--GT\n.ACG.\n>b\nACGT\n>c\n---\n")
    records, report = read_valid_records(path, "dna", SKIP)
    assert [r.id for r in records] == ["b"]
    assert report.rejected[0].reason.startswith("character '-' at line 2, column 3 is not in the dna alphabet")
    assert "an alignment gap: set `gaps='remove'` to read the ungapped sequence" in report.rejected[0].reason
    records, report = read_valid_records(path, "dna", InputPolicy(gaps="remove", on_invalid="skip"))
    assert [(r.id, r.sequence) for r in records] == [("a", "ACGTACG"), ("b", "ACGT")]
    assert report.n_gapped == 1
    assert [(f.record_id, f.reason) for f in report.rejected] == [
        ("c", "empty sequence once gaps and stops are removed")
    ]


COMMENT_HINT = (
    "';' starts a comment line in the old FASTA format, which is not read here: remove the comment lines "
    "(grep -v '^;' in.fa > out.fa)"
)


@pytest.mark.parametrize(
    ("molecule", "sequence", "hint"),
    [
        ("dna", "ACGU", "looks like RNA: set `molecule='rna'`"),
        ("rna", "ACGT", "looks like DNA: set `molecule='dna'`"),
        ("dna", "MKELIQ", "if the sample holds proteins, set `molecule='protein'`"),
        ("dna", "ACGTE", "if the sample holds proteins, set `molecule='protein'`"),
        ("dna", "ACRT", "an IUPAC ambiguity code: set `allowed_ambiguity='NR'` to accept it"),
        ("dna", "ACXXT", "X marks masked bases in some tools (RepeatMasker -x); mask with N instead"),
        ("dna", "ATG*", "'*' is a stop in translated sequences: for proteins set `molecule='protein'`"),
        ("dna", "1 acgt", "digits in a sequence line: a GenBank or EMBL sequence block? Convert it to FASTA"),
        # A comment line of the old FASTA format, with protein-only letters and digits that would mislead.
        ("dna", ";Made in 1985 with FASTP\nACGT", COMMENT_HINT),
        ("protein", "MKV\n;comment", COMMENT_HINT),
    ],
)
def test_faults_come_with_a_hint(tmp_path, molecule, sequence, hint):
    path = write(tmp_path, f">ok\nACG\n>r\n{sequence}\n")
    _, report = read_valid_records(path, molecule, SKIP)
    (fault,) = report.rejected
    assert fault.record_id == "r" and fault.reason.endswith(hint)


@pytest.mark.parametrize(
    ("interface", "molecule_hint", "skip_hint"),
    [
        (CLI, "looks like RNA: set `--molecule rna`", "set `--on-invalid skip`"),
        (WORKFLOW, "looks like RNA: set the sample's `molecule` column to `rna` in the sample sheet",
         "set `on_invalid: skip` in the config"),
    ],
)  # fmt: skip
def test_messages_name_the_option_of_the_interface_in_use(tmp_path, interface, molecule_hint, skip_hint):
    path = write(tmp_path, ">ok\nACGT\n>rna\nACGU\n")
    with pytest.raises(FastaValidationError) as raised:
        read_valid_records(path, "dna", InputPolicy(interface=interface))
    assert molecule_hint in str(raised.value) and skip_hint in str(raised.value)
    with pytest.raises(ValueError, match="gaps must be one of reject, remove, got 'drop'"):
        InputPolicy(gaps="drop", interface=interface)
