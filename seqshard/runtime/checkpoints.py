"""Finding and reading model checkpoints: local directories, object-storage URLs or Hugging Face hub ids.

Every model loader and head goes through `resolve_checkpoint` so that a missing checkpoint fails the same way
everywhere: with one line that says which command downloads it and which setting to point at the result, spelled
for the interface in use (`--checkpoint` on the command line, `checkpoint:` in the workflow's config).
An `s3://bucket/prefix` URL resolves into the node-local cache of `seqshard.runtime.storage`. Cluster nodes usually have
no internet, so the hub cache is consulted offline first and a download is only attempted when `HF_HUB_OFFLINE`
is not set.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from seqshard.runtime.storage import fetch, is_object_url

if TYPE_CHECKING:
    from seqshard.io.interface import Interface

__all__ = [
    "CheckpointNotFoundError",
    "file_digest",
    "inference_memory_mb",
    "is_local",
    "resolve_checkpoint",
    "use_local_copy",
    "weights_files",
]

# `owner/name` or `owner/name@revision`, with the characters the hub allows in names. A relative path with one
# slash (`resources/model`) has the same shape; that ambiguity is resolved by looking on disk first.
log = logging.getLogger(__name__)

_HUB_ID = re.compile(
    r"^(?P<repo>[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*)(?:@(?P<revision>[A-Za-z0-9._/-]+))?$"
)
_FALSE_VALUES = {"", "0", "false", "no", "off"}
# Weights files in the order loaders prefer them (safetensors first: it cannot run code), then shard indexes.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "pytorch.pth")
SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")

# Host memory (MB) an inference job asks for on its first attempt: INFERENCE_BASE_MB for the interpreter, torch
# and its CUDA libraries, a chunk of records and a batch's activations on the CPU (a CPU job with the full
# DNABERT-2 peaks near 2 GB), plus INFERENCE_WEIGHTS_FACTOR times the weights files: the fp32 model is up to twice
# the file (a bf16 or fp16 checkpoint is cast to fp32), and a mapped file's pages count while they are read.
INFERENCE_BASE_MB = 4000
INFERENCE_WEIGHTS_FACTOR = 2.0
_DIGEST_CHUNK = 8 * 1024 * 1024


class CheckpointNotFoundError(FileNotFoundError):
    """A checkpoint that is neither on disk nor in the hub cache; the message says how to get it."""


# Checkpoints (and heads) this process reads from a copy rather than where the config names them: the directory
# a storage provider staged on the node. Provenance and cache keys keep the configured name.
_local_copies: dict[str, Path] = {}


def use_local_copy(spec: str, directory: Path | str) -> None:
    """Make `resolve_checkpoint(spec)` read the copy in `directory` for the rest of this process."""
    _local_copies[str(spec)] = Path(directory)


def resolve_checkpoint(
    spec: str | Path,
    required: Sequence[str] = ("config.json",),
    *,
    interface: Interface | None = None,
    setting: str = "checkpoint",
) -> Path:
    """The local directory holding checkpoint `spec`: a directory, `s3://bucket/prefix`, or `owner/name[@revision]`.

    A `Path` is always taken as a directory. An object-storage URL is fetched into the node-local cache (once
    per node; see `seqshard.runtime.storage.fetch`). Any other string is a directory if one exists there, otherwise a
    hub id, looked up in the hub cache (`HF_HUB_CACHE`, else `HF_HOME`/hub, read when called). Every file in
    `required` must be present in the resolved directory. A name given to `use_local_copy` resolves to its copy.
    A hub id that is nowhere to be found says how to download it and to point `setting` (`checkpoint` or `head`) at
    the download, spelled for `interface` (seqshard.io.interface; None: for none in particular).
    """
    spec = _local_copies.get(str(spec), spec)
    if is_object_url(spec):
        cached = fetch(str(spec)).path
        _check_required(cached, required, str(spec))
        return cached
    path = Path(spec).expanduser()
    if path.is_dir():
        _check_required(path, required, str(spec))
        return path
    if path.exists():
        raise CheckpointNotFoundError(f"checkpoint {str(spec)!r} is a file, not a checkpoint directory")
    if is_local(spec):
        raise CheckpointNotFoundError(
            f"no such checkpoint directory: {str(spec)!r} (and it is not a hub id of the form owner/name)"
        )
    match = _HUB_ID.match(str(spec))
    assert match is not None
    repo_id, revision = match["repo"], match["revision"]
    snapshot = _snapshot_from_hub(repo_id, revision, interface, setting)
    _check_required(snapshot, required, str(spec))
    return snapshot


def is_local(spec: str | Path) -> bool:
    """Whether `spec` names a local directory (one that exists, or one still to be made, such as a demo checkpoint
    the workflow builds) rather than an object-storage URL or a Hugging Face hub id (`owner/name[@revision]`, when
    no such directory exists): the one place that tells them apart."""
    if is_object_url(spec):
        return False
    if isinstance(spec, Path) or Path(spec).expanduser().exists():
        return True
    return _HUB_ID.match(spec) is None or ".." in spec


def weights_files(directory: Path) -> list[Path]:
    """The weights file of a checkpoint directory, or all shards named by a Hugging Face shard index."""
    directory = Path(directory)
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return [directory / name]
    for name in SHARD_INDEXES:
        index = directory / name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            missing = [shard for shard in shards if not (directory / shard).is_file()]
            if missing:
                raise CheckpointNotFoundError(f"{index} names shards that are missing: {', '.join(missing)}")
            return [directory / shard for shard in shards]
    raise CheckpointNotFoundError(
        f"checkpoint directory {directory} has no weights file (looked for {', '.join(WEIGHT_FILES + SHARD_INDEXES)})"
    )


def inference_memory_mb(checkpoint: str | Path) -> int:
    """Host memory (MB) for an inference job's first attempt: INFERENCE_BASE_MB + INFERENCE_WEIGHTS_FACTOR x the
    weights files of `checkpoint` (a directory, or a hub id already in the local cache).

    Never downloads and never fails: a checkpoint that is not there yet (a demo the workflow builds first, a hub
    id not cached) counts as no weights; the job itself then says what is missing.
    """
    try:
        directory = _local_directory(checkpoint)
        size = sum(path.stat().st_size for path in weights_files(directory)) if directory else 0
    except (CheckpointNotFoundError, OSError, ValueError):
        size = 0
    return INFERENCE_BASE_MB + math.ceil(INFERENCE_WEIGHTS_FACTOR * size / 1e6)


def _local_directory(spec: str | Path) -> Path | None:
    """The checkpoint directory of `spec` when it is on disk or in the hub cache, without any network access."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if is_local(spec) or is_object_url(spec):
        return None
    match = _HUB_ID.match(str(spec))
    assert match is not None
    from huggingface_hub import snapshot_download

    try:
        snapshot = snapshot_download(
            match["repo"], revision=match["revision"], cache_dir=_hub_cache_dir(), local_files_only=True
        )
    except Exception:  # noqa: BLE001 - not cached (or no such repo): nothing to measure
        return None
    return Path(snapshot)


