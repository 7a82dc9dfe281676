"""Tasks beyond pooled embeddings, and long sequences: windows, truncation, mlm_score, classify, regress."""

import itertools

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from seqshard.engine.chunks import score_records
from seqshard.engine.driver import run_tasks
from seqshard.engine.types import RunFigures, RunFiles, TaskSettings, Work
from seqshard.engine.windows import ModelFit, encode_chunk, encode_sequence, plan_windows
from seqshard.io.fasta import SequenceRecord
from seqshard.models.dnabert2 import load_dnabert2, load_dnabert2_masked_lm, write_demo_checkpoint


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, dnabert2_demo_checkpoint):
    root = tmp_path_factory.mktemp("ckpts")
    return {
        "mlm": dnabert2_demo_checkpoint,
        "classify": write_demo_checkpoint(root / "promoter", labels=["non_promoter", "promoter"], seed=1),
        "regress": write_demo_checkpoint(root / "regress", regression=True, seed=2),
    }


def random_dna(n, seed):
    return "".join(np.random.default_rng(seed).choice(list("ACGT"), n))


def vectors(columns):
    return np.array(columns["embedding"].to_pylist(), dtype=np.float32)


def run(loaded, sequences, **settings):
    """The task's columns for `sequences`, and how each was encoded (the model inputs the columns come from)."""
    records = [SequenceRecord(i, f"r{i}", s, 1) for i, s in enumerate(sequences)]
    figures = RunFigures({}, "cpu", "fp32", 1, 4096)
    task = TaskSettings(**settings)
    scored = score_records(loaded, records, task, molecule="dna", batch_tokens=4096, dtype="fp32", figures=figures)
    encoded = ModelFit.of(loaded, task).encode(sequences, loaded.tokenizer).sequences()
    assert scored.base["n_tokens"].tolist() == [e.n_tokens for e in encoded]
    return scored.columns[task.task], encoded


def test_every_residue_belongs_to_the_window_with_the_nearest_centre():
    for length, window, overlap in itertools.product(range(1, 50), range(1, 12), range(0, 11)):
        if overlap >= window:
            continue
        windows = plan_windows(length, window, overlap)
        owners = [k for k, w in enumerate(windows) for _ in range(w.own_start, w.own_stop)]
        nearest = [
            min(range(len(windows)), key=lambda k: (abs(p + 0.5 - (windows[k].start + windows[k].stop) / 2), k))
            for p in range(length)
        ]
        assert owners == nearest
        assert all(w.stop - w.start == min(window, length) for w in windows)
        assert windows[0].start == 0 and windows[-1].stop == length


def test_window_plan_values():
    assert [(w.start, w.stop, w.own_start, w.own_stop) for w in plan_windows(30, 10, 3)] == [
        (0, 10, 0, 9),
        (7, 17, 9, 16),
        (14, 24, 16, 22),
        (20, 30, 22, 30),
    ]


def test_a_sequence_that_fits_gives_identical_results_in_both_modes(checkpoints):
    loaded = load_dnabert2(str(checkpoints["mlm"]))
    sequence = random_dna(600, 1)
    window, _ = run(loaded, [sequence], long_sequences="window")
    truncate, encoded = run(loaded, [sequence], long_sequences="truncate")
    assert len(encoded[0].windows) == 1 and not encoded[0].truncated
    np.testing.assert_array_equal(vectors(window), vectors(truncate))


