"""Outputs in the coordinates users work in: per-token rows with the residues each token is credited with (they tile
the record, windows and N runs included, for every architecture), one vector per base, several layers from one
forward pass, both strands of DNA, the seams of windows measured by the run, and every new column readable by
pandas, polars and duckdb."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from seqshard.cli import main
from seqshard.demo import write_demo
from seqshard.engine.driver import run_tasks
from seqshard.engine.runner import Runner
from seqshard.engine.seams import changed_fits, measure_seams
from seqshard.engine.types import Hardware, RunFigures, RunFiles, TaskSettings, Work
from seqshard.engine.windows import ModelFit, reverse_complement
from seqshard.models import get_loader, layer_numbers
from seqshard.serve.columns import columns_from_predictions, predictions_from_table

ARCHITECTURES = {
    # architecture: (demo, molecule, fit that windows the test's sequences)
    "dnabert2": ("dnabert2-demo", "dna", {"window_length": 300, "window_overlap": 75, "max_tokens": 128}),
    "lucaone": ("lucaone-demo", "dna", {"window_length": 257, "window_overlap": 64, "max_tokens": 259}),
    "esm2": ("esm2-demo", "protein", {"window_length": 301, "window_overlap": 90, "max_tokens": 303}),
    "nucleotide_transformer": ("nt-demo", "dna", {"window_length": 403, "window_overlap": 101, "max_tokens": 120}),
}


def random_text(alphabet: str, length: int, seed: int) -> str:
    return "".join(np.random.default_rng(seed).choice(list(alphabet), length))


def sequences_for(molecule: str) -> list[str]:
    """Odd lengths, one short, several windowed; for DNA a run of N long enough to cut a DNABERT-2 window again."""
    if molecule == "protein":
        amino = "ACDEFGHIKLMNPQRSTVWY"
        return [random_text(amino, 1001, 1), random_text(amino, 7, 2), random_text(amino, 613, 3) + "X" * 9]
    return [
        random_text("ACGT", 1001, 1),
        random_text("ACGT", 7, 2),
        random_text("ACGT", 703, 3) + "N" * 611 + random_text("ACGT", 1299, 4),
        "N" * 5 + random_text("ACGT", 333, 5) + "NNN" + random_text("ACGT", 61, 6),
    ]


@pytest.fixture(scope="module")
def demos(tmp_path_factory: pytest.TempPathFactory, dnabert2_demo_checkpoint: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("demos")
    paths = {name: write_demo(demo, root / demo) for name, (demo, _, _) in ARCHITECTURES.items() if name != "dnabert2"}
    return {"dnabert2": dnabert2_demo_checkpoint, **paths}


def embed(demos, tmp_path: Path, architecture: str, sequences: list[str], **settings: object) -> pd.DataFrame:
    """`run_tasks` over `sequences` (records r0, r1, ...) with the architecture's windowing fit and `settings`;
    the table as pyarrow gives it, plus the run's figures under `.attrs`."""
    _, molecule, fit = ARCHITECTURES[architecture]
    fasta = tmp_path / "input.fa"
    fasta.write_text("".join(f">r{i}\n{sequence}\n" for i, sequence in enumerate(sequences)))
    out = tmp_path / f"embed-{len(list(tmp_path.glob('embed-*')))}.parquet"
    task = TaskSettings(**{**fit, **settings})
    figures = run_tasks(
        Work(architecture, str(demos[architecture]), (task,), molecule, seam_sample=0), RunFiles(fasta, {"embed": out}),
        Hardware("cpu", "fp32", batch_tokens=2048),
    )  # fmt: skip
    table = pq.read_table(out).to_pandas()
    table.attrs.update(figures=figures.as_dict(), path=out)
    return table


def matrix(cell: object) -> np.ndarray:
    return np.stack([np.asarray(row, dtype=np.float32) for row in cell])


