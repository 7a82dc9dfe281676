"""The models seqshard runs, behind one loader interface.

Every architecture module provides a `load_<name>(checkpoint, device, dtype)` factory that returns a
`LoadedModel`; inference code only ever talks to that dataclass, so adding a model never touches batching,
pooling or Parquet writing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # torch is heavy to import; the workflow reads ARCHITECTURE_MOLECULES without it
    import torch


class SequenceTokenizer(Protocol):
    """Turns one validated, upper-case sequence into token ids framed as `[CLS] ... [SEP]`."""

    pad_id: int

    def encode(self, sequence: str) -> list[int]: ...


@dataclass
class LoadedModel:
    """A backbone ready for inference plus what callers need to feed it and describe its output."""

    name: str  # architecture name, e.g. "dnabert2"
    model: torch.nn.Module  # forward(input_ids [B, L] long, attention_mask [B, L] bool) -> [B, L, hidden]
    tokenizer: SequenceTokenizer
    hidden_size: int
    checkpoint: str  # what the user asked for: a directory or a hub id
    checkpoint_dir: Path  # where the files were actually read from
    digest: str  # sha256 of the weights file, for provenance
    molecules: frozenset[str]  # molecule types the model accepts: subset of {"dna", "rna", "protein"}
    extra: dict[str, object] = field(default_factory=dict)


ModelLoader = Callable[[str, str, "torch.dtype"], LoadedModel]


def get_loader(architecture: str) -> ModelLoader:
    """The factory for `architecture`; imported lazily so one model's imports never slow another."""
    if architecture == "dnabert2":
        from seqshard.models.dnabert2 import load_dnabert2

        return load_dnabert2
    raise ValueError(f"unknown model architecture {architecture!r}; known: dnabert2")


ARCHITECTURE_MOLECULES: dict[str, frozenset[str]] = {
    "dnabert2": frozenset({"dna"}),
}
