"""Native LucaOne: both published checkpoint formats in plain torch modules, plus its DNA/RNA/protein tokenizer.

LucaOne ships as the original training code's `pytorch.pth` (+ `config.json`, `alphabet.pkl`) and as a Hugging
Face port (the `lucaone` package). The original needs its whole training repository and pickles; the port cannot
build its masked-LM class on transformers 5, computes token dropout differently from the original, and its
tokenizer does not upper-case proteins. This module computes the original's function with
`scaled_dot_product_attention`, keeps the port's state-dict key names, and maps the original's keys onto them, so
both formats load unchanged.

Layer math (pre-LayerNorm, ESM-2 style; F = 4·hidden feed-forward; every LayerNorm has eps 1e-5):
    embeddings  x = s·tok[ids] + s·type[t]     (s = embed_scale; optional token dropout); padded rows zeroed
    attention   q, k = rotary(q_proj(LN_pre x)), rotary(k_proj(LN_pre x)); v = v_proj(LN_pre x)
                x = x + out_proj(softmax(q kᵀ/√d + padding mask) v)
    mlp         x = x + fc2(GELU_exact(fc1(LN_post x)))     (post_layer_norm also comes before its sublayer)
    output      last_layer_norm(x)
Rotary: rotate-half over the head dim, inv_freq = 10000^(-2i/d), positions 0..L-1 counting [CLS].
Token types: 0 for nucleotides (DNA and RNA), 1 for proteins; the type is a property of the whole sequence.
"""

from __future__ import annotations

import copyreg
import dataclasses
import io
import json
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from seqshard.models import LoadedModel, check_architecture
from seqshard.models.loading import LayerOutputs, assign_weights, preview, read_weights, write_json
from seqshard.runtime.checkpoints import resolve_checkpoint

if TYPE_CHECKING:
    from seqshard.io.interface import Interface

__all__ = [
    "LAYER_NORM_EPS",
    "MOLECULE_TOKEN_TYPES",
    "VOCABULARY",
    "LucaOneConfig",
    "LucaOneForMaskedLM",
    "LucaOneForMolecule",
    "LucaOneLoadedModel",
    "LucaOneModel",
    "LucaOneTokenizer",
    "load_lucaone",
    "load_lucaone_masked_lm",
    "read_alphabet_pickle",
    "rotary_tables",
    "write_demo_checkpoint",
]

# The one published vocabulary ("gene_prot"): specials, nucleotides recoded as digits, amino acids, '.', '-', '*'.
VOCABULARY: tuple[str, ...] = (
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    "1", "2", "3", "4", "5",
    *"LAGVSERTIDPKQNFYMHWCXBUZOJ",
    ".", "-", "*",
)  # fmt: skip
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(5)
MOLECULE_TOKEN_TYPES: dict[str, int] = {"dna": 0, "rna": 0, "protein": 1}
# Both reference implementations build every LayerNorm as torch's (or apex's) default, eps 1e-5; the port's
# config.json says layer_norm_eps 1e-12, a field its layers never read.
LAYER_NORM_EPS = 1e-5
ROTARY_BASE = 10000.0
# The original's token dropout assumes 15 % of positions chosen for masking, 80 % of those replaced by [MASK].
_TOKEN_DROPOUT_TRAIN_RATIO = 0.15 * 0.8

# Keys of the original checkpoint that belong to pretraining heads, dropped exactly as the authors' own
# conversion to the Hugging Face format drops them.
_ORIGINAL_IGNORED_PREFIXES = (
    "contact_head.",
    "hidden_layer_list.",
    "hidden_act_list.",
    "classifier_dropout_list.",
    "classifier_list.",
    "output_list.",
    "loss_fct_list.",
)
# Heads of the port's sequence- and token-classification fine-tunes; only the backbone is used here.
_HF_IGNORED_PREFIXES = ("classifier.", "pooler.")
_INV_FREQ_SUFFIX = ".self_attn.rot_emb.inv_freq"

Layout = Literal["hf", "original"]


