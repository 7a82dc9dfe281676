"""The models seqshard runs, behind one loader interface, and the registry that names them.

Every architecture module provides a `load_<name>(checkpoint, device, dtype)` factory that returns a
`LoadedModel`; inference code only ever talks to that dataclass, so adding a model never touches batching,
pooling or Parquet writing. `ARCHITECTURES` registers each one (its module is imported on first use, so the
workflow and the command line read the registry without torch), with what its checkpoints look like
(`CheckpointLayout`), so that a checkpoint given to the wrong architecture is named for what it is
(`check_architecture`). What every loader shares is in `seqshard.models.loading`.

Every backbone (`LoadedModel.model`) is called as `model(input_ids, attention_mask)` and returns its last hidden
state; `model(input_ids, attention_mask, layers=(...))` returns instead the hidden states of the layers named, from
the same single forward pass, numbered as fair-esm's `repr_layers` (`layer_numbers`).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # torch is heavy to import; the workflow reads ARCHITECTURES without it
    import numpy as np
    import torch

    from seqshard.io.interface import Interface


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


# (checkpoint, device, dtype, interface=None): `interface` (seqshard.io.interface) spells the settings that messages
# tell the user to change; None words them for no interface in particular.
ModelLoader = Callable[..., LoadedModel]


@dataclass(frozen=True)
class CheckpointLayout:
    """What an architecture's checkpoints look like, enough to tell them from another architecture's without building
    anything: what their config.json holds and how their tensors are named, in every published layout."""

    config_fields: tuple[str, ...]  # config.json fields that only this architecture writes
    model_types: tuple[str, ...]  # config.json `model_type` values it writes
    weight_prefixes: tuple[str, ...]  # its tensors' names start with one of these (one per layout at least)
    # config.json `vocab_size` values it writes: what tells apart two architectures of one file layout (ESM-2 and the
    # Nucleotide Transformer are both transformers' `esm` models, over 33 tokens and over 4,096 6-mers and a few more)
    vocab_sizes: tuple[int, ...] = ()

    def matches(self, config: Mapping[str, object], keys: Iterable[str]) -> tuple[list[str], list[str]]:
        """What in `config` (config.json) and `keys` (tensor names) is this layout's: config facts, tensor prefixes."""
        fields = [name for name in self.config_fields if name in config]
        if config.get("model_type") in self.model_types:
            fields.append(f"model_type {config['model_type']!r}")
        if config.get("vocab_size") in self.vocab_sizes:
            fields.append(f"vocab_size {config['vocab_size']}")
        prefixes = sorted({prefix for key in keys for prefix in self.weight_prefixes if key.startswith(prefix)})
        return fields, prefixes

    def evidence(self, config: Mapping[str, object], keys: Iterable[str]) -> list[str]:
        """`matches` in words; empty if nothing."""
        fields, prefixes = self.matches(config, keys)
        found = [f"config.json has {' and '.join(fields)}"] if fields else []
        if prefixes:
            found.append("tensors " + ", ".join(f"{prefix}*" for prefix in prefixes))
        return found


@dataclass(frozen=True)
class Architecture:
    """One registered model architecture: the `architecture` key of the config and `--model`."""

    name: str
    title: str  # what messages call it, e.g. "DNABERT-2"
    module: str  # the model file, imported when the loader is first asked for
    loader: str  # its `load_<name>(checkpoint, device, dtype, interface=None)` factory
    molecules: frozenset[str]  # what it accepts: subset of {"dna", "rna", "protein"}
    description: str  # one line, for `/model/info` and the README's model table
    layout: CheckpointLayout  # how its checkpoints are recognised (check_architecture)

    @property
    def a_title(self) -> str:
        """The title with its article, as messages write it: "a DNABERT-2", "an ESM-2" (titles are read letter by
        letter or start with a consonant, so the first letter decides)."""
        return f"{'an' if self.title[0] in 'AEIOU' else 'a'} {self.title}"


