"""Text files read exactly: every compression the reader accepts, and every fault located by line and true byte."""

import bz2
import gzip
import io
import lzma
import struct
import tarfile
import zlib

import pytest
from Bio import bgzf

from seqshard.io.textfiles import BLOCK_BYTES, TextFileError, TextLines

TEXT = b"".join(b">r%d\nACGTACGTAC\nGGTT\n" % i for i in range(2000))  # 6000 lines, about 40 KB


def lines_of(path, error=TextFileError):
    reader = TextLines(path, error)
    return list(reader), reader


@pytest.mark.parametrize(
    ("name", "pack"),
    [
        ("plain.fa", lambda text: text),
        ("one.fa.gz", gzip.compress),
        ("members.fa.gz", lambda text: b"".join(gzip.compress(text[i : i + 7000]) for i in range(0, len(text), 7000))),
        ("one.fa.bz2", bz2.compress),
        ("streams.fa.bz2", lambda text: bz2.compress(text[:9999]) + bz2.compress(text[9999:])),
        ("one.fa.xz", lzma.compress),
        ("streams.fa.xz", lambda text: lzma.compress(text[:12345]) + lzma.compress(text[12345:])),
        ("padded.fa.gz", lambda text: gzip.compress(text) + b"\x00" * 512),  # tar-style zero padding, as gzip allows
        ("no_name.dat", gzip.compress),  # detected from the content, not the name
    ],
)
def test_every_compression_gives_the_same_lines(tmp_path, name, pack):
    path = tmp_path / name
    path.write_bytes(pack(TEXT))
    lines, reader = lines_of(path)
    assert lines == TEXT.decode().splitlines()
    assert reader.number == 6000


def test_bgzf_blocks_as_written_by_samtools_and_biopython(tmp_path):
    path = tmp_path / "blocks.fa.gz"
    with bgzf.BgzfWriter(str(path), "wb") as handle:  # many 64 KiB members plus the empty end-of-file member
        handle.write(TEXT * 5)
    lines, reader = lines_of(path)
    assert len(lines) == 30000 and reader.compression == "gzip"