# --- spans --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_spans_tile_every_record_and_name_the_tokens_bases(demos, tmp_path, architecture) -> None:
    molecule = ARCHITECTURES[architecture][1]
    sequences = sequences_for(molecule)
    table = embed(demos, tmp_path, architecture, sequences, per_token=True)
    assert (table["n_windows"] > 1).sum() >= 2  # windows, and (DNABERT-2) windows cut again for a run of N
    for sequence, row in zip(sequences, table.itertuples(), strict=True):
        starts, ends = np.asarray(row.token_start), np.asarray(row.token_end)
        # No gap, no overlap, every base credited to one token: the spans tile the record.
        assert starts[0] == 0 and ends[-1] == len(sequence) == row.length
        assert np.array_equal(starts[1:], ends[:-1]) and (ends > starts).all()
        assert (ends - starts).sum() == len(sequence)
        assert (
            len(row.per_token)
            == len(starts)
            == len(row.token_text)
            == row.n_tokens
            - sum(get_loader(architecture)(str(demos[architecture]), "cpu", torch.float32).tokenizer.frame)
        )
        # A token's text is what it stood for in its window; away from the seams that is exactly its span.
        texts = list(row.token_text)
        same = [sequence[a:b] == text for a, b, text in zip(starts, ends, texts, strict=True)]
        assert sum(same) >= len(texts) - 2 * row.n_windows
        assert all(text and text in sequence for text in texts)
        if row.n_windows == 1:
            assert all(same) and "".join(texts) == sequence


def test_the_readmes_worked_example(demos, tmp_path) -> None:
    """README, "Per-token rows and base spans": the demo tokenizer's tokens of one record, whole and in windows."""
    sequence = "ACGTTGCATTAGNNCCGATACGGA"
    (row,) = embed(demos, tmp_path, "dnabert2", [sequence], per_token=True, per_base=True,
                   max_tokens=512).itertuples()  # fmt: skip
    assert list(row.token_text) == ["AC", "GTTGC", "ATT", "AG", "N", "N", "CC", "GAT", "ACGG", "A"]
    assert list(row.token_start) == [0, 2, 7, 10, 12, 13, 14, 16, 19, 23]
    assert list(row.token_end) == [2, 7, 10, 12, 13, 14, 16, 19, 23, 24]
    assert len(row.per_base) == 24 and np.array_equal(
        matrix(row.per_base)[2:7], np.repeat(matrix(row.per_token)[1:2], 5, 0)
    )
    (windowed,) = embed(demos, tmp_path, "dnabert2", [sequence], per_token=True, window_length=15, window_overlap=5,
                        max_tokens=9).itertuples()  # fmt: skip
    assert windowed.n_windows == 3
    credited = list(zip(windowed.token_text, windowed.token_start, windowed.token_end, strict=True))
    assert ("GA", 16, 18) in credited and ("ACGG", 18, 23) in credited  # base 18: read by neither, credited to ACGG
    assert [text for text, *_ in credited] == ["AC", "GTTGC", "ATT", "AG", "N", "N", "CC", "GA", "ACGG", "A"]


def test_dnabert2_tokens_of_n_are_single_bases_with_their_own_spans(demos, tmp_path) -> None:
    sequence = "ACGTTGCA" + "N" * 3 + "GGATCC"
    (row,) = embed(demos, tmp_path, "dnabert2", [sequence], per_token=True).itertuples()
    ns = [(a, b) for a, b, text in zip(row.token_start, row.token_end, row.token_text, strict=True) if text == "N"]
    assert ns == [(8, 9), (9, 10), (10, 11)]


def test_truncated_records_credit_only_the_residues_kept(demos, tmp_path) -> None:
    sequence = random_text("ACGT", 3001, 9)
    (row,) = embed(demos, tmp_path, "dnabert2", [sequence], per_token=True, per_base=True, long_sequences="truncate",
                   max_tokens=64).itertuples()  # fmt: skip
    assert row.truncated and row.token_start[0] == 0 and len(row.token_start) == 62
    assert np.array_equal(row.token_start[1:], row.token_end[:-1])
    assert len(row.per_base) == row.token_end[-1] < len(sequence)
    assert "".join(row.token_text) == sequence[: row.token_end[-1]]