def test_long_sequence_is_represented_token_by_token_exactly_once(checkpoints):
    loaded = load_dnabert2(str(checkpoints["mlm"]))
    window_length, overlap = 300, 100
    sequence = random_dna(3 * window_length, 2)
    columns, encoded = run(
        loaded, [sequence], per_token=True, window_length=window_length, window_overlap=overlap, max_tokens=200
    )
    (item,) = encoded
    planned = plan_windows(len(sequence), window_length, overlap)
    assert len(item.windows) == len(planned) == 4
    # Each window run on its own; keep the tokens whose middle base lies in the window's own residues.
    expected, owned_spans = [], []
    for window in planned:
        ids, offsets = loaded.tokenizer.encode_with_offsets(sequence[window.start : window.stop])
        with torch.inference_mode():
            hidden = loaded.model(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.bool))[0]
        for position, (begin, end) in enumerate(offsets):
            middle = window.start + (begin + end - 1) / 2
            if end > begin and window.own_start <= middle < window.own_stop:
                expected.append(hidden[position].numpy())
                owned_spans.append((window.start + begin, window.start + end))
    per_token = np.array(columns["per_token"].to_pylist()[0], dtype=np.float32)
    np.testing.assert_allclose(per_token, np.array(expected), atol=2e-3)  # stored as float16
    assert item.n_tokens == len(expected) + 2
    middles = [(b + e - 1) / 2 for b, e in owned_spans]
    assert middles == sorted(middles) and len(set(middles)) == len(middles)  # in order, none twice
    # The mean embedding is the mean over exactly those tokens.
    np.testing.assert_allclose(vectors(columns)[0], np.mean(expected, axis=0), atol=1e-5, rtol=0)


def test_truncation_is_recorded(checkpoints):
    loaded = load_dnabert2(str(checkpoints["mlm"]))
    sequence = random_dna(2000, 3)
    _, encoded = run(loaded, [sequence], long_sequences="truncate", max_tokens=64)
    assert encoded[0].truncated and encoded[0].n_tokens == 64 and len(encoded[0].windows[0].ids) == 64


@pytest.mark.parametrize("gap", [300, 1500, 5000])
def test_windows_never_exceed_max_tokens_whatever_the_content(checkpoints, gap):
    """A gap of N (one DNABERT-2 token per base) inside a scaffold: windows are cut again until each fits, and
    every residue is still owned by exactly one window."""
    loaded = load_dnabert2(str(checkpoints["mlm"]))
    sequence = random_dna(700, 5) + "N" * gap + random_dna(900, 6)
    whole = encode_sequence(sequence, loaded.tokenizer, max_tokens=512, mode="window", window=1000, overlap=250)
    assert max(len(w.ids) for w in whole.windows) <= 512
    assert all(len(w.ids) == len(w.owned) for w in whole.windows)
    # Ownership: the owned tokens, decoded window by window in order, spell the sequence exactly once.
    spelled = "".join(
        loaded.tokenizer.decode([i for i, own in zip(w.ids, w.owned, strict=True) if own]) for w in whole.windows
    )
    assert spelled == sequence
    columns, encoded = run(loaded, [sequence, random_dna(100, 7)])
    assert encoded[0].n_tokens == whole.n_tokens and np.isfinite(vectors(columns)).all()


def test_a_sequence_too_long_to_fit_whatever_it_holds_is_windowed_without_being_tokenized_whole(checkpoints):
    """Past (max_tokens - 2) x the longest token's residues nothing can fit: such a sequence gets the windows it
    would get after tokenizing it whole, without that tokenization; shorter ones are still tested whole."""
    loaded = load_dnabert2(str(checkpoints["mlm"]))
    tokenizer = loaded.tokenizer
    max_tokens = 40
    limit = (max_tokens - 2) * tokenizer.max_residues_per_token
    sequences = [random_dna(limit + 1, 8), random_dna(limit - 1, 9), random_dna(30, 10)]
    seen: list[list[str]] = []
    original = tokenizer.encode_flat

    def recording(batch):
        seen.append(list(batch))
        return original(batch)

    tokenizer.encode_flat = recording
    try:
        chunk = encode_chunk(sequences, tokenizer, max_tokens=max_tokens, mode="window", window=100, overlap=25)
    finally:
        del tokenizer.encode_flat
    assert sequences[0] not in seen[0] and sequences[1] in seen[0]  # the first was never tokenized whole
    # Windows of 100 random bases fit in 40 tokens here, so none is cut again: the plan's windows, as they are.
    expected = [tokenizer.encode(sequences[0][w.start : w.stop]) for w in plan_windows(limit + 1, 100, 25)]
    assert [w.ids for w in chunk.sequence(0).windows] == expected
    assert chunk.n_windows.tolist()[1:] == [len(plan_windows(limit - 1, 100, 25)), 1]
    assert int(chunk.lengths.max()) <= max_tokens


