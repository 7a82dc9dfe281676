"""The shared inference path: pooling masks, batch-independence, input order, CLI and run figures."""

import json
import socket
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

import seqshard.engine.driver as driver
from seqshard.engine.chunks import ChunkLimits, RecordError, score_chunks, score_records
from seqshard.engine.driver import run_tasks
from seqshard.engine.pooling import pool
from seqshard.engine.runner import Runner
from seqshard.engine.tasks import prepare_tasks
from seqshard.engine.types import Hardware, RunFigures, RunFiles, TaskSettings, Work
from seqshard.engine.windows import ModelFit
from seqshard.io.parquet import read_provenance
from seqshard.io.sequences import InputPolicy
from seqshard.models.dnabert2 import load_dnabert2


@pytest.fixture(scope="module")
def checkpoint(dnabert2_demo_checkpoint):
    return dnabert2_demo_checkpoint


@pytest.fixture(scope="module")
def fasta(tmp_path_factory):
    rng = np.random.default_rng(3)
    path = tmp_path_factory.mktemp("fa") / "in.fa"
    lengths = [5, 700, 60, 61, 250, 1200, 33, 90]
    path.write_text("".join(f">r{i} desc\n{''.join(rng.choice(list('ACGT'), n))}\n" for i, n in enumerate(lengths)))
    return path


def test_pooling_reads_only_owned_positions():
    hidden = torch.arange(2 * 5 * 1, dtype=torch.float32).reshape(2, 5, 1)  # values 0..4 and 5..9
    # row 0: [CLS]=0, content 1 and 2, [SEP]=3, pad 4; row 1: [CLS]=5, content 6 7 8, [SEP]=9
    owned = torch.tensor([[0, 1, 1, 0, 0], [0, 1, 1, 1, 0]], dtype=torch.bool)
    assert pool(hidden, owned, "mean").squeeze(-1).tolist() == [1.5, 7.0]
    assert pool(hidden, owned, "max").squeeze(-1).tolist() == [2.0, 8.0]
    assert pool(hidden, owned, "cls").squeeze(-1).tolist() == [0.0, 5.0]
    with pytest.raises(ValueError, match="unknown pooling"):
        pool(hidden, owned, "median")


def test_embeddings_do_not_depend_on_batching(checkpoint, fasta):
    from seqshard.io.fasta import read_valid_records

    loaded = load_dnabert2(str(checkpoint))
    records, _ = read_valid_records(fasta, "dna")
    results = {}
    for budget, max_padding in [(1, 0.03), (100_000, 0.99)]:
        figures = RunFigures({}, "cpu", "fp32", 1, budget)
        scored = score_records(
            loaded, records, TaskSettings(), molecule="dna", batch_tokens=budget, dtype="fp32", figures=figures,
            max_padding=max_padding,
        )  # fmt: skip
        results[budget] = (np.array(scored.columns["embed"]["embedding"].to_pylist()), figures)
    one_by_one, alone = results[1]
    batched, together = results[100_000]
    assert alone.n_batches == len(records) and together.n_batches == 1
    assert together.n_computed_tokens > 2 * together.n_tokens  # heavily padded, yet the same numbers
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5, rtol=0)
    assert scored.base["n_tokens"].tolist() == [len(loaded.tokenizer.encode(r.sequence)) for r in records]


