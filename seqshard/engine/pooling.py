"""Pool a batch of hidden states over each sequence's own tokens into one vector per sequence."""

from __future__ import annotations

import torch

from seqshard.engine.types import POOLINGS


def pool(hidden: torch.Tensor, owned: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool a [B, L, H] batch over the positions `owned` marks (the sequence's own tokens) into [B, H] float32.

    `mean` averages the owned rows, `max` takes their element-wise maximum, `cls` the [CLS] row (position 0).
    """
    if pooling == "cls":
        return hidden[:, 0].float()
    weights = owned.unsqueeze(-1)
    if pooling == "mean":
        return (hidden.float() * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
    if pooling == "max":
        return hidden.float().masked_fill(~weights, float("-inf")).amax(dim=1)
    raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