def test_max_pooling(checkpoints):
    loaded = load_dnabert2(str(checkpoints["mlm"]))
    sequence = random_dna(150, 4)
    columns, _ = run(loaded, [sequence], pooling="max")
    ids = loaded.tokenizer.encode(sequence)
    with torch.inference_mode():
        hidden = loaded.model(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.bool))[0]
    np.testing.assert_allclose(vectors(columns)[0], hidden[1:-1].amax(0).numpy(), atol=1e-6)


def test_mlm_score_equals_masking_each_token_alone(checkpoints):
    loaded = load_dnabert2(str(checkpoints["mlm"]))
    full = load_dnabert2_masked_lm(str(checkpoints["mlm"]))
    sequences = [random_dna(60, 5), random_dna(130, 6)]
    columns, encoded = run(loaded, sequences, task="mlm_score")
    for row, sequence in enumerate(sequences):
        ids = loaded.tokenizer.encode(sequence)
        total = 0.0
        for position in range(1, len(ids) - 1):
            masked = list(ids)
            masked[position] = loaded.tokenizer.mask_id
            with torch.inference_mode():
                logits = full(torch.tensor([masked]))[0, position]
            total += torch.log_softmax(logits, -1)[ids[position]].item()
        assert columns["pll"][row] == pytest.approx(total, abs=1e-4)
        assert columns["n_scored"][row] == len(ids) - 2
        assert columns["pll_per_token"][row] == pytest.approx(total / (len(ids) - 2), abs=1e-6)


def test_classify_with_a_fine_tuned_head(checkpoints, tmp_path):
    fasta = tmp_path / "in.fa"
    sequences = [random_dna(n, n) for n in (80, 300, 45)]
    fasta.write_text("".join(f">s{i}\n{s}\n" for i, s in enumerate(sequences)))
    out = tmp_path / "classify.parquet"
    run_tasks(
        Work("dnabert2", checkpoints["classify"], (TaskSettings(task="classify"),)), RunFiles(fasta, {"classify": out})
    )
    frame = pd.read_parquet(out)
    assert list(frame.columns) == [
        "id", "length", "n_tokens", "n_windows", "truncated", "prob_non_promoter", "prob_promoter", "predicted_label",
    ]  # fmt: skip
    loaded = load_dnabert2(str(checkpoints["classify"]))
    for row, sequence in enumerate(sequences):
        ids = loaded.tokenizer.encode(sequence)
        with torch.inference_mode():
            hidden = loaded.model(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.bool))
            logits = loaded.sequence_head.module(hidden)[0]
        probabilities = torch.softmax(logits, -1).numpy()
        np.testing.assert_allclose(frame.loc[row, ["prob_non_promoter", "prob_promoter"]].to_numpy(float),
                                   probabilities, atol=1e-6)  # fmt: skip
        assert frame.loc[row, "predicted_label"] == ["non_promoter", "promoter"][int(probabilities.argmax())]
    with pytest.raises(ValueError, match="its head is for classify, not regress"):
        run_tasks(
            Work("dnabert2", checkpoints["classify"], (TaskSettings(task="regress"),)),
            RunFiles(fasta, {"regress": tmp_path / "x.parquet"}),
        )
    with pytest.raises(ValueError, match="has no fine-tuned head"):
        run_tasks(
            Work("dnabert2", checkpoints["mlm"], (TaskSettings(task="classify"),)),
            RunFiles(fasta, {"classify": tmp_path / "x.parquet"}),
        )


