"""Native DNABERT-2: loads the published checkpoint into plain torch modules and tokenizes DNA for it.

The published model ships its own modelling code (MosaicBERT: ALiBi attention, gated-GELU MLP, unpadding,
a Triton kernel) that needs `trust_remote_code`, breaks on modern Triton and on transformers 5, and fails when
cast to bf16 without autocast. This module computes the same function with `scaled_dot_product_attention`
and keeps the published state-dict key names, so `zhihan1996/DNABERT-2-117M` loads unchanged.

Layer math (post-LayerNorm everywhere), with H hidden, I intermediate:
    embeddings  x = LN(word[ids] + token_type[0])                      (no position embeddings)
    attention   q, k, v = split(Wqkv x); a = softmax(q kᵀ/√d + alibi + pad) v; x = LN(dense(a) + x)
    mlp         g = gated_layers x; u = GELU(g[..., :I]) * g[..., I:]; x = LN(wo u + x)

The ALiBi bias plus key padding of a padded batch is a [batch, heads, L, L] tensor that the token budget (batch
× L) does not bound. It is built for blocks of at most 512 query positions (`AttentionBias`), and attention runs
block by block: at most heads × 512 bias values per token of the batch, whatever L (up to 512, one block built once
per forward and shared by every layer, as before; longer, views into one [heads, 512, 2L] ALiBi table plus the
key padding added per block).

Everything but the attention itself works token by token, so with `DNABERT2Model.unpad` set those steps run on
the real tokens of a padded batch only, packed into one [n_real, H] tensor, as the reference does; only q, k, v
are scattered back to [B, heads, L, head_dim] around `scaled_dot_product_attention`.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from seqshard.models import LoadedModel, SequenceHead, check_architecture
from seqshard.models.loading import (
    LayerOutputs,
    assign_weights,
    load_state_dict,
    model_max_length,
    preview,
    read_weights,
    write_json,
)
from seqshard.runtime.checkpoints import resolve_checkpoint, weights_files

if TYPE_CHECKING:
    from tokenizers import Encoding, Tokenizer

    from seqshard.io.interface import Interface

__all__ = [
    "ALIBI_QUERY_BLOCK",
    "AttentionBias",
    "DNABERT2Config",
    "DNABERT2ForMaskedLM",
    "DNABERT2Model",
    "DNABERT2Tokenizer",
    "alibi_bias",
    "alibi_slopes",
    "load_dnabert2",
    "load_dnabert2_masked_lm",
    "write_demo_checkpoint",
]

SPECIAL_TOKENS = ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]")  # ids 0..4 in the published tokenizer
_MLM_HEAD_LAYER_NORM_EPS = 1e-12  # the reference hard-codes this instead of reading config.layer_norm_eps
# Keys a checkpoint may carry that the embedding backbone does not use.
_NON_ENCODER_PREFIXES = ("cls.", "classifier.", "pooler.")
# Buffers some BERT exports save; they hold nothing the model needs (ALiBi replaces positions, types are 0).
_HARMLESS_BUFFERS = {"embeddings.position_ids", "embeddings.token_type_ids"}


@dataclass
class DNABERT2Config:
    """The fields of the published config.json (defaults are the 117M model); unknown keys are ignored."""

    vocab_size: int = 4096
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    alibi_starting_size: int = 512
    attention_probs_dropout_prob: float = 0.0
    hidden_dropout_prob: float = 0.1
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    type_vocab_size: int = 2
    # Only present in sequence-classification fine-tunes.
    num_labels: int | None = None
    id2label: dict[int, str] | None = None
    label2id: dict[str, int] | None = None
    problem_type: str | None = None  # "regression" or "single_label_classification", as transformers writes it

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads {self.num_attention_heads}"
            )
        if self.id2label is not None:
            # JSON object keys are strings; label ids are ints everywhere else.
            self.id2label = {int(key): str(value) for key, value in self.id2label.items()}
            if self.num_labels is None:
                self.num_labels = len(self.id2label)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_json_file(cls, path: str | Path) -> DNABERT2Config:
        data = json.loads(Path(path).read_text())
        known = {item.name for item in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})

    def to_dict(self) -> dict[str, object]:
        """The config as config.json holds it; label fields only when set, like the published file."""
        data: dict[str, object] = asdict(self)
        for key in ("num_labels", "id2label", "label2id", "problem_type"):
            if data[key] is None:
                del data[key]
        if self.id2label is not None:
            data["id2label"] = {str(key): value for key, value in self.id2label.items()}
        return data


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """Per-head ALiBi slopes, float32 [n_heads].

    For a power of two n: slope_k = 2^(-8(k+1)/n). Otherwise the list for the largest power of two p below n,
    followed by every other slope of the list for 2p (the ALiBi paper's rule, which the reference follows).
    """
    if n_heads < 1:
        raise ValueError(f"n_heads must be positive, got {n_heads}")

    def power_of_two_slopes(n: int) -> list[float]:
        return [2.0 ** (-8.0 * (k + 1) / n) for k in range(n)]

    closest = 1 << (n_heads.bit_length() - 1)
    slopes = power_of_two_slopes(closest)
    slopes += power_of_two_slopes(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias(slopes: torch.Tensor, queries: slice, keys: int, dtype: torch.dtype) -> torch.Tensor:
    """The ALiBi bias −slope_h·|i − j| for query positions `queries` and key positions 0..keys-1, as
    [heads, len(queries), keys] in `dtype`, on the device of `slopes` (computed in float32, then cast)."""
    device = slopes.device
    query_positions = torch.arange(queries.start, queries.stop, device=device, dtype=torch.float32)
    key_positions = torch.arange(keys, device=device, dtype=torch.float32)
    distance = (key_positions[None, :] - query_positions[:, None]).abs()
    return (-slopes[:, None, None] * distance).to(dtype)


# Query positions per attention block (see AttentionBias): the length DNABERT-2 was trained at, so a batch of
# inputs up to that length is one block, exactly as without blocks.
ALIBI_QUERY_BLOCK = 512


class AttentionBias:
    """The additive attention bias of one forward pass (ALiBi plus key padding), built one query block at a time.

    Materialised whole, the bias of a padded batch is [batch, heads, L, L]: 1.5 GiB in bf16 for 4 rows of 4,096
    tokens. Here it exists for one block of at most ALIBI_QUERY_BLOCK query positions at a time, [batch, heads,
    block, L], so its size is bounded by the batch's tokens (batch × L) times heads × 512. When one block covers
    the batch it is built once and shared by every layer.

    With several blocks, the ALiBi part is one table per forward, [heads, block, 2L]: ALiBi depends on i − j only,
    so every block's [heads, block, L] is a view into it (no batch dimension; at most 2 × heads × 512 values per
    token). A block then costs one addition of the key padding, or nothing when no row is padded.
    """

    def __init__(
        self, slopes: torch.Tensor, length: int, attention_mask: torch.Tensor | None, dtype: torch.dtype
    ) -> None:
        self.length = length
        self.key_padding: torch.Tensor | None = None
        if attention_mask is not None:
            # Padded keys get the most negative finite value rather than -inf: a row with no real key (which
            # [CLS]/[SEP] framing never produces) then averages instead of turning into NaN.
            batch = attention_mask.shape[0]
            self.key_padding = torch.zeros(batch, 1, 1, length, device=slopes.device, dtype=dtype)
            self.key_padding.masked_fill_(~attention_mask[:, None, None, :], torch.finfo(dtype).min)
        self.blocks = [
            slice(start, min(start + ALIBI_QUERY_BLOCK, length)) for start in range(0, length, ALIBI_QUERY_BLOCK)
        ]
        if len(self.blocks) == 1:
            self._whole: torch.Tensor | None = self._with_padding(alibi_bias(slopes, self.blocks[0], length, dtype))
        else:
            # Query positions 0..block-1 against key offsets -L..L-1: row i, column u holds -slope·|i - (u - L)|.
            self._whole = None
            self._table = alibi_bias(slopes, slice(length, length + ALIBI_QUERY_BLOCK), 2 * length, dtype)

    def _with_padding(self, alibi: torch.Tensor) -> torch.Tensor:
        alibi = alibi.unsqueeze(0)  # [1, heads, q, L]
        return alibi if self.key_padding is None else alibi + self.key_padding

    def block(self, queries: slice) -> torch.Tensor:
        """The bias for query positions `queries` (one of `blocks`), [1 or batch, heads, len(queries), L]."""
        if self._whole is not None:
            return self._whole
        # Query s + i against key j sits at row i, column j - s + L of the table: a view, values unchanged.
        start, rows = queries.start, queries.stop - queries.start
        return self._with_padding(self._table[:, :rows, self.length - start : 2 * self.length - start])


def _activation(name: str) -> nn.Module:
    activations: dict[str, nn.Module] = {
        "gelu": nn.GELU(),  # transformers' "gelu" is the exact erf form
        "gelu_new": nn.GELU(approximate="tanh"),
        "gelu_pytorch_tanh": nn.GELU(approximate="tanh"),
        "relu": nn.ReLU(),
    }
    if name not in activations:
        raise ValueError(f"unsupported hidden_act {name!r}; supported: {', '.join(activations)}")
    return activations[name]


@dataclass(frozen=True)
class _Packing:
    """Where the real tokens of a padded [B, L] batch sit, to move token-wise tensors between the padded
    [B, L, ...] layout and the packed [n_real, ...] one (real tokens in row-major order, padding dropped)."""

    indices: torch.Tensor  # [n_real] long: row * L + position of each real token
    batch: int
    length: int

    @classmethod
    def from_mask(cls, attention_mask: torch.Tensor) -> _Packing:
        """From a bool [B, L] mask, True at real tokens (one host sync on GPU, once per forward)."""
        batch, length = attention_mask.shape
        return cls(attention_mask.reshape(-1).nonzero().squeeze(1), batch, length)

    def unpad(self, padded: torch.Tensor) -> torch.Tensor:
        """[B, L, ...] to [n_real, ...]."""
        return padded.reshape(self.batch * self.length, *padded.shape[2:]).index_select(0, self.indices)

    def pad(self, packed: torch.Tensor) -> torch.Tensor:
        """[n_real, ...] to [B, L, ...] with zeros at padding: padded keys and values must be finite, since the
        attention mask only makes their weights zero, and zero rows are what the padded path outputs there."""
        padded = packed.new_zeros(self.batch * self.length, *packed.shape[1:])
        padded.index_copy_(0, self.indices, packed)
        return padded.view(self.batch, self.length, *packed.shape[1:])


class DNABERT2Embeddings(nn.Module):
    def __init__(self, config: DNABERT2Config) -> None:
        super().__init__()
        # Empty weights, filled by a checkpoint or by the demo's own init: nn.Embedding's random init on the
        # meta device pulls in torch's decompositions, which costs ~2 s of start-up in every inference job.
        self.word_embeddings = nn.Embedding(
            config.vocab_size, config.hidden_size, _weight=torch.empty(config.vocab_size, config.hidden_size)
        )
        self.token_type_embeddings = nn.Embedding(
            config.type_vocab_size,
            config.hidden_size,
            _weight=torch.empty(config.type_vocab_size, config.hidden_size),
        )
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings [..., H] of ids of any shape: [B, L] padded or [n_real] packed."""
        embeddings = self.word_embeddings(input_ids)
        if token_type_ids is None:
            # All-zero token types are just row 0 broadcast; no [B, L] index tensor needed.
            embeddings = embeddings + self.token_type_embeddings.weight[0]
        else:
            embeddings = embeddings + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(embeddings))


