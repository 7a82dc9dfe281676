"""Pins native ESM-2 against fair-esm 2.0.0 (the original implementation) and transformers' EsmForMaskedLM on the
same random weights: embeddings (mean over residues and the <cls> row), masked-LM log-probabilities and
pseudo-log-likelihoods with token dropout, for proteins shorter and longer than the model's window.

The checkpoint is written in the published Hugging Face layout from fair-esm's own tensors: keys renamed here (the
mapping the published conversion applies), config.json by transformers' EsmConfig, tokenizer files by transformers'
EsmTokenizer. seqshard's loader then reads it as it reads facebook/esm2_*.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

esm = pytest.importorskip("esm", reason="fair-esm 2.0.0 is the oracle: pip install --no-deps fair-esm==2.0.0")
from esm.model.esm2 import ESM2  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import EsmConfig as HFEsmConfig  # noqa: E402
from transformers import EsmForMaskedLM as HFEsmForMaskedLM  # noqa: E402
from transformers import EsmForSequenceClassification, EsmTokenizer  # noqa: E402

from seqshard.engine.chunks import score_records  # noqa: E402
from seqshard.engine.types import RunFigures, TaskSettings  # noqa: E402
from seqshard.engine.windows import plan_windows  # noqa: E402
from seqshard.io.fasta import SequenceRecord  # noqa: E402
from seqshard.models import ARCHITECTURES, get_loader  # noqa: E402
from seqshard.models.esm2 import ESM2_ALPHABET, Esm2Tokenizer, load_esm2, write_demo_checkpoint  # noqa: E402

LAYERS, HIDDEN, HEADS = 2, 64, 4
TOLERANCE = 1e-5
AMINO = "ACDEFGHIKLMNPQRSTVWY"
rng = random.Random(7)
SHORT = ["MKTAYIAKQRQISFVKSHFSRQ", "MKTA", "ACDEFGHIKLMNPQRSTVWYXBUZO", "".join(rng.choices(AMINO, k=300))]
LONG = "".join(rng.choices(AMINO, k=2500))  # more than the 1,022 residues one input takes


def _published_state(model: ESM2) -> dict[str, torch.Tensor]:
    """fair-esm's tensors under the published Hugging Face keys (what converting a fair-esm checkpoint gives)."""
    renames = {"self_attn.q_proj": "attention.self.query", "self_attn.k_proj": "attention.self.key",
               "self_attn.v_proj": "attention.self.value", "self_attn.out_proj": "attention.output.dense",
               "self_attn.rot_emb.inv_freq": "attention.self.rotary_embeddings.inv_freq",
               "self_attn_layer_norm": "attention.LayerNorm", "final_layer_norm": "LayerNorm",
               "fc1": "intermediate.dense", "fc2": "output.dense"}  # fmt: skip
    state = {}
    for key, value in model.state_dict().items():
        value = value.detach().clone()
        if key.startswith("layers."):
            _, layer, rest = key.split(".", 2)
            for old, new in renames.items():
                if rest.startswith(old):
                    rest = new + rest[len(old) :]
                    break
            state[f"esm.encoder.layer.{layer}.{rest}"] = value
        elif key == "embed_tokens.weight":
            state["esm.embeddings.word_embeddings.weight"] = value
        elif key.startswith("emb_layer_norm_after."):
            state[f"esm.encoder.{key}"] = value
        elif key.startswith("contact_head."):
            state[f"esm.{key}"] = value
        elif key == "lm_head.weight":
            state["lm_head.decoder.weight"] = value
        else:
            state[key] = value  # lm_head.dense, lm_head.layer_norm, lm_head.bias
    return state


