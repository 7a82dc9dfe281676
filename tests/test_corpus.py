"""The input corpus: every bad or unusual input gets its declared answer through the command line and the workflow.

The readable inputs live in tests/corpus/; binary and compressed ones are built from them by the `corpus` fixture.
Each case's outcome is declared once, in CASES: the rows written, the reject rows with a fragment of their
reason, or an error (a pattern naming the file and where). Every case runs through `seqshard embed` with
`--on-invalid error` and `skip`, and through Snakemake with `on_invalid: error` and `skip` (one sheet holding
every case per mode; each case is its own model entry, so one case's failure cannot stop another's). Records are
counted by an independent reader (the standard library's decompressors and a pattern over header lines) and
rows + rejects must equal them. No output a user sees (terminal, logs) may hold a Python traceback.

long_n_run.fa holds gaps of hundreds of N: its rows show that windows are cut again until they fit max_tokens.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import random
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml
from Bio import bgzf

from seqshard.cli import main
from seqshard.demo import write_demo

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "tests" / "corpus"
SNAKEFILE = REPO / "workflow" / "Snakefile"
CHECKPOINTS = {"dna": "dnabert2-demo", "rna": "lucaone-demo", "protein": "lucaone-demo"}


@dataclass(frozen=True)
class Case:
    """One input and its outcome under the default policy. `rows`: rows written (with on_invalid skip when there
    are rejects); `rejects`: (record id, header line, reason pattern); `error`: a pattern for a fault of the file
    as a whole, which stops both modes. A case whose records are all invalid is an error in both modes."""

    file: str
    molecule: str = "dna"
    rows: int = 0
    rejects: tuple[tuple[str, int, str], ...] = ()
    error: str = ""
    source: str = ""  # who writes files like it

    @property
    def name(self) -> str:
        return re.sub(r"[^A-Za-z0-9]", "_", self.file)


# fmt: off
CASES = [
    # Valid, if unusual: every record gets a row.
    Case("plain.fa", rows=3, source="the baseline"),
    Case("softmasked.fa", rows=3, source="RepeatMasker soft-masking, lower-case n"),
    Case("blank_lines.fa", rows=3, source="hand edits, concatenated files"),
    Case("tabs_in_headers.fa", rows=2, source="assemblers writing key=value descriptions"),
    Case("ncbi_headers.fa", rows=3, source="NCBI nuccore / Entrez downloads, gi| and lcl| ids"),
    Case("unwrapped_no_final_newline.fa", rows=3, source="scripts writing one line per record"),
    Case("trailing_spaces.fa", rows=2, source="spreadsheet exports"),
    Case("crlf_windows.fa", rows=3, source="Windows editors"),
    Case("cr_only_mac.fa", rows=3, source="classic Mac OS tools"),
    Case("mixed_line_endings.fa", rows=3, source="files joined across systems"),
    Case("utf8_bom.fa", rows=3, source="Windows Notepad"),
    Case("dos_end_of_file.fa", rows=3, source="DOS and old Windows tools: a final Ctrl-Z (0x1A)"),
    Case("long_header.fa", rows=2, source="pipelines packing metadata into headers"),
    Case("one_line_50kb.fa", rows=1, source="a chromosome on one line"),
    Case("long_n_run.fa", rows=2, source="hard-masked genomes, scaffolds with gaps"),
    Case("prodigal.faa", "protein", rows=4, source="Prodigal, translated CDS: a terminal '*'"),
    Case("rna.fa", "rna", rows=2, source="miRBase, transcripts", rejects=(
        ("dna_in_rna_sample", 7, r"character 'T' at line 8, column \d+ is not in the rna alphabet .*; looks like "
                                 r"DNA: set"),)),
    Case("plain.fa.gz", rows=3, source="gzip"),
    Case("multi_member.fa.gz", rows=3, source="cat a.fa.gz b.fa.gz"),
    Case("bgzf.fa.gz", rows=3, source="bgzip / samtools faidx-ready genomes"),
    Case("padded.fa.gz", rows=3, source="gzip followed by zero padding (tape and tar blocks)"),
    Case("plain.fa.bz2", rows=3, source="bzip2 archives"),
    Case("plain.fa.xz", rows=3, source="genome archives shipped as xz"),
    Case("concatenated.fa.xz", rows=3, source="cat a.xz b.xz"),
    # Some records refused: an error naming the first, or reject rows with the reason.
    Case("gt_only_header.fa", rows=2, source="broken exports", rejects=(
        ("", 4, r"empty identifier after '>'"),)),
    Case("duplicate_ids.fa", rows=2, source="merged assemblies", rejects=(
        ("dup", 5, r"duplicate id \(first seen at line 1\)"),)),
    Case("empty_record.fa", rows=2, source="filters that leave a header behind", rejects=(
        ("no_sequence", 3, r"empty sequence"),)),
    Case("rna_in_dna.fa", rows=1, source="RNA declared as DNA", rejects=(
        ("mrna", 3, r"character 'U' at line 4, column \d+ is not in the dna alphabet .*; looks like RNA: set"),)),
    Case("protein_in_dna.fa", rows=1, source="a protein file in a DNA sample", rejects=(
        ("a_protein", 3, r"character 'M' at line 4, column 1 is not in the dna alphabet .*; if the sample holds "
                         r"proteins, set"),)),
    Case("iupac_codes.fa", rows=1, source="consensus sequences", rejects=(
        ("ambiguous", 3, r"character 'R' at line 4, column 31 .*; an IUPAC ambiguity code: set"),)),
    Case("aligned_gaps.fa", rows=1, source="MAFFT / Clustal output", rejects=(
        ("aln1", 1, r"character '-' at line 2, column 5 .*; an alignment gap: set"),)),
    Case("space_in_sequence.fa", rows=1, source="copy and paste", rejects=(
        ("copied_from_a_pdf", 3, r"whitespace inside the sequence at line 4, column 11$"),)),
    Case("genbank_numbered.fa", rows=1, source="a GenBank ORIGIN block pasted", rejects=(
        ("from_genbank", 1, r"whitespace inside the sequence at line 2, column 1; digits in a sequence line"),)),
    Case("semicolon_comment.fa", rows=1, source="1980s-style FASTA comments", rejects=(
        ("old_style", 1, r"character ';' at line 2, column 1 is not in the dna alphabet .*; ';' starts a comment "
                         r"line in the old FASTA format, which is not read here: remove the comment lines"),)),
    Case("internal_stop.faa", "protein", rows=1, source="pseudogenes, frame shifts", rejects=(
        ("pseudogene", 1, r"internal stop '\*' at line 2, column 31 \(only one terminal '\*' is stripped\); set"),)),
    Case("aligned_protein.faa", "protein", rows=1, source="protein alignments", rejects=(
        ("aln_a", 1, r"character '-' at line 2, column 4 .*an alignment gap: set"),)),
    Case("stop_only.faa", "protein", rows=1, source="translations of empty ORFs", rejects=(
        ("translated_empty", 1, r"empty sequence once gaps and stops are removed"),)),
    Case("all_invalid.fa", source="nothing usable", rejects=(
        ("a", 1, r"character 'X' at line 2, column 5"), ("b", 3, r"empty sequence"))),
    # Not usable at all: an error naming the file and where, in both modes.
    Case("empty.fa", source="a failed download", error=r"empty file \(0 bytes\)"),
    Case("empty.fa.gz", source="gzip of nothing", error=r"no FASTA records found"),
    Case("only_blank_lines.fa", source="an editor's empty file", error=r"no FASTA records found"),
    Case("fastq.fa", source="a sequencer's reads",
         error=r"line 1: text before the first '>' header: '@read1 instrument=X'; it looks like FASTQ"),
    Case("genbank.fa", source="NCBI GenBank flat file",
         error=r"line 1: text before the first '>' header: 'LOCUS .*'; it looks like GenBank"),
    Case("html_error_page.fa", source="wget of a moved URL",
         error=r"line 1: text before the first '>' header: '<!DOCTYPE html>'; it looks like an HTML or XML page"),
    Case("text_before_header.fa", source="a pipeline's comment line",
         error=r"line 1: text before the first '>' header: '# exported by some pipeline'"),
    Case("latin1_header.fa", source="Windows-1252 editors",
         error=r"line 13, column 11 \(byte \d+\): byte 0xe9 is not UTF-8 text; if the file is Latin-1"),
    Case("utf16_bom.fa", source="PowerShell redirection",
         error=r"not text: the file is UTF-16 text \(little-endian byte-order mark\)"),
    Case("utf16_no_bom.fa", source="UTF-16 without BOM",
         error=r"line 1, column 2 \(byte 1\): NUL byte; UTF-16 text without a byte-order mark"),
    Case("nul_bytes.fa", source="a disk or copy fault",
         error=r"line 8, column 11 \(byte \d+\): NUL byte; binary data, not text"),
    Case("binary.fa", source="an image or executable saved as .fa",
         error=r"line \d+, column \d+ \(byte \d+\): (NUL byte|byte 0x[0-9a-f]{2} is not UTF-8 text)"),
    Case("truncated.fa.gz", source="an interrupted download",
         error=r"truncated gzip file: it ends at byte 3000 inside the compressed stream that starts at byte 0 .*; "
               r"it comes after line \d+ of the text"),
    Case("trailing_junk.fa.gz", source="a proxy's error page appended",
         error=r"the gzip stream ends at byte \d+ and is followed by data that is not gzip"),
    Case("truncated.fa.bz2", source="an interrupted copy", error=r"truncated bzip2 file: it ends at byte 3000"),
    Case("truncated.fa.xz", source="an interrupted copy", error=r"truncated xz file: it ends at byte 3000"),
    Case("zstd.fa.zst", source="zstd archives",
         error=r"not text: the file is zstd-compressed data, which is not supported"),
    Case("zip_archive.fa.zip", source="a browser's download", error=r"not text: the file is a zip archive; unzip it"),
    Case("tar_archive.fa.gz", source="tar czf x.fa.gz seqs.fa",
         error=r"not text: the file is a tar archive, gzip-compressed; unpack it first \(tar -xf .*\)"),
]
# fmt: on
BY_FILE = {case.file: case for case in CASES}


def random_dna(length: int, rng: random.Random) -> bytes:
    return "".join(rng.choice("ACGT") for _ in range(length)).encode()


def many_records(n: int) -> bytes:
    rng = random.Random(7)
    return b"".join(b">r%d\n%s\n" % (i, random_dna(300, rng)) for i in range(n))


def build(name: str) -> bytes:
    """The bytes of a corpus file that is not committed as text."""
    plain = (CORPUS / "plain.fa").read_bytes()
    big = many_records(200)
    if name == "crlf_windows.fa":
        return plain.replace(b"\n", b"\r\n")
    if name == "cr_only_mac.fa":
        return plain.replace(b"\n", b"\r")
    if name == "mixed_line_endings.fa":
        lines = plain.split(b"\n")
        return b"".join(line + (b"\r\n", b"\n", b"\r")[i % 3] for i, line in enumerate(lines[:-1]))
    if name == "utf8_bom.fa":
        return b"\xef\xbb\xbf" + plain
    if name == "dos_end_of_file.fa":
        return plain.replace(b"\n", b"\r\n") + b"\x1a"
    if name == "long_header.fa":
        return b">huge " + b"key=value;" * 2000 + b"\n" + b"ACGT" * 30 + b"\n>next\nACGTACGT\n"
    if name == "one_line_50kb.fa":
        return b">chr_one_line\n" + random_dna(50_000, random.Random(50)) + b"\n"
    if name == "latin1_header.fa":
        return plain + ">seq4 Soci\xe9t\xe9 G\xe9n\xe9rale\nACGT\n".encode("latin-1")
    if name == "utf16_bom.fa":
        return plain.decode().encode("utf-16-le").join([b"\xff\xfe", b""])
    if name == "utf16_no_bom.fa":
        return plain.decode().encode("utf-16-le")
    if name == "nul_bytes.fa":
        lines = plain.split(b"\n")
        lines[7] = lines[7][:10] + b"\x00" + lines[7][10:]
        return b"\n".join(lines)
    if name == "binary.fa":
        rng = random.Random(0xC6)
        return bytes([0xC6, 0x00]) + bytes(rng.randrange(256) for _ in range(4000))
    if name == "plain.fa.gz":
        return gzip.compress(plain, mtime=0)
    if name == "multi_member.fa.gz":
        return gzip.compress(plain[:500], mtime=0) + gzip.compress(plain[500:], mtime=0)
    if name == "bgzf.fa.gz":
        with tempfile.TemporaryDirectory() as folder:
            with bgzf.BgzfWriter(f"{folder}/x.gz", "wb") as handle:
                handle.write(plain[:300])
                handle.flush()  # one BGZF block per flush: several members, then the empty end-of-file block
                handle.write(plain[300:])
            return Path(folder, "x.gz").read_bytes()
    if name == "padded.fa.gz":
        return gzip.compress(plain, mtime=0) + b"\x00" * 1024
    if name == "empty.fa":
        return b""
    if name == "empty.fa.gz":
        return gzip.compress(b"", mtime=0)
    if name == "plain.fa.bz2":
        return bz2.compress(plain)
    if name == "plain.fa.xz":
        return lzma.compress(plain)
    if name == "concatenated.fa.xz":
        return lzma.compress(plain[:400]) + lzma.compress(plain[400:])
    if name.startswith("truncated."):
        compress = {"gz": lambda data: gzip.compress(data, mtime=0), "bz2": bz2.compress, "xz": lzma.compress}
        packed = compress[name.rsplit(".", 1)[1]](big)
        assert len(packed) > 3000
        return packed[:3000]
    if name == "trailing_junk.fa.gz":
        return gzip.compress(plain, mtime=0) + b"<html><body>502 Bad Gateway</body></html>\n"
    if name == "zstd.fa.zst":
        return b"\x28\xb5\x2f\xfd\x24\x04\x21\x00\x00>a\nACGT\n"
    if name == "zip_archive.fa.zip":
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr("plain.fa", plain)
        return buffer.getvalue()
    if name == "tar_archive.fa.gz":
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
            member = tarfile.TarInfo("seqs.fa")
            member.size = len(plain)
            archive.addfile(member, io.BytesIO(plain))
        return buffer.getvalue()
    raise KeyError(name)


def independent_headers(path: Path) -> list[tuple[str, int]]:
    """(id, line) of every header, read with the standard library alone: not seqshard's reader."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    elif data[:3] == b"BZh":
        data = bz2.decompress(data)
    elif data[:6] == b"\xfd7zXZ\x00":
        data = lzma.decompress(data)
    text = data.decode("utf-8-sig")
    lines = re.split(r"\r\n|\r|\n", text)
    return [((line[1:].split() or [""])[0], number) for number, line in enumerate(lines, 1) if line.startswith(">")]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """Every case's file in one folder: the committed text files, and the built ones."""
    folder = tmp_path_factory.mktemp("corpus")
    paths = {}
    for case in CASES:
        committed = CORPUS / case.file
        data = committed.read_bytes() if committed.exists() else build(case.file)
        paths[case.file] = folder / case.file
        paths[case.file].write_bytes(data)
    return paths


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("checkpoints")
    for name in set(CHECKPOINTS.values()):
        write_demo(name, folder / name)
    return folder