def test_cli_embed_writes_rows_in_input_order_with_provenance(checkpoint, fasta, tmp_path):
    out, figures = tmp_path / "out.parquet", tmp_path / "figures.json"
    result = subprocess.run(
        [sys.executable, "-m", "seqshard", "embed", "--model", "dnabert2", "--checkpoint", str(checkpoint),
         str(fasta), "-o", str(out), "--pooling", "cls", "--batch-tokens", "2048", "--figures", str(figures)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    frame = pd.read_parquet(out)
    assert list(frame["id"]) == [f"r{i}" for i in range(8)]
    assert list(frame["length"]) == [5, 700, 60, 61, 250, 1200, 33, 90]
    assert pq.read_schema(out).field("embedding").type.list_size == 64
    provenance = read_provenance(out)
    assert provenance["pooling"] == "cls" and provenance["architecture"] == "dnabert2"
    assert provenance["checkpoint_digest"] == load_dnabert2(str(checkpoint)).digest
    run = json.loads(figures.read_text())
    assert run["n_sequences"] == 8 and run["n_tokens"] == int(frame["n_tokens"].sum())
    assert run["n_computed_tokens"] >= run["n_tokens"] and run["device"] == "cpu" and run["dtype"] == "fp32"
    # The same input through the Python entry point gives the same numbers.
    again = tmp_path / "again.parquet"
    run_tasks(Work("dnabert2", checkpoint, (TaskSettings(pooling="cls"),)), RunFiles(fasta, {"embed": again}))
    np.testing.assert_array_equal(np.stack(pd.read_parquet(again)["embedding"]), np.stack(frame["embedding"]))


def test_cli_reports_bad_input_clearly(checkpoint, tmp_path):
    bad = tmp_path / "bad.fa"
    bad.write_text(">ok\nACGT\n>broken\nACXT\n")
    result = subprocess.run(
        [sys.executable, "-m", "seqshard", "embed", "--checkpoint", str(checkpoint), str(bad), "-o",
         str(tmp_path / "o.parquet")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 1
    assert f"{bad}: record 'broken' (line 3): character 'X'" in result.stderr
    assert not (tmp_path / "o.parquet").exists()


class MemoryLimitedModel(torch.nn.Module):
    """Stands in for a GPU with little memory (none here): raises torch's out-of-memory error above a batch size."""

    def __init__(self, model, max_tokens):
        super().__init__()
        self.model, self.max_tokens = model, max_tokens

    def forward(self, ids, attention_mask=None):
        if ids.numel() > self.max_tokens:
            raise torch.OutOfMemoryError(f"simulated: {ids.numel()} tokens")
        return self.model(ids, attention_mask)


def test_out_of_memory_halves_the_batch_and_goes_on(checkpoint, fasta):
    from dataclasses import replace

    from seqshard.io.fasta import read_valid_records

    loaded = load_dnabert2(str(checkpoint))
    records, _ = read_valid_records(fasta, "dna")
    kwargs = dict(molecule="dna", batch_tokens=100_000, dtype="fp32", max_padding=0.99)
    reference = score_records(loaded, records, TaskSettings(), figures=RunFigures({}, "cpu", "fp32", 1, 1), **kwargs)
    figures = RunFigures({}, "cpu", "fp32", 1, 100_000)
    limited = replace(loaded, model=MemoryLimitedModel(loaded.model, max_tokens=700))
    columns = score_records(limited, records, TaskSettings(), figures=figures, **kwargs)
    assert figures.n_oom_splits >= 2 and figures.as_dict()["n_oom_splits"] == figures.n_oom_splits
    np.testing.assert_allclose(
        np.array(columns.columns["embed"]["embedding"].to_pylist()),
        np.array(reference.columns["embed"]["embedding"].to_pylist()),
        atol=1e-5,
    )
    tiny = replace(loaded, model=MemoryLimitedModel(loaded.model, max_tokens=10))
    with pytest.raises(RecordError, match=r"record 'r5': out of memory even alone \(272 tokens on cpu\)"):
        score_records(tiny, records, TaskSettings(), figures=RunFigures({}, "cpu", "fp32", 1, 1), **kwargs)


def test_chunked_scoring_matches_one_chunk_and_keeps_input_order(checkpoint, fasta):
    from seqshard.io.fasta import read_valid_records

    loaded = load_dnabert2(str(checkpoint))
    records, _ = read_valid_records(fasta, "dna")
    runs = {}
    for chunk_records in (3, 100):
        figures = RunFigures({}, "cpu", "fp32", 1, 4096)
        chunks = list(
            score_chunks(
                Runner(loaded.for_molecule("dna"), figures, batch_tokens=4096, dtype="fp32"), iter(records),
                prepare_tasks(loaded, [TaskSettings()]), ModelFit.of(loaded, TaskSettings()),
                ChunkLimits.for_budget(4096, chunk_records),
            )
        )  # fmt: skip
        runs[chunk_records] = (chunks, figures)
    small, large = runs[3][0], runs[100][0]
    assert [len(chunk.records) for chunk in small] == [3, 3, 2] and len(large) == 1
    assert [r.id for chunk in small for r in chunk.records] == [r.id for r in records]
    stacked = np.concatenate([np.array(chunk.columns["embed"]["embedding"].to_pylist()) for chunk in small])
    whole = np.array(large[0].columns["embed"]["embedding"].to_pylist())
    np.testing.assert_allclose(stacked, whole, atol=1e-5, rtol=0)
    assert runs[3][1].n_records == runs[100][1].n_records == len(records)


def test_run_task_streams_chunks_into_row_groups_and_leaves_nothing_on_failure(checkpoint, tmp_path):
    rng = np.random.default_rng(5)
    fasta = tmp_path / "many.fa"
    fasta.write_text("".join(f">s{i}\n{''.join(rng.choice(list('ACGT'), 40 + i))}\n" for i in range(10)))
    out = tmp_path / "out.parquet"
    work, hardware = Work("dnabert2", checkpoint), Hardware(chunk_records=4)  # chunks of 4, 4, 2
    run_tasks(work, RunFiles(fasta, {"embed": out}, figures=tmp_path / "f.json"), hardware)
    assert pd.read_parquet(out)["id"].tolist() == [f"s{i}" for i in range(10)]
    assert [pq.ParquetFile(out).metadata.row_group(i).num_rows for i in range(3)] == [4, 4, 2]
    figures = json.loads((tmp_path / "f.json").read_text())
    assert figures["run_seconds"] >= figures["compute_seconds"] > 0
    # When and where it ran, and its GPU telemetry: on the CPU the figures say there was no GPU, never zeros.
    assert figures["host"] == socket.gethostname() and figures["cpu_count"] >= 1
    assert figures["started_at"] <= figures["ended_at"] <= time.time()
    assert figures["ended_at"] - figures["started_at"] >= figures["run_seconds"] - 1e-3  # run_seconds is rounded
    assert figures["gpu"] == {"gpu_available": False, "gpu_reason": "the work ran on cpu, not on a GPU"}

    bad = tmp_path / "bad.fa"  # valid records first, then a fault: the whole file is checked before any scoring
    bad.write_text(fasta.read_text() + ">broken\nACGTXX\n")
    failed = tmp_path / "failed.parquet"
    with pytest.raises(ValueError, match="broken"):
        run_tasks(work, RunFiles(bad, {"embed": failed}), hardware)
    assert not failed.exists() and not failed.with_name("failed.parquet.partial").exists()


class BudgetedModel(torch.nn.Module):
    """A device with `budget` bytes: every forward holds per-layer activations (4 x rows x width x 64 floats) in
    its frame while it runs, and raises torch's out-of-memory error when live activations would pass the budget.
    Activations stay alive as long as anything references the frame, a traceback included, exactly as a real
    failed forward's tensors do on a GPU."""

    def __init__(self, model, budget):
        super().__init__()
        self.model, self.budget, self.live, self.failures = model, budget, 0, 0

    def _release(self, size):
        self.live -= size

    def forward(self, ids, attention_mask=None):
        import weakref

        held = []
        for _ in range(4):
            tensor = torch.empty(ids.shape[0], ids.shape[1], 64)
            size = tensor.numel() * 4
            if self.live + size > self.budget:
                self.failures += 1
                raise torch.OutOfMemoryError(f"simulated: {self.live + size} bytes of {self.budget}")
            self.live += size
            weakref.finalize(tensor, self._release, size)
            held.append(tensor)
        return self.model(ids, attention_mask)


def test_out_of_memory_recovers_with_one_split_and_later_batches_fit(checkpoint):
    """The failed batch's memory is free before its halves run (one split is enough), and the budget is lowered
    for the rest of the job, so no later batch fails again."""
    from dataclasses import replace

    from seqshard.io.fasta import SequenceRecord

    rng = np.random.default_rng(8)
    records = [SequenceRecord(i, f"s{i}", "".join(rng.choice(list("ACGT"), 300)), 1) for i in range(32)]
    loaded = load_dnabert2(str(checkpoint))
    width = len(loaded.tokenizer.encode(records[0].sequence))
    assert all(len(loaded.tokenizer.encode(r.sequence)) <= width + 8 for r in records)
    kwargs = dict(molecule="dna", batch_tokens=8 * (width + 8), dtype="fp32", max_padding=0.99)
    reference = score_records(loaded, records, TaskSettings(), figures=RunFigures({}, "cpu", "fp32", 1, 1), **kwargs)
    budgeted = BudgetedModel(loaded.model, budget=4 * 4 * (width + 8) * 64 * 4)  # room for 4 rows, not 8
    figures = RunFigures({}, "cpu", "fp32", 1, kwargs["batch_tokens"])
    columns = score_records(replace(loaded, model=budgeted), records, TaskSettings(), figures=figures, **kwargs)
    assert budgeted.failures == 1 and figures.n_oom_splits == 1 and figures.n_budget_changes >= 1
    assert figures.n_batches == 8  # the split batch's two halves, then every later batch at the lowered budget
    np.testing.assert_allclose(
        np.array(columns.columns["embed"]["embedding"].to_pylist()),
        np.array(reference.columns["embed"]["embedding"].to_pylist()),
        atol=1e-5,
    )


def test_a_record_too_large_even_alone_is_a_reject_under_skip(checkpoint, tmp_path):
    from dataclasses import replace

    rng = np.random.default_rng(9)
    fasta = tmp_path / "in.fa"
    lengths = [100, 3000, 120, 90]  # the 3 kb record is one input of ~600 tokens, over the device's room
    fasta.write_text("".join(f">r{i}\n{''.join(rng.choice(list('ACGT'), n))}\n" for i, n in enumerate(lengths)))
    original = driver.get_loader

    def limited_loader(architecture):
        def load(*args, **kwargs):
            loaded = original(architecture)(*args, **kwargs)
            return replace(loaded, model=MemoryLimitedModel(loaded.model, max_tokens=200))

        return load

    driver.get_loader = limited_loader
    settings = (TaskSettings(max_tokens=4096, window_length=5000),)
    try:
        out, rejects = tmp_path / "out.parquet", tmp_path / "rejects.tsv"
        figures = run_tasks(Work("dnabert2", checkpoint, settings, policy=InputPolicy(on_invalid="skip")),
                            RunFiles(fasta, {"embed": out}, rejects=rejects))  # fmt: skip
        with pytest.raises(RecordError, match=r"in.fa: record 'r1' \(line 3\): out of memory even alone"):
            run_tasks(Work("dnabert2", checkpoint, settings, policy=InputPolicy(on_invalid="error")),
                      RunFiles(fasta, {"embed": tmp_path / "error.parquet"}))  # fmt: skip
    finally:
        driver.get_loader = original
    assert pd.read_parquet(out)["id"].tolist() == ["r0", "r2", "r3"]
    table = pd.read_csv(rejects, sep="\t")
    assert table["record_id"].tolist() == ["r1"] and "out of memory even alone" in table["reason"].item()
    assert figures.n_rejected == 1 and not (tmp_path / "error.parquet").exists()
