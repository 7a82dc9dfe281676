"""Fit sequences to a model's length limit, truncating (and saying so) or cutting overlapping windows, and hold
the resulting model inputs as flat arrays.

Windows are cut in residues (bases or amino acids) and each is tokenized on its own. Every residue belongs to
exactly one window — the one whose centre is nearest (ties go to the earlier window) — so per-position outputs
are taken once and pooled results over a long sequence are well defined. A token belongs to the window that
owns the residue at its midpoint; for a character-level model that is the token's own residue, for DNABERT-2's
BPE tokens (several bases each) it is the middle base of the token.

A window never holds more than `max_tokens` tokens, whatever its content: DNABERT-2 turns each N into a token of
its own, so a window of gapped sequence can tokenize far longer than the usual 4-5 bases per token. Such a
window is cut again into smaller windows over the same residues, and its own residues are shared among them by
the same nearest-centre rule, until every piece fits (a piece of `max_tokens` less the frame's tokens residues
always does).

A model input is framed by special tokens the tokenizer names (`SequenceTokenizer.frame`): [CLS] before and [SEP]
after for most models, [CLS] alone for the Nucleotide Transformer. Frame tokens belong to no residue and are never
owned.

`ModelFit` is how one model under one set of settings fits sequences, resolved once (the checkpoint's token limit
and default window filled in): scoring, the result cache's key, the Parquet provenance and the server's
`/model/info` all read it.

Per-token outputs can also say which residues each owned token stands for (`EncodedChunk.spans`, asked for with
`spans=True`): its residues in the record's own coordinates, a window's offset added. Owned tokens of windows
tokenized apart need not meet exactly at a seam (BPE and 6-mers are cut where each window's tokenizer cuts), so
`owned_spans` gives each owned token the residues it is *credited* with: its own, except at a seam where the two
windows cut the sequence differently, where the last token one window owns and the first the next owns meet where
the windows' own residues meet (the nearest-centre boundary). The credited spans tile the record: no gap, no
overlap, their lengths summing to its length (to the residues kept, when truncated).

The encoded form keeps no per-token Python objects: one chunk of records becomes a few numpy arrays (token ids
of every model input back to back, ownership flags, input boundaries and the record of each input), which the
batcher slices with array operations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from seqshard.engine.types import LONG_SEQUENCE_MODES, TaskSettings

if TYPE_CHECKING:
    from seqshard.models import LoadedModel, SequenceTokenizer


@dataclass(frozen=True)
class Window:
    """Residues `[start, stop)` are run through the model; residues `[own_start, own_stop)` are its own."""

    start: int
    stop: int
    own_start: int
    own_stop: int


def plan_windows(length: int, window: int, overlap: int) -> list[Window]:
    """Equal windows of `window` residues, `overlap` shared between neighbours, the last one ending at `length`."""
    if window < 1 or not 0 <= overlap < window:
        raise ValueError(f"need window >= 1 and 0 <= overlap < window, got window={window}, overlap={overlap}")
    if length <= window:
        return [Window(0, length, 0, length)]
    stride = window - overlap
    starts = list(range(0, length - window, stride)) + [length - window]
    windows = []
    for k, start in enumerate(starts):
        # Residue p (centre p + 0.5) goes to the window with the nearest centre, ties to the earlier one: with
        # centres c = start + window / 2, p stays in window k while 2p + 1 <= start_k + start_k+1 + window.
        own_start = 0 if k == 0 else (starts[k - 1] + start + window + 1) // 2
        own_stop = length if k == len(starts) - 1 else (start + starts[k + 1] + window + 1) // 2
        windows.append(Window(start, start + window, own_start, own_stop))
    return windows


def split_window(parent: Window, pieces: int) -> list[Window]:
    """`parent` cut into about `pieces` windows over the same residues, overlapping by a quarter, its own residues
    shared among them by the nearest-centre rule (so together they own exactly what `parent` owned)."""
    length = parent.stop - parent.start
    # Windows of size s overlapping by s // 4 cover `length` with `pieces` of them when s ~ 4 length / (3 pieces + 1).
    size = max(1, min(length - 1, -(-4 * length // (3 * pieces + 1))))
    children = []
    for child in plan_windows(length, size, size // 4):
        own_start = max(parent.own_start, parent.start + child.own_start)
        own_stop = min(parent.own_stop, parent.start + child.own_stop)
        children.append(Window(parent.start + child.start, parent.start + child.stop, own_start, own_stop))
    return children


@dataclass
class EncodedWindow:
    """One model input as lists: token ids framed by [CLS]/[SEP] and, per token, whether this window owns it."""

    ids: list[int]
    owned: list[bool]  # the frame's tokens ([CLS], [SEP]) and tokens owned by another window are False

    @property
    def n_owned(self) -> int:
        return sum(self.owned)


@dataclass
class EncodedSequence:
    """One record's model inputs (a view of an EncodedChunk, for callers that inspect a single record)."""

    windows: list[EncodedWindow]
    truncated: bool
    n_frame: int = 2  # special tokens around each input: [CLS] and [SEP]

    @property
    def n_tokens(self) -> int:
        """Tokens the sequence contributes, [CLS]/[SEP] counted once: what a single unwindowed input holds."""
        return sum(window.n_owned for window in self.windows) + self.n_frame