# ------------------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class LucaOneConfig:
    """The architecture fields shared by both config.json flavours (defaults are the published model).

    The original's config.json and the port's carry the same names for everything that shapes the network; the
    port adds `ffn_dim` (a default of 10240 whatever the hidden size), `layer_norm_eps` (1e-12) and classifier
    fields that its layers do not read. Both implementations hard-code the feed-forward width to 4·hidden and
    LayerNorm eps to 1e-5, so `ffn_size` is taken from the weights when loading (4·hidden otherwise) and eps is
    a constant. Unknown keys are ignored.
    """

    vocab_size: int = 39
    hidden_size: int = 2560
    num_hidden_layers: int = 20
    num_attention_heads: int = 40
    ffn_size: int | None = None
    type_vocab_size: int = 2
    max_position_embeddings: int = 4096  # informational: rotary embeddings have no table to outgrow
    token_dropout: bool = False
    embed_scale: float = 1.0
    pad_token_id: int = PAD_ID
    mask_token_id: int = MASK_ID
    alphabet: str = "gene_prot"
    use_embed_layer_norm: bool = False
    use_last_layer_norm: bool = True
    no_position_embeddings: bool = True
    no_token_type_embeddings: bool = False

    def __post_init__(self) -> None:
        if self.ffn_size is None:
            self.ffn_size = 4 * self.hidden_size
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head dim, got {self.head_dim}")
        if self.alphabet != "gene_prot" or self.vocab_size != len(VOCABULARY):
            raise ValueError(
                f"alphabet {self.alphabet!r} with vocab_size {self.vocab_size}: only the published 'gene_prot' "
                f"vocabulary of {len(VOCABULARY)} tokens is supported"
            )
        # Variants the code base can express but no published checkpoint uses; refusing them beats computing
        # something else silently.
        unsupported = {
            "use_embed_layer_norm": (self.use_embed_layer_norm, False),
            "use_last_layer_norm": (self.use_last_layer_norm, True),
            "no_position_embeddings": (self.no_position_embeddings, True),
            "no_token_type_embeddings": (self.no_token_type_embeddings, False),
        }
        wrong = [f"{name}={value}" for name, (value, published) in unsupported.items() if value != published]
        if wrong:
            raise ValueError(f"unsupported LucaOne variant ({', '.join(wrong)}); only the published layout loads")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> LucaOneConfig:
        known = {item.name for item in fields(cls)} - {"ffn_size"}
        return cls(**{key: value for key, value in data.items() if key in known})  # type: ignore[arg-type]

    @classmethod
    def from_json_file(cls, path: str | Path) -> LucaOneConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    def to_json_dict(self, layout: Layout) -> dict[str, object]:
        """config.json as each published format writes it (field names and fixed values of that format)."""
        shared: dict[str, object] = {
            "alphabet": self.alphabet,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "max_position_embeddings": self.max_position_embeddings,
            "type_vocab_size": self.type_vocab_size,
            "no_position_embeddings": self.no_position_embeddings,
            "no_token_type_embeddings": self.no_token_type_embeddings,
            "token_dropout": self.token_dropout,
            "use_embed_layer_norm": self.use_embed_layer_norm,
            "use_last_layer_norm": self.use_last_layer_norm,
            "embed_scale": self.embed_scale,
            "ignore_index": -100,
            "hidden_act": "gelu",
            "pad_token_id": PAD_ID,
            "unk_token_id": UNK_ID,
            "bos_token_id": CLS_ID,
            "eos_token_id": SEP_ID,
            "sep_token_id": SEP_ID,
            "mask_token_id": MASK_ID,
        }
        if layout == "original":
            # The training repository's LucaGPLMConfig (config/lucaone_gplm.json in LucaOne/LucaOne).
            data = {
                "architectures": ["LucaOneGPLM"],
                "model_type": "lucaone_gplm",
                "attention_probs_dropout_prob": 0.1,
                "classifier_dropout_prob": 0.1,
                "classifier_dropout": 0.1,
                "hidden_dropout_prob": 0.1,
                "classifier_hidden_act": "gelu",
                **shared,
            }
        else:
            # What `lucaone.LucaGPLMConfig.save_pretrained` writes, for the masked-LM class of the published repos
            # (tie_word_embeddings false there: the authors' conversion stores the decoder as its own copy).
            data = {
                "architectures": ["LucaGPLMForMaskedLM"],
                "model_type": "lucaone",
                "attention_probs_dropout_prob": 0.0,
                "hidden_dropout_prob": 0.0,
                "classifier_dropout_prob": 0.1,
                "classifier_loss_reduction": "mean",
                "classifier_loss_type": "cross_entropy",
                "classifier_num_labels": -1,
                "classifier_pooling_type": "value_attention",
                "classifier_pos_weight": 1.0,
                "classifier_weight": None,
                "dtype": "float32",
                "ffn_dim": self.ffn_size,
                "initializer_range": 0.02,
                "layer_norm_eps": 1e-12,
                "task_level": "seq_level",
                "task_type": "embedding",
                "tie_word_embeddings": False,
                **shared,
            }
        return dict(sorted(data.items()))


# ------------------------------------------------------------------------------------------------------------
# Modules (names follow the Hugging Face port, so its state dict loads key for key)