def test_the_corpus_is_large_and_every_file_is_declared_once():
    assert len(CASES) >= 30 and len(BY_FILE) == len(CASES)
    committed = {path.name for path in CORPUS.iterdir()}
    assert committed <= set(BY_FILE), f"corpus files without a declared outcome: {sorted(committed - set(BY_FILE))}"


def expected_error(case: Case, mode: str, path: Path, skip_option: str) -> str | None:
    """A pattern for the one-line error this case must end with in `mode`, or None when it must succeed."""
    if case.error:
        return re.escape(f"{path}: ") + case.error
    if case.rejects and (mode == "error" or case.rows == 0):
        if mode == "skip":
            return re.escape(f"{path}: none of its {len(case.rejects)} record(s) is valid")
        record_id, line, reason = case.rejects[0]
        first = re.escape(f"{len(case.rejects)} invalid FASTA record(s); the first: {path}: record {record_id!r} "
                          f"(line {line}): ")  # fmt: skip
        return first + reason.removesuffix("$") + ".*" + re.escape(f"set {skip_option} to leave invalid records out")
    return None


def check_outputs(case: Case, path: Path, parquet: Path, *rejects: Path) -> None:
    """Rows and rejects (all tables together) as declared; together, every record the independent reader finds."""
    frame = pd.read_parquet(parquet)
    table = pd.concat([pd.read_csv(r, sep="\t", dtype=str, keep_default_na=False) for r in rejects])
    headers = independent_headers(path)
    assert len(frame) == case.rows
    assert len(table) == len(case.rejects)
    assert len(frame) + len(table) == len(headers)
    for (record_id, line, reason), row in zip(case.rejects, table.itertuples(), strict=True):
        assert (row.file, row.record_id, int(row.line)) == (str(path), record_id, line)
        assert re.search(reason, row.reason), row.reason
    refused = {(record_id, line) for record_id, line, _ in case.rejects}
    assert frame["id"].tolist() == [record_id for record_id, line in headers if (record_id, line) not in refused]


