"""Text files as exact lines: plain, gzip (multi-member, BGZF), bzip2 or xz, every fault located by line and byte.

The FASTA reader and the sample sheet both read through `TextLines`. It works on bytes so that what goes wrong
can be said exactly: compression is recognised by its magic bytes, not the file name; a stream cut short or
followed by junk is an error naming the byte offset; text that is not UTF-8 (Latin-1, UTF-16, binary data) is
refused naming the line, the column and the byte offset in the file (in the decompressed data for a compressed
file). What is accepted but unusual is counted, never hidden: a UTF-8 byte-order mark, Windows (CRLF) and
classic Mac (lone CR) line endings, and a DOS end-of-file mark (Ctrl-Z) ending the text.
"""

from __future__ import annotations

import bz2
import lzma
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

# Reads of 1 MiB; a compressed stream is inflated at most 4 MiB at a time, so a file of long N runs (which
# compresses a thousandfold) never expands in memory all at once.
BLOCK_BYTES = 1 << 20
INFLATE_LIMIT = 4 << 20
COMPRESSIONS: dict[str, bytes] = {"gzip": b"\x1f\x8b", "bzip2": b"BZh", "xz": b"\xfd7zXZ\x00"}
# Content recognised by its first bytes that is not text, with what to do about it.
NOT_TEXT: dict[bytes, str] = {
    b"\xef\xbb\xbf": "",  # the UTF-8 byte-order mark is accepted (and counted)
    b"\xff\xfe": "UTF-16 text (little-endian byte-order mark); save it as UTF-8",
    b"\xfe\xff": "UTF-16 text (big-endian byte-order mark); save it as UTF-8",
    b"\x28\xb5\x2f\xfd": "zstd-compressed data, which is not supported; decompress it first (zstd -d)",
    b"PK\x03\x04": "a zip archive; unzip it first",
    b"\x1f\x9d": "Unix compress (.Z) data, which is not supported; decompress it first (gzip -d)",
    b"BAM\x01": "a BAM alignment file; convert it to FASTA first (samtools fasta)",
    b"%PDF": "a PDF document",
    b"\x89PNG": "a PNG image",
}
# A tar archive (POSIX ustar or GNU) says so at byte 257 of its first header; its first bytes are a member's name.
TAR_MAGIC_OFFSET = 257
TAR_MAGIC = b"ustar"
# DOS and CP/M tools end a text file with Ctrl-Z (0x1A); a final one, followed by nothing but line breaks, ends the
# text. Anywhere else it is an ordinary character (and no sequence letter).
END_OF_FILE_MARK = re.compile(rb"\x1a[\r\n]*\Z")


class TextFileError(ValueError):
    """The file as a whole cannot be read as text: missing, a directory, binary, not UTF-8, corrupt compression."""


def detect_compression(head: bytes) -> str | None:
    """`gzip`, `bzip2` or `xz` from a file's first bytes, or None for anything else."""
    for kind, magic in COMPRESSIONS.items():
        if head.startswith(magic):
            return kind
    return None


ZlibDecompressor = type(zlib.decompressobj())  # zlib does not export the class under a public name
Decompressor = ZlibDecompressor | bz2.BZ2Decompressor | lzma.LZMADecompressor


def _new_decompressor(kind: str) -> Decompressor:
    if kind == "gzip":
        return zlib.decompressobj(wbits=31)  # 31: a gzip header and trailer, CRC and length checked
    if kind == "bzip2":
        return bz2.BZ2Decompressor()
    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ)


def _inflate(decompressor: Decompressor, data: bytes) -> Iterator[bytes]:
    """Decompress `data`, INFLATE_LIMIT bytes of output at a time, until it is used up or the stream ends."""
    if isinstance(decompressor, ZlibDecompressor):
        while True:
            out = decompressor.decompress(data, INFLATE_LIMIT)
            if out:
                yield out
            data = decompressor.unconsumed_tail
            if decompressor.eof or (not data and len(out) < INFLATE_LIMIT):
                return
    else:
        yield decompressor.decompress(data, INFLATE_LIMIT)
        while not decompressor.eof and not decompressor.needs_input:
            yield decompressor.decompress(b"", INFLATE_LIMIT)


