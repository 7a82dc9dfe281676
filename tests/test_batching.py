"""Token-budget batching: every index once, budgets honoured, little padding whatever the length mix."""

import random

import pytest

from seqshard.engine.batching import TokenBudgetBatcher, padded_tokens


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
    """Full batches of a width share one shape; only sparse lengths close a batch early; padding under 3 %."""
    import random

    rng = random.Random(5)
    lengths = [min(512, max(5, int(rng.lognormvariate(4.6, 0.8)))) for _ in range(20000)]
    gpu = TokenBudgetBatcher.for_device("cuda", 16384)
    plan = list(gpu.batches(lengths))
    assert sorted(i for batch in plan for i in batch) == list(range(len(lengths)))
    widths = [gpu.width(max(lengths[i] for i in batch)) for batch in plan]
    shapes = {(len(batch), width) for batch, width in zip(plan, widths, strict=True)}
    short = [batch for batch, width in zip(plan, widths, strict=True) if len(batch) != 16384 // width]
    assert len(short) < 0.2 * len(plan)
    assert len(shapes) <= len(set(widths)) + len(short)
    assert all(width % 4 == 0 for width in widths)
    useful = sum(lengths) / sum(len(batch) * width for batch, width in zip(plan, widths, strict=True))
    assert useful >= 0.97


def test_gpu_jobs_plan_over_larger_chunks_unless_outputs_are_per_token():
    from seqshard.engine.chunks import ChunkLimits
    from seqshard.engine.driver import GPU_CHUNK_OUTPUT_BYTES, chunk_limits
    from seqshard.engine.types import CHUNK_RECORDS, Hardware, TaskSettings

    embed, per_token = [TaskSettings("embed")], [TaskSettings("embed", per_token=True)]
    cpu, gpu = Hardware("cpu", batch_tokens=16384), Hardware("cuda", batch_tokens=16384)
    assert chunk_limits(cpu, embed, 768) == ChunkLimits(CHUNK_RECORDS, 64 * 16384)
    assert chunk_limits(gpu, per_token, 768) == ChunkLimits(CHUNK_RECORDS, 64 * 16384)
    assert chunk_limits(gpu, embed, 768) == ChunkLimits(16 * CHUNK_RECORDS, 1024 * 16384)
    records = chunk_limits(Hardware("cuda:1"), embed, 2560).records
    assert CHUNK_RECORDS < records and records * 2560 * 4 <= GPU_CHUNK_OUTPUT_BYTES
    assert chunk_limits(Hardware("cuda", chunk_records=100), embed, 768) == ChunkLimits(100, 64 * 16384)  # kept
