"""Linear heads on pooled embeddings: how classify/regress run on a backbone that has no fine-tuned head of its own.

A head is a directory with two files:

- `head.safetensors`: `weight` [outputs, hidden] and `bias` [outputs], float32;
- `head.json`: `{"task": "classify" | "regress", "labels": [...], "pooling": "mean" | "max" | "cls"}` — one label
  per output row (class names for classify, target names for regress), and the pooling the head was trained on.

This is the format for LucaOne classification and property-prediction heads (any linear probe trained on
seqshard's own embeddings works), and it can be given to DNABERT-2 too, where it takes precedence over a
fine-tune's built-in head.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from seqshard.engine.pooling import pool
from seqshard.models import SequenceHead
from seqshard.runtime.checkpoints import file_digest, resolve_checkpoint

HEAD_WEIGHTS = "head.safetensors"
HEAD_SPEC = "head.json"


class PooledLinearHead(nn.Module):
    """Pool the sequence's own tokens, then one linear layer."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, pooling: str) -> None:
        super().__init__()
        self.linear = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(weight)
            self.linear.bias.copy_(bias)
        self.pooling = pooling

    def forward(self, hidden: torch.Tensor, owned: torch.Tensor) -> torch.Tensor:
        return self.linear(pool(hidden, owned, self.pooling))


def load_linear_head(directory: Path | str, hidden_size: int, device: str | torch.device = "cpu") -> SequenceHead:
    """The head stored in `directory` (a path or an object-storage URL), checked against the backbone's width."""
    directory = _head_directory(directory)
    spec = json.loads((directory / HEAD_SPEC).read_text())
    task, labels, pooling = spec.get("task"), spec.get("labels"), spec.get("pooling", "mean")
    if task not in ("classify", "regress") or not labels or pooling not in ("mean", "max", "cls"):
        raise ValueError(f"{directory / HEAD_SPEC}: needs task classify|regress, labels, pooling mean|max|cls")
    tensors = load_file(directory / HEAD_WEIGHTS)
    weight, bias = tensors.get("weight"), tensors.get("bias")
    if weight is None or bias is None or weight.shape != (len(labels), hidden_size) or bias.shape != (len(labels),):
        shapes = {key: tuple(value.shape) for key, value in tensors.items()}
        raise ValueError(
            f"{directory / HEAD_WEIGHTS}: expected weight [{len(labels)}, {hidden_size}] and bias [{len(labels)}] "
            f"for {len(labels)} labels on a {hidden_size}-wide backbone, found {shapes}"
        )
    module = PooledLinearHead(weight.float(), bias.float(), pooling).to(device).eval()
    return SequenceHead(module, [str(label) for label in labels], task)


def head_digest(directory: Path | str) -> str:
    return file_digest(_head_directory(directory) / HEAD_WEIGHTS)


def _head_directory(location: Path | str) -> Path:
    try:
        spec = location if isinstance(location, Path) else str(location)
        return resolve_checkpoint(spec, (HEAD_WEIGHTS, HEAD_SPEC), setting="head")
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{error} (a head needs {HEAD_WEIGHTS} and {HEAD_SPEC}; see README, 'Heads')") from None


def write_demo_head(
    directory: Path | str, hidden_size: int, labels: list[str], task: str = "classify", seed: int = 0
) -> Path:
    """A random linear head in the format above, for demos and tests."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(len(labels), hidden_size, generator=generator) / hidden_size**0.5
    bias = torch.randn(len(labels), generator=generator) * 0.1
    save_file({"weight": weight.contiguous(), "bias": bias.contiguous()}, directory / HEAD_WEIGHTS)
    spec = {"task": task, "labels": labels, "pooling": "mean"}
    (directory / HEAD_SPEC).write_text(json.dumps(spec, indent=2) + "\n")
    return directory