ARCHITECTURES: dict[str, Architecture] = {
    architecture.name: architecture
    for architecture in (
        Architecture(
            "dnabert2", "DNABERT-2", "seqshard.models.dnabert2", "load_dnabert2", frozenset({"dna"}),
            "DNABERT-2: a BERT encoder with ALiBi attention over BPE tokens of DNA",
            # Masked-LM and sequence-classification layouts (bert.*, cls.*), a bare encoder (encoder.layer.N).
            CheckpointLayout(("alibi_starting_size",), ("bert",),
                             ("bert.", "cls.predictions.", "embeddings.word_embeddings.", "encoder.layer.")),
        ),
        Architecture(
            "lucaone", "LucaOne", "seqshard.models.lucaone", "load_lucaone", frozenset({"dna", "rna", "protein"}),
            "LucaOne: a foundation model of nucleic acid and protein sequences, one token per residue",
            # The port (lucaone.*; a bare backbone: embeddings.embed_tokens, encoder.layers.N) and the original
            # pytorch.pth (embed_tokens, layers.N, with or without module.).
            CheckpointLayout(("alphabet",), ("lucaone", "lucaone_gplm"),
                             ("lucaone.", "embeddings.embed_tokens.", "encoder.layers.", "embed_tokens.", "layers.",
                              "module.embed_tokens.", "module.layers.")),
        ),
        Architecture(
            "esm2", "ESM-2", "seqshard.models.esm2", "load_esm2", frozenset({"protein"}),
            "ESM-2: Meta's protein language model, a rotary-position transformer, one token per residue (MIT)",
            # transformers' EsmForMaskedLM (esm.*, lm_head.*), its sequence-classification fine-tunes (classifier.*).
            CheckpointLayout((), ("esm",), ("esm.",), vocab_sizes=(33,)),
        ),
        Architecture(
            "nucleotide_transformer", "Nucleotide Transformer", "seqshard.models.nucleotide_transformer",
            "load_nucleotide_transformer", frozenset({"dna"}),
            "Nucleotide Transformer (v1): InstaDeep's DNA language model over 6-mer tokens; its checkpoints are "
            "licensed CC BY-NC-SA 4.0, non-commercial use only",
            # The same transformers `esm` layout as ESM-2's, over a 6-mer vocabulary.
            CheckpointLayout((), ("esm",), ("esm.",), vocab_sizes=(4105, 4107)),
        ),
    )
}  # fmt: skip


def recognise_checkpoint(config: Mapping[str, object], keys: Iterable[str]) -> dict[str, list[str]]:
    """Each registered architecture whose layout `config` (config.json's content) and `keys` (tensor names) show,
    with what shows it in words, the strongest first (the most config facts and tensor prefixes matched); empty
    when they look like none of them."""
    ranked = rank_architectures(config, keys)
    return {name: ARCHITECTURES[name].layout.evidence(config, keys) for name, _ in ranked}


def rank_architectures(config: Mapping[str, object], keys: Iterable[str]) -> list[tuple[str, int]]:
    """(architecture, how many config facts and tensor prefixes of its layout match), strongest first, none at 0."""
    keys = list(keys)
    strength = {name: sum(map(len, entry.layout.matches(config, keys))) for name, entry in ARCHITECTURES.items()}
    return [(name, strength[name]) for name in sorted(strength, key=lambda name: -strength[name]) if strength[name]]


def check_architecture(expected: str, directory: Path, keys: Iterable[str], interface: Interface | None = None) -> None:
    """Refuse a checkpoint that looks more like another registered architecture's than like `expected`'s, naming
    what it looks like and the setting that would load it (spelled for `interface`). Anything else passes: the
    loader's own checks say what is wrong with a checkpoint of its architecture, or of none."""
    path = Path(directory) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        config = {}
    config = config if isinstance(config, dict) else {}
    keys = list(keys)
    ranked = rank_architectures(config, keys)
    # The strongest: several when nothing tells them apart (ESM-2's and the Nucleotide Transformer's tensors without
    # config.json); all are named.
    names = [name for name, strength in ranked if strength == ranked[0][1]] if ranked else []
    if not names or expected in names:
        return
    evidence = ARCHITECTURES[names[0]].layout.evidence(config, keys)
    title = " or ".join(ARCHITECTURES[name].title for name in names)
    title = f"{ARCHITECTURES[names[0]].a_title}{title[len(ARCHITECTURES[names[0]].title) :]}"
    fix = " or ".join(
        interface.setting("architecture", name) if interface is not None else f"the {name} architecture"
        for name in names
    )
    raise ValueError(
        f"checkpoint {directory} looks like {title} checkpoint ({'; '.join(evidence)}), not "
        f"{ARCHITECTURES[expected].a_title} one: load it with {fix}, or give {ARCHITECTURES[expected].a_title} "
        "checkpoint"
    )


def get_loader(architecture: str) -> ModelLoader:
    """The factory for `architecture`; imported lazily so one model's imports never slow another."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown model architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")
    entry = ARCHITECTURES[architecture]
    return getattr(importlib.import_module(entry.module), entry.loader)