def _write_published(directory: Path, state: dict[str, torch.Tensor], alphabet: object, **config: object) -> Path:
    directory.mkdir(parents=True)
    hf_config = HFEsmConfig(
        vocab_size=len(alphabet.all_toks), hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=4 * HIDDEN, max_position_embeddings=1026, position_embedding_type="rotary",
        layer_norm_eps=1e-5, token_dropout=True, emb_layer_norm_before=False, pad_token_id=alphabet.padding_idx,
        mask_token_id=alphabet.mask_idx, architectures=["EsmForMaskedLM"], **config,
    )  # fmt: skip
    hf_config.save_pretrained(directory)
    (directory / "vocab.txt").write_text("\n".join(alphabet.all_toks))
    EsmTokenizer(str(directory / "vocab.txt"), model_max_length=1024).save_pretrained(directory)
    torch.save(state, directory / "pytorch_model.bin")
    return directory


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    torch.manual_seed(11)
    model = ESM2(num_layers=LAYERS, embed_dim=HIDDEN, attention_heads=HEADS, alphabet="ESM-1b", token_dropout=True)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in model.named_parameters():  # every tensor random, LayerNorms and biases too
            noise = torch.randn(parameter.shape, generator=generator)
            if "layer_norm" in name and name.endswith("weight"):
                parameter.copy_(1.0 + 0.1 * noise)
            else:
                parameter.copy_((0.02 if name.endswith("bias") else 0.1) * noise)
    model.eval()
    directory = _write_published(tmp_path_factory.mktemp("esm2") / "published", _published_state(model), model.alphabet)
    return {"model": model, "alphabet": model.alphabet, "dir": directory, "loaded": load_esm2(directory)}