class DNABERT2SelfAttention(nn.Module):
    def __init__(self, config: DNABERT2Config) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.dropout_prob = config.attention_probs_dropout_prob
        self.Wqkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)

    def forward(self, hidden: torch.Tensor, bias: AttentionBias, packing: _Packing | None = None) -> torch.Tensor:
        """Attention of hidden [B, L, H], or of packed [n_real, H] with `packing`, returned in the same layout."""
        qkv = self.Wqkv(hidden)
        if packing is not None:
            # Attention needs the [B, L] layout; the projection above ran on real tokens only.
            qkv = packing.pad(qkv)
        batch, length, _ = qkv.shape
        width = self.num_heads * self.head_dim
        # Wqkv's output is three contiguous blocks q | k | v, each heads × head_dim.
        qkv = qkv.view(batch, length, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, L, head_dim]
        dropout = self.dropout_prob if self.training else 0.0
        if len(bias.blocks) == 1:
            context = F.scaled_dot_product_attention(
                query, key, value, attn_mask=self._in_dtype(bias.block(bias.blocks[0]), query), dropout_p=dropout
            )
        else:  # one query block at a time, each with its own slice of the bias: see AttentionBias
            context = query.new_empty(query.shape)
            for queries in bias.blocks:
                context[:, :, queries] = F.scaled_dot_product_attention(
                    query[:, :, queries], key, value, attn_mask=self._in_dtype(bias.block(queries), query),
                    dropout_p=dropout,
                )  # fmt: skip
        context = context.transpose(1, 2).reshape(batch, length, width)
        return context if packing is None else packing.unpad(context)

    @staticmethod
    def _in_dtype(bias: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        # SDPA wants the float mask in q's dtype; they differ only under unusual autocast setups.
        return bias if bias.dtype == query.dtype else bias.to(query.dtype)


class DNABERT2SelfOutput(nn.Module):
    def __init__(self, config: DNABERT2Config) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden)) + residual)


