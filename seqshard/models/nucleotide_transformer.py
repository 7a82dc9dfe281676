"""Native Nucleotide Transformer (InstaDeep's first release): the ESM encoder of `seqshard.models.esm2` with learned
absolute positions, and its 6-mer DNA tokenizer with exact base spans.

`InstaDeepAI/nucleotide-transformer-500m-human-ref`, `-500m-1000g`, `-2.5b-1000g` and `-2.5b-multi-species` are
`EsmForMaskedLM` checkpoints (no remote code); their licence is CC BY-NC-SA 4.0 (non-commercial use only).

Tokenizer (the published `EsmTokenizer` over the checkpoint's vocab.txt: specials, the 4,096 6-mers over ACGT, then
single bases): read left to right, a stretch of A/C/G/T becomes 6-mers from its start, and what is left of it
(fewer than 6 bases before an N, another letter or the end) becomes single-base tokens, as does every N. So each
token stands for exactly 1 or 6 bases, which windows and per-token ownership rely on. The input is framed as
`<cls> tokens`, with `<eos>` after only if the tokenizer files name one, as EsmTokenizer reads them (the published
ones are said to name none; not checked against the hub here). A letter
outside the vocabulary (an IUPAC code other than N) is one <unk> per base; transformers' tokenizer makes a single
<unk> of a run of them, so such runs differ from it on purpose (tested).

The v2 release (`nucleotide-transformer-v2-*`: rotary positions, a gated feed-forward) is published as remote code
only; its config names that code (`auto_map`) and is refused with that reason (README, "Models").
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from seqshard.models import LoadedModel
from seqshard.models.esm2 import (
    ArrayTokenizer,
    EsmConfig,
    EsmVocabulary,
    frame_flat,
    load_esm_checkpoint,
    write_esm_checkpoint,
)
from seqshard.models.loading import model_max_length

if TYPE_CHECKING:
    from seqshard.io.interface import Interface

__all__ = ["KMER", "VOCABULARY", "NucleotideTransformerTokenizer", "load_nucleotide_transformer",
           "write_demo_checkpoint"]  # fmt: skip

KMER = 6
BASES = "ATCG"  # the order the published vocabulary lists 6-mers in
# The published vocab.txt: six specials, the 6-mers in itertools.product order over ATCG, then the single bases.
VOCABULARY: tuple[str, ...] = (
    "<unk>", "<pad>", "<mask>", "<cls>", "<eos>", "<bos>",
    *("".join(kmer) for kmer in itertools.product(BASES, repeat=KMER)),
    *BASES, "N",
)  # fmt: skip
# Token capacity is (max_tokens − 1) 6-mers; default windows use 5/6 of it, leaving room for the single-base
# tokens an N or another letter costs, so that a window rarely needs cutting again.
_WINDOW_SHARE = 5 / 6


class NucleotideTransformerTokenizer(ArrayTokenizer):
    """6-mers with single-base fallback (module docstring), framed as the checkpoint's tokenizer files say."""

    max_residues_per_token = KMER

    def __init__(self, vocabulary: EsmVocabulary, source: Path) -> None:
        self.vocabulary = vocabulary
        self.pad_id, self.mask_id, self.unk_id = vocabulary.pad_id, vocabulary.mask_id, vocabulary.unk_id
        self.frame = vocabulary.frame
        index = {token: position for position, token in enumerate(vocabulary.tokens)}
        kmers = ["".join(kmer) for kmer in itertools.product(BASES, repeat=KMER)]
        missing = [kmer for kmer in kmers if kmer not in index]
        if missing:
            raise ValueError(f"{source}: not a 6-mer vocabulary (lacks {len(missing)} 6-mers, e.g. {missing[0]})")
        self._kmer_ids = np.array([index[kmer] for kmer in kmers], dtype=np.int32)  # by base-4 code over ATCG
        self._code = np.full(256, -1, dtype=np.int64)  # base -> 0..3 in BASES order, -1 for anything else
        for code, base in enumerate(BASES):
            self._code[ord(base)] = self._code[ord(base.lower())] = code
        self._single = vocabulary.residue_table()

    @classmethod
    def from_dir(cls, directory: Path) -> NucleotideTransformerTokenizer:
        vocabulary = EsmVocabulary.from_dir(Path(directory))
        return cls(vocabulary, Path(directory) / "vocab.txt")

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary.tokens)

    def _tokens(self, sequences: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every sequence's tokens back to back: ids, start base and width (1 or 6) of each, and tokens per
        sequence. All sequences in one pass of array operations: a newline between them ends every stretch."""
        text = np.frombuffer("\n".join(sequences).encode("ascii", "replace"), np.uint8)
        if len(text) == 0:
            empty = np.zeros(0, dtype=np.int64)
            return empty.astype(np.int32), empty, empty, np.zeros(len(sequences), dtype=np.int64)
        codes = self._code[text]
        base = codes >= 0
        position = np.arange(len(text))
        previous = np.concatenate(([False], base[:-1]))
        following = np.concatenate((base[1:], [False]))
        # For a base: where its A/C/G/T stretch starts and ends, hence its offset and the stretch's 6-mer part.
        stretch_start = np.maximum.accumulate(np.where(base & ~previous, position, 0))
        stretch_end = np.minimum.accumulate(np.where(base & ~following, position + 1, len(text))[::-1])[::-1]
        offset = position - stretch_start
        in_kmer = base & (offset < (stretch_end - stretch_start) // KMER * KMER)
        starts_kmer = in_kmer & (offset % KMER == 0)
        separator = text == ord("\n")
        starts = np.flatnonzero(starts_kmer | (~in_kmer & ~separator))
        widths = np.where(starts_kmer[starts], KMER, 1)
        ids = self._single[text[starts]]
        kmer_starts = starts[widths == KMER]
        if len(kmer_starts):
            value = np.zeros(len(kmer_starts), dtype=np.int64)
            for shift in range(KMER):
                value = value * 4 + codes[kmer_starts + shift]
            ids[widths == KMER] = self._kmer_ids[value]
        # Sequence i starts at text position sum(len + 1 of those before it).
        lengths = np.fromiter((len(sequence) for sequence in sequences), np.int64, len(sequences))
        text_starts = np.concatenate(([0], np.cumsum(lengths + 1)[:-1]))
        owner = np.searchsorted(text_starts, starts, side="right") - 1
        counts = np.bincount(owner, minlength=len(sequences)) if len(sequences) else np.zeros(0, np.int64)
        return ids, starts - text_starts[owner], widths, counts

    def encode_flat(self, sequences: list[str]) -> tuple[np.ndarray, np.ndarray]:
        ids, _, _, counts = self._tokens(sequences)
        return frame_flat(self.vocabulary, ids, counts)

    def encode_many_arrays(self, sequences: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        body, begins, widths, counts = self._tokens(sequences)
        ids, starts = frame_flat(self.vocabulary, body, counts)
        before = self.frame[0]
        bounds = np.concatenate(([0], np.cumsum(counts)))
        result = []
        for index in range(len(sequences)):
            own = ids[starts[index] : starts[index + 1]]
            spans = np.zeros((len(own), 2), dtype=np.int64)
            first, last = bounds[index], bounds[index + 1]
            spans[before : before + last - first, 0] = begins[first:last]
            spans[before : before + last - first, 1] = begins[first:last] + widths[first:last]
            result.append((own, spans))
        return result


def load_nucleotide_transformer(
    checkpoint: str | Path,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    interface: Interface | None = None,
) -> LoadedModel:
    """The Nucleotide Transformer encoder of `checkpoint` as a LoadedModel: DNA only; the longest input is the
    tokenizer's model_max_length, else what the position table holds (max_position_embeddings − 2: 1,000 tokens)."""
    loaded = load_esm_checkpoint(checkpoint, device, dtype, "nucleotide_transformer", interface)
    tokenizer = NucleotideTransformerTokenizer.from_dir(loaded.directory)
    config: EsmConfig = loaded.config
    positions = config.max_position_embeddings - config.pad_token_id - 1  # learned rows after fairseq's offset
    max_tokens = model_max_length(loaded.directory, positions)
    if config.position_embedding_type == "absolute" and max_tokens > positions:
        raise ValueError(f"{loaded.directory}: model_max_length {max_tokens} exceeds the {positions} learned positions")
    capacity = (max_tokens - sum(tokenizer.frame)) * KMER
    return LoadedModel(
        name="nucleotide_transformer",
        model=loaded.model,
        tokenizer=tokenizer,
        hidden_size=config.hidden_size,
        checkpoint=str(checkpoint),
        checkpoint_dir=loaded.directory,
        digest=loaded.digest,
        molecules=frozenset({"dna"}),
        max_tokens=max_tokens,
        default_window=int(capacity * _WINDOW_SHARE),
        num_layers=config.num_hidden_layers,
        token_types={"dna": 0},
        mlm_head=loaded.mlm_head,
        sequence_head=loaded.sequence_head,
        extra={"config": dataclasses.asdict(config), "layout": loaded.layout},
    )


def write_demo_checkpoint(
    out_dir: Path, *, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4, seed: int = 0
) -> Path:
    """A small random-weight checkpoint in the layout of InstaDeepAI/nucleotide-transformer-500m-human-ref: learned
    positions for 1,000 tokens (+2, fairseq's offset), LayerNorm eps 1e-12, untied decoder, no token dropout, the
    4,107-token vocab.txt, and tokenizer files that name no <eos>."""
    config = EsmConfig(
        vocab_size=len(VOCABULARY),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=4 * hidden_size,
        max_position_embeddings=1002,
        position_embedding_type="absolute",
        layer_norm_eps=1e-12,
        token_dropout=False,
        pad_token_id=1,
        mask_token_id=2,
        tie_word_embeddings=False,
    )
    tokenizer_config = {"unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>", "cls_token": "<cls>",
                        "eos_token": None, "model_max_length": 1000}  # fmt: skip
    return write_esm_checkpoint(out_dir, config, VOCABULARY, tokenizer_config, seed)
