"""Pins native LucaOne against the official `lucaone` package: same random weights, same numbers, both formats.

The oracle is `lucaone.LucaGPLMModel` (the authors' Hugging Face port). Its masked-LM class cannot be built on
transformers 5, so the masked-LM layout is assembled from the backbone's state dict plus an `lm_head`, and the
head is checked against the port's own `LucaGPLMRobertaLMHead`. The original format is written here from the same
tensors with the training code's key names, independently of seqshard's own key mapping.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sys
import types
from pathlib import Path

import lucaone
import pytest
import torch
from lucaone.modeling_lucaone import LucaGPLMRobertaLMHead
from safetensors.torch import save_file

from seqshard.engine.chunks import score_records
from seqshard.engine.types import RunFigures, TaskSettings
from seqshard.io.fasta import SequenceRecord
from seqshard.models import ARCHITECTURES, get_loader
from seqshard.models.lucaone import (
    LAYER_NORM_EPS,
    VOCABULARY,
    LucaOneForMaskedLM,
    LucaOneLoadedModel,
    LucaOneTokenizer,
    load_lucaone,
    load_lucaone_masked_lm,
    read_alphabet_pickle,
    write_demo_checkpoint,
)

HIDDEN, LAYERS, HEADS = 64, 2, 4
TOLERANCE = 1e-5
# Different lengths (so batches pad), lower case, RNA's U and ambiguity codes.
SEQUENCES = {
    "dna": ["ACGTACGGATTACAGGCTTAACGGNNCCATGCAAGT", "ttgaca", "GGGCGCATATRYKMATCGATCGTTAGCATGCAGG" * 2],
    "rna": ["ACGUACGGAUUACAGG", "UUGACAUUU"],
    "protein": ["MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ", "MKTA", "ACDEFGHIKLMNPQRSTVWYXBUZOJ*"],
}
SEQ_TYPE = {"dna": "gene", "rna": "gene", "protein": "prot"}  # the port's names
TOKEN_TYPE = {"dna": 0, "rna": 0, "protein": 1}


def _randomise(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Every parameter random (biases and LayerNorms too), large enough that attention is far from uniform."""
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if "layer_norm" in name and name.endswith("weight"):
                parameter.copy_(1.0 + 0.1 * noise)
            elif name.endswith("bias"):
                parameter.copy_(0.02 * noise)
            else:
                parameter.copy_(0.1 * noise)


def _original_config(hf_config: dict[str, object], **changes: object) -> dict[str, object]:
    """config.json as the training repository writes it (config/lucaone_gplm.json's fields)."""
    keys = (
        "alphabet vocab_size hidden_size num_hidden_layers num_attention_heads max_position_embeddings "
        "type_vocab_size no_position_embeddings no_token_type_embeddings token_dropout use_embed_layer_norm "
        "use_last_layer_norm embed_scale ignore_index hidden_act pad_token_id unk_token_id bos_token_id "
        "eos_token_id sep_token_id mask_token_id"
    ).split()
    config = {"architectures": ["LucaOneGPLM"], "model_type": "lucaone_gplm", "attention_probs_dropout_prob": 0.1}
    config.update({key: hf_config[key] for key in keys})
    config.update(changes)
    return config


