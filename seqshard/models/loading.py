"""What every model loader does, in one place: find and read a checkpoint's weights (memory-mapped, never unpickling
code), digest them for provenance, build the architecture on the meta device and fill it with the checkpoint's
tensors by assignment, and say exactly which tensors are missing or unexpected when they do not match.

Every encoder's forward keeps the hidden states of the layers a caller names through one `LayerOutputs`, so that
"layer k" means the same thing in every architecture (fair-esm's numbering: `seqshard.models.layer_numbers`).

A model file (`dnabert2.py`, `lucaone.py`) then holds only what is its own: the architecture, the tokenizer
adapter, and the mapping from its published key layouts to its modules' names. The demo checkpoints' small
helpers (`write_json`) are here too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from seqshard.runtime.checkpoints import file_digest, weights_files

log = logging.getLogger(__name__)

ModuleT = TypeVar("ModuleT", bound=nn.Module)


@dataclass
class Weights:
    """A checkpoint's tensors (every shard's, merged), the files they came from, and their digest."""

    state: dict[str, torch.Tensor]
    files: list[Path]
    digest: str  # sha256 of the one file; over every shard's name and digest when sharded

    @property
    def source(self) -> Path:
        """What messages name: the weights file, or the directory of a sharded checkpoint."""
        return self.files[0] if len(self.files) == 1 else self.files[0].parent


def read_weights(directory: Path, device: str = "cpu") -> Weights:
    """Every tensor of the checkpoint in `directory` (one weights file, or the shards an index names) on `device`."""
    files = weights_files(directory)
    state: dict[str, torch.Tensor] = {}
    for path in files:
        state.update(load_state_dict(path, device))
    return Weights(state, files, weights_digest(files))


def weights_digest(files: list[Path]) -> str:
    """`sha256:<hex>` of a single weights file; of the shards' names and digests when there are several, so that any
    changed shard changes it."""
    if len(files) == 1:
        return file_digest(files[0])
    combined = hashlib.sha256("".join(f"{path.name} {file_digest(path)}\n" for path in files).encode())
    return f"sha256:{combined.hexdigest()}"


def load_state_dict(path: Path, device: str = "cpu", *, mmap: bool = True) -> dict[str, torch.Tensor]:
    """All tensors of a weights file on `device`, without unpickling arbitrary objects or a second copy in memory.

    The file is memory-mapped rather than read (safetensors, and torch.load(mmap=True) for .bin / .pth in the
    zip format torch has written since 1.6): on the CPU the tensors are the file's pages, which the kernel can
    drop and re-read under memory pressure instead of counting them as the process's own memory; for a GPU each
    tensor is copied from the mapping straight to the device, so the host never holds the weights as its own
    memory. A legacy (pre-zip) .pth cannot be mapped and is read into memory.

    `mmap=False` is the loader seqshard had before, kept as the loading benchmark's baseline: .bin / .pth read
    into memory, then everything moved to `device`.
    """
    path = Path(path)
    if not mmap:
        return {key: value.to(device) for key, value in _read_state_dict(path).items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device=device)
    if not zipfile.is_zipfile(path):
        log.info("%s is in torch's legacy format, which cannot be memory-mapped: reading it into memory", path)
        return {key: value.to(device) for key, value in _read_state_dict(path).items()}
    # weights_only refuses pickled code, which is what makes a downloaded .bin safe to open.
    return _checked(path, torch.load(path, map_location=device, weights_only=True, mmap=True))


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    return _checked(path, torch.load(path, map_location="cpu", weights_only=True))


def _checked(path: Path, state: object) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (found {type(state).__name__})")
    return state


def preview(keys: list[str], limit: int = 8) -> str:
    """The first `limit` keys, and how many there are in all."""
    shown = ", ".join(keys[:limit])
    return shown if len(keys) <= limit else f"{shown}, ... ({len(keys)} in all)"


def assign_weights(
    build: Callable[[], ModuleT], state: Mapping[str, torch.Tensor], source: Path, what: str, config: Path
) -> ModuleT:
    """The module `build` makes, built on the meta device (no time spent on a random init that is overwritten
    anyway) and filled with `state` by assignment. Missing or unexpected tensors, and shapes that do not fit
    (weights of another config), are a ValueError naming `source` and `config`; `what` says what `source`
    should have been (e.g. "a DNABERT-2 checkpoint (masked_lm layout)")."""
    with torch.device("meta"):
        module = build()
    try:
        result = module.load_state_dict(dict(state), strict=False, assign=True)
    except RuntimeError as error:  # shape mismatches: the weights do not belong to this config.json
        raise ValueError(f"{source} does not match {config}: {error}") from error
    problems = []
    if result.missing_keys:
        problems.append(f"missing tensors: {preview(result.missing_keys)}")
    if result.unexpected_keys:
        problems.append(f"unexpected tensors: {preview(result.unexpected_keys)}")
    if problems:
        raise ValueError(f"{source} is not {what}; {'; '.join(problems)}")
    return module


class LayerOutputs:
    """The hidden states of chosen layers, kept as one forward pass goes by (no copy, no second pass).

    `layers` are absolute numbers (`seqshard.models.layer_numbers`): 0 the embeddings' output, i the output of
    layer i, `num_layers` the final state. An encoder calls `keep(i, hidden)` with its embeddings' output (i = 0)
    and after each layer but the last, then `result(final)` with its final state (after a final LayerNorm where it
    has one); `finish` turns a kept state into what the model returns (padded rows zeroed, a packed batch padded
    again). Without `layers` the result is the final state alone, exactly as before.
    """

    def __init__(self, layers: Sequence[int] | None, num_layers: int) -> None:
        self.layers = None if layers is None else tuple(layers)
        self.num_layers = num_layers
        if self.layers is not None and not all(0 <= layer <= num_layers for layer in self.layers):
            raise ValueError(f"layers {self.layers} are not absolute numbers 0..{num_layers} of this model")
        self._wanted = set(self.layers or ())
        self._kept: dict[int, torch.Tensor] = {}

    def keep(self, layer: int, hidden: torch.Tensor) -> None:
        if layer in self._wanted and layer != self.num_layers:
            self._kept[layer] = hidden

    def result(
        self, final: torch.Tensor, finish: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> torch.Tensor | list[torch.Tensor]:
        done = finish or (lambda hidden: hidden)
        if self.layers is None:
            return done(final)
        self._kept[self.num_layers] = final
        return [done(self._kept[layer]) for layer in self.layers]


def model_max_length(directory: Path, default: int) -> int:
    """`model_max_length` of a Hugging Face tokenizer_config.json when it is a real number, else `default`."""
    path = Path(directory) / "tokenizer_config.json"
    if path.exists():
        value = json.loads(path.read_text()).get("model_max_length")
        if isinstance(value, int) and 0 < value < 1_000_000:  # transformers writes 1e30 for "no limit"
            return value
    return default


def write_json(path: Path, data: Mapping[str, object]) -> None:
    """A checkpoint's JSON file as the published ones look: indented, with a final newline."""
    path.write_text(json.dumps(data, indent=2) + "\n")