def file_digest(path: Path) -> str:
    """`sha256:<hex>` of a file, read in chunks so multi-GB weights never sit in memory twice."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_DIGEST_CHUNK):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def _check_required(directory: Path, required: Sequence[str], spec: str) -> None:
    missing = [name for name in required if not (directory / name).is_file()]
    if missing:
        where = directory if str(directory) == spec else f"{directory} (resolved from {spec!r})"
        raise CheckpointNotFoundError(f"checkpoint directory {where} has no {', '.join(missing)}")


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in _FALSE_VALUES


def _hub_cache_dir() -> Path:
    # huggingface_hub reads these variables once at import; reading them here makes a later change (a test, a
    # job script that exports HF_HOME after Python started) take effect.
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(variable):
            return Path(os.environ[variable]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _snapshot_from_hub(repo_id: str, revision: str | None, interface: Interface | None, setting: str) -> Path:
    from huggingface_hub import snapshot_download

    cache_dir = _hub_cache_dir()
    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True))
    except Exception as error:  # noqa: BLE001 - any failure here just means "not cached"
        reason = f"{type(error).__name__}: {error}"
    if revision is not None:
        # Users quote short commit hashes (as on the model page); the cache only indexes full ones.
        short_match = _snapshot_by_short_hash(cache_dir, repo_id, revision)
        if short_match is not None:
            return short_match
    log.debug("%s is not in the Hugging Face cache at %s: %s", repo_id, cache_dir, reason)
    failed = None
    if not _hub_offline():
        try:
            return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir))
        except Exception as error:  # noqa: BLE001 - no network, gated repo, bad id: all become one clear message
            failed = f"{type(error).__name__}: {error}"
    raise CheckpointNotFoundError(_download_hint(repo_id, revision, cache_dir, failed, interface, setting))


def _snapshot_by_short_hash(cache_dir: Path, repo_id: str, revision: str) -> Path | None:
    if not re.fullmatch(r"[0-9a-f]{7,39}", revision):
        return None
    snapshots = cache_dir / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    found = sorted(snapshots.glob(f"{revision}*")) if snapshots.is_dir() else []
    return found[0] if len(found) == 1 else None


def _download_hint(
    repo_id: str, revision: str | None, cache_dir: Path, failed: str | None, interface: Interface | None, setting: str
) -> str:
    """One line: where the checkpoint was looked for, the command that downloads it, and the setting to point at
    the download, as the user's interface spells it; why a download that was tried failed, first line only."""
    local_dir = f"resources/checkpoints/{repo_id.split('/', 1)[1]}"
    revision_flag = f" --revision {revision}" if revision else ""
    named = repo_id + (f"@{revision}" if revision else "")
    if failed is None:
        why = " (HF_HUB_OFFLINE is set, so no download was tried)"
    else:
        why = f" (the download failed: {failed.splitlines()[0] if failed.strip() else failed})"
    point = interface.setting(setting, local_dir) if interface is not None else f"that directory as the {setting}"
    return (
        f"{setting} {named!r} is neither a local directory nor in the Hugging Face cache at {cache_dir}{why}: "
        f"download it on a machine with internet access with `hf download {repo_id}{revision_flag} --local-dir "
        f"{local_dir}`, then use {point}; or keep the hub id and download it into a cache this machine reads "
        "(HF_HOME)"
    )