@dataclass
class EncodedChunk:
    """The model inputs of a chunk of records, back to back in flat arrays.

    Input `i` is `ids[starts[i]:starts[i + 1]]`, belongs to record `record[i]`, and reads its results from the
    positions where `owned` is True. Inputs of one record are consecutive and in window order.
    """

    ids: np.ndarray  # int32 [total tokens]
    owned: np.ndarray  # bool [total tokens]
    starts: np.ndarray  # int64 [n_inputs + 1]
    record: np.ndarray  # int64 [n_inputs]
    n_records: int
    truncated: np.ndarray  # bool [n_records]
    n_frame: int = 2  # special tokens around each input (the tokenizer's frame): [CLS] and [SEP]
    # With `spans=True` only (per-token outputs): each token's residues [start, end) in its record's coordinates
    # (meaningless for frame tokens), the residues each input owns, and the records' sequences (`texts`).
    spans: np.ndarray | None = None  # int64 [total tokens, 2]
    own: np.ndarray | None = None  # int64 [n_inputs, 2]
    texts: Sequence[str] | None = None  # the records' sequences
    # With `reverse=True` (`strand: both`): the reverse complements of the same records, encoded alike.
    reverse: EncodedChunk | None = None

    @property
    def n_inputs(self) -> int:
        return len(self.record)

    @cached_property
    def lengths(self) -> np.ndarray:
        """Tokens of each model input, [CLS] and [SEP] included."""
        return np.diff(self.starts)

    @cached_property
    def n_owned(self) -> np.ndarray:
        """Tokens each input owns."""
        counts = np.add.reduceat(self.owned.astype(np.int64), self.starts[:-1]) if len(self.owned) else None
        return counts if counts is not None else np.zeros(0, dtype=np.int64)

    @property
    def n_windows(self) -> np.ndarray:
        return np.bincount(self.record, minlength=self.n_records)

    @property
    def n_tokens(self) -> np.ndarray:
        """Tokens each record contributes, [CLS]/[SEP] counted once."""
        counts = np.bincount(self.record, weights=self.n_owned, minlength=self.n_records).astype(np.int64)
        return counts + self.n_frame

    def sequence(self, index: int) -> EncodedSequence:
        first, last = np.searchsorted(self.record, [index, index + 1])
        windows = [
            EncodedWindow(
                self.ids[self.starts[i] : self.starts[i + 1]].tolist(),
                self.owned[self.starts[i] : self.starts[i + 1]].tolist(),
            )
            for i in range(first, last)
        ]
        return EncodedSequence(windows, bool(self.truncated[index]), self.n_frame)

    def sequences(self) -> list[EncodedSequence]:
        return [self.sequence(index) for index in range(self.n_records)]

    @property
    def n_model_tokens(self) -> int:
        """Tokens the model runs for these inputs: [CLS], [SEP] and window overlaps included, padding excluded."""
        return int(self.starts[-1])


