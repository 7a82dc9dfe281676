"""The models seqshard runs, behind one loader interface, and the registry that names them.

Every architecture module provides a `load_<name>(checkpoint, device, dtype)` factory that returns a
`LoadedModel`; inference code only ever talks to that dataclass, so adding a model never touches batching,
pooling or Parquet writing. `ARCHITECTURES` registers each one (its module is imported on first use, so the
workflow and the command line read the registry without torch). What every loader shares is in
`seqshard.models.loading`.

Every backbone (`LoadedModel.model`) is called as `model(input_ids, attention_mask)` and returns its last hidden
state; `model(input_ids, attention_mask, layers=(...))` returns instead the hidden states of the layers named, from
the same single forward pass, numbered as fair-esm's `repr_layers` (`layer_numbers`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # torch is heavy to import; the workflow reads ARCHITECTURES without it
    import numpy as np
    import torch


class SequenceTokenizer(Protocol):
    """Turns one validated, upper-case sequence into token ids framed as `[CLS] ... [SEP]` (or, for a model without
    an end token such as the Nucleotide Transformer, `[CLS] ...`: `frame` says which)."""

    pad_id: int
    mask_id: int
    max_residues_per_token: int  # the most residues one token can stand for: a bound on how few tokens fit
    frame: tuple[int, int]  # special tokens before and after a sequence's own: (1, 1) for [CLS] ... [SEP]

    def encode(self, sequence: str) -> list[int]: ...

    def encode_with_offsets(self, sequence: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids as `encode`, plus each token's residue span `[start, end)`; (0, 0) for the frame's tokens."""
        ...

    def encode_many_with_offsets(self, sequences: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """`encode_with_offsets` for many sequences at once (a tokenizer may run them in parallel)."""
        ...

    def encode_many_arrays(self, sequences: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(ids int32, spans int64 [n, 2]) per sequence: `encode_many_with_offsets` as arrays."""
        ...

    def encode_flat(self, sequences: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Every sequence's framed ids back to back (int32) and the boundaries (int64, len + 1): sequence i is
        `ids[starts[i]:starts[i + 1]]`. The fast path for many sequences: no offsets, no per-token objects."""
        ...


def layer_numbers(layers: Sequence[int], num_layers: int) -> tuple[int, ...]:
    """`layers` as absolute layer numbers 0..num_layers, counted as fair-esm's `repr_layers` counts them.

    Layer 0 is the embeddings' output (what the first transformer layer reads), layer i the output of layer i, and
    layer `num_layers` the model's final hidden state: the last layer's output after the architecture's final
    LayerNorm where it has one (ESM-2, the Nucleotide Transformer, LucaOne), i.e. what `embedding` holds. A negative
    number counts from the top: -1 is the final hidden state, -(num_layers + 1) the embeddings. Out of range or the
    same layer twice is a ValueError.
    """
    absolute = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int) or not -(num_layers + 1) <= layer <= num_layers:
            raise ValueError(
                f"layer {layer!r} does not exist: this model has layers 0 (the embeddings) to {num_layers}, or "
                f"-1 (the last) to -{num_layers + 1} counted from the top"
            )
        absolute.append(layer % (num_layers + 1))
    repeated = sorted({a for a in absolute if absolute.count(a) > 1})
    if repeated:
        names = [str(layer) for layer, a in zip(layers, absolute, strict=True) if a in repeated]
        raise ValueError(f"layers {', '.join(names)} name the same layer of a {num_layers}-layer model; give each once")
    return tuple(absolute)


@dataclass
class SequenceHead:
    """A fine-tuned head on top of the backbone: classification (one logit per label) or regression."""

    module: torch.nn.Module  # forward(hidden [B, L, H], attention_mask [B, L] bool) -> [B, len(labels)]
    labels: list[str]  # class names, or the regression target name(s)
    kind: str  # "classify" or "regress"


@dataclass
class LoadedModel:
    """A backbone ready for inference plus what callers need to feed it and describe its output."""

    name: str  # architecture name, e.g. "dnabert2"
    # forward(input_ids [B, L] long, attention_mask [B, L] bool) -> [B, L, hidden], the final hidden state; with
    # `layers=` (absolute numbers, see layer_numbers) a list of [B, L, hidden], one per layer, from the same pass.
    model: torch.nn.Module
    tokenizer: SequenceTokenizer
    hidden_size: int
    checkpoint: str  # what the user asked for: a directory or a hub id
    checkpoint_dir: Path  # where the files were actually read from
    digest: str  # sha256 of the weights file, for provenance
    molecules: frozenset[str]  # molecule types the model accepts: subset of {"dna", "rna", "protein"}
    max_tokens: int = 512  # longest input, the frame's tokens ([CLS], [SEP]) included, the model is run on
    default_window: int = 1000  # residues per window when `long_sequences: window` and no length is set
    num_layers: int = 0  # transformer layers: `layers=` takes 0 (the embeddings) to num_layers (the final state)
    token_types: dict[str, int] = field(default_factory=dict)  # molecule -> token type id the model is given
    mlm_head: torch.nn.Module | None = None  # hidden [.., H] -> logits [.., vocab], when the checkpoint has one
    sequence_head: SequenceHead | None = None  # when the checkpoint is a fine-tune with a head
    extra: dict[str, object] = field(default_factory=dict)

    def for_molecule(self, molecule: str) -> LoadedModel:
        """The model ready for one molecule type; models whose ids depend on it (LucaOne) return a bound copy."""
        return self


ModelLoader = Callable[[str, str, "torch.dtype"], LoadedModel]


@dataclass(frozen=True)
class Architecture:
    """One registered model architecture: the `architecture` key of the config and `--model`."""

    name: str
    module: str  # the model file, imported when the loader is first asked for
    loader: str  # its `load_<name>(checkpoint, device, dtype)` factory
    molecules: frozenset[str]  # what it accepts: subset of {"dna", "rna", "protein"}
    description: str  # one line, for `/model/info` and the README's model table


ARCHITECTURES: dict[str, Architecture] = {
    architecture.name: architecture
    for architecture in (
        Architecture(
            "dnabert2", "seqshard.models.dnabert2", "load_dnabert2", frozenset({"dna"}),
            "DNABERT-2: a BERT encoder with ALiBi attention over BPE tokens of DNA",
        ),
        Architecture(
            "lucaone", "seqshard.models.lucaone", "load_lucaone", frozenset({"dna", "rna", "protein"}),
            "LucaOne: a foundation model of nucleic acid and protein sequences, one token per residue",
        ),
        Architecture(
            "esm2", "seqshard.models.esm2", "load_esm2", frozenset({"protein"}),
            "ESM-2: Meta's protein language model, a rotary-position transformer, one token per residue (MIT)",
        ),
        Architecture(
            "nucleotide_transformer", "seqshard.models.nucleotide_transformer", "load_nucleotide_transformer",
            frozenset({"dna"}),
            "Nucleotide Transformer (v1): InstaDeep's DNA language model over 6-mer tokens; its checkpoints are "
            "licensed CC BY-NC-SA 4.0, non-commercial use only",
        ),
    )
}  # fmt: skip


def get_loader(architecture: str) -> ModelLoader:
    """The factory for `architecture`; imported lazily so one model's imports never slow another."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown model architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")
    entry = ARCHITECTURES[architecture]
    return getattr(importlib.import_module(entry.module), entry.loader)