def _fair_esm(oracle: dict[str, object], sequences: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """fair-esm's tokens, last-layer representations and logits, batched by its own BatchConverter."""
    converter = oracle["alphabet"].get_batch_converter()
    _, _, tokens = converter([(str(i), sequence) for i, sequence in enumerate(sequences)])
    with torch.no_grad():
        out = oracle["model"](tokens, repr_layers=[LAYERS])
    return tokens, out["representations"][LAYERS], out["logits"]


def _score(loaded, sequences: list[str], **settings: object) -> dict[str, object]:
    records = [SequenceRecord(i, f"p{i}", sequence, 1) for i, sequence in enumerate(sequences)]
    task = TaskSettings(**settings)
    figures = RunFigures({}, "cpu", "fp32", 1, 2048)
    scored = score_records(loaded, records, task, molecule="protein", batch_tokens=2048, dtype="fp32", figures=figures)
    return {**scored.columns[task.task], **scored.base}


def _embedding(columns: dict[str, object]) -> torch.Tensor:
    return torch.tensor(np.asarray(columns["embedding"].to_pylist()))


# --- tokenizer ------------------------------------------------------------------------------------------------


def test_tokenizer_matches_fair_esm_and_transformers(oracle) -> None:
    tokenizer = oracle["loaded"].tokenizer
    assert isinstance(tokenizer, Esm2Tokenizer) and tokenizer.vocabulary.tokens == ESM2_ALPHABET
    assert tuple(oracle["alphabet"].all_toks) == ESM2_ALPHABET and len(ESM2_ALPHABET) == 33
    vocabulary = tokenizer.vocabulary
    assert (vocabulary.cls_id, tokenizer.pad_id, vocabulary.eos_id, tokenizer.unk_id) == (0, 1, 2, 3)
    assert tokenizer.mask_id == 32 and tokenizer.frame == (1, 1)
    reference = EsmTokenizer.from_pretrained(oracle["dir"])
    for sequence in [*SHORT, LONG[:900]]:
        ours = tokenizer.encode(sequence)
        assert ours == [0, *oracle["alphabet"].encode(sequence), 2]
        assert ours == reference(sequence)["input_ids"]
    with pytest.raises(KeyError):  # J (I or L) is no ESM token: fair-esm fails on it, transformers says <unk>
        oracle["alphabet"].encode("MJK")
    assert tokenizer.encode("MJK") == reference("MJK")["input_ids"] == [0, 20, 3, 15, 2]
    assert tokenizer.encode("mkta") == tokenizer.encode("MKTA")
    ids, spans = tokenizer.encode_with_offsets("MKTA")
    assert spans == [(0, 0), (0, 1), (1, 2), (2, 3), (3, 4), (0, 0)]
    # A run of letters outside the vocabulary: one <unk> per residue here; the references collapse the run.
    assert tokenizer.encode("MJJK") == [0, 20, 3, 3, 15, 2]
    assert reference("MJJK")["input_ids"] == [0, 20, 3, 15, 2]


# --- fidelity -------------------------------------------------------------------------------------------------


def test_embeddings_equal_fair_esm_for_short_proteins(oracle) -> None:
    loaded = oracle["loaded"]
    tokens, hidden, _ = _fair_esm(oracle, SHORT)
    lengths = torch.tensor([len(sequence) for sequence in SHORT])
    means = torch.stack([hidden[i, 1 : 1 + n].mean(0) for i, n in enumerate(lengths.tolist())])
    mean = _embedding(_score(loaded, SHORT))
    cls = _embedding(_score(loaded, SHORT, pooling="cls"))
    mean_diff, cls_diff = (mean - means).abs().max().item(), (cls - hidden[:, 0]).abs().max().item()
    print(f"\nESM-2 vs fair-esm, short proteins: mean {mean_diff:.3g}, <cls> {cls_diff:.3g}")
    assert mean_diff < TOLERANCE and cls_diff < TOLERANCE
    assert means.abs().max().item() > 0.1  # not a comparison of near-zero numbers
    mask = tokens.ne(oracle["alphabet"].padding_idx)
    with torch.no_grad():
        ours = loaded.model(tokens, mask)
    assert (ours - hidden)[mask].abs().max().item() < TOLERANCE  # every position, padded batch


def test_long_protein_windows_equal_fair_esm_on_each_window(oracle) -> None:
    loaded = oracle["loaded"]
    assert (loaded.max_tokens, loaded.default_window) == (1024, 1022)
    columns = _score(loaded, [LONG])
    windows = plan_windows(len(LONG), 1022, 1022 // 4)
    assert columns["n_windows"][0] == len(windows) == 3 and columns["n_tokens"][0] == len(LONG) + 2
    owned_sum = torch.zeros(HIDDEN, dtype=torch.float64)
    for window in windows:  # fair-esm on each window, which it can take whole (1,022 residues + <cls>, <eos>)
        _, hidden, _ = _fair_esm(oracle, [LONG[window.start : window.stop]])
        own = hidden[0, 1 + window.own_start - window.start : 1 + window.own_stop - window.start]
        owned_sum += own.double().sum(0)
        tokens = loaded.tokenizer.encode(LONG[window.start : window.stop])
        with torch.no_grad():
            ours = loaded.model(torch.tensor([tokens]))
        assert (ours[0] - hidden[0]).abs().max().item() < TOLERANCE
    diff = (_embedding(columns)[0].double() - owned_sum / len(LONG)).abs().max().item()
    print(f"\nESM-2 vs fair-esm, {len(LONG)}-residue protein in {len(windows)} windows: mean {diff:.3g}")
    assert diff < TOLERANCE


def test_masked_lm_log_probabilities_and_pll_equal_fair_esm(oracle) -> None:
    """Token dropout makes one <mask> rescale the whole input: both the logits and the pseudo-log-likelihood
    (each residue masked once) must follow fair-esm exactly."""
    loaded, alphabet = oracle["loaded"], oracle["alphabet"]
    sequences = SHORT[:3]
    tokens, _, _ = _fair_esm(oracle, sequences)
    masked = tokens.clone()
    masked[0, [3, 5]] = alphabet.mask_idx
    mask = tokens.ne(alphabet.padding_idx)
    with torch.no_grad():
        reference = torch.log_softmax(oracle["model"](masked)["logits"], dim=-1)
        ours = torch.log_softmax(loaded.mlm_head(loaded.model(masked, mask)), dim=-1)
    logp_diff = (ours - reference)[mask].abs().max().item()
    assert logp_diff < TOLERANCE

    expected = []
    for sequence in sequences:  # masked marginals the fair-esm way: one masked copy per residue
        _, _, row = alphabet.get_batch_converter()([("s", sequence)])
        copies = row.repeat(len(sequence), 1)
        positions = torch.arange(1, len(sequence) + 1)
        copies[torch.arange(len(sequence)), positions] = alphabet.mask_idx
        with torch.no_grad():
            logp = torch.log_softmax(oracle["model"](copies)["logits"].double(), dim=-1)
        expected.append(logp[torch.arange(len(sequence)), positions, row[0, positions]].sum().item())
    columns = _score(loaded, sequences, task="mlm_score")
    pll_diff = np.abs(np.asarray(columns["pll"]) - np.asarray(expected)).max()
    print(f"\nESM-2 vs fair-esm: log-probabilities {logp_diff:.3g}, pseudo-log-likelihood {pll_diff:.3g}")
    assert pll_diff < 1e-4 and list(columns["n_scored"]) == [len(sequence) for sequence in sequences]


def test_transformers_reads_the_same_checkpoint_and_agrees(oracle) -> None:
    loaded = oracle["loaded"]
    reference = HFEsmForMaskedLM.from_pretrained(oracle["dir"]).eval()
    tokens, _, fair_logits = _fair_esm(oracle, SHORT)
    mask = tokens.ne(1)
    with torch.no_grad():
        out = reference(input_ids=tokens, attention_mask=mask.long(), output_hidden_states=True)
        ours = loaded.model(tokens, mask)
    assert (ours - out.hidden_states[-1])[mask].abs().max().item() < TOLERANCE
    assert (out.logits - fair_logits)[mask].abs().max().item() < TOLERANCE  # the two references agree too


def test_demo_checkpoint_is_the_published_layout(tmp_path: Path) -> None:
    directory = write_demo_checkpoint(tmp_path / "demo", seed=2)
    assert {path.name for path in directory.iterdir()} == {
        "config.json", "pytorch_model.bin", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json",
    }  # fmt: skip
    state = torch.load(directory / "pytorch_model.bin", weights_only=True)
    assert "esm.encoder.layer.1.attention.self.rotary_embeddings.inv_freq" in state
    assert "esm.contact_head.regression.weight" in state
    reference = HFEsmForMaskedLM.from_pretrained(directory).eval()
    loaded = load_esm2(directory)
    ids = torch.tensor([loaded.tokenizer.encode(SHORT[0])])
    with torch.no_grad():
        torch.testing.assert_close(loaded.mlm_head(loaded.model(ids)), reference(input_ids=ids).logits)
    assert EsmTokenizer.from_pretrained(directory)(SHORT[0])["input_ids"] == ids[0].tolist()


# --- layouts, heads, refusals ---------------------------------------------------------------------------------


def test_safetensors_without_the_tied_decoder_loads_the_same(oracle, tmp_path: Path) -> None:
    copy = tmp_path / "safetensors"
    shutil.copytree(oracle["dir"], copy)
    state = torch.load(copy / "pytorch_model.bin", weights_only=True)
    (copy / "pytorch_model.bin").unlink()
    del state["lm_head.decoder.weight"]  # safetensors cannot hold a tied tensor twice
    save_file({key: value.contiguous() for key, value in state.items()}, str(copy / "model.safetensors"))
    loaded = load_esm2(copy)
    ids = torch.tensor([loaded.tokenizer.encode(SHORT[0])])
    with torch.no_grad():
        expected = oracle["loaded"].mlm_head(oracle["loaded"].model(ids))
        torch.testing.assert_close(loaded.mlm_head(loaded.model(ids)), expected, rtol=0, atol=0)


def test_a_sequence_classification_fine_tune_scores_as_transformers(tmp_path: Path) -> None:
    config = HFEsmConfig(
        vocab_size=33, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=4 * HIDDEN, max_position_embeddings=1026, position_embedding_type="rotary",
        token_dropout=True, pad_token_id=1, mask_token_id=32, id2label={0: "cytosol", 1: "membrane"},
        layer_norm_eps=1e-5,
    )  # fmt: skip
    torch.manual_seed(5)
    model = EsmForSequenceClassification(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.1)
    model.save_pretrained(tmp_path / "fine-tune")
    (tmp_path / "fine-tune" / "vocab.txt").write_text("\n".join(ESM2_ALPHABET))
    loaded = load_esm2(tmp_path / "fine-tune")
    assert loaded.extra["layout"] == "sequence_classification" and loaded.mlm_head is None
    assert loaded.sequence_head.labels == ["cytosol", "membrane"]
    columns = _score(loaded, SHORT[:3], task="classify")
    batch = [loaded.tokenizer.encode(sequence) for sequence in SHORT[:3]]
    with torch.no_grad():
        expected = [torch.softmax(model(input_ids=torch.tensor([ids])).logits[0], -1) for ids in batch]
    ours = torch.tensor(np.stack([columns["prob_cytosol"], columns["prob_membrane"]], axis=1))
    assert (ours - torch.stack(expected)).abs().max().item() < TOLERANCE


def test_stray_or_missing_tensors_and_remote_code_are_refused(oracle, tmp_path: Path) -> None:
    copy = tmp_path / "broken"
    shutil.copytree(oracle["dir"], copy)
    state = torch.load(copy / "pytorch_model.bin", weights_only=True)
    torch.save({**state, "other_head.weight": torch.zeros(1)}, copy / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"pytorch_model.bin has tensors that are not part of .*other_head.weight"):
        load_esm2(copy)
    torch.save({**state, "esm.something.weight": torch.zeros(1)}, copy / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"is not an ESM-2 checkpoint .*unexpected tensors: something.weight"):
        load_esm2(copy)
    del state["esm.encoder.layer.1.output.dense.bias"]
    torch.save(state, copy / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"missing tensors: encoder\.layer\.1\.output\.dense\.bias"):
        load_esm2(copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "modeling_esm.EsmModel"}}))
    with pytest.raises(ValueError, match=r"config.json names remote code .*Nucleotide Transformer v2"):
        load_esm2(copy)


