"""Sharding: contiguous, balanced by estimated tokens, bounded in sequences, deterministic."""

import random

import pytest

from seqshard.plan.sharding import estimate_tokens, plan_shards


def test_estimate_is_residues_plus_cls_and_sep():
    assert estimate_tokens(100) == 102


def check_contiguous(shards, n):
    assert shards[0].start == 0 and shards[-1].stop == n
    for left, right in zip(shards, shards[1:], strict=False):
        assert left.stop == right.start
    assert [s.name for s in shards] == [f"{i:04d}" for i in range(len(shards))]


def test_balanced_within_one_record_of_ideal():
    rng = random.Random(7)
    tokens = [int(rng.lognormvariate(6.4, 0.7)) + 2 for _ in range(5000)]
    total = sum(tokens)
    shards = plan_shards(tokens, target_tokens=100_000)
    assert len(shards) == -(-total // 100_000)
    check_contiguous(shards, len(tokens))
    ideal = total / len(shards)
    for shard in shards:
        assert shard.est_tokens == sum(tokens[shard.start : shard.stop])
        assert abs(shard.est_tokens - ideal) <= max(tokens)
    assert sum(s.n_sequences for s in shards) == len(tokens)


def test_shard_count_follows_input_size():
    assert len(plan_shards([102] * 10, target_tokens=1020)) == 1
    assert len(plan_shards([102] * 100, target_tokens=1020)) == 10
    assert len(plan_shards([102] * 1000, target_tokens=1020)) == 100


def test_max_sequences_bounds_every_shard_even_with_uneven_lengths():
    tokens = [10_000] * 3 + [3] * 300
    shards = plan_shards(tokens, target_tokens=10_000, max_sequences=50)
    check_contiguous(shards, len(tokens))
    assert max(s.n_sequences for s in shards) <= 50


def test_deterministic_and_invalid_settings():
    tokens = [random.Random(3).randint(50, 5000) for _ in range(1000)]
    assert plan_shards(tokens, 40_000, 100) == plan_shards(list(tokens), 40_000, 100)
    assert plan_shards([], 10) == []
    with pytest.raises(ValueError, match="target_tokens"):
        plan_shards([1], 0)