def _pickle_original_alphabet(path: Path, tokens: list[str]) -> None:
    """Pickle an `Alphabet` object the way the training code does: its class lives in `src.models.alphabet`."""
    module = types.ModuleType("src.models.alphabet")

    class Alphabet:
        def __init__(self) -> None:
            self.all_toks = list(tokens)
            self.tok_to_idx = {token: index for index, token in enumerate(tokens)}
            self.padding_idx, self.cls_idx, self.eos_idx = 0, 2, 3
            self.prepend_bos = self.append_eos = True

    Alphabet.__module__ = module.__name__
    Alphabet.__qualname__ = "Alphabet"
    module.Alphabet = Alphabet  # type: ignore[attr-defined]
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "src", types.ModuleType("src"))
        patch.setitem(sys.modules, "src.models", types.ModuleType("src.models"))
        patch.setitem(sys.modules, "src.models.alphabet", module)
        path.write_bytes(pickle.dumps(Alphabet(), pickle.HIGHEST_PROTOCOL))


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The official backbone with random weights, and the same tensors saved in every layout seqshard reads."""
    root = tmp_path_factory.mktemp("lucaone")
    generator = torch.Generator().manual_seed(5)
    config = lucaone.LucaGPLMConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS)
    model = lucaone.LucaGPLMModel(config).eval()
    _randomise(model, generator)

    dirs = {"hf_backbone": root / "hf_backbone"}
    model.save_pretrained(dirs["hf_backbone"])
    hf_config = json.loads((dirs["hf_backbone"] / "config.json").read_text())
    backbone = {key: value.detach().clone() for key, value in model.state_dict().items()}

    # The published masked-LM repositories: backbone under `lucaone.`, head as its own tensors (decoder a copy of
    # the token embeddings, as the authors' conversion stores it).
    head = LucaGPLMRobertaLMHead(HIDDEN, len(VOCABULARY)).eval()
    _randomise(head, generator)
    with torch.no_grad():
        head.decoder.weight.copy_(backbone["embeddings.embed_tokens.weight"])
    masked_lm = {f"lucaone.{key}": value for key, value in backbone.items()}
    masked_lm.update({f"lm_head.{key}": value.detach().clone() for key, value in head.state_dict().items()})
    dirs["hf_masked_lm"] = root / "hf_masked_lm"
    dirs["hf_masked_lm"].mkdir()
    save_file(masked_lm, str(dirs["hf_masked_lm"] / "model.safetensors"), metadata={"format": "pt"})
    (dirs["hf_masked_lm"] / "config.json").write_text(
        json.dumps({**hf_config, "architectures": ["LucaGPLMForMaskedLM"], "tie_word_embeddings": False})
    )

    # The original format: training-code keys, DistributedDataParallel's `module.` prefix, tied lm_head.weight,
    # a contact head and a pretraining head that must be ignored, config.json and a pickled Alphabet.
    original: dict[str, torch.Tensor] = {}
    for key, value in backbone.items():
        original[key.removeprefix("embeddings.").removeprefix("encoder.")] = value
    original["lm_head.weight"] = original["embed_tokens.weight"]
    for key in ("dense.weight", "dense.bias", "layer_norm.weight", "layer_norm.bias", "bias"):
        original[f"lm_head.{key}"] = masked_lm[f"lm_head.{key}"]
    original["contact_head.regression.weight"] = torch.randn(1, LAYERS * HEADS, generator=generator)
    original["contact_head.regression.bias"] = torch.zeros(1)
    original["classifier_list.0.weight"] = torch.randn(3, HIDDEN, generator=generator)
    dirs["original"] = root / "original"
    dirs["original"].mkdir()
    torch.save({f"module.{key}": value for key, value in original.items()}, dirs["original"] / "pytorch.pth")
    (dirs["original"] / "config.json").write_text(json.dumps(_original_config(hf_config)))
    _pickle_original_alphabet(dirs["original"] / "alphabet.pkl", list(VOCABULARY))

    loaded = {name: load_lucaone(str(path)) for name, path in dirs.items()}
    return {"model": model, "head": head, "dirs": dirs, "loaded": loaded, "hf_config": hf_config}


def _batch(ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, ids))
    input_ids = torch.full((len(ids), width), LucaOneTokenizer.pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.bool)
    for row, row_ids in enumerate(ids):
        input_ids[row, : len(row_ids)] = torch.tensor(row_ids)
        mask[row, : len(row_ids)] = True
    return input_ids, mask


def _mean_over_residues(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each sequence's own tokens: [CLS], [SEP] and padding excluded."""
    residues = mask.clone()
    residues[:, 0] = False
    residues[torch.arange(len(mask)), mask.sum(dim=1) - 1] = False
    weights = residues.unsqueeze(-1).float()
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1)