class DNABERT2Attention(nn.Module):
    def __init__(self, config: DNABERT2Config) -> None:
        super().__init__()
        self.self = DNABERT2SelfAttention(config)  # named `self` to match the published keys
        self.output = DNABERT2SelfOutput(config)

    def forward(self, hidden: torch.Tensor, bias: AttentionBias, packing: _Packing | None = None) -> torch.Tensor:
        return self.output(self.self(hidden, bias, packing), hidden)


class DNABERT2GatedMLP(nn.Module):
    def __init__(self, config: DNABERT2Config) -> None:
        super().__init__()
        self.intermediate_size = config.intermediate_size
        self.gated_layers = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.act = nn.GELU()  # exact GELU regardless of config.hidden_act, as in the reference
        self.wo = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        gated, linear = self.gated_layers(hidden).split(self.intermediate_size, dim=-1)
        return self.layernorm(self.wo(self.dropout(self.act(gated) * linear)) + hidden)


class DNABERT2Layer(nn.Module):
    def __init__(self, config: DNABERT2Config) -> None:
        super().__init__()
        self.attention = DNABERT2Attention(config)
        self.mlp = DNABERT2GatedMLP(config)

    def forward(self, hidden: torch.Tensor, bias: AttentionBias, packing: _Packing | None = None) -> torch.Tensor:
        """One layer on hidden [B, L, H], or on packed [n_real, H] with `packing` (the MLP is token-wise)."""
        return self.mlp(self.attention(hidden, bias, packing))


