"""The sample sheet: what spreadsheets and editors produce either works or gets one line naming sheet, line, column."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from seqshard.io.samples import SampleSheetError, load_sample_sheet

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "samples.schema.yaml"


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A run directory holding two FASTA files, one with '#' in its path, and an empty folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run#3").mkdir()
    (tmp_path / "run#3" / "a.fa").write_text(">a\nACGT\n")
    (tmp_path / "b.fa").write_text(">b\nACGT\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "moved.fa").symlink_to(Path("gone") / "moved.fa")  # a link whose file was moved away
    return tmp_path


def sheet(workdir, text, name="samples.tsv"):
    path = workdir / name
    path.write_bytes(text.encode())
    return path


def test_hash_inside_a_path_na_as_a_name_comments_and_blank_lines(workdir):
    path = sheet(
        workdir,
        "# samples of run 3\nsample\tfasta\tmolecule\n\nNA\trun#3/a.fa\tdna\n  # a note\nnull\tb.fa\tprotein\n",
    )
    samples = load_sample_sheet(path, SCHEMA)
    assert list(samples.index) == ["NA", "null"]
    assert samples.loc["NA", "fasta"] == "run#3/a.fa" and samples.loc["null", "molecule"] == "protein"
    assert samples["sample"].tolist() == ["NA", "null"]  # strings as written, never missing values


def test_a_spreadsheet_export_with_bom_crlf_and_extra_columns(workdir):
    path = sheet(workdir, "\ufeffsample\tfasta\tmolecule\tnotes\r\ns1\tb.fa\tdna\t\r\n")
    samples = load_sample_sheet(path, SCHEMA)
    assert samples.loc["s1"].to_dict() == {"sample": "s1", "fasta": "b.fa", "molecule": "dna", "notes": ""}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sample\tfasta\tmolecule\n", "a header (line 1) but no samples; add one row per sample"),
        ("# nothing yet\n\n", "no header line (columns sample, fasta, molecule, tab-separated)"),
        ("sample fasta molecule\ns1 b.fa dna\n",
         "line 1: the header has no tabs; columns must be separated by tabs, not spaces"),
        ("sample\tfasta\tmolecule\ns1 b.fa dna\n",
         "line 2: 1 field(s) but the header (line 1) has 3; columns must be separated by single tabs (this line "
         "has spaces instead?)"),
        ("sample\tfasta\tmolecule\ns1\tb.fa\tdna \n",
         "line 2, column molecule: value 'dna ' has leading or trailing whitespace; remove it"),
        ("sample\tfasta\tmolecule\ns1\t b.fa\tdna\n",
         "line 2, column fasta: value ' b.fa' has leading or trailing whitespace; remove it"),
        ("sample\tfasta\tmolecule\ns1\tb.fa\tDNA\n",
         "line 2, column molecule: 'DNA' is not one of ['dna', 'rna', 'protein']; write 'dna'"),
        ("sample\tfasta\tmolecule\ns/1\tb.fa\tdna\n", "line 2, column sample: 's/1' does not match"),
        ("sample\tfasta\tmolecule\ns1\t\tdna\n", "line 2, column fasta: empty; every sample needs a fasta"),
        ("sample\tfasta\tmolecule\ns1\tfolder\tdna\n", "line 2, column fasta: folder is a directory, not a FASTA file"),
        ("sample\tfasta\tmolecule\ns1\tabsent.fa\tdna\n", "line 2, column fasta: absent.fa: no such file"),
        ("sample\tfasta\tmolecule\ns1\tmoved.fa\tdna\n",
         "line 2, column fasta: moved.fa is a symbolic link to gone/moved.fa, which does not exist"),
        ("sample\tfasta\tmolecule\ns1\tb.fa\tdna\n# dup\ns1\trun#3/a.fa\tdna\n",
         "line 4, column sample: 's1' is already the sample of line 2; sample names must be unique"),
        ("sample\tfasta\n", "line 1: the header lacks column(s) molecule (it has: sample, fasta)"),
        ("sample\tfasta\tmolecule\tfasta\n", "line 1: column(s) fasta appear more than once in the header"),
        ("sample\tfasta\tmolecule\ns1\tcaf\xe9.fa\tdna\n", None),  # UTF-8 é in a path is fine; absent file
    ],
)  # fmt: skip
def test_problems_name_sheet_line_and_column(workdir, text, message):
    path = sheet(workdir, text)
    with pytest.raises(SampleSheetError) as raised:
        load_sample_sheet(path, SCHEMA)
    assert "\n" not in str(raised.value)
    if message is None:
        assert str(raised.value).startswith(f"{path}, line 2, column fasta: caf\xe9.fa: no such file")
    else:
        assert str(raised.value).startswith(f"{path}" + (": " if message[:4] != "line" else ", ") + message)


def test_not_a_text_sheet_and_remote_inputs(workdir):
    latin1 = workdir / "latin1.tsv"
    latin1.write_bytes("sample\tfasta\tmolecule\ns1\tcaf\xe9.fa\tdna\n".encode("latin-1"))
    with pytest.raises(SampleSheetError, match=r"latin1.tsv: line 2, column 7 \(byte 28\): byte 0xe9 is not UTF-8"):
        load_sample_sheet(latin1, SCHEMA)
    with pytest.raises(SampleSheetError, match="absent.tsv: no such file"):
        load_sample_sheet(workdir / "absent.tsv", SCHEMA)
    remote = sheet(workdir, "sample\tfasta\tmolecule\ns1\ts3://bucket/s1.fa\tdna\ns2\tnot/here.fa\tdna\n")
    assert len(load_sample_sheet(remote, SCHEMA, check_files=False)) == 2  # inputs in remote storage


@pytest.mark.workflow
@pytest.mark.parametrize(
    ("rows", "reason"),
    [
        ("s1\tb.fa\tdna \n", "line 2, column molecule: value 'dna ' has leading or trailing whitespace; remove it"),
        ("s1\tb.fa\tdna\ns1\trun#3/a.fa\tdna\n",
         "line 3, column sample: 's1' is already the sample of line 2; sample names must be unique"),
        ("s1\tmoved.fa\tdna\n",
         "line 2, column fasta: moved.fa is a symbolic link to gone/moved.fa, which does not exist (a moved or "
         "deleted file, or a link made relative to another folder)"),
        ("s1\tfolder\tdna\n", "line 2, column fasta: folder is a directory, not a FASTA file"),
        ("s1\tb.fa\tDNA\n", "line 2, column molecule: 'DNA' is not one of ['dna', 'rna', 'protein']; write 'dna'"),
    ],
    ids=["whitespace", "duplicate_name", "dangling_symlink", "directory", "upper_case_molecule"],
)  # fmt: skip
def test_the_workflow_stops_before_any_job_with_the_one_line_reason(workdir, rows, reason):
    """The whole output of `snakemake -n` is the reason: before issue 26 two or three `File ... common.smk, line ...`
    frames followed it, and a line naming the exception and common.smk came before it."""
    sheet(workdir, "sample\tfasta\tmolecule\n" + rows)
    config = {"samples": "samples.tsv", "models": {"m": {"architecture": "dnabert2", "checkpoint": "x/y"}}}
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile"), "--directory",
               str(workdir), "--configfile", str(workdir / "config.yaml"), "--cores", "1", "-n"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=workdir)
    assert result.returncode == 1
    assert (result.stdout + result.stderr).splitlines() == [f"seqshard: samples.tsv, {reason}"]
    assert not (workdir / ".snakemake" / "locks").exists() or not any((workdir / ".snakemake" / "locks").iterdir())