# --- per base -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ["dnabert2", "lucaone", "nucleotide_transformer"])
def test_per_base_has_one_row_per_base_the_vector_of_its_token(demos, tmp_path, architecture) -> None:
    sequences = sequences_for("dna")
    table = embed(demos, tmp_path, architecture, sequences, per_token=True, per_base=True)
    for sequence, row in zip(sequences, table.itertuples(), strict=True):
        per_base, per_token = matrix(row.per_base), matrix(row.per_token)
        assert per_base.shape == (len(sequence), per_token.shape[1])
        widths = np.asarray(row.token_end) - np.asarray(row.token_start)
        assert np.array_equal(per_base, np.repeat(per_token, widths, axis=0))


def test_per_base_and_both_strands_are_refused_where_they_mean_nothing(demos, tmp_path) -> None:
    with pytest.raises(ValueError, match="per_base is for DNA and RNA"):
        embed(demos, tmp_path, "esm2", ["MKTAYIAK"], per_base=True)
    with pytest.raises(ValueError, match="strand: both reads DNA's reverse complement; protein sequences"):
        embed(demos, tmp_path, "esm2", ["MKTAYIAK"], strand="both")
    with pytest.raises(ValueError, match="need long_sequences: window"):
        TaskSettings(per_token=True, strand="both", long_sequences="truncate")


# --- layers -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_the_last_layer_column_is_todays_embedding_bit_for_bit(demos, tmp_path, architecture) -> None:
    sequences = sequences_for(ARCHITECTURES[architecture][1])
    today = embed(demos, tmp_path, architecture, sequences, per_token=True)
    layered = embed(demos, tmp_path, architecture, sequences, per_token=True, layers=(0, -1, 1))
    assert [c for c in layered.columns if c.startswith(("embedding", "per_token"))] == [
        "embedding_l0", "embedding_l-1", "embedding_l1", "per_token_l0", "per_token_l-1", "per_token_l1"
    ]  # fmt: skip
    assert np.array_equal(np.stack(layered["embedding_l-1"]), np.stack(today["embedding"]))
    for ours, theirs in zip(layered["per_token_l-1"], today["per_token"], strict=True):
        assert np.array_equal(matrix(ours), matrix(theirs))
    assert not np.allclose(np.stack(layered["embedding_l0"]), np.stack(layered["embedding_l-1"]))
    metadata = pq.read_schema(layered.attrs["path"]).metadata
    assert json.loads(metadata[b"seqshard.layers"]) == [0, -1, 1]
    assert json.loads(metadata[b"seqshard.layer_numbers"]) == [0, 2, 1]
    assert json.loads(metadata[b"seqshard.num_layers"]) == 2


def test_dnabert2_layers_equal_a_plain_forward_seen_through_hooks(demos, tmp_path) -> None:
    """Each layer's pooled state equals the mean over the sequence's own tokens of what hooks on the layer modules
    see in a plain forward of that sequence alone (no batch, no padding, no windows)."""
    loaded = get_loader("dnabert2")(str(demos["dnabert2"]), "cpu", torch.float32)
    sequences = [random_text("ACGT", n, n) for n in (151, 40, 299)]
    table = embed(demos, tmp_path, "dnabert2", sequences, layers=(-1, 0, 1), max_tokens=512, window_length=1000)
    for sequence, row in zip(sequences, table.itertuples(), strict=True):
        seen: list[torch.Tensor] = []
        modules = [loaded.model.embeddings, *loaded.model.encoder.layer]
        hooks = [module.register_forward_hook(lambda _m, _i, out, seen=seen: seen.append(out)) for module in modules]
        with torch.no_grad():
            loaded.model(torch.tensor([loaded.tokenizer.encode(sequence)]))
        for hook in hooks:
            hook.remove()
        reference = [state[0, 1:-1].mean(dim=0).numpy() for state in seen]  # [CLS] and [SEP] excluded
        for column, layer in (("embedding_l-1", 2), ("embedding_l0", 0), ("embedding_l1", 1)):
            np.testing.assert_allclose(table.loc[row.Index, column], reference[layer], atol=1e-5, rtol=0)