@pytest.mark.parametrize("mode", ["error", "skip"])
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.file)
def test_command_line(case, mode, corpus, checkpoints, tmp_path, capsys):
    path = corpus[case.file]
    out = tmp_path / "out.parquet"
    model = "dnabert2" if case.molecule == "dna" else "lucaone"
    code = main(["embed", "--model", model, "--checkpoint", str(checkpoints / CHECKPOINTS[case.molecule]),
                 "--molecule", case.molecule, str(path), "-o", str(out), "--on-invalid", mode])  # fmt: skip
    terminal = capsys.readouterr()
    assert "Traceback" not in terminal.out + terminal.err
    error = expected_error(case, mode, path, "`--on-invalid skip`")
    if error is not None:
        assert code == 1
        last = terminal.err.rstrip("\n").splitlines()[-1]
        assert re.search(r"ERROR seqshard: " + error, last), last
        assert not out.exists() and not out.with_suffix(".rejects.tsv").exists()
    else:
        assert code == 0, terminal.err[-3000:]
        check_outputs(case, path, out, out.with_suffix(".rejects.tsv"))  # the default rejects path


def test_command_line_in_a_real_terminal(corpus, checkpoints, tmp_path):
    """The installed entry point, not just main(): one error line, the last, exit status 1, nothing written."""
    path = corpus["truncated.fa.gz"]
    command = [sys.executable, "-m", "seqshard", "embed", "--checkpoint", str(checkpoints / "dnabert2-demo"),
               str(path), "-o", str(tmp_path / "out.parquet"), "--on-invalid", "skip"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert [line for line in lines if " ERROR " in line] == lines[-1:] and "Traceback" not in result.stderr
    assert re.search(r"ERROR seqshard: " + expected_error(BY_FILE["truncated.fa.gz"], "skip", path, ""), lines[-1])
    assert not (tmp_path / "out.parquet").exists()


@pytest.fixture(scope="module", params=["error", "skip"])
def workflow_run(request, corpus, checkpoints, tmp_path_factory):
    """One Snakemake run over every case with `on_invalid` = the param; `--keep-going` so every case is tried."""
    mode = request.param
    workdir = tmp_path_factory.mktemp(f"workflow-{mode}")
    (workdir / "resources").mkdir()
    (workdir / "resources" / "checkpoints").symlink_to(checkpoints)  # the demo checkpoints, written once
    rows = [f"{case.name}\t{corpus[case.file]}\t{case.molecule}" for case in CASES]
    (workdir / "samples.tsv").write_text("sample\tfasta\tmolecule\n" + "\n".join(rows) + "\n")
    models = {
        case.name: {
            "architecture": "dnabert2" if case.molecule == "dna" else "lucaone",
            "checkpoint": f"resources/checkpoints/{CHECKPOINTS[case.molecule]}",
            "samples": [case.name],
        }
        for case in CASES
    }
    config = {"samples": "samples.tsv", "on_invalid": mode, "models": models}
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(workdir),
               "--configfile", str(workdir / "config.yaml"), "--cores", "2", "--keep-going"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=workdir)
    logs = {path: path.read_text() for path in (workdir / "logs").rglob("*.log")}
    return mode, workdir, result, logs