class DNABERT2Encoder(nn.Module):
    def __init__(self, config: DNABERT2Config) -> None:
        super().__init__()
        self.layer = nn.ModuleList(DNABERT2Layer(config) for _ in range(config.num_hidden_layers))
        self.num_heads = config.num_attention_heads
        # Derived from the config, so not a buffer (it must not appear in the state dict), and made on first
        # use on the model's device, so that a model built on the meta device never holds a meta tensor.
        self._slopes: torch.Tensor | None = None

    def slopes(self, device: torch.device) -> torch.Tensor:
        """The ALiBi slopes (float32 [heads]) on `device`, cached."""
        if self._slopes is None or self._slopes.device != device:
            self._slopes = alibi_slopes(self.num_heads).to(device)
        return self._slopes

    def forward(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor | None, packing: _Packing | None = None,
        outputs: LayerOutputs | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """All layers on hidden [B, L, H], or on packed [n_real, H] when `packing` (then `attention_mask` too)
        is given. `attention_mask` [B, L] bool is True at real tokens; None means no padding. `outputs` keeps the
        states of chosen layers on the way (its layer 0 is `hidden`, the embeddings' output)."""
        if packing is not None and attention_mask is None:
            raise ValueError("packed hidden states need the attention mask they were packed with")
        batch, length = hidden.shape[:2] if attention_mask is None else attention_mask.shape
        device_type = hidden.device.type
        # The bias must be in the dtype attention computes in: the autocast dtype if autocast is on, else the
        # parameters' dtype (a model cast to bf16 then works without autocast, unlike the reference).
        if torch.is_autocast_enabled(device_type):
            dtype = torch.get_autocast_dtype(device_type)
        else:
            dtype = hidden.dtype
        bias = AttentionBias(self.slopes(hidden.device), length, attention_mask, dtype)
        if outputs is not None:
            outputs.keep(0, hidden)
        for number, layer in enumerate(self.layer, 1):
            hidden = layer(hidden, bias, packing)
            if outputs is not None:
                outputs.keep(number, hidden)
        return hidden


class DNABERT2Model(nn.Module):
    """The DNABERT-2 encoder (the checkpoint's `bert.` prefix): token ids to last hidden states.

    `unpad` (default False) picks how a batch with padding is computed: False runs every layer on the padded
    [B, L, H] tensor; True runs the token-wise work on the real tokens only, as the reference does, which saves
    the padding's share of the projections and MLP at the cost of a gather and scatter around each attention.
    Both give the same result; which is faster depends on how much padding the batches carry.
    """

    def __init__(self, config: DNABERT2Config) -> None:
        super().__init__()
        self.config = config
        self.embeddings = DNABERT2Embeddings(config)
        self.encoder = DNABERT2Encoder(config)
        # A plain attribute, not a config field: it changes speed, not the function, and no checkpoint holds it.
        self.unpad = False

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        *,
        layers: Sequence[int] | None = None,
    ) -> torch.Tensor | list[torch.Tensor]:
        """Last hidden state [B, L, hidden]; `attention_mask` [B, L] is True at real tokens (None: all real).
        With `layers` (absolute numbers: 0 the embeddings' output, i layer i's; seqshard.models.layer_numbers),
        the states of those layers instead, a list from the same forward pass; the last layer's is the last
        hidden state (DNABERT-2 is post-LayerNorm: every layer's output is already normalised).

        Padded positions never influence real ones, and their output rows are zero, as in the reference,
        which drops padding inside the encoder and pads the result back with zeros.
        """
        mask = None if attention_mask is None else attention_mask.to(device=input_ids.device, dtype=torch.bool)
        if mask is not None and mask.device.type == "cpu" and bool(mask.all()):
            # No padding: nothing to mask and nothing to pack. Checked on the CPU only: on a GPU the check would
            # wait for the device, and callers that know (seqshard's runner) pass None for unpadded batches.
            mask = None
        outputs = LayerOutputs(layers, len(self.encoder.layer))
        if mask is None or not self.unpad:
            hidden = self.encoder(self.embeddings(input_ids, token_type_ids), mask, outputs=outputs)
            if mask is None:
                return outputs.result(hidden)
            return outputs.result(hidden, lambda state: state.masked_fill(~mask[..., None], 0.0))
        packing = _Packing.from_mask(mask)
        token_types = None if token_type_ids is None else packing.unpad(token_type_ids)
        packed = self.encoder(self.embeddings(packing.unpad(input_ids), token_types), mask, packing, outputs)
        return outputs.result(packed, packing.pad)


