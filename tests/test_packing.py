"""Packing samples into shards of distinct sequences, and gathering the scored shards back per sample: rows in
each sample's input order, duplicates (within and across samples) with identical values, nothing lost."""

import gzip

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from Bio import SeqIO

from seqshard.cli import main
from seqshard.engine.driver import run_tasks
from seqshard.engine.types import RunFiles, TaskSettings, Work
from seqshard.io.parquet import read_provenance
from seqshard.io.sequences import InputPolicy
from seqshard.plan.merge import merge_model
from seqshard.plan.packing import SampleErrors, SampleInput, pack_samples, read_pack_manifest


@pytest.fixture(scope="module")
def checkpoint(dnabert2_demo_checkpoint):
    return dnabert2_demo_checkpoint


def random_dna(rng, n):
    return "".join(rng.choice(list("ACGT"), n))


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """Three samples; b repeats sequences of a (in another case) and of itself; c is gzip."""
    root = tmp_path_factory.mktemp("samples")
    rng = np.random.default_rng(11)
    pool = [random_dna(rng, int(n)) for n in rng.integers(30, 900, 40)]
    a = [(f"a{i}", pool[i]) for i in range(25)]
    b = [(f"b{i}", (pool[(i * 7) % 30]).lower() if i % 2 else pool[(i * 7) % 30]) for i in range(30)]
    b += [("b_repeat", b[0][1])]
    c = [(f"c{i}", random_dna(rng, 50 + i)) for i in range(5)]
    paths = {}
    for name, records in (("a", a), ("b", b), ("c", c)):
        text = "".join(f">{rid} some description\n{seq}\n" for rid, seq in records)
        path = root / (f"{name}.fa.gz" if name == "c" else f"{name}.fa")
        path.write_bytes(gzip.compress(text.encode()) if name == "c" else text.encode())
        paths[name] = path
    return [SampleInput(name, str(path), "dna") for name, path in paths.items()]


