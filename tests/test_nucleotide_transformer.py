"""Pins native Nucleotide Transformer (v1) against transformers' own EsmForMaskedLM and EsmTokenizer on the same
random weights and vocabulary: tokenization (N runs, remainders, lengths not divisible by 6), each token's base span,
hidden states, embeddings and masked-LM logits; and the engine's handling of a model with no end token (windows,
truncation, token counts)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import EsmConfig as HFEsmConfig
from transformers import EsmForMaskedLM as HFEsmForMaskedLM
from transformers import EsmTokenizer

from seqshard.engine.chunks import score_records
from seqshard.engine.types import RunFigures, TaskSettings
from seqshard.io.fasta import SequenceRecord
from seqshard.models import ARCHITECTURES, get_loader
from seqshard.models.nucleotide_transformer import (
    VOCABULARY,
    NucleotideTransformerTokenizer,
    load_nucleotide_transformer,
    write_demo_checkpoint,
)

HIDDEN, LAYERS, HEADS = 64, 2, 4
TOLERANCE = 1e-5
rng = random.Random(3)


def _dna(length: int, n_rate: float = 0.0) -> str:
    bases = []
    while len(bases) < length:
        if rng.random() < n_rate:
            bases.extend("N" * rng.randint(1, 9))  # runs of N of any length
        else:
            bases.append(rng.choice("ACGT"))
    return "".join(bases[:length])


SEQUENCES = ["ACGTACGTNNACGTTTGACCAGTACG", "ACGTAC", "ACGTA", "N", "NNNNNNNNNNNNN", "ACGTACNACGTAC", _dna(301, 0.03),
             _dna(997, 0.01), _dna(6 * 50), _dna(41)]  # fmt: skip


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """transformers' EsmForMaskedLM in the layout of InstaDeepAI/nucleotide-transformer-500m-human-ref (learned
    positions, eps 1e-12, untied decoder), random weights, saved by transformers itself with the 4,107-token vocab."""
    directory = tmp_path_factory.mktemp("nt") / "published"
    config = HFEsmConfig(
        vocab_size=len(VOCABULARY), hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=4 * HIDDEN, max_position_embeddings=1002, position_embedding_type="absolute",
        layer_norm_eps=1e-12, token_dropout=False, emb_layer_norm_before=False, pad_token_id=1, mask_token_id=2,
        tie_word_embeddings=False, architectures=["EsmForMaskedLM"],
    )  # fmt: skip
    torch.manual_seed(4)
    model = HFEsmForMaskedLM(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "LayerNorm" in name or "layer_norm" in name:
                parameter.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn_like(parameter))
            else:
                parameter.normal_(0.0, 0.1)
    model.save_pretrained(directory)
    (directory / "vocab.txt").write_text("\n".join(VOCABULARY))
    EsmTokenizer(str(directory / "vocab.txt"), eos_token=None, model_max_length=1000).save_pretrained(directory)
    return {"model": model, "dir": directory, "loaded": load_nucleotide_transformer(directory),
            "tokenizer": EsmTokenizer.from_pretrained(directory)}  # fmt: skip


def _score(loaded, sequences: list[str], **settings: object) -> dict[str, object]:
    records = [SequenceRecord(i, f"s{i}", sequence, 1) for i, sequence in enumerate(sequences)]
    task = TaskSettings(**settings)
    figures = RunFigures({}, "cpu", "fp32", 1, 4096)
    scored = score_records(loaded, records, task, molecule="dna", batch_tokens=4096, dtype="fp32", figures=figures)
    return {**scored.columns[task.task], **scored.base}


# --- tokenizer ------------------------------------------------------------------------------------------------


def test_tokenization_equals_the_published_tokenizer(oracle) -> None:
    ours, reference = oracle["loaded"].tokenizer, oracle["tokenizer"]
    assert isinstance(ours, NucleotideTransformerTokenizer)
    assert ours.frame == (1, 0) and ours.vocabulary.cls_id == 3 and ours.pad_id == 1 and ours.mask_id == 2
    assert len(VOCABULARY) == 4107 and VOCABULARY[6] == "AAAAAA" and VOCABULARY[-5:] == ("A", "T", "C", "G", "N")
    many = [*SEQUENCES, *(_dna(rng.randint(1, 200), 0.05) for _ in range(200)), "ACGTRACGTACGTACNNNNAC"]
    assert any(len(sequence) % 6 for sequence in many) and any("NN" in sequence for sequence in many)
    flat, starts = ours.encode_flat(many)
    for index, sequence in enumerate(many):
        expected = reference(sequence)["input_ids"]
        assert ours.encode(sequence) == expected, sequence
        assert flat[starts[index] : starts[index + 1]].tolist() == expected
    # <cls> then 6-mers from the left; a remainder shorter than 6 and every N are single bases; no <eos>.
    tokens = [VOCABULARY[i] for i in ours.encode("ACGTACGTNNACGTTTGACCA")]
    assert tokens == ["<cls>", "ACGTAC", "G", "T", "N", "N", "ACGTTT", "G", "A", "C", "C", "A"]


def test_each_token_spans_exactly_its_bases(oracle) -> None:
    tokenizer = oracle["loaded"].tokenizer
    for (ids, spans), sequence in zip(tokenizer.encode_many_arrays(SEQUENCES), SEQUENCES, strict=True):
        assert tuple(spans[0]) == (0, 0)  # <cls>
        pieces = [sequence[start:end] for start, end in spans[1:]]
        assert "".join(pieces) == sequence  # consecutive, no gap, no overlap
        assert [VOCABULARY[i] for i in ids[1:]] == pieces
        assert set(map(len, pieces)) <= {1, 6}
    assert tokenizer.encode_with_offsets("ACGTACGA") == ([3, 728, 4105, 4102], [(0, 0), (0, 6), (6, 7), (7, 8)])


def test_a_run_of_other_ambiguity_codes_is_one_unk_per_base(oracle) -> None:
    ours, reference = oracle["loaded"].tokenizer, oracle["tokenizer"]
    assert ours.encode("ACRGT") == reference("ACRGT")["input_ids"]  # a single one agrees
    assert ours.encode("ACRYGT") == [3, 4102, 4104, 0, 0, 4105, 4103]  # the reference would merge R and Y
    assert reference("ACRYGT")["input_ids"] == [3, 4102, 4104, 0, 4105, 4103]


# --- fidelity -------------------------------------------------------------------------------------------------


def test_hidden_states_embeddings_and_logits_equal_transformers(oracle) -> None:
    loaded, model = oracle["loaded"], oracle["model"]
    assert loaded.extra["layout"] == "masked_lm" and (loaded.max_tokens, loaded.default_window) == (1000, 4995)
    batch = oracle["tokenizer"](SEQUENCES, padding=True, return_tensors="pt")
    mask = batch["attention_mask"].bool()
    assert not bool(mask.all())
    with torch.no_grad():
        reference = model(**batch, output_hidden_states=True)
        hidden = loaded.model(batch["input_ids"], mask)
        logits = loaded.mlm_head(hidden)
    hidden_diff = (hidden - reference.hidden_states[-1])[mask].abs().max().item()
    logits_diff = (logits - reference.logits)[mask].abs().max().item()
    own = mask.clone()
    own[:, 0] = False  # <cls>; there is no <eos>
    weights = own.unsqueeze(-1).float()
    expected = (reference.hidden_states[-1] * weights).sum(1) / weights.sum(1)
    embedding = torch.tensor(np.asarray(_score(loaded, SEQUENCES)["embedding"].to_pylist()))
    mean_diff = (embedding - expected).abs().max().item()
    cls = torch.tensor(np.asarray(_score(loaded, SEQUENCES, pooling="cls")["embedding"].to_pylist()))
    cls_diff = (cls - reference.hidden_states[-1][:, 0]).abs().max().item()
    print(f"\nNT vs transformers: hidden {hidden_diff:.3g}, logits {logits_diff:.3g}, mean {mean_diff:.3g}, "
          f"<cls> {cls_diff:.3g}")  # fmt: skip
    assert max(hidden_diff, logits_diff, mean_diff, cls_diff) < TOLERANCE
    assert expected.abs().max().item() > 0.1


def test_windows_own_every_base_once_and_match_the_reference_window_by_window(oracle) -> None:
    loaded, model = oracle["loaded"], oracle["model"]
    sequence = _dna(12_000, 0.002)
    settings = TaskSettings()
    from seqshard.engine.windows import ModelFit

    chunk = ModelFit.of(loaded, settings).encode([sequence], loaded.tokenizer)
    assert chunk.n_inputs >= 3 and chunk.lengths.max() <= 1000 and chunk.n_frame == 1
    columns = _score(loaded, [sequence], per_token=True)
    n_owned = int(chunk.n_owned.sum())
    assert columns["n_tokens"][0] == n_owned + 1 and columns["n_windows"][0] == chunk.n_inputs
    assert len(columns["per_token"][0]) == n_owned
    total = torch.zeros(HIDDEN, dtype=torch.float64)
    for index in range(chunk.n_inputs):  # the reference on each window's own ids
        ids = torch.tensor(chunk.ids[chunk.starts[index] : chunk.starts[index + 1]], dtype=torch.long)[None]
        with torch.no_grad():
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
        owned = torch.from_numpy(chunk.owned[chunk.starts[index] : chunk.starts[index + 1]])
        total += hidden[owned].double().sum(0)
    embedding = torch.tensor(columns["embedding"].to_pylist()[0], dtype=torch.float64)
    assert (embedding - total / n_owned).abs().max().item() < TOLERANCE


def test_truncation_keeps_the_first_tokens_and_no_end_token(oracle) -> None:
    loaded = oracle["loaded"]
    sequence = _dna(7000)
    from seqshard.engine.windows import encode_sequence

    encoded = encode_sequence(sequence, loaded.tokenizer, max_tokens=1000, mode="truncate", window=1, overlap=0)
    assert encoded.truncated and len(encoded.windows) == 1
    window = encoded.windows[0]
    assert window.ids == loaded.tokenizer.encode(sequence)[:1000]  # <cls> + 999 6-mers, nothing appended
    assert window.owned == [False] + [True] * 999 and encoded.n_tokens == 1000


def test_mlm_score_masks_each_token_once(oracle) -> None:
    loaded, model = oracle["loaded"], oracle["model"]
    sequence = SEQUENCES[0]
    columns = _score(loaded, [sequence], task="mlm_score")
    ids = torch.tensor([loaded.tokenizer.encode(sequence)])
    n = ids.shape[1] - 1
    copies = ids.repeat(n, 1)
    positions = torch.arange(1, n + 1)
    copies[torch.arange(n), positions] = loaded.tokenizer.mask_id
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=copies).logits.double(), dim=-1)
    expected = logp[torch.arange(n), positions, ids[0, positions]].sum().item()
    assert columns["n_scored"][0] == n and abs(columns["pll"][0] - expected) < 1e-4


# --- layout and refusals --------------------------------------------------------------------------------------


def test_demo_checkpoint_is_read_by_transformers_alike(tmp_path: Path) -> None:
    directory = write_demo_checkpoint(tmp_path / "demo", seed=1)
    config = json.loads((directory / "config.json").read_text())
    assert config["position_embedding_type"] == "absolute" and config["max_position_embeddings"] == 1002
    assert config["tie_word_embeddings"] is False and config["vocab_size"] == 4107
    reference = HFEsmForMaskedLM.from_pretrained(directory).eval()
    tokenizer = EsmTokenizer.from_pretrained(directory)
    loaded = load_nucleotide_transformer(directory)
    ids = torch.tensor([loaded.tokenizer.encode(SEQUENCES[6])])
    assert tokenizer(SEQUENCES[6])["input_ids"] == ids[0].tolist()
    with torch.no_grad():
        torch.testing.assert_close(loaded.mlm_head(loaded.model(ids)), reference(input_ids=ids).logits)


def test_v2_remote_code_and_foreign_vocabularies_are_refused(oracle, tmp_path: Path) -> None:
    copy = tmp_path / "v2"
    shutil.copytree(oracle["dir"], copy)
    config = json.loads((copy / "config.json").read_text())
    v2 = {
        **config,
        "position_embedding_type": "rotary",
        "add_bias_fnn": False,
        "auto_map": {"AutoConfig": "esm_config.EsmConfig", "AutoModelForMaskedLM": "modeling_esm.EsmForMaskedLM"},
    }
    (copy / "config.json").write_text(json.dumps(v2))
    with pytest.raises(ValueError, match=r"config.json names remote code .*Nucleotide Transformer v2 is not supported"):
        load_nucleotide_transformer(copy)
    (copy / "config.json").write_text(json.dumps(config))
    (copy / "vocab.txt").write_text("\n".join(VOCABULARY[:100]))
    with pytest.raises(ValueError, match=r"vocab.txt: not a 6-mer vocabulary"):
        load_nucleotide_transformer(copy)


def test_registered_for_dna(oracle) -> None:
    assert get_loader("nucleotide_transformer") is load_nucleotide_transformer
    assert ARCHITECTURES["nucleotide_transformer"].molecules == frozenset({"dna"})
    assert "CC BY-NC-SA 4.0" in ARCHITECTURES["nucleotide_transformer"].description


def test_more_tokens_than_learned_positions_is_a_one_line_error(oracle) -> None:
    with pytest.raises(ValueError, match=r"inputs of 1200 tokens exceed the 1000 positions .*max_tokens to 1000"):
        _score(oracle["loaded"], [_dna(6 * 1199)], max_tokens=1200)


def test_inputs_of_the_full_length_padded_past_the_position_table_run(oracle) -> None:
    """A 1,000-token input is padded to a 1,008-token bucket beside a shorter one: padding takes no position."""
    loaded, model = oracle["loaded"], oracle["model"]
    sequences = [_dna(6 * 999), _dna(6 * 990)]
    columns = _score(loaded, sequences)
    assert list(columns["n_tokens"]) == [1000, 991] and list(columns["n_windows"]) == [1, 1]
    ids = torch.tensor([loaded.tokenizer.encode(sequences[0])])
    with torch.no_grad():
        expected = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0, 1:].mean(0)
    assert (torch.tensor(columns["embedding"].to_pylist()[0]) - expected).abs().max().item() < TOLERANCE


def test_layers_equal_transformers_hidden_states(oracle) -> None:
    """Every layer's pooled state equals transformers' `output_hidden_states` at that layer (0: the embeddings,
    N: after the final LayerNorm, as fair-esm numbers them), from one pass of seqshard's."""
    loaded, model = oracle["loaded"], oracle["model"]
    batch = oracle["tokenizer"](SEQUENCES, padding=True, return_tensors="pt")
    mask = batch["attention_mask"].bool()
    own = mask.clone()
    own[:, 0] = False  # <cls>; there is no <eos>
    weights = own.unsqueeze(-1).float()
    with torch.no_grad():
        reference = model(**batch, output_hidden_states=True).hidden_states
        states = loaded.model(batch["input_ids"], mask, layers=tuple(range(LAYERS + 1)))
    columns = _score(loaded, SEQUENCES, layers=tuple(range(-1, -LAYERS - 2, -1)))
    for layer in range(LAYERS + 1):
        expected = (reference[layer] * weights).sum(1) / weights.sum(1)
        pooled = torch.tensor(np.asarray(columns[f"embedding_l{layer - LAYERS - 1}"].to_pylist()))
        assert (pooled - expected).abs().max().item() < TOLERANCE, layer
        assert (states[layer] - reference[layer])[mask].abs().max().item() < TOLERANCE, layer