def test_dnabert2_layers_are_the_same_whether_padding_is_packed_away_or_not(demos) -> None:
    loaded = get_loader("dnabert2")(str(demos["dnabert2"]), "cpu", torch.float32)
    rows = [loaded.tokenizer.encode(random_text("ACGT", n, n)) for n in (90, 31, 200)]
    ids = torch.full((3, max(map(len, rows))), loaded.tokenizer.pad_id)
    mask = torch.zeros(ids.shape, dtype=torch.bool)
    for row, row_ids in enumerate(rows):
        ids[row, : len(row_ids)], mask[row, : len(row_ids)] = torch.tensor(row_ids), True
    with torch.no_grad():
        padded = loaded.model(ids, mask, layers=(2, 0, 1))
        loaded.model.unpad = True
        packed = loaded.model(ids, mask, layers=(2, 0, 1))
        loaded.model.unpad = False
        last = loaded.model(ids, mask)
    for ours, theirs in zip(padded, packed, strict=True):
        assert (ours - theirs).abs().max().item() < 1e-5 and not ours[~mask].any() and not theirs[~mask].any()
    assert torch.equal(padded[0], last)


def test_layers_are_numbered_as_fair_esm_numbers_them() -> None:
    assert layer_numbers([-1, -4, 6], 12) == (12, 9, 6)
    assert layer_numbers([0], 12) == layer_numbers([-13], 12) == (0,)  # the embeddings' output, from either end
    with pytest.raises(ValueError, match="layer 13 does not exist: this model has layers 0 .* to 12"):
        layer_numbers([13], 12)
    with pytest.raises(ValueError, match="layers -1, 12 name the same layer of a 12-layer model"):
        layer_numbers([-1, 12], 12)
    with pytest.raises(ValueError, match="name a layer twice"):
        TaskSettings(layers=(3, 3))


# --- strands ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ["dnabert2", "lucaone", "nucleotide_transformer"])
def test_both_strands_do_not_depend_on_the_strand_the_sequence_was_read_from(demos, tmp_path, architecture) -> None:
    sequences = sequences_for("dna")
    settings = {"strand": "both", "per_token": True, "per_base": True, "layers": (-1, 1)}
    forward = embed(demos, tmp_path, architecture, sequences, **settings)
    reverse = embed(demos, tmp_path, architecture, [reverse_complement(s) for s in sequences], **settings)
    one_strand = embed(demos, tmp_path, architecture, sequences)
    for column in ("embedding_l-1", "embedding_l1"):
        np.testing.assert_allclose(np.stack(forward[column]), np.stack(reverse[column]), atol=1e-6, rtol=0)
    assert not np.allclose(np.stack(forward["embedding_l-1"]), np.stack(one_strand["embedding"]), atol=1e-6)
    for ours, theirs in zip(forward["per_base_l-1"], reverse["per_base_l-1"], strict=True):
        # Per base, the reverse complement's answer read backwards is the forward one (float16 storage).
        np.testing.assert_allclose(matrix(ours), matrix(theirs)[::-1], atol=2e-3, rtol=0)
    for row in forward.itertuples():  # per token: aligned to the forward strand's tokens and their spans
        assert len(row.per_token_l1) == len(row.token_start) and row.token_end[-1] == row.length


def test_both_strands_average_the_two_strands_run_alone(demos, tmp_path) -> None:
    sequences = sequences_for("dna")
    both = embed(demos, tmp_path, "dnabert2", sequences, strand="both")
    forward = embed(demos, tmp_path, "dnabert2", sequences)
    reverse = embed(demos, tmp_path, "dnabert2", [reverse_complement(s) for s in sequences])
    expected = (np.stack(forward["embedding"]) + np.stack(reverse["embedding"])) * np.float32(0.5)
    np.testing.assert_allclose(np.stack(both["embedding"]), expected, atol=1e-6, rtol=0)
    # The work of both: each strand's inputs and tokens.
    figures, strands = both.attrs["figures"], (forward.attrs["figures"], reverse.attrs["figures"])
    for name in ("n_windows", "n_tokens", "n_batches"):
        assert figures[name] == sum(strand[name] for strand in strands), name