@pytest.mark.parametrize(("suffix", "compress"), [("gz", gzip.compress), ("bz2", bz2.compress), ("xz", lzma.compress)])
def test_a_truncated_stream_is_an_error_even_after_lines_were_read(tmp_path, suffix, compress):
    whole = compress(TEXT * 20)
    path = tmp_path / f"cut.fa.{suffix}"
    path.write_bytes(whole[: len(whole) // 2])
    reader = TextLines(path)
    lines = []
    with pytest.raises(TextFileError) as raised:
        lines.extend(reader)
    kind = {"gz": "gzip", "bz2": "bzip2", "xz": "xz"}[suffix]
    assert str(raised.value).startswith(
        f"{path}: truncated {kind} file: it ends at byte {len(whole) // 2} inside the compressed stream that "
        "starts at byte 0 (was the download or copy cut short?)"
    )
    if lines:  # bzip2 hands nothing out before a block is complete; the others stream
        assert f"it comes after line {len(lines)} of the text" in str(raised.value)


@pytest.mark.parametrize(("suffix", "compress"), [("gz", gzip.compress), ("bz2", bz2.compress), ("xz", lzma.compress)])
def test_junk_after_the_stream_is_an_error_naming_where_the_stream_ended(tmp_path, suffix, compress):
    whole = compress(TEXT)
    path = tmp_path / f"junk.fa.{suffix}"
    path.write_bytes(whole + b"<html>proxy error</html>")
    with pytest.raises(TextFileError, match=rf"stream ends at byte {len(whole)} and is followed by data that is not"):
        lines_of(path)


def test_corrupt_and_crc_damaged_gzip(tmp_path):
    whole = bytearray(gzip.compress(TEXT * 50, compresslevel=1))
    damaged = tmp_path / "damaged.fa.gz"
    middle = len(whole) // 2
    damaged.write_bytes(bytes(whole[:middle]) + b"\xff" * 64 + bytes(whole[middle + 64 :]))
    with pytest.raises(TextFileError, match=r"corrupt gzip data between bytes \d+ and \d+ .*Error -3"):
        lines_of(damaged)
    crc = tmp_path / "crc.fa.gz"
    whole[-8:-4] = struct.pack("<I", zlib.crc32(b"other") & 0xFFFFFFFF)  # the trailer's CRC-32 no longer matches
    crc.write_bytes(bytes(whole))
    with pytest.raises(TextFileError, match="incorrect data check"):
        lines_of(crc)


def test_a_bad_byte_far_into_the_file_is_located_by_true_offset_and_line(tmp_path):
    head = b">r\n" + b"ACGTACGTAC\n" * 300_000  # 3.3 MB: several read blocks before the bad byte
    bad = head + b">caf\xe9 latin-1 header\nACGT\n"
    offset = len(head) + 4
    assert offset > 3 * BLOCK_BYTES
    plain = tmp_path / "latin1.fa"
    plain.write_bytes(bad)
    with pytest.raises(TextFileError) as raised:
        lines_of(plain)
    assert str(raised.value).startswith(
        f"{plain}: line 300002, column 5 (byte {offset}): byte 0xe9 is not UTF-8 text; if the file is Latin-1"
    )
    packed = tmp_path / "latin1.fa.gz"
    packed.write_bytes(gzip.compress(bad))
    with pytest.raises(TextFileError, match=rf"line 300002, column 5 \(byte {offset} of the decompressed data\)"):
        lines_of(packed)


NOT_TEXT = "not text: the file is "


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("\ufeff>a\n".encode("utf-16-le"), NOT_TEXT + "UTF-16 text (little-endian byte-order mark); save it as UTF-8"),
        ("\ufeff>a\n".encode("utf-16-be"), NOT_TEXT + "UTF-16 text (big-endian byte-order mark); save it as UTF-8"),
        (
            ">a\nACGT\n".encode("utf-16-le"),
            "line 1, column 2 (byte 1): NUL byte; UTF-16 text without a byte-order mark? Save it as UTF-8",
        ),
        (b">a\nAC\x00GT\n", "line 2, column 3 (byte 5): NUL byte; binary data, not text"),
        (
            b"\x28\xb5\x2f\xfd\x04\x00",
            NOT_TEXT + "zstd-compressed data, which is not supported; decompress it first (zstd -d)",
        ),
        (b"PK\x03\x04\x14\x00", NOT_TEXT + "a zip archive; unzip it first"),
        (
            gzip.compress(b"BAM\x01\x00\x00"),
            NOT_TEXT + "a BAM alignment file; convert it to FASTA first (samtools fasta) (inside the gzip compression)",
        ),
        (b"\x89PNG\r\n\x1a\n", NOT_TEXT + "a PNG image"),
    ],
)
def test_files_that_are_not_utf8_text(tmp_path, data, message):
    path = tmp_path / "x.fa"
    path.write_bytes(data)
    with pytest.raises(TextFileError) as raised:
        lines_of(path)
    assert str(raised.value) == f"{path}: {message}"


def test_line_endings_split_across_reads_and_lines_longer_than_a_read(tmp_path):
    # A CRLF whose CR is the last byte of the first read, then a one-line "chromosome" spanning three reads.
    first = b">a\r\n" + b"A" * (BLOCK_BYTES - 5) + b"\r\n"
    assert first[BLOCK_BYTES - 1 : BLOCK_BYTES + 1] == b"\r\n"
    chromosome = b"C" * (3 * BLOCK_BYTES)
    path = tmp_path / "long.fa"
    path.write_bytes(first + b">chr1\r" + chromosome + b"\r")
    lines, reader = lines_of(path)
    assert [len(line) for line in lines] == [2, BLOCK_BYTES - 5, 5, 3 * BLOCK_BYTES]
    assert (reader.crlf, reader.cr) == (2, 2)