class DNABERT2PredictionHeadTransform(nn.Module):
    def __init__(self, config: DNABERT2Config) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = _activation(config.hidden_act)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=_MLM_HEAD_LAYER_NORM_EPS)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.act(self.dense(hidden)))


class DNABERT2LMPredictionHead(nn.Module):
    def __init__(self, config: DNABERT2Config) -> None:
        super().__init__()
        self.transform = DNABERT2PredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden))


class DNABERT2MLMHead(nn.Module):
    def __init__(self, config: DNABERT2Config) -> None:
        super().__init__()
        self.predictions = DNABERT2LMPredictionHead(config)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.predictions(hidden)


class DNABERT2Pooler(nn.Module):
    def __init__(self, config: DNABERT2Config) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


class DNABERT2SequenceHead(nn.Module):
    """The sequence-classification fine-tune's head: tanh pooler on [CLS], then a linear layer.

    Its state keys are the published ones without the model prefix: `pooler.dense.*` (under `bert.` in the
    checkpoint) and `classifier.*`.
    """

    def __init__(self, config: DNABERT2Config) -> None:
        super().__init__()
        self.pooler = DNABERT2Pooler(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels or 1)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.classifier(self.pooler(hidden))


class DNABERT2ForMaskedLM(nn.Module):
    """Encoder plus masked-LM head: the published checkpoint's layout (142 tensors for the 117M model)."""

    def __init__(self, config: DNABERT2Config) -> None:
        super().__init__()
        self.config = config
        self.bert = DNABERT2Model(config)
        self.cls = DNABERT2MLMHead(config)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the decoder weight with the word embeddings (call again after `to_empty`, which unties)."""
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, L, vocab_size]."""
        return self.cls(self.bert(input_ids, attention_mask))