def rotary_tables(
    length: int, head_dim: int, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [length, head_dim] in float32 for positions 0..length-1, halves repeated (rotate-half layout).

    Computed in float32 whatever the model's dtype: a bf16 inv_freq or position would put positions in the
    thousands off by whole radians.
    """
    inv_freq = 1.0 / (ROTARY_BASE ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))
    angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    rotated = torch.cat((-second, first), dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


class LucaOneEmbeddings(nn.Module):
    """Token plus token-type embeddings, with the original's token-dropout rescaling and zeroed padding rows."""

    def __init__(self, config: LucaOneConfig) -> None:
        super().__init__()
        # Empty weights, filled by a checkpoint or the demo's init: nn.Embedding's random init on the meta
        # device pulls in torch's decompositions, which costs ~2 s of start-up in every inference job.
        self.embed_tokens = nn.Embedding(
            config.vocab_size,
            config.hidden_size,
            padding_idx=config.pad_token_id,
            _weight=torch.empty(config.vocab_size, config.hidden_size),
        )
        self.embed_type = nn.Embedding(
            config.type_vocab_size,
            config.hidden_size,
            _weight=torch.empty(config.type_vocab_size, config.hidden_size),
        )
        self.embed_scale = config.embed_scale
        self.token_dropout = config.token_dropout
        self.mask_token_id = config.mask_token_id

    def forward(
        self, input_ids: torch.Tensor, real: torch.Tensor | None, token_type_ids: torch.Tensor | int
    ) -> torch.Tensor:
        """Embeddings [B, L, H]; `real` [B, L] bool marks real tokens (None: every position is real)."""
        tokens = self.embed_tokens(input_ids)
        if isinstance(token_type_ids, int):
            # One type per batch is one row broadcast; no [B, L] index tensor needed.
            types = self.embed_type.weight[token_type_ids]
        else:
            types = self.embed_type(token_type_ids)
        if self.embed_scale != 1.0:
            tokens, types = self.embed_scale * tokens, self.embed_scale * types
        embeddings = tokens + types
        if self.token_dropout:
            # The original applies this at inference too (the port only in training): [MASK] rows become zero
            # and the rest are scaled by 0.88 / (1 − observed mask ratio), i.e. by 0.88 when nothing is masked.
            masked = input_ids.eq(self.mask_token_id)
            embeddings = embeddings.masked_fill(masked.unsqueeze(-1), 0.0)
            n_real = input_ids.shape[-1] if real is None else real.sum(-1).to(embeddings.dtype)
            observed = masked.sum(-1).to(embeddings.dtype) / n_real
            embeddings = embeddings * ((1.0 - _TOKEN_DROPOUT_TRAIN_RATIO) / (1.0 - observed))[:, None, None]
        return embeddings if real is None else embeddings * real.unsqueeze(-1).to(embeddings.dtype)


class LucaOneSelfAttention(nn.Module):
    """Multi-head self-attention with rotary positions on q and k, through `scaled_dot_product_attention`."""

    def __init__(self, config: LucaOneConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        width = config.hidden_size
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(
        self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, key_mask: torch.Tensor | None
    ) -> torch.Tensor:
        batch, length, width = hidden.shape

        def split_heads(states: torch.Tensor) -> torch.Tensor:
            return states.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

        query = _apply_rotary(split_heads(self.q_proj(hidden)), cos, sin)
        key = _apply_rotary(split_heads(self.k_proj(hidden)), cos, sin)
        value = split_heads(self.v_proj(hidden))
        # SDPA's default scale is 1/√head_dim, the reference's scaling; the boolean mask hides padded keys.
        context = F.scaled_dot_product_attention(query, key, value, attn_mask=key_mask)
        return self.out_proj(context.transpose(1, 2).reshape(batch, length, width))


class LucaOneLayer(nn.Module):
    """One pre-LayerNorm transformer block; both of its LayerNorms come before their sublayers."""

    def __init__(self, config: LucaOneConfig) -> None:
        super().__init__()
        assert config.ffn_size is not None  # set by LucaOneConfig.__post_init__
        self.pre_layer_norm = nn.LayerNorm(config.hidden_size, eps=LAYER_NORM_EPS)
        self.self_attn = LucaOneSelfAttention(config)
        self.post_layer_norm = nn.LayerNorm(config.hidden_size, eps=LAYER_NORM_EPS)
        self.fc1 = nn.Linear(config.hidden_size, config.ffn_size)
        self.fc2 = nn.Linear(config.ffn_size, config.hidden_size)

    def forward(
        self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, key_mask: torch.Tensor | None
    ) -> torch.Tensor:
        hidden = hidden + self.self_attn(self.pre_layer_norm(hidden), cos, sin, key_mask)
        return hidden + self.fc2(F.gelu(self.fc1(self.post_layer_norm(hidden))))


class LucaOneEncoder(nn.Module):
    """The layer stack and the final `last_layer_norm`."""

    def __init__(self, config: LucaOneConfig) -> None:
        super().__init__()
        self.head_dim = config.head_dim
        self.layers = nn.ModuleList(LucaOneLayer(config) for _ in range(config.num_hidden_layers))
        self.last_layer_norm = nn.LayerNorm(config.hidden_size, eps=LAYER_NORM_EPS)

    def forward(
        self, hidden: torch.Tensor, real: torch.Tensor | None, outputs: LayerOutputs | None = None
    ) -> torch.Tensor | list[torch.Tensor]:
        """The layers and the final `last_layer_norm` on embeddings [B, L, H]; with `outputs`, the states of the
        layers it names (layer 0: `hidden`; i < N: the residual stream after layer i; N: after last_layer_norm)."""
        outputs = outputs or LayerOutputs(None, len(self.layers))
        # Rotary tables for this length, computed once per forward and shared by all layers (no stored buffer:
        # nothing position-related depends on the checkpoint or the model's dtype).
        cos, sin = rotary_tables(hidden.shape[1], self.head_dim, hidden.device)
        # None lets SDPA use its fastest kernel. Checked on the CPU only: on a GPU the check would wait for the
        # device; callers that know there is no padding say so with `real=None` (LucaOneForMolecule does).
        if real is None or (real.device.type == "cpu" and bool(real.all())):
            key_mask = None
        else:
            key_mask = real[:, None, None, :]
        outputs.keep(0, hidden)
        for number, layer in enumerate(self.layers, 1):
            hidden = layer(hidden, cos, sin, key_mask)
            outputs.keep(number, hidden)
        return outputs.result(self.last_layer_norm(hidden))


class LucaOneModel(nn.Module):
    """The LucaOne encoder (the port's `lucaone.` prefix): token ids and token types to last hidden states."""

    def __init__(self, config: LucaOneConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = LucaOneEmbeddings(config)
        self.encoder = LucaOneEncoder(config)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | int | None = None,
        *,
        unpadded: bool = False,
        layers: Sequence[int] | None = None,
    ) -> torch.Tensor | list[torch.Tensor]:
        """Hidden states [B, L, hidden] after `last_layer_norm`, [CLS]/[SEP] rows included; with `layers`
        (absolute numbers, seqshard.models.layer_numbers) the states of those layers from the same pass
        (LucaOneEncoder.forward says which tensor each is).

        `token_type_ids` is 0 (nucleotide) or 1 (protein) for the whole batch, or a [B, L] tensor. It has no
        default: the port's default of 0 silently treats proteins as nucleotides. Without `attention_mask`,
        padding is where the ids are [PAD], as in the original, unless `unpadded` says there is none (which
        spares a GPU the wait of checking).
        """
        if token_type_ids is None:
            raise ValueError("LucaOne needs token types: 0 for DNA/RNA, 1 for protein (see LucaOneForMolecule)")
        if isinstance(token_type_ids, int) and not 0 <= token_type_ids < self.config.type_vocab_size:
            raise ValueError(f"token type {token_type_ids} out of range 0..{self.config.type_vocab_size - 1}")
        # Like the original: padding is where the mask is 0, or where the ids are [PAD] when there is no mask.
        if unpadded:
            real = None
        else:
            real = input_ids.ne(self.config.pad_token_id) if attention_mask is None else attention_mask.bool()
        outputs = LayerOutputs(layers, self.config.num_hidden_layers)
        return self.encoder(self.embeddings(input_ids, real, token_type_ids), real, outputs)


class LucaOneLMHead(nn.Module):
    """The masked-LM head: dense → GELU → LayerNorm → decoder + bias, with the port's key names."""

    def __init__(self, config: LucaOneConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=LAYER_NORM_EPS)
        # The original ties this to embed_tokens (`lm_head.weight`); the published port stores its own copy.
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.empty(config.vocab_size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.layer_norm(F.gelu(self.dense(hidden)))) + self.bias


class LucaOneForMaskedLM(nn.Module):
    """Encoder plus masked-LM head: the layout of the published Hugging Face repositories."""

    def __init__(self, config: LucaOneConfig) -> None:
        super().__init__()
        self.config = config
        self.lucaone = LucaOneModel(config)
        self.lm_head = LucaOneLMHead(config)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | int | None = None,
        *,
        unpadded: bool = False,
    ) -> torch.Tensor:
        """Logits [B, L, vocab_size]."""
        return self.lm_head(self.lucaone(input_ids, attention_mask, token_type_ids, unpadded=unpadded))


class LucaOneForMolecule(nn.Module):
    """A LucaOne module with the token type of one molecule as its default, so that `(input_ids, attention_mask)`
    is enough, as for every other seqshard backbone: without a mask, no position is padding. Shares (does not
    copy) the wrapped module's weights."""

    def __init__(self, model: LucaOneModel | LucaOneForMaskedLM, token_type: int) -> None:
        super().__init__()
        self.model = model
        self.token_type = token_type

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | int | None = None,
        *,
        layers: Sequence[int] | None = None,
    ) -> torch.Tensor | list[torch.Tensor]:
        token_types = self.token_type if token_type_ids is None else token_type_ids
        if layers is None:  # the masked-LM module takes no `layers`: it returns logits
            return self.model(input_ids, attention_mask, token_type_ids=token_types, unpadded=attention_mask is None)
        return self.model(
            input_ids, attention_mask, token_type_ids=token_types, unpadded=attention_mask is None, layers=layers
        )


