"""A content-addressed store of per-sequence results, shared by the jobs of a run and by later runs, so that a
sample that grew by a tenth costs only the new tenth.

Layout: `<root>/<key>/<name>.parquet`, where `<key>` is a digest of everything that shapes a task's numbers
(architecture, checkpoint and head digests, the task's settings, the dtype, the molecule, seqshard's version) and
each file holds the rows one job computed: a `digest` column (the sequence's identity) plus the row's values.

Why files and not a database: on a shared cluster filesystem (NFS, Lustre, JuiceFS) SQLite's locking is not to be
trusted, and concurrent jobs must never block each other. Here every file is immutable once visible: a writer
writes `<name>.parquet.partial` and renames it (atomic on POSIX filesystems and NFS), so a reader sees a whole
file or none; the files themselves are the index (a job reads the digest column of each file under its key). Size
is bounded: after a job stores its rows, the least recently used files (modification time, refreshed on every
hit) are deleted until the store is under its cap. A file deleted while another job lists it is a miss for that
job, never an error: results are recomputed, not lost.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from seqshard import __version__

log = logging.getLogger(__name__)

DIGEST_FIELD = pa.field("digest", pa.binary(16), nullable=False)
# A partial file this old belongs to a job that died: no job writes its results for a day.
STALE_PARTIAL_SECONDS = 24 * 3600


def cache_key(values: Mapping[str, object]) -> str:
    """The store's directory for results shaped by `values` (with seqshard's version, whose code shapes them too)."""
    text = json.dumps({**values, "seqshard_version": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass
class CacheHits:
    """Rows found in the store for one key, in the order of the digests asked for (misses left out)."""

    found: np.ndarray  # bool per digest asked for
    table: pa.Table | None  # the found rows, `digest` column dropped


class ResultCache:
    """See the module docstring. `max_bytes` bounds the whole store (every key)."""

    def __init__(self, root: Path | str, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes

    def _files(self, key: str) -> list[Path]:
        directory = self.root / key
        try:
            return sorted(p for p in directory.iterdir() if p.suffix == ".parquet")
        except FileNotFoundError:
            return []

    def lookup(self, key: str, digests: Sequence[bytes]) -> CacheHits:
        """Rows stored under `key` for `digests` (16 bytes each)."""
        wanted = {digest: index for index, digest in enumerate(digests)}
        found = np.zeros(len(digests), dtype=bool)
        parts: list[pa.Table] = []
        order: list[np.ndarray] = []
        for path in self._files(key):
            try:
                stored = pq.read_table(path, columns=["digest"]).column("digest").to_pylist()
                rows = [row for row, digest in enumerate(stored) if digest in wanted and not found[wanted[digest]]]
                if not rows:
                    continue
                table = pq.read_table(path).take(pa.array(rows))
                os.utime(path)  # a hit: this file was used recently
            except (FileNotFoundError, OSError, pa.ArrowInvalid) as error:  # evicted meanwhile, or unreadable
                log.debug("result cache file %s skipped: %s", path, error)
                continue
            positions = np.array([wanted[stored[row]] for row in rows])
            found[positions] = True
            parts.append(table.drop_columns(["digest"]))
            order.append(positions)
        if not parts:
            return CacheHits(found, None)
        combined = pa.concat_tables(parts)
        return CacheHits(found, combined.take(pa.array(np.argsort(np.concatenate(order), kind="stable"))))

    def store(self, key: str, digests: Sequence[bytes], table: pa.Table) -> None:
        """Add rows (one per digest) under `key` as a new immutable file; then keep the store under its cap."""
        writer = CacheWriter(self, key)
        try:
            writer.write(digests, table)
            writer.publish()
        finally:
            writer.discard()

    def evict(self) -> int:
        """Delete least recently used files until the store is within `max_bytes`; returns bytes freed."""
        entries = []
        for directory in self.root.iterdir() if self.root.is_dir() else []:
            if not directory.is_dir():
                continue
            for path in directory.iterdir():
                try:
                    status = path.stat()
                except FileNotFoundError:
                    continue
                if path.name.endswith(".partial") and time.time() - status.st_mtime < STALE_PARTIAL_SECONDS:
                    continue  # a job is writing it; one left by a killed job goes once it is stale
                entries.append((status.st_mtime, status.st_size, path))
        total = sum(size for _, size, _ in entries)
        freed = 0
        for _, size, path in sorted(entries):
            if total - freed <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            freed += size
        if freed:
            log.info("result cache %s: evicted %.1f MB of least recently used results", self.root, freed / 2**20)
        return freed


class CacheWriter:
    """Rows computed by one job under one key, appended as they come and published as one immutable file."""

    def __init__(self, cache: ResultCache, key: str) -> None:
        self.cache = cache
        self.key = key
        self.path = cache.root / key / f"{uuid.uuid4().hex}.parquet"
        self.partial = self.path.with_name(self.path.name + ".partial")
        self._writer: pq.ParquetWriter | None = None
        self.n_rows = 0

    def write(self, digests: Sequence[bytes], table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        with_digest = table.replace_schema_metadata(None).add_column(
            0, DIGEST_FIELD, pa.array(list(digests), pa.binary(16))
        )
        if self._writer is None:
            self.partial.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self.partial, with_digest.schema, compression="zstd")
        self._writer.write_table(with_digest)
        self.n_rows += table.num_rows

    def publish(self) -> None:
        """Make the rows visible to other jobs (an atomic rename), then keep the store under its cap."""
        if self._writer is None:
            return
        self._writer.close()
        self._writer = None
        self.partial.replace(self.path)
        self.cache.evict()

    def discard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.partial.unlink(missing_ok=True)
