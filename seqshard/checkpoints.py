"""Finding and reading model checkpoints: local directories or Hugging Face hub ids, without network hangs.

Every model loader goes through `resolve_checkpoint` so that a missing checkpoint fails the same way
everywhere: with a message that says which command downloads it and which config key to point at the result.
Cluster nodes usually have no internet, so the hub cache is consulted offline first and a download is only
attempted when `HF_HUB_OFFLINE` is not set.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = [
    "CheckpointNotFoundError",
    "file_digest",
    "find_weights_file",
    "load_state_dict",
    "resolve_checkpoint",
]

# `owner/name` or `owner/name@revision`, with the characters the hub allows in names. A relative path with one
# slash (`resources/model`) has the same shape; that ambiguity is resolved by looking on disk first.
_HUB_ID = re.compile(
    r"^(?P<repo>[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*)(?:@(?P<revision>[A-Za-z0-9._/-]+))?$"
)
_FALSE_VALUES = {"", "0", "false", "no", "off"}
_DIGEST_CHUNK = 8 * 1024 * 1024


class CheckpointNotFoundError(FileNotFoundError):
    """A checkpoint that is neither on disk nor in the hub cache; the message says how to get it."""


def resolve_checkpoint(spec: str | Path, required: Sequence[str] = ("config.json",)) -> Path:
    """The local directory holding checkpoint `spec` (a directory, or a hub id `owner/name[@revision]`).

    A `Path` is always taken as a directory. A string is a directory if one exists there, otherwise a hub id,
    looked up in the hub cache (`HF_HUB_CACHE`, else `HF_HOME`/hub, read when called). Every file in
    `required` must be present in the resolved directory.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        _check_required(path, required, str(spec))
        return path
    if path.exists():
        raise CheckpointNotFoundError(f"checkpoint {str(spec)!r} is a file, not a checkpoint directory")
    match = _HUB_ID.match(str(spec)) if isinstance(spec, str) else None
    if match is None or ".." in str(spec):
        raise CheckpointNotFoundError(
            f"no such checkpoint directory: {str(spec)!r} (and it is not a hub id of the form owner/name)"
        )
    repo_id, revision = match["repo"], match["revision"]
    snapshot = _snapshot_from_hub(repo_id, revision)
    _check_required(snapshot, required, str(spec))
    return snapshot


def find_weights_file(directory: Path, candidates: Sequence[str] = ("model.safetensors", "pytorch_model.bin")) -> Path:
    """The first of `candidates` present in `directory`; safetensors first because it cannot run code."""
    for name in candidates:
        path = Path(directory) / name
        if path.is_file():
            return path
    raise CheckpointNotFoundError(
        f"checkpoint directory {directory} has no weights file (looked for {', '.join(candidates)})"
    )


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a weights file on the CPU, without unpickling arbitrary objects."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    # weights_only refuses pickled code, which is what makes a downloaded .bin safe to open.
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (found {type(state).__name__})")
    return state


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


def _snapshot_from_hub(repo_id: str, revision: str | None) -> Path:
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
    if not _hub_offline():
        try:
            return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir))
        except Exception as error:  # noqa: BLE001 - no network, gated repo, bad id: all become one clear message
            reason = f"{type(error).__name__}: {error}"
    raise CheckpointNotFoundError(_download_hint(repo_id, revision, cache_dir, reason))


def _snapshot_by_short_hash(cache_dir: Path, repo_id: str, revision: str) -> Path | None:
    if not re.fullmatch(r"[0-9a-f]{7,39}", revision):
        return None
    snapshots = cache_dir / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    found = sorted(snapshots.glob(f"{revision}*")) if snapshots.is_dir() else []
    return found[0] if len(found) == 1 else None


def _download_hint(repo_id: str, revision: str | None, cache_dir: Path, reason: str) -> str:
    name = repo_id.split("/", 1)[1]
    local_dir = f"resources/checkpoints/{name}"
    revision_flag = f" --revision {revision}" if revision else ""
    offline = " (HF_HUB_OFFLINE is set, so no download was tried)" if _hub_offline() else ""
    return (
        f"checkpoint {repo_id + ('@' + revision if revision else '')!r} is not a local directory and is not "
        f"in the Hugging Face cache at {cache_dir}{offline}.\n"
        f"Download it on a machine with internet access:\n"
        f"    hf download {repo_id}{revision_flag} --local-dir {local_dir}\n"
        f"then set `checkpoint: {local_dir}` in config/config.yaml.\n"
        f"Alternatively run `hf download {repo_id}{revision_flag}` with HF_HOME pointing at a cache this "
        f"machine can read, and keep the hub id.\n"
        f"(lookup failed with {reason})"
    )
