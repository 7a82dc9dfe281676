"""Packing samples into shards of distinct sequences, and gathering the scored shards back per sample: rows in
each sample's input order, duplicates (within and across samples) with identical values, nothing lost."""

import gzip

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from Bio import SeqIO

from seqshard.cli import main
from seqshard.demo import write_demo
from seqshard.engine.driver import run_tasks
from seqshard.engine.types import RunFiles, TaskSettings, Work
from seqshard.io.parquet import read_provenance
from seqshard.io.sequences import InputPolicy
from seqshard.plan.merge import (
    UnreadableSamples,
    check_merged,
    merge_model,
    unreadable_samples,
    write_merge_summary,
)
from seqshard.plan.packing import SampleErrors, SampleInput, name_samples, pack_samples, read_pack_manifest


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


def truncated_gzip(path, n_records=200, seed=5):
    """A gzip of `n_records` unique random sequences cut at byte 3000: records can be read before the cut."""
    rng = np.random.default_rng(seed)
    text = "".join(f">t{i}\n{random_dna(rng, 300)}\n" for i in range(n_records))
    path.write_bytes(gzip.compress(text.encode())[:3000])
    return path


def score(pack, checkpoint, folder, tasks=("embed",), architecture="dnabert2"):
    """Every shard of a pack scored as infer_shard scores it: {shard: directory}."""
    settings = [TaskSettings(task) for task in tasks]
    scored = {}
    for shard in read_pack_manifest(pack / "manifest.tsv"):
        directory = folder / shard.name
        work = Work(architecture, checkpoint, settings, shard.molecule, InputPolicy(on_invalid="skip"),
                    provenance={"model": "m"})  # fmt: skip
        run_tasks(work, RunFiles(pack / "shards" / f"{shard.name}.fa",
                                 {t.task: directory / f"{t.task}.parquet" for t in settings},
                                 rejects=directory / "rejects.tsv", packed=True))  # fmt: skip
        scored[shard.name] = directory
    return scored


