"""Group token sequences into length-sorted batches under a token budget, so padding stays small.

The idea is fair-esm's `toks_per_batch`: sort by length, then fill each batch until its padded size
(rows x longest row) would pass the budget. A budget alone lets one batch span very different lengths when a
shard is small, so a batch also closes when its padding would pass `max_padding` of the tokens it computes.
A sequence longer than the budget gets a batch of its own.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class TokenBudgetBatcher:
    """Plans batches of indices into a list of token-id sequences.

    `batch_tokens` bounds rows x longest row of each batch (the tokens the model actually computes);
    `max_padding` bounds the padded share of those tokens; `max_batch_size` optionally bounds the rows.
    """

    batch_tokens: int
    max_padding: float = 0.03
    max_batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.batch_tokens < 1:
            raise ValueError(f"batch_tokens must be positive, got {self.batch_tokens}")
        if not 0.0 <= self.max_padding < 1.0:
            raise ValueError(f"max_padding must be in [0, 1), got {self.max_padding}")

    def batches(self, lengths: Sequence[int]) -> Iterator[list[int]]:
        """Yield lists of indices, longest sequences first (an out-of-memory shows up on the first batch)."""
        order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
        batch: list[int] = []
        longest = real = 0
        for index in order:
            length = lengths[index]
            computed = max(longest, length) * (len(batch) + 1)
            too_padded = 1.0 - (real + length) / computed > self.max_padding
            full = self.max_batch_size is not None and len(batch) >= self.max_batch_size
            if batch and (computed > self.batch_tokens or too_padded or full):
                yield batch
                batch, longest, real = [], 0, 0
            batch.append(index)
            longest = max(longest, length)
            real += length
        if batch:
            yield batch


def padded_tokens(lengths: Sequence[int], batch: Sequence[int]) -> int:
    """Tokens the model computes for `batch`, padding included."""
    return len(batch) * max(lengths[i] for i in batch)