def test_reverse_complement_of_every_accepted_letter() -> None:
    assert reverse_complement("AACGTNRYKMSWBDHV") == "BDHVWSKMRYNACGTT"
    assert reverse_complement(reverse_complement("ACGTNNRYacgt")) == "ACGTNNRYacgt"


# --- seams --------------------------------------------------------------------------------------------------------


def test_the_run_measures_what_the_seams_cost(demos, tmp_path) -> None:
    sequences = sequences_for("dna") + sequences_for("dna")[:1]  # a repeated windowed record is sampled once
    fasta = tmp_path / "input.fa"
    fasta.write_text("".join(f">r{i}\n{sequence}\n" for i, sequence in enumerate(sequences)))
    fit = ARCHITECTURES["lucaone"][2]
    work = Work("lucaone", str(demos["lucaone"]), (TaskSettings(**fit),), "dna")
    figures = run_tasks(work, RunFiles(fasta, {"embed": tmp_path / "out.parquet"}), Hardware("cpu", "fp32"))
    seams = figures.as_dict()
    assert seams["n_windowed"] == 3  # distinct sequences cut into windows (the repeat computed once)
    assert seams["seam_records"] == 3 and seams["seam_residues"] == 1001 + 2613 + 402
    assert (seams["seam_window_length"], seams["seam_window_overlap"]) == (257, 64)
    assert (seams["seam_overlap_window_length"], seams["seam_overlap_window_overlap"]) == (257, 32)
    assert (seams["seam_length_window_length"], seams["seam_length_window_overlap"]) == (192, 47)
    for name in ("overlap", "length"):
        assert 0 < seams[f"seam_{name}_cosine_mean"] <= seams[f"seam_{name}_cosine_max"] < 0.5
    # The probe's compute is its own: the run's throughput figures count the run's windows only.
    assert seams["n_windows"] == sum(len(ModelFit(259, "window", 257, 64).encode([s], _tokenizer(demos)).record)
                                     for s in sequences_for("dna"))  # fmt: skip
    quiet = run_tasks(Work("lucaone", str(demos["lucaone"]), work.tasks, "dna", seam_sample=0),
                      RunFiles(fasta, {"embed": tmp_path / "quiet.parquet"}), Hardware("cpu", "fp32"))  # fmt: skip
    assert "seam_records" not in quiet.as_dict() and quiet.n_windowed == 3
    assert pq.read_table(tmp_path / "quiet.parquet").equals(pq.read_table(tmp_path / "out.parquet"))


def test_the_seam_probe_takes_the_first_windows_of_a_record_or_all_of_it(demos) -> None:
    loaded = get_loader("lucaone")(str(demos["lucaone"]), "cpu", torch.float32).for_molecule("dna")
    runner = Runner(loaded, RunFigures({}, "cpu", "fp32", 1, 2048), batch_tokens=2048, dtype="fp32")
    fit = ModelFit(259, "window", 257, 64)
    long = random_text("ACGT", 2000, 9)
    assert measure_seams(runner, [long], fit, max_windows=3)["seam_residues"] == 3 * 257
    whole = measure_seams(runner, [long], fit, max_windows=None)
    assert whole["seam_residues"] == 2000 and 0 < whole["seam_length_cosine_mean"] < 0.5
    assert runner.figures.n_batches == 0  # the probe's batches are its own, not the run's
    assert measure_seams(runner, [long], ModelFit(259, "truncate", 257, 64)) == {}
    with pytest.raises(ValueError, match="max_windows must be 1 or more"):
        measure_seams(runner, [long], fit, max_windows=0)


def _tokenizer(demos):
    return get_loader("lucaone")(str(demos["lucaone"]), "cpu", torch.float32).for_molecule("dna").tokenizer