def read_sequences(path):
    """Upper-cased sequences as Biopython reads them: a reader that is not seqshard's own."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as handle:
        return [str(record.seq).upper() for record in SeqIO.parse(handle, "fasta")]


def test_pack_keeps_each_distinct_sequence_once_and_maps_every_record(samples, tmp_path):
    summary = pack_samples(samples, tmp_path / "pack", target_tokens=6000)
    records = pd.read_parquet(tmp_path / "pack" / "records.parquet")
    assert len(records) == sum(len(read_sequences(s.fasta)) for s in samples) == summary.n_records
    assert list(records["sample"].unique()) == ["a", "b", "c"]
    distinct = {sequence for s in samples for sequence in read_sequences(s.fasta)}
    shards = read_pack_manifest(tmp_path / "pack" / "manifest.tsv")
    assert summary.n_distinct == len(distinct) == sum(s.n_sequences for s in shards)
    assert len(shards) > 1 and all(s.molecule == "dna" for s in shards)
    by_shard = {s.name: read_sequences(tmp_path / "pack" / "shards" / f"{s.name}.fa") for s in shards}
    assert sorted(sequence for rows in by_shard.values() for sequence in rows) == sorted(distinct)
    # Every record points at a row holding exactly its sequence.
    for sample in samples:
        mine = records[records["sample"] == sample.name]
        pointed = [by_shard[shard][row] for shard, row in zip(mine["shard"], mine["row"], strict=True)]
        assert pointed == read_sequences(sample.fasta)
    assert (tmp_path / "pack" / "rejects.tsv").read_text() == "sample\tfile\trecord_id\tline\treason\n"


def test_scored_shards_gather_back_into_each_sample_in_input_order(samples, checkpoint, tmp_path):
    pack = tmp_path / "pack"
    pack_samples(samples, pack, target_tokens=6000)
    tasks = [TaskSettings("embed"), TaskSettings("mlm_score")]
    scored = {}
    for shard in read_pack_manifest(pack / "manifest.tsv"):
        directory = tmp_path / "scores" / shard.name
        work = Work("dnabert2", checkpoint, tasks, policy=InputPolicy(on_invalid="skip"), provenance={"model": "m"})
        run_tasks(work, RunFiles(pack / "shards" / f"{shard.name}.fa",
                                 {t.task: directory / f"{t.task}.parquet" for t in tasks},
                                 rejects=directory / "rejects.tsv", packed=True))  # fmt: skip
        scored[shard.name] = directory
    # A packed shard read as such (no second validation) gives the bytes a validated read gives.
    validated = tmp_path / "validated.parquet"
    run_tasks(
        Work("dnabert2", checkpoint, provenance={"model": "m"}),
        RunFiles(pack / "shards" / "0000.fa", {"embed": validated}),
    )
    assert validated.read_bytes() == (tmp_path / "scores" / "0000" / "embed.parquet").read_bytes()
    outputs = {(s.name, t.task): tmp_path / "out" / s.name / f"{t.task}.parquet" for s in samples for t in tasks}
    rejects = {s.name: tmp_path / "out" / s.name / "rejects.tsv" for s in samples}
    own = {s.name: tmp_path / "out" / s.name / "sample_rejects.tsv" for s in samples}
    merge_model(pack, {t.task: scored for t in tasks}, outputs, rejects, model="m", on_invalid="error",
                sample_rejects=own)  # fmt: skip
    assert all(path.read_text() == "file\trecord_id\tline\treason\n" for path in own.values())

    for sample in samples:
        # The same sample scored on its own by the command line (its entry point, in this process: a new
        # interpreter per sample would cost seconds of imports): same ids, same numbers, same order.
        alone = tmp_path / f"{sample.name}.parquet"
        assert main(["embed", "--checkpoint", str(checkpoint), sample.fasta, "-o", str(alone)]) == 0
        merged = pd.read_parquet(outputs[(sample.name, "embed")])
        expected = pd.read_parquet(alone)
        assert list(merged["id"]) == list(expected["id"])
        assert list(merged["length"]) == list(expected["length"])
        np.testing.assert_allclose(np.stack(merged["embedding"]), np.stack(expected["embedding"]), atol=1e-5)
        provenance = read_provenance(outputs[(sample.name, "embed")])
        assert provenance["sample"] == sample.name and provenance["model"] == "m" and provenance["task"] == "embed"
        assert pq.read_schema(outputs[(sample.name, "embed")]).equals(pq.read_schema(alone), check_metadata=False)
        assert pd.read_csv(rejects[sample.name], sep="\t").empty

    b = pd.read_parquet(outputs[("b", "mlm_score")])
    a = pd.read_parquet(outputs[("a", "mlm_score")])
    assert b.loc[b["id"] == "b_repeat", "pll"].item() == b.loc[b["id"] == "b0", "pll"].item()
    # b1 is a lower-cased copy of a's sequence 7: identical values, its own id.
    assert b.loc[b["id"] == "b1", "pll"].item() == a.loc[a["id"] == "a7", "pll"].item()


def test_bad_samples_are_reported_together_before_any_shard(tmp_path):
    good = tmp_path / "good.fa"
    good.write_text(">x\nACGT\n")
    bad = tmp_path / "bad.fa"
    bad.write_text(">x\nACGT\n>y\nAC GT\n")
    empty = tmp_path / "empty.fa"
    empty.write_text("")
    samples = [SampleInput("good", str(good), "dna"), SampleInput("bad", str(bad), "dna"),
               SampleInput("empty", str(empty), "dna")]  # fmt: skip
    with pytest.raises(SampleErrors) as caught:
        pack_samples(samples, tmp_path / "pack", target_tokens=1000, policy=InputPolicy(on_invalid="error"))
    lines = str(caught.value).splitlines()
    assert lines[0].startswith("sample bad: 1 invalid FASTA record(s)")
    assert any(line.startswith("sample empty: ") and "empty file (0 bytes)" in line for line in lines)
    assert not (tmp_path / "pack" / "manifest.tsv").exists()