def _official_hidden(model: torch.nn.Module, input_ids: torch.Tensor, mask: torch.Tensor, token_type: int):
    with torch.no_grad():
        output = model(
            input_ids=input_ids,
            attention_mask=mask.long(),
            token_type_ids=torch.full_like(input_ids, token_type),
        )
    return output.last_hidden_state


# --- tokenizer ----------------------------------------------------------------------------------------------


def test_tokenizer_pins_the_published_ids() -> None:
    dna, rna, protein = (LucaOneTokenizer(molecule) for molecule in ("dna", "rna", "protein"))
    assert len(VOCABULARY) == 39 and VOCABULARY[5:10] == ("1", "2", "3", "4", "5") and VOCABULARY[38] == "*"
    assert dna.encode("ACGTN") == [2, 5, 7, 8, 6, 9, 3]
    assert dna.encode("acgtn") == dna.encode("ACGTN")
    assert rna.encode("ACGUN") == dna.encode("ACGTN")
    assert dna.encode("ACGU") == dna.encode("ACGT")  # U is T for DNA too, as in the original recoding
    assert dna.encode("RYKM-") == [2, 9, 9, 9, 9, 9, 3]  # anything but A/C/G/T/U is '5'
    assert protein.encode("MKTA") == [2, 26, 21, 17, 11, 3]
    assert protein.encode("mkta") == protein.encode("MKTA")  # the port's tokenizer would give [UNK]s here
    assert protein.encode("A*-.1") == [2, 11, 38, 37, 36, 1, 3]  # digits are nucleotide tokens: [UNK] in a protein
    assert protein.encode("ACGT") != dna.encode("ACGT")  # the molecule decides the ids
    assert (dna.token_type, rna.token_type, protein.token_type) == (0, 0, 1)
    assert protein.encode_with_offsets("MKTA") == (
        protein.encode("MKTA"),
        [(0, 0), (0, 1), (1, 2), (2, 3), (3, 4), (0, 0)],
    )


@pytest.mark.parametrize("molecule", ["dna", "rna", "protein"])
def test_tokenizer_matches_the_official_one(molecule: str) -> None:
    official = lucaone.LucaGPLMTokenizer()
    ours = LucaOneTokenizer(molecule)
    for sequence in SEQUENCES[molecule]:
        # The port does not upper-case proteins, so it gets them upper-cased.
        text = sequence.upper() if molecule == "protein" else sequence
        assert ours.encode(sequence) == official.encode(text, seq_type=SEQ_TYPE[molecule])


def test_unbound_tokenizer_and_model_refuse_to_guess_the_molecule(oracle) -> None:
    loaded = oracle["loaded"]["hf_backbone"]
    with pytest.raises(RuntimeError, match="for_molecule"):
        loaded.tokenizer.encode("ACGT")
    with pytest.raises(ValueError, match="token types"):
        loaded.model(torch.tensor([[2, 5, 3]]), torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="unknown molecule"):
        loaded.for_molecule("xna")
    bound = loaded.for_molecule("protein")
    assert bound.extra["molecule"] == "protein" and loaded.extra["molecule"] is None
    assert next(bound.model.parameters()) is next(loaded.model.parameters())  # shared, not copied
    assert bound.for_molecule("dna").model.token_type == 0
    assert loaded.token_types == {"dna": 0, "rna": 0, "protein": 1}
    assert (loaded.max_tokens, loaded.default_window) == (4096, 4094)
    # Token types passed explicitly (as inference does from `token_types`) give what the binding gives.
    input_ids, mask = _batch([bound.tokenizer.encode(sequence) for sequence in SEQUENCES["protein"]])
    with torch.no_grad():
        by_binding = bound.model(input_ids, mask)
        explicit = bound.model(input_ids, mask, torch.full_like(input_ids, loaded.token_types["protein"]))
        unbound = loaded.model(input_ids, mask, torch.full_like(input_ids, 1))
    torch.testing.assert_close(explicit, by_binding)
    torch.testing.assert_close(unbound, by_binding)


