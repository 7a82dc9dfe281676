"""Sharding: contiguous, balanced by estimated tokens, bounded in sequences, deterministic."""

import random

import pytest

from seqshard.fasta import read_valid_records
from seqshard.sharding import estimate_tokens, plan_shards, read_manifest, shard_fasta


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


def test_shard_fasta_writes_shards_manifest_and_rejects(tmp_path):
    fasta = tmp_path / "in.fa"
    rng = random.Random(11)
    records = [(f"s{i}", "".join(rng.choice("ACGT") for _ in range(rng.randint(20, 400)))) for i in range(60)]
    text = "".join(f">{name}\n{seq}\n" for name, seq in records) + ">bad\nACXT\n"
    fasta.write_text(text)
    out = tmp_path / "shards"
    shards, report = shard_fasta(fasta, "dna", out, tmp_path / "rejects.tsv", target_tokens=3000, on_invalid="skip")
    assert report.n_valid == 60 and len(report.rejected) == 1
    assert read_manifest(out / "manifest.tsv") == shards
    written = []
    for shard in shards:
        part, _ = read_valid_records(out / f"{shard.name}.fa", "dna")
        assert len(part) == shard.n_sequences
        written += [(r.id, r.sequence) for r in part]
    assert written == records  # every valid record once, in input order
    assert (tmp_path / "rejects.tsv").read_text().splitlines()[1].split("\t")[1] == "bad"
    # the same input and settings give byte-identical shards
    again = tmp_path / "again"
    shard_fasta(fasta, "dna", again, tmp_path / "r2.tsv", target_tokens=3000, on_invalid="skip")
    for path in out.iterdir():
        assert (again / path.name).read_bytes() == path.read_bytes()