# ------------------------------------------------------------------------------------------------------------
# Tokenizer


def _token_type(molecule: str) -> int:
    if molecule not in MOLECULE_TOKEN_TYPES:
        raise ValueError(f"unknown molecule {molecule!r}; LucaOne accepts {', '.join(MOLECULE_TOKEN_TYPES)}")
    return MOLECULE_TOKEN_TYPES[molecule]


def _byte_table(default: int, mapping: Mapping[str, int]) -> bytes:
    """A 256-entry bytes.translate table: each listed character (either case) to its id, every other byte to
    `default`."""
    table = bytearray([default]) * 256
    for characters, token_id in mapping.items():
        for character in characters:
            table[ord(character.upper())] = token_id
            table[ord(character.lower())] = token_id
    return bytes(table)


_TOKEN_ID = {token: index for index, token in enumerate(VOCABULARY)}
# Nucleotides are recoded A→1, T/U→2, C→3, G→4, anything else (N, IUPAC codes, gaps)→5, case-insensitively.
_NUCLEOTIDE_TABLE = _byte_table(
    _TOKEN_ID["5"], {"A": _TOKEN_ID["1"], "TU": _TOKEN_ID["2"], "C": _TOKEN_ID["3"], "G": _TOKEN_ID["4"]}
)
# Every letter is an amino-acid token; '.', '-', '*' have their own; anything else (digits included, which are
# nucleotide tokens) is [UNK].
_PROTEIN_TABLE = _byte_table(
    UNK_ID, {token: index for token, index in _TOKEN_ID.items() if len(token) == 1 and not token.isdigit()}
)