# --- oracle ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["hf_backbone", "hf_masked_lm", "original"])
@pytest.mark.parametrize("molecule", ["dna", "rna", "protein"])
def test_hidden_states_and_pooled_embeddings_match_the_official_package(oracle, layout: str, molecule: str) -> None:
    loaded = oracle["loaded"][layout].for_molecule(molecule)
    assert loaded.extra["layout"] == layout
    input_ids, mask = _batch([loaded.tokenizer.encode(sequence) for sequence in SEQUENCES[molecule]])
    assert not bool(mask.all())  # the batch is padded
    reference = _official_hidden(oracle["model"], input_ids, mask, TOKEN_TYPE[molecule])
    with torch.no_grad():
        hidden = loaded.model(input_ids, mask)
    hidden_diff = (hidden - reference)[mask].abs().max().item()
    pooled_diff = (_mean_over_residues(hidden, mask) - _mean_over_residues(reference, mask)).abs().max().item()
    print(f"\noracle max |diff| {layout}/{molecule}: hidden {hidden_diff:.3g}, mean-pooled {pooled_diff:.3g}")
    assert hidden_diff < TOLERANCE
    assert pooled_diff < TOLERANCE
    assert reference[mask].abs().max().item() > 0.5  # the comparison is not between near-zero numbers


@pytest.mark.parametrize("layout", ["hf_masked_lm", "original"])
def test_masked_lm_head_matches_the_official_head(oracle, layout: str) -> None:
    loaded = oracle["loaded"][layout]
    assert loaded.mlm_head is not None
    assert oracle["loaded"]["hf_backbone"].mlm_head is None
    tokenizer = LucaOneTokenizer("dna")
    input_ids, mask = _batch([tokenizer.encode(sequence) for sequence in SEQUENCES["dna"]])
    input_ids[0, 3] = tokenizer.mask_id
    with torch.no_grad():
        reference = oracle["head"](_official_hidden(oracle["model"], input_ids, mask, 0))
        logits = loaded.mlm_head(loaded.model(input_ids, mask, token_type_ids=0))
    assert logits.shape == (*input_ids.shape, len(VOCABULARY))
    diff = (logits - reference)[mask].abs().max().item()
    print(f"\noracle max |diff| masked-LM logits ({layout}): {diff:.3g}")
    assert diff < TOLERANCE
    full = load_lucaone_masked_lm(str(oracle["dirs"][layout]))
    assert isinstance(full, LucaOneForMaskedLM)
    torch.testing.assert_close(full(input_ids, mask, 0), logits)


def test_official_package_reads_our_demo_and_both_demo_layouts_agree(tmp_path: Path) -> None:
    hf = write_demo_checkpoint(tmp_path / "hf", layout="hf", seed=3)
    original = write_demo_checkpoint(tmp_path / "original", layout="original", seed=3)
    assert {path.name for path in original.iterdir()} == {"config.json", "pytorch.pth", "alphabet.pkl"}
    assert read_alphabet_pickle(original / "alphabet.pkl") == list(VOCABULARY)
    state = torch.load(original / "pytorch.pth", weights_only=True)
    assert state["lm_head.weight"].data_ptr() == state["embed_tokens.weight"].data_ptr()  # tied, as published
    assert "layers.1.self_attn.rot_emb.inv_freq" in state and "contact_head.regression.weight" in state
    tokenizer = LucaOneTokenizer("protein")
    input_ids, mask = _batch([tokenizer.encode(sequence) for sequence in SEQUENCES["protein"]])
    outputs = []
    for directory in (hf, original):
        loaded = load_lucaone(str(directory), molecule="protein")
        assert loaded.digest.startswith("sha256:")
        with torch.no_grad():
            hidden = loaded.model(input_ids, mask)
            outputs.append((hidden, loaded.mlm_head(hidden)))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)

    official = lucaone.LucaGPLMModel.from_pretrained(str(hf)).eval()  # the port reads the demo's layout
    diff = (outputs[0][0] - _official_hidden(official, input_ids, mask, 1))[mask].abs().max().item()
    assert diff < TOLERANCE


