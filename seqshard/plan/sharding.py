"""Plan contiguous shards of balanced estimated token count over a run of sequences (seqshard.plan.packing cuts the
distinct sequences of a model entry's samples with it).

Cut points fall where the running token estimate crosses equal fractions of the total, which keeps every shard
within one record of the ideal size; the plan depends only on the lengths and the settings, so the same input and
config always give the same shards.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def estimate_tokens(length: int) -> int:
    """Upper-bound token estimate: one token per residue plus [CLS] and [SEP].

    Exact for character-level models (LucaOne); DNABERT-2's BPE gives about a quarter of that, so shards of
    DNA scored only with DNABERT-2 carry fewer real tokens than the target. One estimate for every model keeps
    shards independent of which models run on them.
    """
    return length + 2


@dataclass(frozen=True)
class Shard:
    """A contiguous run `[start, stop)` of a sample's valid records."""

    name: str
    start: int
    stop: int
    est_tokens: int

    @property
    def n_sequences(self) -> int:
        return self.stop - self.start


def shard_name(number: int) -> str:
    return f"{number:04d}"


def plan_shards(token_estimates: Sequence[int], target_tokens: int, max_sequences: int | None = None) -> list[Shard]:
    """Cut records into contiguous shards of about `target_tokens` each and at most `max_sequences` records.

    The shard count is the smallest that honours both limits on average; a record goes to the shard in which its
    token midpoint falls, so no shard exceeds `total / count` by more than one record.
    """
    if target_tokens < 1:
        raise ValueError(f"target_tokens must be positive, got {target_tokens}")
    if max_sequences is not None and max_sequences < 1:
        raise ValueError(f"max_sequences must be positive, got {max_sequences}")
    n = len(token_estimates)
    if n == 0:
        return []
    total = sum(token_estimates)
    count = max(1, math.ceil(total / target_tokens))
    if max_sequences:
        count = max(count, math.ceil(n / max_sequences))
    while True:
        shards = _cut(token_estimates, min(count, n), total)
        if not max_sequences or all(s.n_sequences <= max_sequences for s in shards) or count >= n:
            return shards
        count += 1  # very uneven lengths put too many short records in one shard: cut finer


def _cut(token_estimates: Sequence[int], count: int, total: int) -> list[Shard]:
    bins: list[int] = []
    running = 0
    for tokens in token_estimates:
        midpoint = running + tokens / 2
        bins.append(min(count - 1, int(midpoint * count // total)))
        running += tokens
    shards: list[Shard] = []
    start = 0
    for i in range(1, len(bins) + 1):
        if i == len(bins) or bins[i] != bins[start]:
            shards.append(Shard(shard_name(len(shards)), start, i, sum(token_estimates[start:i])))
            start = i
    return shards
