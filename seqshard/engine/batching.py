"""Group token sequences into length-sorted batches under a token budget, so padding stays small, and build the
padded arrays of a batch with array operations.

The idea is fair-esm's `toks_per_batch`: sort by length, then fill each batch until its padded size
(rows x longest row) would pass the budget. A budget alone lets one batch span very different lengths when a
shard is small, so a batch also closes when its padding would pass `max_padding` of the tokens it computes.
A sequence longer than the budget gets a batch of its own.

Batch widths are rounded up to a bucket (`buckets_per_octave` sizes between each power of two and the next, so
rounding adds at most 1/buckets_per_octave of a row). Rounding is padding like any other and is counted in the
computed tokens; it is not part of the `max_padding` check, which only looks at how lengths differ.

On a GPU the plan is the same with widths in steps of at least 4 tokens, over larger chunks of inputs (see
`seqshard.engine.driver.chunk_limits`). A GPU library that plans per shape (cuDNN's attention builds an execution
plan per new shape, tens to hundreds of ms) then meets about one shape per width bucket used: a batch closes on
the budget, so every full batch of a width has `batch_tokens // width` rows, and only where lengths are sparse
does `max_padding` close one early. 32 buckets per octave is what the 3 % budget allows: rounding alone costs
about 1/(2 x buckets per octave) of a width on average, some 3 % at 16 per octave before lengths differ at all
(`benchmarks/bench_feed.py` prints the shapes and padding of both plans for its inputs).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np


def bucket_width(length: int, buckets_per_octave: int | None, min_step: int = 1) -> int:
    """`length` rounded up to the next bucket: steps of 2^k / buckets_per_octave between 2^k and 2^(k+1), and
    never finer than `min_step` tokens (exact widths with `buckets_per_octave` None)."""
    if not buckets_per_octave:
        return length
    step = max(min_step, (1 << (int(length - 1).bit_length() - 1)) // buckets_per_octave if length > 1 else 1)
    return -(-length // step) * step


@dataclass(frozen=True)
class TokenBudgetBatcher:
    """Plans batches of indices into a list of token-id sequences.

    `batch_tokens` bounds rows x (bucketed) longest row of each batch (the tokens the model actually computes);
    `max_padding` bounds the share of those tokens that length differences waste; `max_batch_size` optionally
    bounds the rows.
    """

    batch_tokens: int
    max_padding: float = 0.03
    max_batch_size: int | None = None
    buckets_per_octave: int | None = 32
    min_step: int = 1

    @classmethod
    def for_device(cls, device_type: str, batch_tokens: int, max_padding: float = 0.03) -> TokenBudgetBatcher:
        """The plan that suits the device: on a GPU widths in steps of at least 4 tokens (module docstring)."""
        if device_type == "cuda":
            return cls(batch_tokens, max_padding, min_step=4)
        return cls(batch_tokens, max_padding)

    def __post_init__(self) -> None:
        if self.batch_tokens < 1:
            raise ValueError(f"batch_tokens must be positive, got {self.batch_tokens}")
        if not 0.0 <= self.max_padding < 1.0:
            raise ValueError(f"max_padding must be in [0, 1), got {self.max_padding}")

    def width(self, longest: int) -> int:
        return bucket_width(longest, self.buckets_per_octave, self.min_step)

    def batches(self, lengths: Sequence[int] | np.ndarray) -> Iterator[list[int]]:
        """Yield lists of indices, longest sequences first (an out-of-memory shows up on the first batch)."""
        lengths = np.asarray(lengths, dtype=np.int64)
        order = np.lexsort((np.arange(len(lengths)), -lengths)).tolist()
        values = lengths.tolist()
        batch: list[int] = []
        width = real = longest = 0
        for index in order:
            length = values[index]
            rows = len(batch) + 1
            too_padded = batch and 1.0 - (real + length) / (longest * rows) > self.max_padding
            full = self.max_batch_size is not None and len(batch) >= self.max_batch_size
            if batch and (width * rows > self.batch_tokens or too_padded or full):
                yield batch
                batch, real = [], 0
            if not batch:
                longest, width = length, self.width(length)
            batch.append(index)
            real += length
        if batch:
            yield batch


def padded_tokens(lengths: Sequence[int], batch: Sequence[int], buckets_per_octave: int | None = None) -> int:
    """Tokens the model computes for `batch`, padding (and bucket rounding) included."""
    return len(batch) * bucket_width(max(lengths[i] for i in batch), buckets_per_octave)


def gather_rows(flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray, width: int, fill: int | bool) -> np.ndarray:
    """[rows, width] array whose row r is `flat[starts[r]:starts[r] + lengths[r]]`, padded with `fill`."""
    positions = np.arange(width)
    inside = positions[None, :] < lengths[:, None]
    index = np.where(inside, starts[:, None] + positions[None, :], 0)
    rows = flat[index] if len(flat) else np.zeros(index.shape, dtype=flat.dtype)
    return np.where(inside, rows, np.asarray(fill, dtype=flat.dtype))