def test_sharded_port_checkpoint_loads(oracle, tmp_path: Path) -> None:
    oracle["model"].save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    sharded = load_lucaone(str(tmp_path / "sharded"), molecule="dna")
    single = oracle["loaded"]["hf_backbone"].for_molecule("dna")
    input_ids, mask = _batch([single.tokenizer.encode(sequence) for sequence in SEQUENCES["dna"]])
    with torch.no_grad():
        torch.testing.assert_close(sharded.model(input_ids, mask), single.model(input_ids, mask), rtol=0, atol=0)
    assert sharded.digest != single.digest


# --- behaviour the spec pins ----------------------------------------------------------------------------------


def test_layer_norm_eps_and_ffn_width_come_from_the_reference_not_the_config_fields(oracle) -> None:
    hf_config = oracle["hf_config"]
    assert hf_config["layer_norm_eps"] == 1e-12 and hf_config["ffn_dim"] == 10240  # fields the layers ignore
    loaded = load_lucaone(str(oracle["dirs"]["hf_backbone"]), molecule="dna")
    norms = [module for module in loaded.model.modules() if isinstance(module, torch.nn.LayerNorm)]
    assert len(norms) == 2 * LAYERS + 1 and {norm.eps for norm in norms} == {LAYER_NORM_EPS}
    assert loaded.model.model.encoder.layers[0].fc1.out_features == 4 * HIDDEN
    # The oracle comparison would catch the config's eps: with it, outputs move far beyond the tolerance.
    input_ids, mask = _batch([loaded.tokenizer.encode(sequence) for sequence in SEQUENCES["dna"]])
    reference = _official_hidden(oracle["model"], input_ids, mask, 0)
    for norm in norms:
        norm.eps = 1e-12
    with torch.no_grad():
        assert (loaded.model(input_ids, mask) - reference)[mask].abs().max().item() > 1e-4


def test_token_type_changes_the_output(oracle) -> None:
    model = oracle["loaded"]["hf_backbone"].model
    input_ids, mask = _batch([LucaOneTokenizer("dna").encode(SEQUENCES["dna"][0])])
    with torch.no_grad():
        as_nucleotide = model(input_ids, mask, token_type_ids=0)
        as_protein = model(input_ids, mask, token_type_ids=1)
        per_position = model(input_ids, mask, token_type_ids=torch.ones_like(input_ids))
    assert (as_nucleotide - as_protein).abs().max().item() > 1e-2
    torch.testing.assert_close(per_position, as_protein)


@pytest.mark.parametrize("molecule", ["dna", "protein"])
def test_padding_does_not_change_real_positions(oracle, molecule: str) -> None:
    loaded = oracle["loaded"]["hf_masked_lm"].for_molecule(molecule)
    ids = [loaded.tokenizer.encode(sequence) for sequence in SEQUENCES[molecule]]
    input_ids, mask = _batch(ids)
    with torch.no_grad():
        batched = loaded.model(input_ids, mask)
        for row, row_ids in enumerate(ids):
            alone = loaded.model(torch.tensor([row_ids]), torch.ones(1, len(row_ids), dtype=torch.bool))
            assert (batched[row, : len(row_ids)] - alone[0]).abs().max().item() < TOLERANCE