def test_one_pass_writes_each_task_file_byte_for_byte_as_a_run_of_that_task_alone(checkpoints, tmp_path):
    """embed and classify from one forward pass: each file is the one a run of that task alone writes, long
    (windowed) sequences included."""
    fasta = tmp_path / "in.fa"
    sequences = [random_dna(n, n) for n in (80, 3000, 45, 700, 80)]
    fasta.write_text("".join(f">s{i}\n{s}\n" for i, s in enumerate(sequences)))
    tasks = [TaskSettings(task="embed", pooling="cls"), TaskSettings(task="classify")]
    together = {task.task: tmp_path / f"together-{task.task}.parquet" for task in tasks}
    figures = run_tasks(Work("dnabert2", checkpoints["classify"], tasks), RunFiles(fasta, together))
    assert figures.n_records == 5
    for task in tasks:
        alone = tmp_path / f"alone-{task.task}.parquet"
        run_tasks(Work("dnabert2", checkpoints["classify"], (task,)), RunFiles(fasta, {task.task: alone}))
        assert together[task.task].read_bytes() == alone.read_bytes(), task.task
        assert pq.read_table(alone).num_rows == 5


def test_regress_writes_the_value_column(checkpoints, tmp_path):
    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nACGTACGTAAAC\n>b\nGGGGCCCCAATT\n")
    out = tmp_path / "regress.parquet"
    run_tasks(
        Work("dnabert2", checkpoints["regress"], (TaskSettings(task="regress"),)), RunFiles(fasta, {"regress": out})
    )
    table = pq.read_table(out)
    assert table.column_names[-1] == "value" and table.num_rows == 2
    assert len(set(table.column("value").to_pylist())) == 2


def test_lucaone_long_protein_is_represented_residue_by_residue_exactly_once(tmp_path):
    from seqshard.models.lucaone import load_lucaone, write_demo_checkpoint

    loaded = load_lucaone(str(write_demo_checkpoint(tmp_path / "lucaone")))
    window_length, overlap = 40, 12
    sequence = "".join(np.random.default_rng(9).choice(list("ACDEFGHIKLMNPQRSTVWY"), 3 * window_length))
    records = [SequenceRecord(0, "p", sequence, 1)]
    figures = RunFigures({}, "cpu", "fp32", 1, 4096)
    settings = TaskSettings(per_token=True, window_length=window_length, window_overlap=overlap, max_tokens=50)
    columns = score_records(
        loaded, records, settings, molecule="protein", batch_tokens=4096, dtype="fp32", figures=figures
    ).columns["embed"]
    planned = plan_windows(len(sequence), window_length, overlap)
    assert figures.n_windows == len(planned) == 4
    bound = loaded.for_molecule("protein")
    expected = np.zeros((len(sequence), loaded.hidden_size), dtype=np.float32)
    source = np.full(len(sequence), -1)
    for k, window in enumerate(planned):
        ids = bound.tokenizer.encode(sequence[window.start : window.stop])
        with torch.inference_mode():
            hidden = bound.model(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.bool), 1)[0]
        for residue in range(window.own_start, window.own_stop):
            assert source[residue] == -1  # no residue is taken twice
            source[residue] = k
            expected[residue] = hidden[1 + residue - window.start].numpy()  # +1 for [CLS]
    assert (source >= 0).all()
    centres = [(w.start + w.stop) / 2 for w in planned]
    assert all(np.argmin([abs(p + 0.5 - c) for c in centres]) == source[p] for p in range(len(sequence)))
    per_token = np.array(columns["per_token"].to_pylist()[0], dtype=np.float32)
    np.testing.assert_allclose(per_token, expected, atol=2e-3)  # float16 storage
    np.testing.assert_allclose(vectors(columns)[0], expected.mean(axis=0), atol=1e-5, rtol=0)