def test_a_highly_compressed_run_is_read_in_bounded_pieces(tmp_path):
    path = tmp_path / "gap.fa.gz"
    path.write_bytes(gzip.compress(b">scaffold\n" + b"N" * (64 << 20) + b"\n"))  # 64 MiB of N, about 64 KB packed
    lines, _ = lines_of(path)
    assert [len(line) for line in lines] == [9, 64 << 20]


def test_missing_directory_and_empty(tmp_path):
    with pytest.raises(TextFileError, match="no such file"):
        lines_of(tmp_path / "absent.fa")
    with pytest.raises(TextFileError, match="is a directory, not a file"):
        lines_of(tmp_path)
    (tmp_path / "empty.fa").write_bytes(b"")
    with pytest.raises(TextFileError, match=r"empty file \(0 bytes\)"):
        lines_of(tmp_path / "empty.fa")


def tar_of(text: bytes, mode: str) -> bytes:
    """`tar c[zjJ]f` of one member, seqs.fa, holding `text`."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        member = tarfile.TarInfo("seqs.fa")
        member.size = len(text)
        archive.addfile(member, io.BytesIO(text))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("mode", "kind"), [("w", ""), ("w:gz", ", gzip-compressed"), ("w:bz2", ", bzip2-compressed"),
                       ("w:xz", ", xz-compressed")],
)  # fmt: skip
def test_a_tar_archive_is_named_as_such_plain_or_compressed(tmp_path, mode, kind):
    """Before issue 26, `tar czf x.fa.gz seqs.fa` was taken for UTF-16 text (the NUL bytes of its header)."""
    path = tmp_path / "x.fa.gz"
    path.write_bytes(tar_of(TEXT[:2000], mode))
    with pytest.raises(TextFileError) as raised:
        lines_of(path)
    assert str(raised.value) == (
        f"{path}: not text: the file is a tar archive{kind}; unpack it first (tar -xf {path}) and give the FASTA "
        "file it holds"
    )


@pytest.mark.parametrize(
    "ending",
    [b"\x1a", b"\n\x1a", b"\n\x1a\n", b"\n\x1a\r\n\r\n", b"\x1a\n"],
    ids=["after_the_last_letter", "own_line", "own_line_newline", "own_line_crlf_blank", "letter_then_newline"],
)
@pytest.mark.parametrize("pack", [lambda text: text, gzip.compress], ids=["plain", "gzip"])
def test_a_final_ctrl_z_ends_the_text_and_is_counted(tmp_path, ending, pack):
    path = tmp_path / "dos.fa"
    path.write_bytes(pack(b">a\nACGT\n>b\nGGCC" + ending))
    lines, reader = lines_of(path)
    assert lines == [">a", "ACGT", ">b", "GGCC"]
    assert reader.end_of_file_mark and reader.number == 4


def test_a_ctrl_z_at_a_read_boundary_or_before_more_text_is_judged_by_what_follows(tmp_path):
    # The mark is the last byte of the first read and a line break the whole second: it still ends the text.
    head = b">a\n" + b"A" * (BLOCK_BYTES - 5) + b"\n"
    path = tmp_path / "boundary.fa"
    path.write_bytes(head + b"\x1a\n")
    assert len(head) + 1 == BLOCK_BYTES
    lines, reader = lines_of(path)
    assert [len(line) for line in lines] == [2, BLOCK_BYTES - 5] and reader.end_of_file_mark
    # Followed by more text, in the same read or the next one, it is an ordinary character of its line.
    for data in (b">a\nAC\x1a\n>b\nGT\n", head + b"\x1a\n>b\nGT\n"):
        path.write_bytes(data)
        lines, reader = lines_of(path)
        assert "\x1a" in lines[-3] and lines[-2:] == [">b", "GT"] and not reader.end_of_file_mark
