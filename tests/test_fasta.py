"""FASTA reading and validation: every fault is found, located and either raised or written to the rejects."""

import gzip

import pytest

from seqshard.fasta import (
    FastaFormatError,
    FastaValidationError,
    read_valid_records,
    write_rejects,
)


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
    assert str(path) in message and f"(line {line})" in message and "on_invalid: skip" in message


def test_error_lists_every_fault_not_just_the_first(tmp_path):
    path = write(tmp_path, ">a\n\n>b\nAXA\n>c\nACGT\n>d\n")
    with pytest.raises(FastaValidationError) as raised:
        read_valid_records(path, "dna")
    assert [f.record_id for f in raised.value.faults] == ["a", "b", "d"]
    assert "3 invalid FASTA record(s)" in str(raised.value)


def test_skip_keeps_valid_records_and_reports_the_rest(tmp_path):
    path = write(tmp_path, ">a\nACGT\n>b\nAXA\n>c\nGG\n>a\nTT\n")
    records, report = read_valid_records(path, "dna", on_invalid="skip")
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
        read_valid_records(path, "dna", allowed_ambiguity="")
    assert [f.record_id for f in raised.value.faults] == ["a", "b"]
    records, _ = read_valid_records(path, "dna", allowed_ambiguity="NRY")
    assert [r.sequence for r in records] == ["ACNGT", "ACRYT"]
    with pytest.raises(ValueError, match="not IUPAC nucleotide ambiguity codes: E"):
        read_valid_records(path, "dna", allowed_ambiguity="E")


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
        read_valid_records(path, "dna", on_invalid="skip")


@pytest.mark.parametrize(
    ("text", "match"),
    [("", "no FASTA records"), ("ACGT\n>a\nACGT\n", "line 1: text before the first '>' header")],
)
def test_not_fasta(tmp_path, text, match):
    with pytest.raises(FastaFormatError, match=match):
        read_valid_records(write(tmp_path, text), "dna")