def test_changed_fits_move_the_seams() -> None:
    fit = ModelFit(512, "window", 1000, 250)
    assert {name: (f.window_length, f.window_overlap) for name, f in changed_fits(fit).items()} == {
        "overlap": (1000, 125), "length": (750, 187)
    }  # fmt: skip
    assert changed_fits(ModelFit(512, "window", 1000, 0))["overlap"].window_overlap == 250


# --- readers, command line, server columns ------------------------------------------------------------------------


def test_every_new_column_reads_alike_in_pandas_polars_and_duckdb(demos, tmp_path) -> None:
    polars = pytest.importorskip("polars")
    duckdb = pytest.importorskip("duckdb")
    sequences = sequences_for("dna")
    table = embed(demos, tmp_path, "dnabert2", sequences, per_token=True, per_base=True, layers=(-1, 0),
                  strand="both")  # fmt: skip
    path = table.attrs["path"]
    arrow = pq.read_table(path)
    columns = ["embedding_l-1", "embedding_l0", "per_token_l-1", "per_token_l0", "token_start", "token_end",
               "token_text", "per_base_l-1", "per_base_l0"]  # fmt: skip
    assert [name for name in arrow.column_names if name in columns] == columns
    by_polars = polars.read_parquet(path)
    connection = duckdb.connect()
    for name in columns:
        expected = arrow.column(name).to_pylist()
        assert by_polars[name].to_list() == expected, name
        assert pd.read_parquet(path, columns=[name])[name].map(lambda cell: _plain(cell)).tolist() == expected, name
        rows = connection.execute(f'SELECT "{name}" FROM read_parquet(?)', [str(path)]).fetchall()
        assert [_plain(row[0]) for row in rows] == expected, name
    # A per-base row per base, exploded by SQL: as many rows as the records have bases.
    (count,) = connection.execute('SELECT count(*) FROM (SELECT unnest("per_base_l0") FROM read_parquet(?))',
                                  [str(path)]).fetchone()  # fmt: skip
    assert count == sum(map(len, sequences))


def _plain(cell: object) -> object:
    """numpy arrays (pandas) and tuples as Python lists, for comparing with pyarrow's `to_pylist`."""
    if isinstance(cell, np.ndarray | list | tuple):
        return [_plain(value) for value in cell]
    return cell.item() if isinstance(cell, np.generic) else cell


def test_the_command_line_takes_layers_strands_and_per_base(demos, tmp_path) -> None:
    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nACGTACGTTTGACCA\n>b\nGGGATTACA\n")
    out = tmp_path / "out.parquet"
    assert main(["embed", str(fasta), "-o", str(out), "--checkpoint", str(demos["dnabert2"]), "--layers", "-1", "1",
                 "--strand", "both", "--per-token", "--per-base", "--device", "cpu"]) == 0  # fmt: skip
    written = pq.read_table(out)
    assert {"embedding_l-1", "embedding_l1", "per_base_l1", "token_text"} <= set(written.column_names)
    provenance = written.schema.metadata
    assert provenance[b"seqshard.strand"] == b"both" and json.loads(provenance[b"seqshard.per_base"]) is True
    assert main(["embed", str(fasta), "-o", str(out), "--checkpoint", str(demos["dnabert2"]), "--layers", "3"]) == 1


def test_served_columns_carry_every_layer_and_come_back_as_the_same_table(demos, tmp_path) -> None:
    from seqshard.io.parquet import task_table

    table = pq.read_table(embed(demos, tmp_path, "dnabert2", ["ACGTTGCA", "GGGATTACAT"], layers=(-1, 0)).attrs["path"])
    predictions = predictions_from_table("embed", table)
    assert set(predictions[0]["embeddings"]) == {"-1", "0"} and "embedding" not in predictions[0]
    assert predictions[0]["dimension"] == 64
    columns = columns_from_predictions("embed", ["r0", "r1"], predictions)
    base = {name: columns.pop(name) for name in ("id", "length", "n_tokens", "n_windows", "truncated")}
    again = task_table("embed", 64, base, columns, {})
    assert again.schema.remove_metadata().equals(table.schema.remove_metadata())
    assert again.to_pylist() == table.to_pylist()