class DNABERT2Tokenizer:
    """The published BPE tokenizer (`tokenizer.json`), framing every sequence as `[CLS] ... [SEP]`.

    The tokenizer has no normalizer and its vocabulary holds only A, C, G, T and their merges, so input is
    upper-cased first. N (and any other IUPAC ambiguity code) is not in the vocabulary: it becomes one [UNK]
    per character. That keeps it visible to the model as "unknown base" at the right place, which is what the
    model saw in pre-training; dropping Ns would silently join the flanks, replacing them would invent bases.
    Truncation and padding are switched off: batching and windowing are the caller's job.
    """

    frame = (1, 1)  # [CLS] ... [SEP]

    def __init__(self, tokenizer_file: str | Path) -> None:
        from tokenizers import Tokenizer

        self.path = Path(tokenizer_file)
        self._tokenizer = Tokenizer.from_file(str(self.path))
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self.unk_id, self.cls_id, self.sep_id, self.pad_id, self.mask_id = (
            self._special_id(token) for token in SPECIAL_TOKENS
        )
        # The published tokenizer.json frames through its post-processor; frame by hand if a copy lacks one.
        probe = self._tokenizer.encode("A").ids
        self._frames_itself = probe[:1] == [self.cls_id] and probe[-1:] == [self.sep_id]

    @classmethod
    def from_dir(cls, directory: str | Path) -> DNABERT2Tokenizer:
        return cls(Path(directory) / "tokenizer.json")

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def _special_id(self, token: str) -> int:
        token_id = self._tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"{self.path} has no {token} token")
        return token_id

    def _framed(self, ids: list[int]) -> list[int]:
        return ids if self._frames_itself else [self.cls_id, *ids, self.sep_id]

    def encode(self, sequence: str) -> list[int]:
        """Token ids of one sequence, `[CLS] ... [SEP]`."""
        return self._framed(self._tokenizer.encode(sequence.upper()).ids)

    def encode_with_offsets(self, sequence: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids as `encode`, plus each token's base span `[start, end)` in `sequence`; (0, 0) for [CLS]/[SEP]."""
        return self._with_offsets(self._tokenizer.encode(sequence.upper()))

    def encode_many_with_offsets(self, sequences: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """`encode_with_offsets` for many sequences through the tokenizer's batch API, which runs in parallel
        outside Python's lock (so it also overlaps with model compute running in another thread)."""
        return [self._with_offsets(e) for e in self._tokenizer.encode_batch([s.upper() for s in sequences])]

    def encode_flat(self, sequences: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Framed ids of many sequences back to back, and their boundaries (see SequenceTokenizer.encode_flat).

        The batch call runs in the tokenizer's own thread pool outside Python's lock (RAYON_NUM_THREADS bounds
        it), and skips offsets, which cost more than the ids themselves to turn into Python objects."""
        encodings = self._tokenizer.encode_batch_fast([sequence.upper() for sequence in sequences])
        extra = 0 if self._frames_itself else 2
        starts = np.zeros(len(encodings) + 1, dtype=np.int64)
        np.cumsum([len(encoding) + extra for encoding in encodings], out=starts[1:])
        if self._frames_itself:
            ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), np.int32, int(starts[-1]))
        else:
            framed = (self._framed(e.ids) for e in encodings)
            ids = np.fromiter(itertools.chain.from_iterable(framed), np.int32, int(starts[-1]))
        return ids, starts

    def encode_many_arrays(self, sequences: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(ids, spans [n, 2]) per sequence as arrays, as `encode_many_with_offsets` gives them as lists.

        BPE tokens here are pieces of the input laid end to end (no normalizer; [UNK] stands for one base), so a
        token's span follows from the characters of the tokens before it: no offsets to convert. A sequence
        whose tokens do not spell out its length falls back to the tokenizer's own offsets."""
        ids, starts = self.encode_flat(sequences)
        widths = self._token_widths()[ids]
        result = []
        for index, sequence in enumerate(sequences):
            own_ids = ids[starts[index] : starts[index + 1]]
            own = widths[starts[index] : starts[index + 1]]
            if int(own.sum()) != len(sequence):
                fallback_ids, offsets = self.encode_with_offsets(sequence)
                result.append((np.asarray(fallback_ids, np.int32), np.asarray(offsets, np.int64).reshape(-1, 2)))
                continue
            ends = np.cumsum(own)
            spans = np.stack([ends - own, ends], axis=1)
            spans[own == 0] = 0  # [CLS] and [SEP]: (0, 0), as the offsets say
            result.append((own_ids, spans))
        return result

    @property
    def max_residues_per_token(self) -> int:
        return int(self._token_widths().max())

    def _token_widths(self) -> np.ndarray:
        """Characters each token id stands for: its string's length, 1 for [UNK], 0 for the other specials."""
        if getattr(self, "_widths", None) is None:
            vocab = self._tokenizer.get_vocab(with_added_tokens=True)
            widths = np.zeros(max(vocab.values()) + 1, dtype=np.int64)
            for token, token_id in vocab.items():
                widths[token_id] = len(token)
            widths[[self.cls_id, self.sep_id, self.pad_id, self.mask_id]] = 0
            widths[self.unk_id] = 1
            self._widths = widths
        return self._widths

    def _with_offsets(self, encoding: Encoding) -> tuple[list[int], list[tuple[int, int]]]:
        if self._frames_itself:
            return encoding.ids, [tuple(span) for span in encoding.offsets]
        return self._framed(encoding.ids), [(0, 0), *(tuple(span) for span in encoding.offsets), (0, 0)]

    def encode_batch(self, sequences: list[str]) -> list[list[int]]:
        """`encode` for many sequences at once, through the tokenizer's parallel batch API."""
        encodings = self._tokenizer.encode_batch([sequence.upper() for sequence in sequences])
        return [self._framed(encoding.ids) for encoding in encodings]

    def decode(self, ids: list[int]) -> str:
        """The bases behind `ids`: tokens concatenated, framing and padding dropped, [UNK] shown as N."""
        skipped = {self.cls_id, self.sep_id, self.pad_id, self.mask_id}
        pieces = []
        for token_id in ids:
            if token_id in skipped:
                continue
            pieces.append("N" if token_id == self.unk_id else self._tokenizer.id_to_token(token_id))
        return "".join(pieces)


def _encoder_state_dict(state: dict[str, torch.Tensor], source: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The encoder tensors of any published layout, keys without `bert.`, and the layout's name."""
    if any(key.startswith("bert.") for key in state):
        layout = "masked_lm" if any(key.startswith("cls.") for key in state) else "bert"
        if any(key.startswith("classifier.") for key in state):
            layout = "sequence_classification"
        stray = [key for key in state if not key.startswith(("bert.", "cls.", "classifier."))]
        if stray:
            raise ValueError(f"{source} has keys outside bert./cls./classifier.: {preview(stray)}")
        encoder = {key.removeprefix("bert."): value for key, value in state.items() if key.startswith("bert.")}
    else:
        layout = "encoder"
        encoder = dict(state)
    encoder = {
        key: value
        for key, value in encoder.items()
        if not key.startswith(_NON_ENCODER_PREFIXES) and key not in _HARMLESS_BUFFERS
    }
    return encoder, layout


def load_dnabert2(
    checkpoint: str | Path,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    interface: Interface | None = None,
) -> LoadedModel:
    """The DNABERT-2 encoder of `checkpoint` (directory or hub id) in eval mode on `device`, as a LoadedModel.

    Accepts the published masked-LM layout (`bert.*` + `cls.*`), a bare encoder and a sequence-classification
    fine-tune; heads and pooler are ignored because only the backbone's hidden states are used. Missing or
    unexpected encoder tensors are an error that names them; another architecture's checkpoint is named as such.
    `interface` spells the settings messages ask to change (seqshard.io.interface).
    """
    directory = resolve_checkpoint(checkpoint, required=("config.json",), interface=interface)
    # Memory-mapped, straight to `device`: the host never holds a second copy of the weights.
    weights = read_weights(directory, device)
    state, source = weights.state, weights.source
    check_architecture("dnabert2", directory, state, interface)
    resolve_checkpoint(directory, required=("tokenizer.json",))
    config = DNABERT2Config.from_json_file(directory / "config.json")
    encoder_state, layout = _encoder_state_dict(state, source)
    model = assign_weights(
        lambda: DNABERT2Model(config), encoder_state, source, f"a DNABERT-2 checkpoint ({layout} layout)",
        directory / "config.json",
    )  # fmt: skip
    # A no-op for fp32 weights asked for in fp32; otherwise casts (bf16 works without autocast too).
    model = model.to(device=device, dtype=dtype).eval()
    mlm_head = _mlm_head(config, state, model, source, device, dtype)
    sequence_head = _sequence_head(config, state, source, device, dtype)

    return LoadedModel(
        name="dnabert2",
        model=model,
        tokenizer=DNABERT2Tokenizer.from_dir(directory),
        hidden_size=config.hidden_size,
        checkpoint=str(checkpoint),
        checkpoint_dir=directory,
        digest=weights.digest,
        molecules=frozenset({"dna"}),
        # ALiBi has no hard length limit, but the model was trained and is published for 512 tokens.
        max_tokens=model_max_length(directory, config.max_position_embeddings),
        # About 4-5 bp per token on genomes: 1,000 bp windows stay well inside 512 tokens.
        default_window=1000,
        num_layers=config.num_hidden_layers,
        token_types={"dna": 0},
        mlm_head=mlm_head,
        sequence_head=sequence_head,
        extra={"config": config.to_dict(), "layout": layout},
    )


def _mlm_head(
    config: DNABERT2Config,
    state: dict[str, torch.Tensor],
    model: DNABERT2Model,
    source: Path,
    device: str,
    dtype: torch.dtype,
) -> DNABERT2MLMHead | None:
    """The masked-LM head when the checkpoint has `cls.*`; the decoder shares the word embeddings."""
    head_state = {key.removeprefix("cls."): value for key, value in state.items() if key.startswith("cls.")}
    if not head_state:
        return None
    # safetensors cannot store shared tensors, so converted checkpoints may lack the tied decoder weight.
    head_state.setdefault("predictions.decoder.weight", model.embeddings.word_embeddings.weight)
    with torch.device("meta"):
        head = DNABERT2MLMHead(config)
    try:
        head.load_state_dict(head_state, strict=True, assign=True)
    except RuntimeError as error:
        raise ValueError(f"{source}: the masked-LM head (cls.*) does not match config.json: {error}") from error
    return head.to(device=device, dtype=dtype).eval()


def _sequence_head(
    config: DNABERT2Config, state: dict[str, torch.Tensor], source: Path, device: str, dtype: torch.dtype
) -> SequenceHead | None:
    """The fine-tune's pooler + classifier when the checkpoint has `classifier.*`."""
    if "classifier.weight" not in state:
        return None
    head_state = {
        key.removeprefix("bert."): value
        for key, value in state.items()
        if key.startswith(("classifier.", "bert.pooler."))
    }
    n_outputs = state["classifier.weight"].shape[0]
    if config.num_labels not in (None, n_outputs):
        raise ValueError(f"{source}: classifier has {n_outputs} outputs but config.json says {config.num_labels}")
    config = replace(config, num_labels=n_outputs)
    with torch.device("meta"):
        head = DNABERT2SequenceHead(config)
    try:
        head.load_state_dict(head_state, strict=True, assign=True)
    except RuntimeError as error:
        raise ValueError(f"{source}: the sequence head (bert.pooler.*, classifier.*) is incomplete: {error}") from error
    regression = config.problem_type == "regression"
    if config.id2label:
        labels = [config.id2label[i] for i in range(n_outputs)]
    else:
        labels = ["value"] if regression and n_outputs == 1 else [f"LABEL_{i}" for i in range(n_outputs)]
    return SequenceHead(head.to(device=device, dtype=dtype).eval(), labels, "regress" if regression else "classify")


def load_dnabert2_masked_lm(
    checkpoint: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> DNABERT2ForMaskedLM:
    """The full masked-LM model of a published checkpoint, loaded strictly, in eval mode on `device`."""
    directory = resolve_checkpoint(checkpoint, required=("config.json",))
    state = load_state_dict(weights_files(directory)[0])
    check_architecture("dnabert2", directory, state)
    config = DNABERT2Config.from_json_file(directory / "config.json")
    # safetensors cannot store shared tensors, so converted checkpoints often drop the tied decoder weight.
    if "cls.predictions.decoder.weight" not in state and "bert.embeddings.word_embeddings.weight" in state:
        state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"]
    with torch.device("meta"):
        model = DNABERT2ForMaskedLM(config)
    model.to_empty(device="cpu")
    model.tie_weights()
    model.load_state_dict(state, strict=True)
    return model.to(device=device, dtype=dtype).eval()


# ------------------------------------------------------------------------------------------------------------
# A small random-weight checkpoint in the published layout, for tests and for trying the workflow without the
# 468 MB download. Same seed, same bytes.


def _init_weights(model: DNABERT2ForMaskedLM, generator: torch.Generator) -> None:
    """BERT's initialisation: N(0, 0.02) weights and embeddings, zero biases, LayerNorm ones/zeros."""
    decoder = model.cls.predictions.decoder
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Embedding):
                module.weight.normal_(0.0, 0.02, generator=generator)
            elif isinstance(module, nn.Linear):
                if module is not decoder:  # tied to the word embeddings, already drawn
                    module.weight.normal_(0.0, 0.02, generator=generator)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.LayerNorm):
                module.weight.fill_(1.0)
                module.bias.zero_()


def _synthetic_dna(seed: int, n_sequences: int = 2000, length: int = 300) -> list[str]:
    """Seeded random DNA with recurring motifs, so that BPE learns long merges as it does on genomes."""
    rng = random.Random(seed)
    motifs = ["".join(rng.choices("ACGT", k=rng.randint(6, 40))) for _ in range(200)]
    sequences = []
    for _ in range(n_sequences):
        pieces: list[str] = []
        size = 0
        while size < length:
            piece = rng.choice(motifs) if rng.random() < 0.5 else "".join(rng.choices("ACGT", k=rng.randint(4, 30)))
            pieces.append(piece)
            size += len(piece)
        sequences.append("".join(pieces)[:length])
    return sequences


def _train_demo_tokenizer(seed: int, vocab_size: int = 4096) -> Tokenizer:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]", fuse_unk=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=list("ACGT"),
        limit_alphabet=4,
        max_token_length=32,
        show_progress=False,
    )
    corpus = _synthetic_dna(seed)
    tokenizer.train_from_iterator(corpus, trainer=trainer, length=len(corpus))
    if tokenizer.get_vocab_size() != vocab_size:
        raise RuntimeError(f"demo tokenizer trained to {tokenizer.get_vocab_size()} tokens, not {vocab_size}")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tokenizer.token_to_id("[CLS]")), ("[SEP]", tokenizer.token_to_id("[SEP]"))],
    )
    return tokenizer