def test_token_dropout_rescales_embeddings_as_the_original(oracle, tmp_path: Path) -> None:
    # Same weights, token_dropout switched on in config.json.
    source = oracle["dirs"]["hf_backbone"]
    shutil.copytree(source, tmp_path / "dropout")
    config = json.loads((source / "config.json").read_text())
    (tmp_path / "dropout" / "config.json").write_text(json.dumps({**config, "token_dropout": True}))
    plain = oracle["loaded"]["hf_backbone"].for_molecule("dna")
    dropout = load_lucaone(str(tmp_path / "dropout"), molecule="dna")
    assert dropout.extra["config"]["token_dropout"] is True

    input_ids, mask = _batch([plain.tokenizer.encode(sequence) for sequence in SEQUENCES["dna"]])
    embed_plain = plain.model.model.embeddings(input_ids, mask, 0)
    embed_dropout = dropout.model.model.embeddings(input_ids, mask, 0)
    torch.testing.assert_close(embed_dropout, 0.88 * embed_plain)  # nothing masked: scaled by 1 − 0.15·0.8
    with torch.no_grad():
        assert (dropout.model(input_ids, mask) - plain.model(input_ids, mask))[mask].abs().max().item() > 1e-3

    # With [MASK]s: those rows are zero and the rest scale by 0.88 / (1 − masked/real) per sequence.
    masked_ids = input_ids.clone()
    masked_ids[0, [1, 2, 3]] = LucaOneTokenizer.mask_id
    embed_masked = dropout.model.model.embeddings(masked_ids, mask, 0)
    real = int(mask[0].sum())
    assert embed_masked[0, [1, 2, 3]].abs().max().item() == 0.0
    expected = plain.model.model.embeddings(masked_ids, mask, 0)[0, 4:real] * 0.88 / (1 - 3 / real)
    torch.testing.assert_close(embed_masked[0, 4:real], expected)
    torch.testing.assert_close(embed_masked[1], embed_dropout[1])  # other rows keep their own ratio
    assert embed_masked[~mask].abs().max().item() == 0.0  # padded rows zeroed after the rescaling

    # The port applies the same formula only in training mode (with no dropout configured, so deterministic).
    official = oracle["model"]
    official.embeddings.token_dropout = True
    official.train()
    try:
        reference = _official_hidden(official, masked_ids, mask, 0)
    finally:
        official.embeddings.token_dropout = False
        official.eval()
    with torch.no_grad():
        diff = (dropout.model(masked_ids, mask) - reference)[mask].abs().max().item()
    assert diff < TOLERANCE


def test_bf16_weights_run_without_autocast(oracle) -> None:
    fp32 = oracle["loaded"]["hf_backbone"].for_molecule("protein")
    bf16 = load_lucaone(str(oracle["dirs"]["hf_backbone"]), dtype=torch.bfloat16, molecule="protein")
    input_ids, mask = _batch([fp32.tokenizer.encode(sequence) for sequence in SEQUENCES["protein"]])
    with torch.no_grad():
        low = bf16.model(input_ids, mask)
        high = fp32.model(input_ids, mask)
    assert low.dtype == torch.bfloat16
    assert (low.float() - high)[mask].abs().max().item() < 0.25


# --- loading: formats, safety, registration -------------------------------------------------------------------


class _Payload:
    def __reduce__(self):
        return (os.getcwd, ())