@pytest.mark.workflow
def test_workflow_output_a_user_sees_has_no_traceback(workflow_run):
    mode, _, result, logs = workflow_run
    assert result.returncode != 0  # some cases are meant to fail, in both modes
    assert "Traceback" not in result.stdout + result.stderr
    assert [path for path, text in logs.items() if "Traceback" in text] == []


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.file)
@pytest.mark.workflow
def test_workflow(case, workflow_run, corpus):
    mode, workdir, result, logs = workflow_run
    path = corpus[case.file]
    parquet = workdir / "results" / case.name / case.name / "embed.parquet"
    error = expected_error(case, mode, path, "`on_invalid: skip` in the config")
    if error is not None:
        assert not parquet.exists()
        # The reason is the last line of the failing job's log, and Snakemake's terminal shows it too.
        # The job that validates a sample names it first: "sample <name>: ...".
        error = rf"(sample {case.name}: )?" + error
        last_lines = [text.rstrip("\n").splitlines()[-1] for text in logs.values() if text.strip()]
        assert any(re.search(r"ERROR seqshard: " + error, line) for line in last_lines), error
        assert re.search(r"^seqshard: " + error, result.stderr, re.MULTILINE), error
    else:
        assert parquet.exists(), result.stderr[-3000:]
        sample_rejects = workdir / "results" / case.name / "rejects.tsv"  # refused by validation
        model_rejects = workdir / "results" / case.name / case.name / "rejects.tsv"  # valid, but could not be scored
        check_outputs(case, path, parquet, sample_rejects, model_rejects)