def write_demo_checkpoint(
    out_dir: Path,
    *,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    intermediate_size: int = 128,
    seed: int = 0,
    labels: list[str] | None = None,
    regression: bool = False,
) -> Path:
    """Write a small random-weight DNABERT-2 checkpoint with the published file names, keys and tokenizer.

    By default the published masked-LM layout (`bert.*` + `cls.*`). With `labels` (or `regression=True`), the
    layout of a sequence-classification fine-tune such as a GUE promoter model: `bert.*` with
    `bert.pooler.dense.*`, `classifier.*`, and `id2label`/`label2id`/`num_labels` in config.json.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    head_fields: dict[str, object] = {}
    if regression:
        labels = labels or ["value"]
        head_fields["problem_type"] = "regression"
    if labels:
        head_fields |= {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)},
        }
    config = DNABERT2Config(
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        intermediate_size=intermediate_size,
        **head_fields,
    )
    write_json(out_dir / "config.json", config.to_dict())

    generator = torch.Generator().manual_seed(seed)
    model = DNABERT2ForMaskedLM(config)
    _init_weights(model, generator)
    if labels:
        head = DNABERT2SequenceHead(config)
        with torch.no_grad():
            for parameter in head.parameters():
                parameter.normal_(0.0, 0.02 if parameter.dim() > 1 else 0.5, generator=generator)
        state = {f"bert.{key}": value for key, value in model.bert.state_dict().items()}
        state |= {f"bert.{key}": value for key, value in head.pooler.state_dict(prefix="pooler.").items()}
        state |= head.classifier.state_dict(prefix="classifier.")
        torch.save(state, out_dir / "pytorch_model.bin")
    else:
        # The decoder weight is saved under its own key but shares storage with the embeddings, as published.
        torch.save(model.state_dict(), out_dir / "pytorch_model.bin")

    _train_demo_tokenizer(seed).save(str(out_dir / "tokenizer.json"))
    special = {
        "unk_token": "[UNK]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
    }
    write_json(
        out_dir / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": config.max_position_embeddings,
            "padding_side": "right",
            "truncation_side": "right",
            "clean_up_tokenization_spaces": True,
            **special,
        },
    )
    write_json(out_dir / "special_tokens_map.json", special)
    return out_dir
