"""Native ESM-2 (and the ESM encoder Nucleotide Transformer v1 shares): the published Hugging Face layout in plain
torch modules, plus ESM-2's one-token-per-residue protein tokenizer.

`facebook/esm2_t6_8M_UR50D` … `esm2_t48_15B_UR50D` and InstaDeep's first Nucleotide Transformer release are all
`EsmForMaskedLM` checkpoints (`esm.embeddings.*`, `esm.encoder.layer.N.*`, `lm_head.*`, `esm.contact_head.*`). The
modules here keep those key names, so a published state dict loads key for key; fair-esm's `ESM2` and transformers'
`EsmForMaskedLM` are the references the tests compare with, neither is imported at run time.

Layer math (pre-LayerNorm; eps from config.json: 1e-5 for ESM-2), with d the head dim:
    embeddings  x = word[ids]; token dropout (below); + position[p] for absolute positions; LN if
                emb_layer_norm_before; padded rows zeroed
    attention   q = query(LN x)/√d, k = key(LN x), v = value(LN x); rotary on q and k when configured;
                x = x + dense(softmax(q kᵀ + padding mask) v)
    mlp         x = x + output(GELU_exact(intermediate(LN x)))
    output      emb_layer_norm_after(x)
Rotary: rotate-half over the head dim, inv_freq = θ^(−2i/d) (θ = rope_theta, 10000), positions 0…L−1 counting
<cls>. Absolute (learned) positions count from pad_token_id + 1 over the non-padding tokens, as transformers numbers
them, so the table has max_position_embeddings = max tokens + 2 rows.
Token dropout (ESM-2's config says true): `<mask>` rows are zeroed and every row is scaled by
(1 − 0.15·0.8) / (1 − masked / real tokens of the sequence), at inference too: 0.88 when nothing is masked, and a
masked-marginal score's one `<mask>` changes the scale of the whole input. Both references do exactly this.

The masked-LM head is dense → GELU_exact → LN → decoder + bias; the decoder is the word embeddings when
`tie_word_embeddings` (transformers' default) is true, its own tensor otherwise. A sequence-classification fine-tune
(`classifier.dense`, `classifier.out_proj`: tanh over the <cls> row) loads as the checkpoint's head. The contact
head's weights (`esm.contact_head.*`) are read past: contact maps are not a seqshard task (README, "Models").
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from seqshard.models import ARCHITECTURES, LoadedModel, SequenceHead, check_architecture
from seqshard.models.loading import (
    LayerOutputs,
    assign_weights,
    model_max_length,
    preview,
    read_weights,
    write_json,
)
from seqshard.runtime.checkpoints import resolve_checkpoint

if TYPE_CHECKING:
    from seqshard.io.interface import Interface

__all__ = [
    "ESM2_ALPHABET",
    "ArrayTokenizer",
    "EsmConfig",
    "EsmForMaskedLM",
    "EsmModel",
    "EsmVocabulary",
    "Esm2Tokenizer",
    "load_esm2",
    "load_esm_checkpoint",
    "write_demo_checkpoint",
    "write_esm_checkpoint",
]

# fair-esm's "ESM-1b" alphabet, which ESM-2 uses: four specials, 27 residue tokens, one filler to a multiple of 8,
# then <mask>. The published vocab.txt lists exactly these, one per line.
ESM2_ALPHABET: tuple[str, ...] = (
    "<cls>", "<pad>", "<eos>", "<unk>",
    *"LAGVSERTIDPKQNFYMHWCXBUZO", ".", "-",
    "<null_1>", "<mask>",
)  # fmt: skip
# What EsmTokenizer calls each special token unless the checkpoint's tokenizer files say otherwise.
SPECIAL_DEFAULTS = {"unk_token": "<unk>", "cls_token": "<cls>", "pad_token": "<pad>", "mask_token": "<mask>",
                    "eos_token": "<eos>"}  # fmt: skip
_TOKEN_DROPOUT_TRAIN_RATIO = 0.15 * 0.8  # 15 % of positions chosen in training, 80 % of those set to <mask>
_INV_FREQ_SUFFIX = "rotary_embeddings.inv_freq"
# Tensors a published checkpoint carries that inference does not use: the position-id buffer older transformers
# saved, the contact head, and the pooler of EsmModel exports.
_UNUSED = ("embeddings.position_ids", "contact_head.", "pooler.")


# ------------------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class EsmConfig:
    """The fields of an `EsmForMaskedLM` config.json that shape the network (defaults: esm2_t33_650M_UR50D).

    Unknown keys are ignored, except those that mean another network: a folding model, a decoder, and any
    checkpoint that needs remote code (`auto_map`; the Nucleotide Transformer v2 release is one), refused by name.
    `hidden_act` is not read: ESM's layers always use the exact (erf) GELU.
    """

    vocab_size: int = 33
    hidden_size: int = 1280
    num_hidden_layers: int = 33
    num_attention_heads: int = 20
    intermediate_size: int = 5120
    max_position_embeddings: int = 1026
    position_embedding_type: str = "rotary"
    layer_norm_eps: float = 1e-5
    token_dropout: bool = True
    emb_layer_norm_before: bool = False
    pad_token_id: int = 1
    mask_token_id: int = 32
    tie_word_embeddings: bool = True
    rope_theta: float = 10000.0
    num_labels: int | None = None  # sequence-classification fine-tunes only
    id2label: dict[int, str] | None = None
    problem_type: str | None = None

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}"
            )
        if self.position_embedding_type not in ("rotary", "absolute"):
            raise ValueError(f"position_embedding_type {self.position_embedding_type!r}: expected rotary or absolute")
        if self.id2label is not None:
            self.id2label = {int(key): str(value) for key, value in self.id2label.items()}

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, data: Mapping[str, object], source: Path) -> EsmConfig:
        if "auto_map" in data:
            raise ValueError(
                f"{source} names remote code (auto_map: {', '.join(map(str, data['auto_map']))}); seqshard runs "
                "no hub code and loads only the native EsmForMaskedLM layout (Nucleotide Transformer v2 is not "
                "supported: README, 'Models')"
            )
        refused = {"is_folding_model": True, "is_decoder": True, "add_cross_attention": True}
        wrong = [key for key, value in refused.items() if data.get(key) == value]
        if wrong or data.get("esmfold_config"):
            raise ValueError(f"{source}: not an ESM encoder checkpoint ({', '.join(wrong) or 'esmfold_config'})")
        known = {item.name for item in fields(cls)}
        values = {key: value for key, value in data.items() if key in known and value is not None}
        return cls(**values)  # type: ignore[arg-type]

    @classmethod
    def from_json_file(cls, path: Path) -> EsmConfig:
        return cls.from_dict(json.loads(Path(path).read_text()), path)

    def to_json_dict(self) -> dict[str, object]:
        """config.json as transformers writes it for `EsmForMaskedLM`."""
        data: dict[str, object] = {
            key: value
            for key, value in dataclasses.asdict(self).items()
            if key not in ("num_labels", "id2label", "problem_type", "rope_theta")
        }
        data |= {"architectures": ["EsmForMaskedLM"], "model_type": "esm", "attention_probs_dropout_prob": 0.0,
                 "hidden_dropout_prob": 0.0, "hidden_act": "gelu", "initializer_range": 0.02,
                 "is_folding_model": False, "esmfold_config": None, "vocab_list": None, "use_cache": True,
                 "classifier_dropout": None, "torch_dtype": "float32"}  # fmt: skip
        return dict(sorted(data.items()))


# ------------------------------------------------------------------------------------------------------------
# Modules (names follow transformers' EsmForMaskedLM, so the published state dict loads key for key)


def rotary_tables(
    length: int, head_dim: int, base: float, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [length, head_dim] in float32 for positions 0..length-1 (rotate-half layout), whatever the model's
    dtype: in bf16 positions in the hundreds would be off by whole radians."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))
    angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    first, second = x.float().chunk(2, dim=-1)
    return (x.float() * cos + torch.cat((-second, first), dim=-1) * sin).to(x.dtype)


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x)  # the exact, erf-based GELU both references use


class EsmEmbeddings(nn.Module):
    def __init__(self, config: EsmConfig) -> None:
        super().__init__()
        # Empty weights, filled by the checkpoint: a random init on the meta device costs start-up time for nothing.
        shape = (config.vocab_size, config.hidden_size)
        self.word_embeddings = nn.Embedding(*shape, padding_idx=config.pad_token_id, _weight=torch.empty(shape))
        self.position_embeddings: nn.Embedding | None = None
        if config.position_embedding_type == "absolute":
            rows = (config.max_position_embeddings, config.hidden_size)
            self.position_embeddings = nn.Embedding(*rows, padding_idx=config.pad_token_id, _weight=torch.empty(rows))
        self.layer_norm: nn.LayerNorm | None = None
        if config.emb_layer_norm_before:
            self.layer_norm = nn.LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.token_dropout = config.token_dropout
        self.mask_token_id = config.mask_token_id
        self.pad_token_id = config.pad_token_id

    def forward(self, input_ids: torch.Tensor, real: torch.Tensor | None) -> torch.Tensor:
        """Embeddings [B, L, H]; `real` [B, L] bool marks real tokens (None: every position is real)."""
        embeddings = self.word_embeddings(input_ids)
        if self.token_dropout:
            masked = input_ids.eq(self.mask_token_id)
            embeddings = embeddings.masked_fill(masked.unsqueeze(-1), 0.0)
            n_real = input_ids.shape[1] if real is None else real.sum(-1)
            observed = masked.sum(-1).float() / n_real
            embeddings = (embeddings * ((1 - _TOKEN_DROPOUT_TRAIN_RATIO) / (1 - observed))[:, None, None]).to(
                embeddings.dtype
            )
        if self.position_embeddings is not None:
            # transformers numbers real tokens from pad_token_id + 1 (fairseq's offset); padding gets pad_token_id,
            # so a batch padded past the table (to a bucket width) is fine, a longer input is not.
            is_real = input_ids.ne(self.pad_token_id) if real is None else real
            positions = torch.cumsum(is_real, dim=1) * is_real + self.pad_token_id
            learned = self.position_embeddings.num_embeddings - self.pad_token_id - 1
            if input_ids.shape[1] > learned and input_ids.device.type == "cpu":  # on a GPU: an index error
                longest = int(is_real.sum(1).max())
                if longest > learned:
                    raise ValueError(
                        f"inputs of {longest} tokens exceed the {learned} positions the model learned; "
                        f"set max_tokens to {learned} or less"
                    )
            embeddings = embeddings + self.position_embeddings(positions)
        if self.layer_norm is not None:
            embeddings = self.layer_norm(embeddings)
        return embeddings if real is None else embeddings * real.unsqueeze(-1).to(embeddings.dtype)


class EsmSelfAttention(nn.Module):
    def __init__(self, config: EsmConfig) -> None:
        super().__init__()
        self.num_heads, self.head_dim = config.num_attention_heads, config.head_dim
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor] | None,
                key_mask: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
        batch, length, width = hidden.shape

        def heads(states: torch.Tensor) -> torch.Tensor:
            return states.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

        # Both references scale the query before the rotation, and attention itself then scales by 1.
        query, key = heads(self.query(hidden)) * self.head_dim**-0.5, heads(self.key(hidden))
        if rotary is not None:
            query, key = _rotate(query, *rotary), _rotate(key, *rotary)
        context = F.scaled_dot_product_attention(query, key, heads(self.value(hidden)), attn_mask=key_mask, scale=1.0)
        return context.transpose(1, 2).reshape(batch, length, width)


class EsmSelfOutput(nn.Module):
    def __init__(self, config: EsmConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)


class EsmAttention(nn.Module):
    def __init__(self, config: EsmConfig) -> None:
        super().__init__()
        self.self = EsmSelfAttention(config)
        self.output = EsmSelfOutput(config)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor] | None,
                key_mask: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
        return hidden + self.output.dense(self.self(self.LayerNorm(hidden), rotary, key_mask))


class EsmDense(nn.Module):
    """A layer holding one Linear as `dense` (transformers' EsmIntermediate and EsmOutput)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.dense = nn.Linear(n_in, n_out)


class EsmLayer(nn.Module):
    def __init__(self, config: EsmConfig) -> None:
        super().__init__()
        self.attention = EsmAttention(config)
        self.intermediate = EsmDense(config.hidden_size, config.intermediate_size)
        self.output = EsmDense(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor] | None,
                key_mask: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
        hidden = self.attention(hidden, rotary, key_mask)
        return hidden + self.output.dense(_gelu(self.intermediate.dense(self.LayerNorm(hidden))))


class EsmEncoder(nn.Module):
    def __init__(self, config: EsmConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(EsmLayer(config) for _ in range(config.num_hidden_layers))
        self.emb_layer_norm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


class EsmModel(nn.Module):
    """The encoder (the `esm.` prefix): token ids to last hidden states after `emb_layer_norm_after`."""

    def __init__(self, config: EsmConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = EsmEmbeddings(config)
        self.encoder = EsmEncoder(config)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
        layers: Sequence[int] | None = None,
    ) -> torch.Tensor | list[torch.Tensor]:  # fmt: skip
        """Hidden states [B, L, hidden], <cls> (and <eos>) rows included. Without `attention_mask` no position is
        padding (the engine passes None for batches of equal lengths). With `layers` (absolute numbers,
        seqshard.models.layer_numbers), the states of those layers from the same pass, as fair-esm's `repr_layers`
        gives them: layer 0 the embeddings' output, layer i < N the residual stream after layer i (no final
        LayerNorm), layer N the output after `emb_layer_norm_after` (the last hidden state)."""
        real = None if attention_mask is None else attention_mask.bool()
        hidden = self.embeddings(input_ids, real)
        config = self.config
        rotary = None
        if config.position_embedding_type == "rotary":
            rotary = rotary_tables(input_ids.shape[1], config.head_dim, config.rope_theta, input_ids.device)
        # No mask lets SDPA take its fastest kernel; checked on the CPU only (on a GPU it would wait for the device).
        if real is None or (real.device.type == "cpu" and bool(real.all())):
            key_mask = None
        else:
            key_mask = real[:, None, None, :]
        outputs = LayerOutputs(layers, len(self.encoder.layer))
        outputs.keep(0, hidden)
        for number, layer in enumerate(self.encoder.layer, 1):
            hidden = layer(hidden, rotary, key_mask)
            outputs.keep(number, hidden)
        return outputs.result(self.encoder.emb_layer_norm_after(hidden))


class EsmLMHead(nn.Module):
    """The masked-LM head: dense → GELU → LayerNorm → decoder + bias."""

    def __init__(self, config: EsmConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.empty(config.vocab_size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.layer_norm(_gelu(self.dense(hidden)))) + self.bias


class EsmForMaskedLM(nn.Module):
    """Encoder plus masked-LM head: the layout of the published checkpoints."""

    def __init__(self, config: EsmConfig) -> None:
        super().__init__()
        self.esm = EsmModel(config)
        self.lm_head = EsmLMHead(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.lm_head(self.esm(input_ids, attention_mask))


class EsmClassificationHead(nn.Module):
    """A sequence-classification fine-tune's head (`classifier.*`): tanh(dense(<cls> row)) → out_proj."""

    def __init__(self, hidden_size: int, n_outputs: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, n_outputs)

    def forward(self, hidden: torch.Tensor, owned: torch.Tensor | None = None) -> torch.Tensor:
        return self.out_proj(torch.tanh(self.dense(hidden[:, 0])))


# ------------------------------------------------------------------------------------------------------------
# Vocabulary and ESM-2's tokenizer


@dataclass(frozen=True)
class EsmVocabulary:
    """A checkpoint's `vocab.txt` (one token per line, id = line number) and its special tokens, resolved as
    transformers' EsmTokenizer resolves them: its defaults, overridden by tokenizer_config.json, then by
    special_tokens_map.json for keys the former leaves out. An `eos_token` set to null means no <eos> is appended."""

    tokens: tuple[str, ...]
    cls_id: int
    pad_id: int
    mask_id: int
    unk_id: int
    eos_id: int | None

    @classmethod
    def from_tokens(cls, tokens: tuple[str, ...], special: Mapping[str, str | None], source: Path) -> EsmVocabulary:
        index = {token: position for position, token in enumerate(tokens)}

        def token_id(name: str) -> int | None:
            token = special[name]
            if token is None:
                return None
            if token not in index:
                raise ValueError(f"{source}: its {name} {token!r} is not in the vocabulary")
            return index[token]

        ids = {name: token_id(name) for name in SPECIAL_DEFAULTS}
        missing = [name for name, value in ids.items() if value is None and name != "eos_token"]
        if missing:
            raise ValueError(f"{source}: no {', '.join(missing)}")
        return cls(tokens, ids["cls_token"], ids["pad_token"], ids["mask_token"], ids["unk_token"], ids["eos_token"])  # type: ignore[arg-type]

    @classmethod
    def from_dir(cls, directory: Path, default_tokens: tuple[str, ...] | None = None) -> EsmVocabulary:
        """The vocabulary of a checkpoint directory; `default_tokens` when it has no vocab.txt (else an error)."""
        vocab_file = directory / "vocab.txt"
        if vocab_file.is_file():
            tokens = tuple(line.strip() for line in vocab_file.read_text().splitlines())
        elif default_tokens is not None:
            tokens = default_tokens
        else:
            raise FileNotFoundError(f"{directory} has no vocab.txt (the published tokenizer's vocabulary)")
        special: dict[str, str | None] = dict(SPECIAL_DEFAULTS)
        named: set[str] = set()
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            path = directory / name
            data = json.loads(path.read_text()) if path.is_file() else {}
            for key in SPECIAL_DEFAULTS:
                if key in data and key not in named:
                    value = data[key]
                    special[key] = value.get("content") if isinstance(value, dict) else value
                    named.add(key)
        return cls.from_tokens(tokens, special, vocab_file)

    @property
    def frame(self) -> tuple[int, int]:
        return (1, 0 if self.eos_id is None else 1)

    def residue_table(self) -> np.ndarray:
        """Ids by byte value (int32 [256]): each single-character token's id (for either case), <unk> for any other."""
        table = np.full(256, self.unk_id, dtype=np.int32)
        for token_id, token in enumerate(self.tokens):
            if len(token) == 1 and token.isascii():
                table[ord(token.upper())] = table[ord(token.lower())] = token_id
        return table


def frame_flat(vocabulary: EsmVocabulary, body: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`body` (every sequence's token ids back to back, `counts` tokens each) framed as <cls> ids [<eos>]: the flat ids
    and the boundaries (SequenceTokenizer.encode_flat)."""
    before, after = vocabulary.frame
    starts = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts + before + after, out=starts[1:])
    ids = np.empty(int(starts[-1]), dtype=np.int32)
    inside = np.ones(len(ids), dtype=bool)
    inside[starts[:-1]] = False
    ids[starts[:-1]] = vocabulary.cls_id
    if after:
        inside[starts[1:] - 1] = False
        ids[starts[1:] - 1] = vocabulary.eos_id
    ids[inside] = body
    return ids, starts


class ArrayTokenizer:
    """The list forms of `SequenceTokenizer` from a tokenizer's two array methods, `encode_flat` and
    `encode_many_arrays` (the ESM tokenizers here compute everything as arrays)."""

    def encode_flat(self, sequences: list[str]) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def encode_many_arrays(self, sequences: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        raise NotImplementedError

    def encode(self, sequence: str) -> list[int]:
        return self.encode_flat([sequence])[0].tolist()

    def encode_with_offsets(self, sequence: str) -> tuple[list[int], list[tuple[int, int]]]:
        return self.encode_many_with_offsets([sequence])[0]

    def encode_many_with_offsets(self, sequences: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
        encoded = self.encode_many_arrays(sequences)
        return [(ids.tolist(), [(int(a), int(b)) for a, b in spans]) for ids, spans in encoded]


class Esm2Tokenizer(ArrayTokenizer):
    """One token per residue, `<cls> residues <eos>`, in the checkpoint's vocabulary.

    Upper-cases its input (the vocabulary is upper case). A letter outside the vocabulary (J, which seqshard's
    protein alphabet accepts) is one <unk> per residue. fair-esm's alphabet fails on it; transformers' tokenizer
    makes one <unk> of a whole run of such letters, which would shift every later position, so a run of J differs
    from it on purpose (tested)."""

    max_residues_per_token = 1

    def __init__(self, vocabulary: EsmVocabulary) -> None:
        self.vocabulary = vocabulary
        self.pad_id, self.mask_id, self.unk_id = vocabulary.pad_id, vocabulary.mask_id, vocabulary.unk_id
        self.frame = vocabulary.frame
        self._table = vocabulary.residue_table()

    @classmethod
    def from_dir(cls, directory: Path) -> Esm2Tokenizer:
        return cls(EsmVocabulary.from_dir(Path(directory), ESM2_ALPHABET))

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary.tokens)

    def encode_flat(self, sequences: list[str]) -> tuple[np.ndarray, np.ndarray]:
        joined = b"".join(sequence.encode("ascii", "replace") for sequence in sequences)
        counts = np.fromiter((len(sequence) for sequence in sequences), np.int64, len(sequences))
        return frame_flat(self.vocabulary, self._table[np.frombuffer(joined, np.uint8)], counts)

    def encode_many_arrays(self, sequences: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        ids, starts = self.encode_flat(sequences)
        before = self.frame[0]
        result = []
        for index in range(len(sequences)):
            own = ids[starts[index] : starts[index + 1]]
            spans = np.zeros((len(own), 2), dtype=np.int64)
            residues = np.arange(len(sequences[index]))
            spans[before : before + len(residues)] = np.stack([residues, residues + 1], axis=1)
            result.append((own, spans))
        return result


# ------------------------------------------------------------------------------------------------------------
# Loading


@dataclass
class EsmCheckpoint:
    """What `load_esm_checkpoint` read: the encoder, its heads, and where they came from."""

    model: EsmModel
    config: EsmConfig
    directory: Path
    digest: str
    layout: str  # masked_lm, sequence_classification or encoder
    mlm_head: EsmLMHead | None
    sequence_head: SequenceHead | None


def _split_state(state: dict[str, torch.Tensor], config: EsmConfig, source: Path) -> dict[str, dict[str, torch.Tensor]]:
    """A published state dict's tensors by module: `esm` (encoder keys without the prefix), `lm_head`, `classifier`.
    The rotary inv_freq buffers are checked against the ones computed here and dropped with the unused tensors."""
    if not any(key.startswith("esm.") for key in state):  # a bare EsmModel export
        state = {f"esm.{key}": value for key, value in state.items()}
    parts: dict[str, dict[str, torch.Tensor]] = {"esm": {}, "lm_head": {}, "classifier": {}}
    stray = []
    expected = 1.0 / (config.rope_theta ** (torch.arange(0, config.head_dim, 2).float() / config.head_dim))
    for key, value in state.items():
        # transformers 5 saves LayerNorms under their TF-era names (gamma, beta) and reads both; so does this.
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        prefix, _, rest = key.partition(".")
        if key.endswith(_INV_FREQ_SUFFIX):
            if value.shape != expected.shape or not torch.allclose(value.float().cpu(), expected, rtol=1e-3):
                raise ValueError(f"{source}: {key} is not the rotary table of head dim {config.head_dim}")
        elif rest == "embeddings.position_embeddings.weight" and config.position_embedding_type == "rotary":
            continue  # some early ESM-2 exports carry an unused table; transformers ignores it too
        elif prefix == "esm" and rest.startswith(_UNUSED):
            continue
        elif prefix in parts:
            parts[prefix][rest] = value
        else:
            stray.append(key)
    if stray:
        raise ValueError(f"{source} has tensors that are not part of an EsmForMaskedLM checkpoint: {preview(stray)}")
    return parts


def _load_head(module: nn.Module, state: dict[str, torch.Tensor], source: Path, what: str) -> nn.Module:
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:
        raise ValueError(f"{source}: the {what} does not match config.json: {error}") from error
    return module


def load_esm_checkpoint(
    checkpoint: str | Path, device: str, dtype: torch.dtype, architecture: str, interface: Interface | None = None
) -> EsmCheckpoint:
    """An `EsmForMaskedLM`-layout checkpoint (or an EsmModel export, or a sequence-classification fine-tune) on
    `device` in eval mode, for the registered `architecture` ("esm2" or "nucleotide_transformer"), whose title
    messages use; `interface` spells the settings messages ask to change (seqshard.io.interface)."""
    directory = resolve_checkpoint(checkpoint, required=("config.json",), interface=interface)
    weights = read_weights(directory, device)  # memory-mapped, straight to `device`
    check_architecture(architecture, directory, weights.state, interface)
    config = EsmConfig.from_json_file(directory / "config.json")
    what = f"{ARCHITECTURES[architecture].a_title} checkpoint"
    source = weights.source
    parts = _split_state(weights.state, config, source)
    layout = "masked_lm" if parts["lm_head"] else "sequence_classification" if parts["classifier"] else "encoder"
    model = assign_weights(lambda: EsmModel(config), parts["esm"], source, f"{what} ({layout} layout)",
                           directory / "config.json").to(device=device, dtype=dtype).eval()  # fmt: skip
    mlm_head = None
    if parts["lm_head"]:
        head_state = parts["lm_head"]
        if config.tie_word_embeddings:
            # Tied (transformers' default, and how both references compute it): the decoder is the word embeddings,
            # whatever copy of them the file holds (safetensors files hold none).
            head_state["decoder.weight"] = model.embeddings.word_embeddings.weight
        with torch.device("meta"):
            head = EsmLMHead(config)
        mlm_head = _load_head(head, head_state, source, "masked-LM head (lm_head.*)").to(device=device, dtype=dtype)
    sequence_head = None
    if parts["classifier"]:
        sequence_head = _classification_head(config, parts["classifier"], source, device, dtype)
    return EsmCheckpoint(model, config, directory, weights.digest, layout, mlm_head, sequence_head)


def _classification_head(
    config: EsmConfig, state: dict[str, torch.Tensor], source: Path, device: str, dtype: torch.dtype
) -> SequenceHead:
    n_outputs = int(state["out_proj.weight"].shape[0]) if "out_proj.weight" in state else 0
    with torch.device("meta"):
        head = EsmClassificationHead(config.hidden_size, n_outputs)
    module = _load_head(head, state, source, "sequence head (classifier.*)").to(device=device, dtype=dtype).eval()
    regression = config.problem_type == "regression"
    if config.id2label and len(config.id2label) == n_outputs:
        labels = [config.id2label[i] for i in range(n_outputs)]
    else:
        labels = ["value"] if regression and n_outputs == 1 else [f"LABEL_{i}" for i in range(n_outputs)]
    return SequenceHead(module, labels, "regress" if regression else "classify")


def load_esm2(
    checkpoint: str | Path,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    interface: Interface | None = None,
) -> LoadedModel:
    """The ESM-2 encoder of `checkpoint` (directory or hub id) as a LoadedModel: proteins only, one token per residue;
    the longest input is the tokenizer's model_max_length, else max_position_embeddings − 2 (1,024 tokens, i.e. 1,022
    residues plus <cls> and <eos>, what ESM-2 was trained on); longer proteins are cut into windows of that many
    residues."""
    loaded = load_esm_checkpoint(checkpoint, device, dtype, "esm2", interface)
    tokenizer = Esm2Tokenizer.from_dir(loaded.directory)
    max_tokens = model_max_length(loaded.directory, loaded.config.max_position_embeddings - 2)
    return LoadedModel(
        name="esm2",
        model=loaded.model,
        tokenizer=tokenizer,
        hidden_size=loaded.config.hidden_size,
        checkpoint=str(checkpoint),
        checkpoint_dir=loaded.directory,
        digest=loaded.digest,
        molecules=frozenset({"protein"}),
        max_tokens=max_tokens,
        default_window=max_tokens - sum(tokenizer.frame),
        num_layers=loaded.config.num_hidden_layers,
        token_types={"protein": 0},
        mlm_head=loaded.mlm_head,
        sequence_head=loaded.sequence_head,
        extra={"config": dataclasses.asdict(loaded.config), "layout": loaded.layout},
    )


# ------------------------------------------------------------------------------------------------------------
# Random-weight checkpoints in the published layout, for tests and the demo (same seed, same tensors)


def write_esm_checkpoint(
    out_dir: Path, config: EsmConfig, tokens: tuple[str, ...], tokenizer_config: Mapping[str, object], seed: int
) -> Path:
    """An EsmForMaskedLM checkpoint as the published repositories hold it: config.json, pytorch_model.bin (keys as
    transformers saves them: per-layer rotary inv_freq, the contact head, the tied decoder under its own key),
    vocab.txt, tokenizer_config.json and special_tokens_map.json. Every tensor random, so a mixed-up key shows."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    model = EsmForMaskedLM(config)
    state: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if "LayerNorm" in name or "layer_norm" in name:
                value = 1.0 + 0.1 * noise if name.endswith("weight") else 0.02 * noise
            else:
                value = 0.02 * noise if name.endswith("bias") else 0.1 * noise
            state[name] = value
    if config.tie_word_embeddings:
        state["lm_head.decoder.weight"] = state["esm.embeddings.word_embeddings.weight"]
    if config.position_embedding_type == "rotary":
        inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, config.head_dim, 2).float() / config.head_dim))
        for layer in range(config.num_hidden_layers):
            state[f"esm.encoder.layer.{layer}.attention.self.{_INV_FREQ_SUFFIX}"] = inv_freq.clone()
    state["esm.contact_head.regression.weight"] = 0.1 * torch.randn(
        1, config.num_hidden_layers * config.num_attention_heads, generator=generator
    )
    state["esm.contact_head.regression.bias"] = torch.zeros(1)
    torch.save(state, out_dir / "pytorch_model.bin")
    write_json(out_dir / "config.json", config.to_json_dict())
    (out_dir / "vocab.txt").write_text("\n".join(tokens) + "\n")
    special = {key: value for key, value in tokenizer_config.items() if key in SPECIAL_DEFAULTS}
    write_json(out_dir / "tokenizer_config.json", {"tokenizer_class": "EsmTokenizer", **tokenizer_config})
    write_json(out_dir / "special_tokens_map.json", {key: value for key, value in special.items() if value})
    return out_dir


def write_demo_checkpoint(
    out_dir: Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    token_dropout: bool = True,
    seed: int = 0,
) -> Path:
    """A small random-weight ESM-2 checkpoint in the layout of facebook/esm2_*_UR50D (see write_esm_checkpoint)."""
    config = EsmConfig(
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size or 4 * hidden_size,
        token_dropout=token_dropout,
    )
    tokenizer_config = {**SPECIAL_DEFAULTS, "model_max_length": 1024}
    return write_esm_checkpoint(out_dir, config, ESM2_ALPHABET, tokenizer_config, seed)