def test_alphabet_pickle_is_read_without_running_code(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(ValueError, match="refusing to load"):
        read_alphabet_pickle(evil)
    plain = tmp_path / "list.pkl"
    plain.write_bytes(pickle.dumps(list(VOCABULARY)))
    assert read_alphabet_pickle(plain) == list(VOCABULARY)


def test_a_foreign_vocabulary_or_stray_tensors_are_refused(oracle, tmp_path: Path) -> None:
    checkpoint = tmp_path / "original"
    shutil.copytree(oracle["dirs"]["original"], checkpoint)
    _pickle_original_alphabet(checkpoint / "alphabet.pkl", list(reversed(VOCABULARY)))
    with pytest.raises(ValueError, match="alphabet.pkl is not LucaOne"):
        load_lucaone(str(checkpoint))

    shutil.copy(oracle["dirs"]["original"] / "alphabet.pkl", checkpoint / "alphabet.pkl")
    state = torch.load(checkpoint / "pytorch.pth", weights_only=True)
    torch.save({**state, "module.something_else.weight": torch.zeros(1)}, checkpoint / "pytorch.pth")
    with pytest.raises(ValueError, match="something_else"):
        load_lucaone(str(checkpoint))
    del state["module.layers.1.fc2.bias"]
    torch.save(state, checkpoint / "pytorch.pth")
    with pytest.raises(ValueError, match=r"missing tensors: .*layers\.1\.fc2\.bias"):
        load_lucaone(str(checkpoint))


def test_registered_for_all_three_molecules_and_usable_by_the_inference_path(oracle) -> None:
    assert get_loader("lucaone") is load_lucaone
    assert ARCHITECTURES["lucaone"].molecules == frozenset({"dna", "rna", "protein"})
    loaded = oracle["loaded"]["original"]
    assert isinstance(loaded, LucaOneLoadedModel) and loaded.molecules == ARCHITECTURES["lucaone"].molecules
    bound = loaded.for_molecule("protein")  # the one step inference needs before tokenizing
    records = [SequenceRecord(i, f"p{i}", sequence, 1) for i, sequence in enumerate(SEQUENCES["protein"])]

    def score(task: str) -> dict[str, object]:
        figures = RunFigures({}, "cpu", "fp32", 1, 64)
        settings = TaskSettings(task=task)
        scored = score_records(
            bound, records, settings, molecule="protein", batch_tokens=64, dtype="fp32", figures=figures
        )
        return scored.columns[task]

    embeddings = torch.tensor(score("embed")["embedding"].to_pylist())
    input_ids, mask = _batch([LucaOneTokenizer("protein").encode(sequence) for sequence in SEQUENCES["protein"]])
    reference = _mean_over_residues(_official_hidden(oracle["model"], input_ids, mask, 1), mask)
    assert (embeddings - reference).abs().max().item() < TOLERANCE
    pll = score("mlm_score")["pll"]
    assert len(pll) == len(records) and all(value < 0 for value in pll)


@pytest.mark.parametrize("molecule", ["dna", "protein"])
def test_layers_equal_the_official_hidden_states(oracle, molecule: str) -> None:
    """Every layer's state equals the official package's `output_hidden_states` at that layer (its numbering is
    fair-esm's: 0 the embeddings, N after `last_layer_norm`), from one pass of seqshard's, pooled or not."""
    bound = oracle["loaded"]["hf_masked_lm"].for_molecule(molecule)
    sequences = SEQUENCES[molecule]
    input_ids, mask = _batch([bound.tokenizer.encode(sequence) for sequence in sequences])
    with torch.no_grad():
        reference = oracle["model"](input_ids=input_ids, attention_mask=mask.long(),
                                    token_type_ids=torch.full_like(input_ids, TOKEN_TYPE[molecule]),
                                    output_hidden_states=True).hidden_states  # fmt: skip
        states = bound.model(input_ids, mask, layers=tuple(range(LAYERS + 1)))
    assert len(reference) == LAYERS + 1
    records = [SequenceRecord(i, f"s{i}", sequence, 1) for i, sequence in enumerate(sequences)]
    settings = TaskSettings(layers=tuple(range(LAYERS + 1)))
    columns = score_records(bound, records, settings, molecule=molecule, batch_tokens=256, dtype="fp32",
                            figures=RunFigures({}, "cpu", "fp32", 1, 256)).columns["embed"]  # fmt: skip
    for layer in range(LAYERS + 1):
        assert (states[layer] - reference[layer])[mask].abs().max().item() < TOLERANCE, layer
        pooled = torch.tensor(columns[f"embedding_l{layer}"].to_pylist())
        assert (pooled - _mean_over_residues(reference[layer], mask)).abs().max().item() < TOLERANCE, layer