def _decompressed_blocks(raw: BinaryIO, path: Path, kind: str) -> Iterator[bytes]:
    """Every stream of a compressed file in turn (multi-member gzip and BGZF are several gzip streams).

    Ends with TextFileError when the data is corrupt, the file ends inside a stream, or anything other
    than another stream (or zero padding, as gzip itself allows) follows the last complete one.
    """
    magic = COMPRESSIONS[kind]
    block = 64 << 10  # smaller reads than plain text, so a corrupt region is located within 64 KiB
    stream_start = 0
    decompressor = _new_decompressor(kind)
    data = raw.read(block)  # always the last len(data) bytes read, ending at raw.tell()
    while True:
        try:
            yield from _inflate(decompressor, data)
        except (zlib.error, OSError, EOFError, lzma.LZMAError) as error:
            raise TextFileError(
                f"{path}: corrupt {kind} data between bytes {raw.tell() - len(data)} and {raw.tell()} (in the "
                f"compressed stream that starts at byte {stream_start}): {error}"
            ) from None
        if not decompressor.eof:
            data = raw.read(block)
            if not data:
                raise TextFileError(
                    f"{path}: truncated {kind} file: it ends at byte {raw.tell()} inside the compressed stream "
                    f"that starts at byte {stream_start} (was the download or copy cut short?)"
                )
            continue
        data = decompressor.unused_data
        while len(data) < len(magic) and (more := raw.read(block)):
            data += more
        end = raw.tell() - len(data)  # where the finished stream ended
        if not data:
            return
        if data.startswith(magic):
            stream_start = end
            decompressor = _new_decompressor(kind)
            continue
        padding = not data.strip(b"\x00")
        while padding and (more := raw.read(block)):
            padding = not more.strip(b"\x00")
        if padding:
            return
        raise TextFileError(
            f"{path}: the {kind} stream ends at byte {end} and is followed by data that is not {kind} "
            f"(starting {data[:8]!r}); the file is damaged, or something was appended to it"
        )


def _plain_blocks(raw: BinaryIO) -> Iterator[bytes]:
    while block := raw.read(BLOCK_BYTES):
        yield block


def _last_break(data: bytes) -> int:
    """Index of the last line break in `data` that is certainly complete, or -1.

    A carriage return at the very end may be the first half of CRLF, so it waits for the next block.
    """
    end = len(data) - 1 if data.endswith(b"\r") else len(data)
    return max(data.rfind(b"\n", 0, end), data.rfind(b"\r", 0, end))