def test_under_skip_an_unreadable_sample_is_set_aside_and_the_others_are_packed(samples, tmp_path):
    bad = SampleInput("bad", str(truncated_gzip(tmp_path / "bad.fa.gz")), "dna")
    a, _, c = samples
    summary = pack_samples([a, bad, c], tmp_path / "pack", target_tokens=6000, policy=InputPolicy(on_invalid="skip"))
    reason = summary.unreadable["bad"]
    assert list(summary.unreadable) == ["bad"] and reason.startswith("truncated gzip file: it ends at byte 3000")
    records = pd.read_parquet(tmp_path / "pack" / "records.parquet")
    assert list(records["sample"].unique()) == ["a", "c"]
    # The records read before the cut were forgotten again: no shard holds a sequence of the bad sample.
    distinct = {sequence for s in (a, c) for sequence in read_sequences(s.fasta)}
    assert summary.n_distinct == len(distinct) == len(records[["shard", "row"]].drop_duplicates())
    table = pd.read_csv(tmp_path / "pack" / "samples.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert table[["sample", "n_valid", "status"]].values.tolist() == [["a", "25", "ok"], ["bad", "0", "unreadable"],
                                                                      ["c", "5", "ok"]]  # fmt: skip
    assert table.loc[1, "error"] == reason and table.loc[0, "error"] == ""
    rejects = pd.read_csv(tmp_path / "pack" / "rejects.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert rejects.values.tolist() == [["bad", bad.fasta, "", "0", reason]]


def test_under_error_an_unreadable_sample_names_the_samples_it_holds_back(samples, tmp_path):
    bad = SampleInput("bad", str(truncated_gzip(tmp_path / "bad.fa.gz")), "dna")
    with pytest.raises(SampleErrors) as caught:
        pack_samples([*samples, bad], tmp_path / "pack", target_tokens=6000, policy=InputPolicy(on_invalid="error"))
    assert len(caught.value.lines) == 2
    assert caught.value.lines[0].startswith(f"sample bad: {bad.fasta}: truncated gzip file: it ends at byte 3000")
    assert caught.value.lines[1] == (
        "held back: the 3 other sample(s) of this model entry, packed with it: a, b, c; fix the file(s) named, or "
        "set `on_invalid='skip'` so that a bad record or file stops only itself"
    )
    assert not (tmp_path / "pack" / "manifest.tsv").exists()
    # Under skip too, an entry none of whose samples can be read stops: there is nothing to score.
    with pytest.raises(SampleErrors) as caught:
        pack_samples([bad], tmp_path / "pack", target_tokens=6000, policy=InputPolicy(on_invalid="skip"))
    assert len(caught.value.lines) == 1 and caught.value.lines[0].startswith("sample bad: ")
    assert not (tmp_path / "pack" / "manifest.tsv").exists()
    assert name_samples([f"s{i}" for i in range(12)]) == "s0, s1, s2, s3, s4, s5, s6, s7, s8, s9 and 2 more"


def test_the_merge_writes_an_unreadable_sample_files_that_say_so_and_the_check_names_it(samples, checkpoint, tmp_path):
    bad = SampleInput("bad", str(truncated_gzip(tmp_path / "bad.fa.gz")), "dna")
    a, _, c = samples
    pack = tmp_path / "pack"
    summary = pack_samples([a, bad, c], pack, target_tokens=6000, policy=InputPolicy(on_invalid="skip"))
    scored = score(pack, checkpoint, tmp_path / "scores")
    names = ["a", "bad", "c"]
    outputs = {(name, "embed"): tmp_path / "out" / name / "embed.parquet" for name in names}
    rejects = {name: tmp_path / "out" / name / "model_rejects.tsv" for name in names}
    own = {name: tmp_path / "out" / name / "rejects.tsv" for name in names}
    written = merge_model(pack, {"embed": scored}, outputs, rejects, model="m", on_invalid="skip",
                          sample_rejects=own)  # fmt: skip
    assert written == {"a": 25, "c": 5, "bad": 0}
    empty = outputs[("bad", "embed")]
    assert pq.read_table(empty).num_rows == 0
    assert pq.read_schema(empty).equals(pq.read_schema(outputs[("a", "embed")]), check_metadata=False)
    provenance = read_provenance(empty)
    reason = summary.unreadable["bad"]
    assert (provenance["status"], provenance["error"], provenance["sample"]) == ("unreadable", f"{bad.fasta}: {reason}",
                                                                               "bad")  # fmt: skip
    assert provenance["n_shards"] == "0" and read_provenance(outputs[("a", "embed")])["status"] == "ok"
    assert len(pd.read_parquet(outputs[("c", "embed")])) == 5
    assert pd.read_csv(own["bad"], sep="\t", dtype=str, keep_default_na=False).values.tolist() == [
        [bad.fasta, "", "0", reason]
    ]
    assert pd.read_csv(rejects["bad"], sep="\t").empty
    write_merge_summary(tmp_path / "merged.tsv", outputs, written, unreadable_samples(pack))
    merged = pd.read_csv(tmp_path / "merged.tsv", sep="\t")
    assert merged[["sample", "rows", "status"]].values.tolist() == [["a", 25, "ok"], ["bad", 0, "unreadable"],
                                                                    ["c", 5, "ok"]]  # fmt: skip

    with pytest.raises(UnreadableSamples) as caught:
        check_merged(pack, "m", tmp_path / "checked.txt")
    assert caught.value.lines == [
        f"sample bad ({bad.fasta}): {reason}; its results are empty (models.m: the entry's other 2 sample(s) were "
        "merged)"
    ]
    assert not (tmp_path / "checked.txt").exists()
    good = tmp_path / "good_pack"
    pack_samples([a, c], good, target_tokens=6000, policy=InputPolicy(on_invalid="skip"))
    check_merged(good, "m", tmp_path / "checked.txt")
    assert (tmp_path / "checked.txt").read_text() == "models.m: all 2 sample(s) read and merged\n"


def test_one_lucaone_entry_merges_dna_and_protein_samples_each_with_its_molecule(tmp_path):
    """Before issue 26 the merge refused the shards of two molecules (their provenance differs in `molecule`)."""
    checkpoint = write_demo("lucaone-demo", tmp_path / "lucaone-demo")
    dna, protein = tmp_path / "dna.fa", tmp_path / "protein.fa"
    dna.write_text(">d1\nACGTACGTTT\n>d2\nGGGCCCAAAT\n")
    protein.write_text(">p1\nMKTAYIAKQR\n>p2\nMSTNPKPQRK\n>p3\nMKV\n")
    pack = tmp_path / "pack"
    pack_samples([SampleInput("d", str(dna), "dna"), SampleInput("p", str(protein), "protein")], pack,
                 target_tokens=1000)  # fmt: skip
    assert [s.molecule for s in read_pack_manifest(pack / "manifest.tsv")] == ["dna", "protein"]
    scored = score(pack, checkpoint, tmp_path / "scores", architecture="lucaone")
    outputs = {(name, "embed"): tmp_path / "out" / name / "embed.parquet" for name in ("d", "p")}
    rejects = {name: tmp_path / "out" / name / "rejects.tsv" for name in ("d", "p")}
    assert merge_model(pack, {"embed": scored}, outputs, rejects, model="m") == {"d": 2, "p": 3}
    assert read_provenance(outputs[("d", "embed")])["molecule"] == "dna"
    assert read_provenance(outputs[("p", "embed")])["molecule"] == "protein"
    assert pd.read_parquet(outputs[("p", "embed")])["id"].tolist() == ["p1", "p2", "p3"]
    # Shards that differ in anything else are still refused, naming what differs.
    table = pq.read_table(scored["0001"] / "embed.parquet")
    metadata = {**table.schema.metadata, b"seqshard.pooling": b"cls"}
    pq.write_table(table.replace_schema_metadata(metadata), scored["0001"] / "embed.parquet")
    with pytest.raises(ValueError, match=r"scored shard 0001 differs in provenance from shard 0000 \(pooling: "
                                         r"'mean' vs 'cls'\); cannot merge"):  # fmt: skip
        merge_model(pack, {"embed": scored}, outputs, rejects, model="m")
