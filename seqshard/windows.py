"""Fit sequences to a model's length limit: truncate (and say so) or cut overlapping windows.

Windows are cut in residues (bases or amino acids) and each is tokenized on its own. Every residue belongs to
exactly one window — the one whose centre is nearest (ties go to the earlier window) — so per-position outputs
are taken once and pooled results over a long sequence are well defined. A token belongs to the window that
owns the residue at its midpoint; for a character-level model that is the token's own residue, for DNABERT-2's
BPE tokens (several bases each) it is the middle base of the token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from seqshard.models import SequenceTokenizer

LONG_SEQUENCE_MODES = ("truncate", "window")


@dataclass(frozen=True)
class Window:
    """Residues `[start, stop)` are run through the model; residues `[own_start, own_stop)` are its own."""

    start: int
    stop: int
    own_start: int
    own_stop: int


@dataclass
class EncodedWindow:
    """One model input: token ids framed by [CLS]/[SEP] and, per token, whether this window owns it."""

    ids: list[int]
    owned: list[bool]  # [CLS], [SEP] and tokens owned by another window are False

    @property
    def n_owned(self) -> int:
        return sum(self.owned)


@dataclass
class EncodedSequence:
    windows: list[EncodedWindow]
    truncated: bool

    @property
    def n_tokens(self) -> int:
        """Tokens the sequence contributes, [CLS]/[SEP] counted once: what a single unwindowed input holds."""
        return sum(window.n_owned for window in self.windows) + 2


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


def encode_sequence(
    sequence: str,
    tokenizer: SequenceTokenizer,
    *,
    max_tokens: int,
    mode: str,
    window: int,
    overlap: int,
    record_id: str = "",
) -> EncodedSequence:
    """Token windows for one sequence under the model's `max_tokens` limit ([CLS] and [SEP] included)."""
    return encode_sequences(
        [sequence], tokenizer, max_tokens=max_tokens, mode=mode, window=window, overlap=overlap, record_ids=[record_id]
    )[0]


def encode_sequences(
    sequences: Sequence[str],
    tokenizer: SequenceTokenizer,
    *,
    max_tokens: int,
    mode: str,
    window: int,
    overlap: int,
    record_ids: Sequence[str] | None = None,
) -> list[EncodedSequence]:
    """`encode_sequence` for many sequences: whole sequences in one tokenizer call, then every window of the
    over-long ones in a second."""
    if mode not in LONG_SEQUENCE_MODES:
        raise ValueError(f"unknown long_sequences mode {mode!r}; expected one of {LONG_SEQUENCE_MODES}")
    encoded: list[EncodedSequence | None] = [None] * len(sequences)
    pending: list[tuple[int, Window]] = []  # (sequence, window) of the sequences that need windows
    for index, (ids, _) in enumerate(tokenizer.encode_many_with_offsets(list(sequences))):
        if len(ids) <= max_tokens:
            encoded[index] = EncodedSequence([EncodedWindow(ids, [False, *([True] * (len(ids) - 2)), False])], False)
        elif mode == "truncate":
            kept = ids[: max_tokens - 1] + ids[-1:]  # keep [SEP] so the input looks like the model's training data
            encoded[index] = EncodedSequence([EncodedWindow(kept, [False, *([True] * (max_tokens - 2)), False])], True)
        else:
            pending.extend((index, planned) for planned in plan_windows(len(sequences[index]), window, overlap))
    pieces = [sequences[index][planned.start : planned.stop] for index, planned in pending]
    by_sequence: dict[int, list[EncodedWindow]] = {}
    for (index, planned), (ids, offsets) in zip(pending, tokenizer.encode_many_with_offsets(pieces), strict=True):
        if len(ids) > max_tokens:
            name = record_ids[index] if record_ids is not None else str(index)
            raise ValueError(
                f"record {name!r}: the window of residues {planned.start}-{planned.stop} gives {len(ids)} tokens, "
                f"more than max_tokens {max_tokens} (long runs of N become one token per base); lower window_length"
            )
        owned = [
            end > begin and 2 * planned.own_start <= 2 * planned.start + begin + end - 1 < 2 * planned.own_stop
            for begin, end in offsets
        ]
        by_sequence.setdefault(index, []).append(EncodedWindow(ids, owned))
    for index, windows in by_sequence.items():
        encoded[index] = EncodedSequence(windows, truncated=False)
    return encoded  # type: ignore[return-value]  # every slot is filled above