class LucaOneTokenizer:
    """Maps one sequence of a given molecule to `[CLS] ids [SEP]` in the fixed 39-token vocabulary.

    The molecule decides the ids (A is 5 in DNA, 11 in a protein) and the model's token type, so a tokenizer is
    bound to one molecule (`for_molecule`); an unbound one refuses to encode rather than guess. Proteins are
    upper-cased (the port's tokenizer maps lower case to [UNK]; the original's pipeline upper-cases first).
    Truncation, windowing and padding are the caller's job.
    """

    pad_id = PAD_ID
    unk_id = UNK_ID
    cls_id = CLS_ID
    sep_id = SEP_ID
    mask_id = MASK_ID
    vocab = VOCABULARY
    max_residues_per_token = 1
    frame = (1, 1)  # [CLS] ... [SEP]

    def __init__(self, molecule: str | None = None) -> None:
        self.molecule = molecule
        self.token_type: int | None = None if molecule is None else _token_type(molecule)

    @classmethod
    def from_dir(cls, directory: str | Path, molecule: str | None = None) -> LucaOneTokenizer:
        """The tokenizer of a checkpoint directory, after checking any vocabulary file it ships.

        The vocabulary is fixed, so nothing is read from the files; `vocab.json` (port) and `alphabet.pkl`
        (original, read without running pickled code) are only compared with it.
        """
        directory = Path(directory)
        if (directory / "vocab.json").is_file():
            vocab = json.loads((directory / "vocab.json").read_text())
            if vocab != _TOKEN_ID:
                raise ValueError(f"{directory / 'vocab.json'} is not LucaOne's 39-token gene_prot vocabulary")
        if (directory / "alphabet.pkl").is_file():
            tokens = read_alphabet_pickle(directory / "alphabet.pkl")
            if tuple(tokens) != VOCABULARY:
                raise ValueError(f"{directory / 'alphabet.pkl'} is not LucaOne's 39-token gene_prot vocabulary")
        return cls(molecule)

    def for_molecule(self, molecule: str) -> LucaOneTokenizer:
        return type(self)(molecule)

    @property
    def vocab_size(self) -> int:
        return len(VOCABULARY)

    def encode(self, sequence: str) -> list[int]:
        """Token ids of one sequence, `[CLS] ... [SEP]`, one token per residue."""
        if self.molecule is None:
            raise RuntimeError(
                "this LucaOne tokenizer is not bound to a molecule; use for_molecule('dna'|'rna'|'protein')"
            )
        table = _PROTEIN_TABLE if self.token_type == 1 else _NUCLEOTIDE_TABLE
        # Non-ASCII characters become '?', which the tables send to '5' (nucleotides) or [UNK] (proteins).
        return [CLS_ID, *sequence.encode("ascii", "replace").translate(table), SEP_ID]

    def encode_with_offsets(self, sequence: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids as `encode`, plus each token's residue span `[start, end)`: one residue per token; (0, 0) for
        [CLS] and [SEP]."""
        ids = self.encode(sequence)
        return ids, [(0, 0), *((position, position + 1) for position in range(len(ids) - 2)), (0, 0)]

    def encode_many_with_offsets(self, sequences: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """`encode_with_offsets` for each sequence (a byte-table lookup: nothing to gain from a batch API)."""
        return [self.encode_with_offsets(sequence) for sequence in sequences]

    def encode_many_arrays(self, sequences: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(ids, spans [n, 2]) per sequence as arrays: one residue per token, (0, 0) for [CLS] and [SEP]."""
        ids, starts = self.encode_flat(sequences)
        result = []
        for index in range(len(sequences)):
            own = ids[starts[index] : starts[index + 1]]
            positions = np.arange(-1, len(own) - 1)
            spans = np.stack([positions, positions + 1], axis=1)
            spans[[0, -1]] = 0
            result.append((own, spans))
        return result

    def encode_flat(self, sequences: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Framed ids of many sequences back to back, and their boundaries: one table lookup over all of them."""
        if self.molecule is None:
            raise RuntimeError(
                "this LucaOne tokenizer is not bound to a molecule; use for_molecule('dna'|'rna'|'protein')"
            )
        table = _PROTEIN_TABLE if self.token_type == 1 else _NUCLEOTIDE_TABLE
        body = np.frombuffer(
            b"".join(sequence.encode("ascii", "replace") for sequence in sequences).translate(table), np.uint8
        )
        starts = np.zeros(len(sequences) + 1, dtype=np.int64)
        np.cumsum([len(sequence) + 2 for sequence in sequences], out=starts[1:])
        ids = np.empty(int(starts[-1]), dtype=np.int32)
        is_frame = np.zeros(len(ids), dtype=bool)
        is_frame[starts[:-1]] = True
        is_frame[starts[1:] - 1] = True
        ids[starts[:-1]] = CLS_ID
        ids[starts[1:] - 1] = SEP_ID
        ids[~is_frame] = body
        return ids, starts


class _AlphabetRecord:
    """Receives the attributes of a pickled LucaOne `Alphabet` without importing or running its code."""


class _AlphabetUnpickler(pickle.Unpickler):
    """Resolves only LucaOne's Alphabet class (to an inert stand-in) and the two helpers old pickle protocols
    use to rebuild plain objects; any other global, and so any code, is refused."""

    _allowed = {("copyreg", "_reconstructor"): copyreg._reconstructor, ("builtins", "object"): object}  # type: ignore[attr-defined]

    def find_class(self, module: str, name: str) -> object:
        if name == "Alphabet" and module.rsplit(".", 1)[-1] == "alphabet":
            return _AlphabetRecord
        if (module, name) in self._allowed:
            return self._allowed[(module, name)]
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from an alphabet pickle")


def read_alphabet_pickle(path: str | Path) -> list[str]:
    """The token list of an original-format `alphabet.pkl`, read with a restricted unpickler.

    The training code pickles its `Alphabet` object (class `...models.alphabet.Alphabet`, tokens in `all_toks`);
    a plain pickled list of tokens is accepted too.
    """
    data = Path(path).read_bytes()
    try:
        obj = _AlphabetUnpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError) as error:
        raise ValueError(f"{path} is not a LucaOne alphabet pickle: {error}") from error
    tokens = getattr(obj, "all_toks", obj)
    if not isinstance(tokens, list | tuple) or not all(isinstance(token, str) for token in tokens):
        raise ValueError(f"{path} holds {type(obj).__name__}, not a LucaOne Alphabet or a list of tokens")
    return list(tokens)


# ------------------------------------------------------------------------------------------------------------
# Loading


def _canonical_state_dict(state: dict[str, torch.Tensor], source: Path) -> tuple[dict[str, torch.Tensor], str]:
    """Any published layout's tensors under the port's backbone names (`embeddings.*`, `encoder.*`) plus
    `lm_head.*` when present, and the layout's name. Rotary inv_freq buffers are kept for checking."""
    if any(key.startswith("module.") for key in state):  # saved from DistributedDataParallel
        state = {key.removeprefix("module."): value for key, value in state.items()}
    canonical: dict[str, torch.Tensor] = {}
    stray: list[str] = []
    if any(key.startswith("lucaone.") for key in state):
        layout = "hf_masked_lm" if any(key.startswith("lm_head.") for key in state) else "hf_classifier"
        for key, value in state.items():
            if key.startswith("lucaone."):
                canonical[key.removeprefix("lucaone.")] = value
            elif key.startswith("lm_head."):
                canonical[key] = value
            elif not key.startswith(_HF_IGNORED_PREFIXES):
                stray.append(key)
    elif any(key.startswith(("embeddings.", "encoder.")) for key in state):
        layout = "hf_backbone"
        for key, value in state.items():
            if key.startswith(("embeddings.", "encoder.")):
                canonical[key] = value
            else:
                stray.append(key)
    else:
        layout = "original"
        for key, value in state.items():
            if key.startswith("embed_"):
                canonical[f"embeddings.{key}"] = value
            elif key.startswith(("layers.", "last_layer_norm.")):
                canonical[f"encoder.{key}"] = value
            elif key == "lm_head.weight":  # tied to embed_tokens in the original
                canonical["lm_head.decoder.weight"] = value
            elif key.startswith("lm_head."):
                canonical[key] = value
            elif not key.startswith(_ORIGINAL_IGNORED_PREFIXES):
                stray.append(key)
    if stray:
        raise ValueError(f"{source} has tensors that are not part of a LucaOne {layout} checkpoint: {preview(stray)}")
    return canonical, layout


def _check_inv_freq(state: dict[str, torch.Tensor], config: LucaOneConfig, source: Path) -> None:
    """Pop the stored rotary inv_freq buffers after checking they are the base-10000 ones this module computes."""
    expected = 1.0 / (ROTARY_BASE ** (torch.arange(0, config.head_dim, 2).float() / config.head_dim))
    for key in [key for key in state if key.endswith(_INV_FREQ_SUFFIX)]:
        stored = state.pop(key)
        if stored.shape != expected.shape or not torch.allclose(stored.float().cpu(), expected, rtol=1e-3, atol=0.0):
            raise ValueError(
                f"{source}: {key} is not the rotary table for head dim {config.head_dim} and base 10000; "
                "is num_attention_heads in config.json right?"
            )


def _load_modules(
    checkpoint: str | Path, device: str = "cpu", interface: Interface | None = None
) -> tuple[LucaOneModel | LucaOneForMaskedLM, LucaOneConfig, Path, str, str]:
    """The checkpoint's model on `device` (the masked LM when it has the head), its config, directory, layout
    name and weights digest. Weights are memory-mapped and go straight to `device` (see models.loading)."""
    directory = resolve_checkpoint(checkpoint, required=("config.json",), interface=interface)
    weights = read_weights(directory, device)  # safetensors, or torch.load(weights_only=True, mmap=True)
    # Before the config is read: another architecture's config.json fails LucaOne's checks in their own terms.
    check_architecture("lucaone", directory, weights.state, interface)
    config = LucaOneConfig.from_json_file(directory / "config.json")
    source = weights.source
    state, layout = _canonical_state_dict(weights.state, source)
    _check_inv_freq(state, config, source)
    # The feed-forward width comes from the tensors: config fields for it disagree between formats.
    fc1 = state.get("encoder.layers.0.fc1.weight")
    if fc1 is not None:
        config.ffn_size = int(fc1.shape[0])

    has_head = any(key.startswith("lm_head.") for key in state)
    if has_head and "lm_head.decoder.weight" not in state and "embeddings.embed_tokens.weight" in state:
        # Tied and therefore dropped by safetensors; the original ties the decoder to the token embeddings.
        state["lm_head.decoder.weight"] = state["embeddings.embed_tokens.weight"]
    if has_head:
        state = {key if key.startswith("lm_head.") else f"lucaone.{key}": value for key, value in state.items()}
    model: LucaOneModel | LucaOneForMaskedLM = assign_weights(
        (lambda: LucaOneForMaskedLM(config)) if has_head else (lambda: LucaOneModel(config)), state, source,
        f"a LucaOne checkpoint ({layout} layout)", directory / "config.json",
    )  # fmt: skip
    return model, config, directory, layout, weights.digest


@dataclass
class LucaOneLoadedModel(LoadedModel):
    """A LoadedModel whose input depends on the molecule: bind it with `for_molecule` before encoding.

    Unbound (as `load_lucaone` returns it without `molecule`), the tokenizer refuses to encode and `model` is the
    bare `LucaOneModel`, which wants explicit token types. Bound, `tokenizer.encode(seq)` and
    `model(input_ids, attention_mask[, token_type_ids])` work exactly as for every other architecture.
    """

    def for_molecule(self, molecule: str) -> LucaOneLoadedModel:
        """A copy bound to `molecule` ('dna', 'rna' or 'protein'); weights are shared, not copied."""
        token_type = _token_type(molecule)
        backbone = self.model.model if isinstance(self.model, LucaOneForMolecule) else self.model
        assert isinstance(backbone, LucaOneModel)
        tokenizer = self.tokenizer
        assert isinstance(tokenizer, LucaOneTokenizer)
        return dataclasses.replace(
            self,
            model=LucaOneForMolecule(backbone, token_type),
            tokenizer=tokenizer.for_molecule(molecule),
            extra={**self.extra, "molecule": molecule},
        )


def load_lucaone(
    checkpoint: str | Path,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    molecule: str | None = None,
    *,
    interface: Interface | None = None,
) -> LucaOneLoadedModel:
    """The LucaOne encoder of `checkpoint` (directory or hub id) in eval mode on `device`, as a LoadedModel.

    Accepts the original format (`pytorch.pth`, keys with or without `module.`), the port's masked-LM
    repositories (`lucaone.*` + `lm_head.*`, single or sharded safetensors / .bin), a bare port backbone and a
    port classification fine-tune (its pooler and classifier are ignored). `mlm_head` is the masked-LM head
    (hidden states → logits) when the checkpoint has `lm_head.*`, else None. Pass `molecule` to get the model
    already bound (see LucaOneLoadedModel.for_molecule). Another architecture's checkpoint is named as such;
    `interface` spells the settings messages ask to change (seqshard.io.interface).
    """
    model, config, directory, layout, digest = _load_modules(checkpoint, device, interface)
    # A no-op for fp32 weights asked for in fp32; otherwise casts (rotary tables stay float32 regardless).
    model = model.to(device=device, dtype=dtype).eval()
    mlm_head = model.lm_head if isinstance(model, LucaOneForMaskedLM) else None
    backbone = model.lucaone if isinstance(model, LucaOneForMaskedLM) else model
    loaded = LucaOneLoadedModel(
        name="lucaone",
        model=backbone,
        tokenizer=LucaOneTokenizer.from_dir(directory),
        hidden_size=config.hidden_size,
        checkpoint=str(checkpoint),
        checkpoint_dir=directory,
        digest=digest,
        molecules=frozenset(MOLECULE_TOKEN_TYPES),
        # The authors' embedding tool truncates at 4094 residues, i.e. max_position_embeddings (4096) tokens
        # with [CLS] and [SEP], and cuts longer input into segments of that size; one token per residue.
        max_tokens=config.max_position_embeddings,
        default_window=config.max_position_embeddings - 2,
        num_layers=config.num_hidden_layers,
        token_types=dict(MOLECULE_TOKEN_TYPES),
        mlm_head=mlm_head,
        extra={"config": config.to_dict(), "layout": layout, "molecule": None},
    )
    return loaded if molecule is None else loaded.for_molecule(molecule)


def load_lucaone_masked_lm(
    checkpoint: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> LucaOneForMaskedLM:
    """The full masked-LM model of a checkpoint that carries `lm_head.*`, in eval mode on `device`."""
    model, _, directory, layout, _ = _load_modules(checkpoint)
    if not isinstance(model, LucaOneForMaskedLM):
        raise ValueError(f"checkpoint {directory} ({layout} layout) has no masked-LM head (lm_head.*)")
    return model.to(device=device, dtype=dtype).eval()


# ------------------------------------------------------------------------------------------------------------
# A small random-weight checkpoint in either published layout, for tests and for trying the workflow without
# the 6 GB download. Same seed, same tensors.


def _init_demo_weights(model: LucaOneForMaskedLM, generator: torch.Generator) -> None:
    """Every tensor random, biases and LayerNorms included, so that a mixed-up key can never go unnoticed."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "layer_norm" in name and name.endswith(".weight"):
                parameter.copy_(1.0 + 0.1 * torch.randn(parameter.shape, generator=generator))
            elif name.endswith("bias"):
                parameter.copy_(0.02 * torch.randn(parameter.shape, generator=generator))
            else:
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
        # As published: the decoder starts as (the original: is) the token embedding matrix.
        model.lm_head.decoder.weight.copy_(model.lucaone.embeddings.embed_tokens.weight)


def _original_state_dict(model: LucaOneForMaskedLM) -> dict[str, torch.Tensor]:
    """The model's tensors under the original training code's keys, contact head included."""
    config = model.config
    state: dict[str, torch.Tensor] = {}
    for key, value in model.lucaone.state_dict().items():
        state[key.removeprefix("embeddings.").removeprefix("encoder.")] = value
    for key, value in model.lm_head.state_dict().items():
        if key != "decoder.weight":
            state[f"lm_head.{key}"] = value
    state["lm_head.weight"] = state["embed_tokens.weight"]  # tied: one storage, as torch.save keeps it
    inv_freq = 1.0 / (ROTARY_BASE ** (torch.arange(0, config.head_dim, 2).float() / config.head_dim))
    for layer in range(config.num_hidden_layers):
        state[f"layers.{layer}{_INV_FREQ_SUFFIX}"] = inv_freq.clone()
    in_features = config.num_hidden_layers * config.num_attention_heads
    state["contact_head.regression.weight"] = torch.zeros(1, in_features)
    state["contact_head.regression.bias"] = torch.zeros(1)
    return state


def _hf_state_dict(model: LucaOneForMaskedLM) -> dict[str, torch.Tensor]:
    """The model's tensors under the port's masked-LM keys (decoder stored as its own copy, as published)."""
    config = model.config
    state = {key: value.clone() for key, value in model.state_dict().items()}
    inv_freq = 1.0 / (ROTARY_BASE ** (torch.arange(0, config.head_dim, 2).float() / config.head_dim))
    for layer in range(config.num_hidden_layers):
        state[f"lucaone.encoder.layers.{layer}{_INV_FREQ_SUFFIX}"] = inv_freq.clone()
    return state


def _alphabet_pickle_bytes() -> bytes:
    """A pickled `Alphabet` as the training code writes it (`Alphabet.save_pretrained`), built opcode by opcode
    so that writing it needs no copy of that class: GLOBAL, NEWOBJ with no arguments, BUILD with its __dict__."""
    tokens = list(VOCABULARY)
    state = {
        "standard_toks": tokens[5:],
        "prepend_toks": tokens[:2],
        "append_toks": tokens[2:5],
        "prepend_bos": True,
        "append_eos": True,
        "all_toks": tokens,
        "tok_to_idx": dict(_TOKEN_ID),
        "unk_idx": UNK_ID,
        "padding_idx": PAD_ID,
        "pad_token_id": PAD_ID,
        "cls_idx": CLS_ID,
        "mask_idx": MASK_ID,
        "eos_idx": SEP_ID,
        "all_special_tokens": tokens[:5],
        "all_special_token_idx_list": list(range(5)),
        "unique_no_split_tokens": tokens,
        "vocab_size": len(tokens),
    }
    state_pickle = pickle.dumps(state, protocol=2)
    body = state_pickle[2:-1]  # drop PROTO 2 and STOP; the memo indices stay valid after the prefix below
    return b"\x80\x02" + b"csrc.models.alphabet\nAlphabet\n" + b")\x81" + body + b"b."


def write_demo_checkpoint(
    out_dir: Path,
    *,
    layout: Layout = "hf",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    ffn: int | None = None,
    token_dropout: bool = False,
    seed: int = 0,
) -> Path:
    """Write a small random-weight LucaOne checkpoint in a published layout; the same seed gives the same tensors
    in both layouts.

    - `hf`: `config.json` (the port's fields), `model.safetensors` (masked-LM keys `lucaone.*` + `lm_head.*`),
      `vocab.json`, `tokenizer_config.json`, `special_tokens_map.json`. The published repositories also carry
      the port's code files and an `auto_map`; neither is written (seqshard does not run hub code).
    - `original`: `config.json` (the training code's fields), `pytorch.pth` (original keys, tied `lm_head.weight`,
      rotary buffers, contact head) and `alphabet.pkl` (a pickled `src.models.alphabet.Alphabet`).

    `ffn` defaults to 4·hidden_size, the only width the reference implementations can build; another value
    gives a checkpoint that seqshard loads (it reads widths from the tensors) but the `lucaone` package does not.
    """
    if layout not in ("hf", "original"):
        raise ValueError(f"unknown layout {layout!r}; expected 'hf' or 'original'")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = LucaOneConfig(
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        ffn_size=ffn,
        token_dropout=token_dropout,
    )
    model = LucaOneForMaskedLM(config)
    _init_demo_weights(model, torch.Generator().manual_seed(seed))
    write_json(out_dir / "config.json", config.to_json_dict(layout))
    if layout == "original":
        torch.save(_original_state_dict(model), out_dir / "pytorch.pth")
        (out_dir / "alphabet.pkl").write_bytes(_alphabet_pickle_bytes())
        return out_dir

    from safetensors.torch import save_file

    save_file(_hf_state_dict(model), str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    write_json(out_dir / "vocab.json", _TOKEN_ID)
    special = {
        "unk_token": "[UNK]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "mask_token": "[MASK]",
    }
    write_json(
        out_dir / "tokenizer_config.json",
        {"tokenizer_class": "LucaGPLMTokenizer", "vocab_type": "gene_prot", "model_max_length": 4096, **special},
    )
    write_json(out_dir / "special_tokens_map.json", special)
    return out_dir
