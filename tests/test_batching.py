"""Token-budget batching: every index once, budgets honoured, little padding whatever the length mix."""

import random

import pytest

from seqshard.batching import TokenBudgetBatcher, padded_tokens


def useful_fraction(lengths, batches):
    return sum(lengths) / sum(padded_tokens(lengths, b) for b in batches)


@pytest.mark.parametrize("n", [30, 2000])
def test_every_index_once_budget_and_padding_honoured(n):
    rng = random.Random(5)
    lengths = [int(rng.lognormvariate(4.6, 0.6)) + 3 for _ in range(n)]  # a wide, log-normal mix
    batches = list(TokenBudgetBatcher(4096, max_padding=0.03).batches(lengths))
    assert sorted(i for b in batches for i in b) == list(range(n))
    for batch in batches:
        computed = padded_tokens(lengths, batch)
        assert computed <= 4096
        assert 1 - sum(lengths[i] for i in batch) / computed <= 0.03
    assert useful_fraction(lengths, batches) >= 0.97


def test_budget_alone_would_pad_a_small_mixed_shard_heavily():
    lengths = [10, 300, 40, 120, 800, 55]
    loose = list(TokenBudgetBatcher(100_000, max_padding=0.99).batches(lengths))
    assert len(loose) == 1 and useful_fraction(lengths, loose) < 0.3
    tight = list(TokenBudgetBatcher(100_000).batches(lengths))
    assert useful_fraction(lengths, tight) == 1.0


def test_longest_first_and_oversized_sequence_alone():
    lengths = [30, 5000, 30, 31]
    batches = list(TokenBudgetBatcher(100).batches(lengths))
    assert batches == [[1], [3, 0, 2]]


def test_max_batch_size():
    batches = list(TokenBudgetBatcher(10_000, max_batch_size=3).batches([4] * 7))
    assert [len(b) for b in batches] == [3, 3, 1]


def test_the_gpu_plan_keeps_few_shapes_and_little_padding():
    """By width bucket: every batch of a bucket but its last has one shape; padding is the rounding alone."""
    import random

    from seqshard.batching import bucket_width

    rng = random.Random(5)
    lengths = [min(512, max(5, int(rng.lognormvariate(4.6, 0.8)))) for _ in range(20000)]
    gpu = TokenBudgetBatcher.for_device("cuda", 16384)
    cpu = TokenBudgetBatcher.for_device("cpu", 16384)
    plans = {name: list(b.batches(lengths)) for name, b in (("gpu", gpu), ("cpu", cpu))}
    assert sorted(i for batch in plans["gpu"] for i in batch) == list(range(len(lengths)))
    shapes = {name: {(len(b), batcher.width(max(lengths[i] for i in b))) for b in plan}
              for (name, plan), batcher in zip(plans.items(), (gpu, cpu), strict=True)}  # fmt: skip
    assert len(shapes["gpu"]) < 0.8 * len(shapes["cpu"])
    widths = {gpu.width(max(lengths[i] for i in b)) for b in plans["gpu"]}
    assert len(shapes["gpu"]) <= 2 * len(widths)  # a full shape and a last one per bucket
    for batch in plans["gpu"]:
        width = gpu.width(max(lengths[i] for i in batch))
        assert all(bucket_width(lengths[i], 16, 8) == width for i in batch) and len(batch) * width <= 16384
    useful = sum(lengths) / sum(len(b) * gpu.width(max(lengths[i] for i in b)) for b in plans["gpu"])
    assert useful >= 0.97