class TextLines:
    """The decoded lines of a text file, plain or compressed, without their endings; `number` is the current one.

    Faults of the file as a whole (missing, a directory, not text, not UTF-8, corrupt or truncated compression)
    raise `error` (TextFileError or a subclass the caller names) with the path, the line and the byte offset.
    """

    def __init__(self, path: Path | str, error: type[TextFileError] = TextFileError) -> None:
        self.path = Path(path)
        self.error = error
        self.number = 0
        self.compression: str | None = None
        self.crlf = 0
        self.cr = 0
        self.byte_order_mark = False
        self.end_of_file_mark = False

    def __iter__(self) -> Iterator[str]:
        if self.path.is_dir():
            raise self.error(f"{self.path}: is a directory, not a file")
        if not self.path.exists():
            raise self.error(f"{self.path}: no such file")
        with open(self.path, "rb") as raw:
            self.compression = detect_compression(raw.read(8))
            raw.seek(0)
            if self.compression is None and raw.read(1) == b"":
                raise self.error(f"{self.path}: empty file (0 bytes)")
            raw.seek(0)
            blocks = _decompressed_blocks(raw, self.path, self.compression) if self.compression else _plain_blocks(raw)
            yield from self._lines(blocks)

    def _where(self, offset: int) -> str:
        return f"byte {offset} of the decompressed data" if self.compression else f"byte {offset}"

    def _lines(self, blocks: Iterator[bytes]) -> Iterator[str]:
        pending: list[bytes] = []
        offset = 0  # of the first pending byte, in the (decompressed) text
        first = True
        while True:
            try:
                block = next(blocks)
            except StopIteration:
                break
            except TextFileError as error:  # a compression fault: say how far the text got
                raise self.error(
                    f"{error}; it comes after line {self.number} of the text" if self.number else str(error)
                ) from None
            if not block:
                continue
            if first:
                first = False
                block = self._check_start(block)
                offset = 3 if self.byte_order_mark else 0
            cut = _last_break(block)
            if cut < 0:
                pending.append(block)  # a line longer than a block, such as a one-line chromosome
                continue
            complete = b"".join([*pending, block[: cut + 1]])
            pending = [block[cut + 1 :]]
            if pending == [b""] and (mark := END_OF_FILE_MARK.search(complete)):
                # The line holding a Ctrl-Z that may end the text waits until it is known whether anything follows.
                start = max(complete.rfind(b"\n", 0, mark.start()), complete.rfind(b"\r", 0, mark.start())) + 1
                complete, pending = complete[:start], [complete[start:]]
            yield from self._split(complete, offset)
            offset += len(complete)
        rest = b"".join(pending)
        if mark := END_OF_FILE_MARK.search(rest):
            self.end_of_file_mark = True
            rest = rest[: mark.start()]
        if rest:
            yield from self._split(rest, offset)

    def _check_start(self, block: bytes) -> bytes:
        if block[TAR_MAGIC_OFFSET : TAR_MAGIC_OFFSET + len(TAR_MAGIC)] == TAR_MAGIC:
            inner = f", {self.compression}-compressed" if self.compression else ""
            raise self.error(
                f"{self.path}: not text: the file is a tar archive{inner}; unpack it first (tar -xf {self.path}) "
                "and give the FASTA file it holds"
            )
        for signature, problem in NOT_TEXT.items():
            if block.startswith(signature):
                if not problem:
                    self.byte_order_mark = True
                    return block[len(signature) :]
                inner = f" (inside the {self.compression} compression)" if self.compression else ""
                raise self.error(f"{self.path}: not text: the file is {problem}{inner}")
        return block

    def _locate(self, data: bytes, index: int) -> tuple[int, int]:
        """(line, column) of byte `index` of `data`, which starts at the beginning of line `self.number + 1`."""
        before = data[:index]
        breaks = before.count(b"\n") + before.count(b"\r") - before.count(b"\r\n")
        line_start = max(before.rfind(b"\n"), before.rfind(b"\r")) + 1
        return self.number + 1 + breaks, index - line_start + 1

    def _split(self, data: bytes, offset: int) -> Iterator[str]:
        nul = data.find(b"\x00")
        if nul >= 0:
            line, column = self._locate(data, nul)
            sample = data[: min(len(data), 200)]
            utf16 = len(sample) > 8 and sample[1::2].count(0) > 0.4 * len(sample[1::2])
            hint = "UTF-16 text without a byte-order mark? Save it as UTF-8" if utf16 else "binary data, not text"
            raise self.error(
                f"{self.path}: line {line}, column {column} ({self._where(offset + nul)}): NUL byte; {hint}"
            )
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            line, column = self._locate(data, error.start)
            byte = data[error.start]
            raise self.error(
                f"{self.path}: line {line}, column {column} ({self._where(offset + error.start)}): byte 0x{byte:02x} "
                "is not UTF-8 text; if the file is Latin-1 or Windows-1252, convert it "
                "(iconv -f latin1 -t utf-8); if it is binary, it is not the text file expected here"
            ) from None
        if "\r" in text:
            crlf = text.count("\r\n")
            self.crlf += crlf
            self.cr += text.count("\r") - crlf
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        lines = text.split("\n")
        if lines[-1] == "":
            lines.pop()  # the text ended with a line break
        for line in lines:
            self.number += 1
            yield line