def _owned_by_window(planned: Window, offsets: np.ndarray) -> np.ndarray:
    """Which tokens of a window (residue spans `offsets` [n, 2] relative to the window) the window owns."""
    begin, end = offsets[:, 0], offsets[:, 1]
    twice_middle = 2 * planned.start + begin + end - 1
    return (end > begin) & (2 * planned.own_start <= twice_middle) & (twice_middle < 2 * planned.own_stop)


@dataclass
class _Piece:
    """One model input of a windowed record: ids, which tokens it owns, each token's residues in the record's
    coordinates, and the residues [start, stop) the input owns."""

    ids: np.ndarray
    owned: np.ndarray
    spans: np.ndarray
    own: tuple[int, int]


def _fitting_windows(
    sequences: Sequence[str], tokenizer: SequenceTokenizer, max_tokens: int, plans: Sequence[list[Window]]
) -> list[list[_Piece]]:
    """The inputs of each window of each sequence's plan, cutting again any window that tokenizes past
    `max_tokens`. Every window of every sequence goes to the tokenizer in one batch call."""
    flat = [(index, planned) for index, plan in enumerate(plans) for planned in plan]
    encoded = tokenizer.encode_many_arrays([sequences[index][w.start : w.stop] for index, w in flat])
    pieces: list[list[_Piece]] = [[] for _ in plans]
    for (index, planned), (ids, offsets) in zip(flat, encoded, strict=True):
        if len(ids) <= max_tokens:
            own = (planned.own_start, planned.own_stop)
            pieces[index].append(_Piece(ids, _owned_by_window(planned, offsets), offsets + planned.start, own))
            continue
        # Too many tokens for these residues (runs of N in DNABERT-2): cut into pieces about small enough for
        # the budget; a piece of max_tokens - frame residues always fits, since no token is shorter than a residue.
        n_pieces = max(2, -(-len(ids) // (max_tokens - sum(tokenizer.frame))))
        pieces[index].extend(
            _fitting_windows([sequences[index]], tokenizer, max_tokens, [split_window(planned, n_pieces)])[0]
        )
    return pieces


def _unframed(starts: np.ndarray, frame: tuple[int, int]) -> np.ndarray:
    """For inputs back to back with boundaries `starts` (len n + 1, from 0): False at each input's frame tokens."""
    owned = np.ones(int(starts[-1] - starts[0]), dtype=bool)
    before, after = frame
    for k in range(before):
        owned[starts[:-1] - starts[0] + k] = False
    for k in range(1, after + 1):
        owned[starts[1:] - starts[0] - k] = False
    return owned


def _whole_spans(
    sequences: Sequence[str], tokenizer: SequenceTokenizer, indices: Sequence[int], lengths: np.ndarray
) -> dict[int, np.ndarray]:
    """Each token's residues for the sequences `indices` tokenized whole (their ids already known, `lengths` tokens
    each): one batched call of the tokenizer's offsets, which must agree with its ids."""
    encoded = tokenizer.encode_many_arrays([sequences[i] for i in indices]) if len(indices) else []
    spans = {}
    for index, (ids, offsets) in zip(indices, encoded, strict=True):
        if len(ids) != lengths[index]:
            raise RuntimeError(f"internal error: the tokenizer's offsets of sequence {index} disagree with its ids")
        spans[index] = offsets
    return spans


def encode_chunk(
    sequences: Sequence[str],
    tokenizer: SequenceTokenizer,
    *,
    max_tokens: int,
    mode: str,
    window: int,
    overlap: int,
    spans: bool = False,
) -> EncodedChunk:
    """Encode many sequences: whole sequences in one batched tokenizer call, windows of the over-long ones after.

    Sequences that fit take the fast path (ids only, no offsets); with `mode="truncate"` an over-long sequence
    keeps its first tokens and its [SEP] (if the frame has one), `max_tokens` in all. Every window of the chunk goes
    to the tokenizer in one call too. With `spans`, the chunk also says which residues each token stands for and
    which each input owns (per-token outputs); the ids are the same either way.
    """
    if mode not in LONG_SEQUENCE_MODES:
        raise ValueError(f"unknown long_sequences mode {mode!r}; expected one of {LONG_SEQUENCE_MODES}")
    if max_tokens < 3:
        raise ValueError(f"max_tokens must be at least 3 ([CLS], one token, [SEP]), got {max_tokens}")
    # A sequence of more than (max_tokens - frame) x the longest token's residues cannot fit whatever it holds: in
    # window mode it is not tokenized whole (a chromosome-sized contig would be, for nothing), just marked.
    frame = tokenizer.frame
    cannot_fit = (max_tokens - sum(frame)) * tokenizer.max_residues_per_token
    certain = [mode == "window" and len(sequence) > cannot_fit for sequence in sequences]
    ids, starts = tokenizer.encode_flat(["" if skip else s for s, skip in zip(sequences, certain, strict=True)])
    lengths = np.diff(starts)
    too_long = np.flatnonzero((lengths > max_tokens) | np.array(certain, dtype=bool))
    truncated = np.zeros(len(sequences), dtype=bool)
    whole = _whole_spans(sequences, tokenizer, [i for i in range(len(sequences)) if not certain[i]], lengths) if (
        spans
    ) else {}  # fmt: skip
    if len(too_long) == 0:
        owned = _unframed(starts, frame)
        chunk = EncodedChunk(ids, owned, starts, np.arange(len(sequences)), len(sequences), truncated, sum(frame))
        if spans:
            chunk.spans = np.concatenate([whole[i] for i in range(len(sequences))]) if sequences else np.zeros((0, 2))
            chunk.own = np.stack([np.zeros(len(sequences)), [len(s) for s in sequences]], axis=1).astype(np.int64)
            chunk.texts = list(sequences)
        return chunk

    # Rebuild input by input: runs of fitting sequences are slices of the batch encoding, the others are
    # truncated or windowed.
    parts_ids: list[np.ndarray] = []
    parts_owned: list[np.ndarray] = []
    parts_lengths: list[np.ndarray] = []
    parts_records: list[np.ndarray] = []
    parts_spans: list[np.ndarray] = []
    parts_own: list[np.ndarray] = []

    def add(part_ids: np.ndarray, part_owned: np.ndarray, part_lengths: np.ndarray, part_records: np.ndarray) -> None:
        parts_ids.append(part_ids)
        parts_owned.append(part_owned)
        parts_lengths.append(part_lengths)
        parts_records.append(part_records)

    long_ones = too_long.tolist()
    if mode == "window":
        windows = _fitting_windows(
            [sequences[i] for i in long_ones],
            tokenizer,
            max_tokens,
            [plan_windows(len(sequences[i]), window, overlap) for i in long_ones],
        )
        windows_of = dict(zip(long_ones, windows, strict=True))
    previous = 0
    for index in [*long_ones, len(sequences)]:
        if index > previous:  # the fitting sequences before this one, in one piece
            span = ids[starts[previous] : starts[index]]
            run_owned = _unframed(starts[previous : index + 1], frame)
            add(span, run_owned, lengths[previous:index], np.arange(previous, index))
            if spans:
                parts_spans.extend(whole[i] for i in range(previous, index))
                parts_own.extend(np.array([[0, len(sequences[i])]]) for i in range(previous, index))
        if index == len(sequences):
            break
        if mode == "truncate":
            own = ids[starts[index] : starts[index + 1]]
            before, after = frame
            kept_owned = np.ones(max_tokens, dtype=bool)
            kept_owned[:before] = False
            kept_owned[max_tokens - after :] = False
            # The first tokens and the [SEP], so the input looks like the model's training data.
            kept = np.concatenate([own[: max_tokens - after], own[len(own) - after :]])
            add(kept, kept_owned, np.array([max_tokens]), np.array([index]))
            truncated[index] = True
            if spans:
                offsets = whole[index]
                kept_spans = np.concatenate([offsets[: max_tokens - after], offsets[len(offsets) - after :]])
                parts_spans.append(kept_spans)
                parts_own.append(np.array([[0, int(kept_spans[kept_owned, 1].max())]]))
        else:
            pieces = windows_of[index]
            add(
                np.concatenate([piece.ids for piece in pieces]),
                np.concatenate([piece.owned for piece in pieces]),
                np.array([len(piece.ids) for piece in pieces]),
                np.full(len(pieces), index),
            )
            if spans:
                parts_spans.extend(piece.spans for piece in pieces)
                parts_own.append(np.array([piece.own for piece in pieces]))
        previous = index + 1

    input_lengths = np.concatenate(parts_lengths).astype(np.int64)
    new_starts = np.zeros(len(input_lengths) + 1, dtype=np.int64)
    np.cumsum(input_lengths, out=new_starts[1:])
    chunk = EncodedChunk(
        np.concatenate(parts_ids).astype(np.int32),
        np.concatenate(parts_owned),
        new_starts,
        np.concatenate(parts_records).astype(np.int64),
        len(sequences),
        truncated,
        sum(frame),
    )
    if spans:
        chunk.spans = np.concatenate(parts_spans).astype(np.int64)
        chunk.own = np.concatenate(parts_own).astype(np.int64)
        chunk.texts = list(sequences)
    return chunk


def owned_spans(chunk: EncodedChunk) -> np.ndarray:
    """The residues [start, end) each owned token is credited with, [owned tokens, 2] in chunk order (record by
    record, in sequence order), in the records' own coordinates. Two neighbouring owned tokens meet where they meet,
    which is always so inside a window and at a seam where both windows cut the sequence alike. At a seam where they
    do not (one window's last token runs into the next window's first, or stops short of it), the residues they
    dispute (both cover, or neither) are split where the windows' own residues meet. Every token keeps its middle
    base (so no span is empty), and the spans of a record tile it (the residues kept, when truncated). Needs
    `chunk.spans`."""
    if chunk.spans is None or chunk.own is None:
        raise ValueError("internal error: the chunk was encoded without spans (encode with spans=True)")
    positions = np.flatnonzero(chunk.owned)
    spans = chunk.spans[positions]
    credited = spans.copy()
    if len(positions) == 0:
        return credited
    inputs = np.searchsorted(chunk.starts, positions, side="right") - 1
    records = chunk.record[inputs]
    middle = (spans[:, 0] + spans[:, 1] - 1) // 2  # each token's middle base: strictly increasing in a record
    # Where the next token's window starts to own residues, moved into the residues the two tokens dispute (those
    # both cover, or neither): the point where they meet when they do.
    ends, starts = spans[:-1, 1], spans[1:, 0]
    boundary = np.clip(chunk.own[inputs[1:], 0], np.minimum(ends, starts), np.maximum(ends, starts))
    cuts = np.clip(boundary, middle[:-1] + 1, middle[1:])
    same_record = records[1:] == records[:-1]
    credited[:-1, 1] = np.where(same_record, cuts, credited[:-1, 1])
    credited[1:, 0] = np.where(same_record, cuts, credited[1:, 0])
    first_of_record = np.concatenate(([True], ~same_record))
    last_of_record = np.concatenate((~same_record, [True]))
    credited[first_of_record, 0] = 0
    covered = np.zeros(chunk.n_records, dtype=np.int64)
    np.maximum.at(covered, chunk.record, chunk.own[:, 1])
    credited[last_of_record, 1] = covered[records[last_of_record]]
    return credited


def encode_sequence(
    sequence: str, tokenizer: SequenceTokenizer, *, max_tokens: int, mode: str, window: int, overlap: int
) -> EncodedSequence:
    """Token windows for one sequence under the model's `max_tokens` limit ([CLS] and [SEP] included)."""
    chunk = encode_chunk([sequence], tokenizer, max_tokens=max_tokens, mode=mode, window=window, overlap=overlap)
    return chunk.sequence(0)


@dataclass(frozen=True)
class ModelFit:
    """How sequences are fitted to one model under one set of settings, resolved once: the longest model input in
    tokens ([CLS] and [SEP] included), what happens to a longer sequence (`truncate` or `window`), and the
    windows' length and overlap in residues."""

    max_tokens: int
    long_sequences: str
    window_length: int
    window_overlap: int
    # What the encoded chunks carry besides ids (shaping no number): each token's residues, for per-token outputs,
    # and the reverse complements, for `strand: both`.
    spans: bool = False
    reverse: bool = False

    def __post_init__(self) -> None:
        if self.long_sequences not in LONG_SEQUENCE_MODES:
            raise ValueError(
                f"unknown long_sequences mode {self.long_sequences!r}; expected one of {LONG_SEQUENCE_MODES}"
            )
        if self.max_tokens < 3:
            raise ValueError(f"max_tokens must be at least 3 ([CLS], one token, [SEP]), got {self.max_tokens}")
        window, overlap = self.window_length, self.window_overlap
        if self.long_sequences == "window" and (window < 1 or not 0 <= overlap < window):
            raise ValueError(
                f"need window_length >= 1 and 0 <= window_overlap < window_length, got window_length={window}, "
                f"window_overlap={overlap}"
            )

    @classmethod
    def resolve(cls, settings: TaskSettings, max_tokens: int, default_window: int) -> ModelFit:
        """`settings`' fit, with the model's `max_tokens` and `default_window` where they leave them unset; the
        overlap defaults to a quarter of the window."""
        window = settings.window_length or default_window
        overlap = settings.window_overlap if settings.window_overlap is not None else window // 4
        return cls(settings.max_tokens or max_tokens, settings.long_sequences, window, overlap)

    @classmethod
    def of(cls, loaded: LoadedModel, settings: TaskSettings) -> ModelFit:
        return cls.resolve(settings, loaded.max_tokens, loaded.default_window)

    def token_bound(self, length: int) -> int:
        """At most how many model tokens a sequence of `length` residues becomes, without tokenizing it: no token
        is shorter than a residue, so the whole sequence or each of its windows holds at most its residues and
        [CLS]/[SEP]. Windows cut again because they tokenize past `max_tokens` (runs of N in DNABERT-2) overlap
        more; their residues may count up to 4/3 times, which the bound allows for."""
        whole = length + 2
        if self.long_sequences == "truncate":
            return min(whole, self.max_tokens)
        if whole <= self.max_tokens:
            return whole
        windows = plan_windows(length, self.window_length, self.window_overlap)
        return max(self.max_tokens, -(-4 * sum(w.stop - w.start + 2 for w in windows) // 3))

    def encode(self, sequences: Sequence[str], tokenizer: SequenceTokenizer) -> EncodedChunk:
        """The model inputs of `sequences` (see `encode_chunk`), with their reverse complements' when `reverse`."""
        chunk = encode_chunk(
            sequences, tokenizer, max_tokens=self.max_tokens, mode=self.long_sequences, window=self.window_length,
            overlap=self.window_overlap, spans=self.spans,
        )  # fmt: skip
        if self.reverse:
            chunk.reverse = replace(self, reverse=False).encode([reverse_complement(s) for s in sequences], tokenizer)
        return chunk


# A base and its complement (IUPAC codes too, so that any accepted DNA letter has one); lower case likewise.
_COMPLEMENT = str.maketrans("ACGTUNRYSWKMBDHVacgtunryswkmbdhv", "TGCAANYRSWMKVHDBtgcaanyrswmkvhdb")


def reverse_complement(sequence: str) -> str:
    """The other strand of a DNA sequence, read 5' to 3'."""
    return sequence.translate(_COMPLEMENT)[::-1]