def test_registered_and_runs_in_bf16(oracle) -> None:
    assert get_loader("esm2") is load_esm2 and ARCHITECTURES["esm2"].molecules == frozenset({"protein"})
    bf16 = load_esm2(oracle["dir"], dtype=torch.bfloat16)
    ids = torch.tensor([bf16.tokenizer.encode(SHORT[0])])
    with torch.no_grad():
        low, high = bf16.model(ids), oracle["loaded"].model(ids)
    assert low.dtype == torch.bfloat16 and (low.float() - high).abs().max().item() < 0.25


def test_layers_equal_fair_esm_repr_layers(oracle) -> None:
    """`layers` counts as fair-esm's `repr_layers`: 0 the embeddings (token dropout applied), 1 the first layer's
    output, 2 (= -1) the last after `emb_layer_norm_after`; each mean-pooled as `extract.py --include mean` pools,
    all from one forward pass (layer -1 is the `embedding` of a run without layers)."""
    loaded = oracle["loaded"]
    converter = oracle["alphabet"].get_batch_converter()
    _, _, tokens = converter([(str(i), sequence) for i, sequence in enumerate(SHORT)])
    with torch.no_grad():
        representations = oracle["model"](tokens, repr_layers=[0, 1, 2])["representations"]
        mask = tokens.ne(oracle["alphabet"].padding_idx)
        states = loaded.model(tokens, mask, layers=(0, 1, 2))
    columns = _score(loaded, SHORT, layers=(0, -2, -1))
    lengths = [len(sequence) for sequence in SHORT]
    for column, layer in (("embedding_l0", 0), ("embedding_l-2", 1), ("embedding_l-1", 2)):
        reference = representations[layer]
        means = torch.stack([reference[i, 1 : 1 + n].mean(0) for i, n in enumerate(lengths)])
        assert (_embedding({"embedding": columns[column]}) - means).abs().max().item() < TOLERANCE, column
        assert (states[layer] - reference)[mask].abs().max().item() < TOLERANCE, column
        assert reference[mask].abs().max().item() > 0.1  # not a comparison of near-zero numbers
    assert np.array_equal(np.asarray(columns["embedding_l-1"].to_pylist()),
                          np.asarray(_score(loaded, SHORT)["embedding"].to_pylist()))  # fmt: skip
