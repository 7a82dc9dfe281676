"""The result cache: what a run computed is reused by a later run for the same settings and checkpoint, never for
other settings; files are immutable once visible, a job's unpublished rows are invisible, and size is bounded."""

import os
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet
import pytest

from seqshard.engine.driver import run_tasks
from seqshard.engine.types import RunFiles, TaskSettings, Work
from seqshard.runtime.cache import ResultCache, cache_key


@pytest.fixture(scope="module")
def checkpoint(dnabert2_demo_checkpoint):
    return dnabert2_demo_checkpoint


def write_fasta(path, items):
    path.write_text("".join(f">{name}\n{sequence}\n" for name, sequence in items))
    return path


@pytest.fixture(scope="module")
def sequences():
    rng = np.random.default_rng(4)
    return ["".join(rng.choice(list("ACGT"), int(n))) for n in rng.integers(40, 400, 60)]


def run(fasta, out_dir, checkpoint, cache, **setting):
    tasks = [TaskSettings("embed", **setting), TaskSettings("mlm_score", **setting)]
    outputs = {t.task: out_dir / f"{t.task}.parquet" for t in tasks}
    figures = run_tasks(Work("dnabert2", checkpoint, tasks), RunFiles(fasta, outputs), cache=cache)
    return figures, {task: pd.read_parquet(path) for task, path in outputs.items()}


def test_a_grown_sample_computes_only_its_new_sequences(tmp_path, checkpoint, sequences):
    cache = ResultCache(tmp_path / "cache", max_bytes=10**9)
    first = write_fasta(tmp_path / "first.fa", [(f"s{i}", s) for i, s in enumerate(sequences[:50])])
    grown = write_fasta(tmp_path / "grown.fa", [(f"s{i}", s) for i, s in enumerate(sequences)])
    cold, cold_rows = run(first, tmp_path / "cold", checkpoint, cache)
    assert (cold.n_sequences, cold.n_cached) == (50, 0)
    warm, warm_rows = run(grown, tmp_path / "warm", checkpoint, cache)
    assert (warm.n_records, warm.n_sequences, warm.n_cached) == (60, 10, 50)
    for task in ("embed", "mlm_score"):
        # Cached rows are the earlier run's rows, exactly.
        pd.testing.assert_frame_equal(warm_rows[task].iloc[:50].reset_index(drop=True), cold_rows[task])
    _, fresh_rows = run(grown, tmp_path / "fresh", checkpoint, None)
    np.testing.assert_allclose(np.stack(warm_rows["embed"]["embedding"]),
                               np.stack(fresh_rows["embed"]["embedding"]), atol=1e-5)  # fmt: skip
    again, _ = run(grown, tmp_path / "again", checkpoint, cache)
    assert (again.n_sequences, again.n_cached) == (0, 60)


def test_other_settings_never_reuse_results(tmp_path, checkpoint, sequences):
    cache = ResultCache(tmp_path / "cache", max_bytes=10**9)
    fasta = write_fasta(tmp_path / "in.fa", [(f"s{i}", s) for i, s in enumerate(sequences[:20])])
    run(fasta, tmp_path / "mean", checkpoint, cache)
    other, rows = run(fasta, tmp_path / "max", checkpoint, cache, pooling="max")
    assert other.n_cached == 0 and other.n_sequences == 20
    assert len(list((tmp_path / "cache").iterdir())) == 3  # embed/mean, embed/max, mlm_score: one key each
    assert cache_key({"a": 1}) != cache_key({"a": 2}) and cache_key({"a": 1, "b": 2}) == cache_key({"b": 2, "a": 1})


def test_per_token_layers_and_strands_are_cached_under_their_own_key_and_come_back_alike(tmp_path, checkpoint,
                                                                                        sequences):  # fmt: skip
    cache = ResultCache(tmp_path / "cache", max_bytes=10**9)
    fasta = write_fasta(tmp_path / "in.fa", [(f"s{i}", s) for i, s in enumerate(sequences[:12])])

    def embed(name, **setting):
        out = tmp_path / f"{name}.parquet"
        figures = run_tasks(Work("dnabert2", checkpoint, [TaskSettings(**setting)]), RunFiles(fasta, {"embed": out}),
                            cache=cache)  # fmt: skip
        return figures, pa.parquet.read_table(out)

    rich = {"per_token": True, "per_base": True, "layers": (-1, 0), "strand": "both"}
    cold, cold_rows = embed("cold", **rich)
    warm, warm_rows = embed("warm", **rich)
    assert (cold.n_cached, warm.n_cached, warm.n_sequences) == (0, 12, 0)
    assert warm_rows.equals(cold_rows)  # every column, per-token spans and texts included, as computed
    for other in ({}, {"layers": (-1,)}, {**rich, "strand": "forward"}, {**rich, "per_base": False}):
        figures, _ = embed("other", **other)
        assert figures.n_cached == 0, other


def test_unpublished_and_evicted_files_are_misses_and_size_stays_bounded(tmp_path):
    cache = ResultCache(tmp_path / "cache", max_bytes=10**9)
    digests = [bytes([i]) * 16 for i in range(4)]
    table = pa.table({"value": pa.array([1.0, 2.0, 3.0, 4.0])})
    partial = tmp_path / "cache" / "k" / "job.parquet.partial"  # a job still writing, or one that was killed
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"not yet parquet")
    assert not cache.lookup("k", digests).found.any()
    cache.store("k", digests[:2], table.slice(0, 2))
    hits = cache.lookup("k", digests)
    assert hits.found.tolist() == [True, True, False, False]
    assert hits.table.column("value").to_pylist() == [1.0, 2.0]
    # Least recently used goes first once the store is over its cap; the fresh partial file is never touched.
    old = next(p for p in (tmp_path / "cache" / "k").iterdir() if p.suffix == ".parquet")
    os.utime(old, (time.time() - 100, time.time() - 100))
    small = ResultCache(tmp_path / "cache", max_bytes=old.stat().st_size + partial.stat().st_size)
    small.store("k", digests[2:], table.slice(2, 2))
    assert not old.exists() and partial.exists()
    assert small.lookup("k", digests).found.tolist() == [False, False, True, True]
