"""Pins the native DNABERT-2 port: published keys, ALiBi, tokenizer ids, padding, dtypes, hub lookup."""

from __future__ import annotations

import hashlib
import math
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch.nn import functional as F

from seqshard.io.interface import CLI, SERVE, WORKFLOW
from seqshard.models.dnabert2 import (
    AttentionBias,
    DNABERT2Config,
    DNABERT2ForMaskedLM,
    DNABERT2Model,
    DNABERT2Tokenizer,
    alibi_bias,
    alibi_slopes,
    load_dnabert2,
    load_dnabert2_masked_lm,
    write_demo_checkpoint,
)
from seqshard.models.loading import load_state_dict
from seqshard.runtime.checkpoints import CheckpointNotFoundError, file_digest, resolve_checkpoint, weights_files

# Three lengths that give three different token counts, one with an N.
SEQUENCES = [
    "ACGTACGGATTACAGGCTTAACGGATCCATGCAAGT" * 3,
    "TTGACA",
    "GGGCGCATATNNATCGATCGTTAGCATGCA" * 6,
]


@pytest.fixture(scope="module")
def demo_dir(dnabert2_demo_checkpoint: Path) -> Path:
    return dnabert2_demo_checkpoint


@pytest.fixture(scope="module")
def demo(demo_dir: Path):
    return load_dnabert2(str(demo_dir))


def _batch(tokenizer: DNABERT2Tokenizer, sequences: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = tokenizer.encode_batch(sequences)
    width = max(map(len, ids))
    input_ids = torch.full((len(ids), width), tokenizer.pad_id, dtype=torch.long)
    for row, row_ids in enumerate(ids):
        input_ids[row, : len(row_ids)] = torch.tensor(row_ids)
    return input_ids, input_ids != tokenizer.pad_id


# --- ALiBi --------------------------------------------------------------------------------------------------


def test_alibi_slopes_for_12_heads_interleave_the_16_head_list() -> None:
    expected = [2.0**-k for k in range(1, 9)] + [2**-0.5, 2**-1.5, 2**-2.5, 2**-3.5]
    torch.testing.assert_close(alibi_slopes(12), torch.tensor(expected), atol=1e-7, rtol=0)
    assert alibi_slopes(12)[8:].tolist() == pytest.approx([0.7071068, 0.3535534, 0.1767767, 0.0883883], abs=1e-7)


def test_alibi_slopes_for_powers_of_two() -> None:
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0**-k for k in range(1, 9)]), atol=1e-7, rtol=0)
    torch.testing.assert_close(alibi_slopes(4), torch.tensor([2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8]), atol=1e-7, rtol=0)


def test_alibi_bias_values_blocks_and_no_state(demo) -> None:
    assert not any("alibi" in key or "slopes" in key for key in demo.model.state_dict())
    slopes = alibi_slopes(4)
    bias = alibi_bias(slopes, slice(0, 5), 5, torch.float32)
    assert bias.shape == (4, 5, 5)
    assert bias[1, 0, 3].item() == pytest.approx(-3 * slopes[1].item())
    torch.testing.assert_close(bias, bias.transpose(1, 2))
    block = alibi_bias(slopes, slice(512, 600), 600, torch.float32)  # a later query block: positions 512..599
    assert block.shape == (4, 88, 600) and block[0, 87, 0].item() == pytest.approx(-599 * 0.25)
    assert alibi_bias(slopes, slice(0, 3), 3, torch.bfloat16).dtype == torch.bfloat16

    # Up to 512 tokens: one block, built once per forward; longer: blocks of 512 query positions.
    mask = torch.ones(3, 1300, dtype=torch.bool)
    mask[1:, 1000:] = False
    assert len(AttentionBias(slopes, 512, mask[:, :512], torch.float32).blocks) == 1
    long = AttentionBias(slopes, 1300, mask, torch.float32)
    assert long.blocks == [slice(0, 512), slice(512, 1024), slice(1024, 1300)]
    last = long.block(long.blocks[2])
    assert last.shape == (3, 4, 276, 1300)
    assert last[1, 0, 0, 999].item() == pytest.approx(-(1024 - 999) * slopes[0].item())
    assert last[1, 0, 0, 1000].item() < -1e38 and last[0, 0, 0, 1000].item() > -1e38  # padded keys of row 1 only
    # Without padding a block is a view into one [heads, 512, 2L] table: nothing per block, nothing per row.
    unpadded = AttentionBias(slopes, 1300, None, torch.float32)
    view = unpadded.block(unpadded.blocks[1])
    assert view.shape == (1, 4, 512, 1300) and view.untyped_storage().data_ptr() == unpadded._table.data_ptr()
    torch.testing.assert_close(view[0], alibi_bias(slopes, slice(512, 1024), 1300, torch.float32), atol=0, rtol=0)


def test_query_blocks_give_the_numbers_of_one_whole_bias(demo, monkeypatch: pytest.MonkeyPatch) -> None:
    """Attention over blocks of query positions equals attention with the whole [B, heads, L, L] bias, in fp32."""
    import seqshard.models.dnabert2 as dnabert2

    rng = random.Random(5)
    sequences = ["".join(rng.choice("ACGT") for _ in range(n)) for n in (6000, 4800, 1800)]
    input_ids, mask = _batch(demo.tokenizer, sequences)
    assert input_ids.shape[1] > 2 * dnabert2.ALIBI_QUERY_BLOCK and not mask.all()
    demo.model.unpad = False
    with torch.inference_mode():
        blocked = demo.model(input_ids, mask)
        monkeypatch.setattr(dnabert2, "ALIBI_QUERY_BLOCK", input_ids.shape[1])  # one block: the whole bias
        whole = demo.model(input_ids, mask)
    assert torch.isfinite(blocked).all()
    torch.testing.assert_close(blocked, whole, atol=1e-6, rtol=0)


# --- published layout ---------------------------------------------------------------------------------------


def _published_keys(n_layers: int = 12) -> set[str]:
    keys = {
        "bert.embeddings.word_embeddings.weight",
        "bert.embeddings.token_type_embeddings.weight",
        "bert.embeddings.LayerNorm.weight",
        "bert.embeddings.LayerNorm.bias",
        "cls.predictions.transform.dense.weight",
        "cls.predictions.transform.dense.bias",
        "cls.predictions.transform.LayerNorm.weight",
        "cls.predictions.transform.LayerNorm.bias",
        "cls.predictions.decoder.weight",
        "cls.predictions.decoder.bias",
    }
    per_layer = [
        "attention.self.Wqkv.weight",
        "attention.self.Wqkv.bias",
        "attention.output.dense.weight",
        "attention.output.dense.bias",
        "attention.output.LayerNorm.weight",
        "attention.output.LayerNorm.bias",
        "mlp.gated_layers.weight",
        "mlp.wo.weight",
        "mlp.wo.bias",
        "mlp.layernorm.weight",
        "mlp.layernorm.bias",
    ]
    keys |= {f"bert.encoder.layer.{n}.{name}" for n in range(n_layers) for name in per_layer}
    return keys


def test_masked_lm_has_the_published_keys_shapes_and_parameter_count() -> None:
    with torch.device("meta"):
        model = DNABERT2ForMaskedLM(DNABERT2Config())
    state = model.state_dict()
    assert len(state) == 142
    assert set(state) == _published_keys()
    shapes = {key: tuple(value.shape) for key, value in state.items()}
    assert shapes["bert.encoder.layer.0.attention.self.Wqkv.weight"] == (2304, 768)
    assert shapes["bert.encoder.layer.11.mlp.gated_layers.weight"] == (6144, 768)
    assert shapes["bert.encoder.layer.5.mlp.wo.weight"] == (768, 3072)
    assert shapes["bert.embeddings.word_embeddings.weight"] == (4096, 768)
    assert shapes["bert.embeddings.token_type_embeddings.weight"] == (2, 768)
    assert shapes["cls.predictions.decoder.bias"] == (4096,)
    # parameters() yields the tied decoder weight once.
    assert sum(parameter.numel() for parameter in model.parameters()) == 117_074_176
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight


def test_config_reads_published_json_and_ignores_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"hidden_size": 768, "auto_map": {"AutoModel": "bert_layers.BertModel"}, "id2label": {"0": "x"}}')
    config = DNABERT2Config.from_json_file(path)
    assert config.num_attention_heads == 12 and config.alibi_starting_size == 512
    assert config.id2label == {0: "x"} and config.num_labels == 1
    assert "auto_map" not in config.to_dict()


def test_demo_config_has_every_published_field(demo_dir: Path) -> None:
    import json

    written = json.loads((demo_dir / "config.json").read_text())
    assert written == {
        "vocab_size": 4096,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "max_position_embeddings": 512,
        "alibi_starting_size": 512,
        "attention_probs_dropout_prob": 0.0,
        "hidden_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-12,
        "type_vocab_size": 2,
    }


# --- tokenizer ----------------------------------------------------------------------------------------------


def test_tokenizer_ids(demo) -> None:
    tokenizer = demo.tokenizer
    assert (tokenizer.unk_id, tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id, tokenizer.mask_id) == (
        0,
        1,
        2,
        3,
        4,
    )
    assert tokenizer.vocab_size == 4096
    assert tokenizer.encode("A") == [1, 5, 2]
    assert [tokenizer.encode(base)[1] for base in "ACGT"] == [5, 6, 7, 8]
    assert tokenizer.encode("N") == [1, 0, 2]
    assert tokenizer.encode("NNN") == [1, 0, 0, 0, 2]  # one [UNK] per N, never fused
    assert tokenizer.encode("acgtacgga") == tokenizer.encode("ACGTACGGA")
    assert tokenizer.decode(tokenizer.encode("ACGT")) == "ACGT"
    assert tokenizer.decode(tokenizer.encode(SEQUENCES[2])) == SEQUENCES[2]
    assert tokenizer.encode_batch(SEQUENCES) == [tokenizer.encode(sequence) for sequence in SEQUENCES]
    # BPE merges: far fewer tokens than bases.
    assert len(tokenizer.encode(SEQUENCES[0])) < len(SEQUENCES[0]) / 2


def test_demo_tokenizer_files_load_in_transformers_terms(demo_dir: Path) -> None:
    import json

    config = json.loads((demo_dir / "tokenizer_config.json").read_text())
    assert config["model_max_length"] == 512 and config["padding_side"] == "right"
    assert config["pad_token"] == "[PAD]" and config["tokenizer_class"] == "PreTrainedTokenizerFast"
    tokenizer_json = json.loads((demo_dir / "tokenizer.json").read_text())
    assert tokenizer_json["normalizer"] is None
    assert tokenizer_json["pre_tokenizer"]["type"] == "Whitespace"
    assert max(len(token) for token in tokenizer_json["model"]["vocab"]) <= 32


# --- forward ------------------------------------------------------------------------------------------------


def test_padding_does_not_change_real_positions(demo) -> None:
    input_ids, mask = _batch(demo.tokenizer, SEQUENCES)
    assert len({int(row.sum()) for row in mask}) == 3  # three different lengths, so two rows are padded
    with torch.inference_mode():
        batched = demo.model(input_ids, mask)
        for row, sequence in enumerate(SEQUENCES):
            ids = torch.tensor([demo.tokenizer.encode(sequence)])
            alone = demo.model(ids, torch.ones_like(ids, dtype=torch.bool))[0]
            real = int(mask[row].sum())
            torch.testing.assert_close(batched[row, :real], alone, atol=1e-5, rtol=0)
            assert torch.all(batched[row, real:] == 0)
    assert torch.isfinite(batched).all()


def _reference_forward(state: dict[str, torch.Tensor], config: DNABERT2Config, ids: list[int]) -> torch.Tensor:
    """The layer math of models.md written out with explicit softmax, one unpadded sequence."""
    heads, head_dim, inter = config.num_attention_heads, config.head_dim, config.intermediate_size
    eps = config.layer_norm_eps

    def ln(x: torch.Tensor, prefix: str) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], state[f"{prefix}.weight"], state[f"{prefix}.bias"], eps)

    tokens = torch.tensor(ids)
    x = (
        state["bert.embeddings.word_embeddings.weight"][tokens]
        + state["bert.embeddings.token_type_embeddings.weight"][0]
    )
    x = ln(x, "bert.embeddings.LayerNorm")
    length = len(ids)
    distance = (torch.arange(length)[None, :] - torch.arange(length)[:, None]).abs().float()
    alibi = -alibi_slopes(heads)[:, None, None] * distance
    for n in range(config.num_hidden_layers):
        p = f"bert.encoder.layer.{n}"
        qkv = x @ state[f"{p}.attention.self.Wqkv.weight"].T + state[f"{p}.attention.self.Wqkv.bias"]
        q, k, v = (qkv[:, i * config.hidden_size : (i + 1) * config.hidden_size] for i in range(3))
        q, k, v = (t.reshape(length, heads, head_dim).transpose(0, 1) for t in (q, k, v))
        scores = q @ k.transpose(1, 2) / math.sqrt(head_dim) + alibi
        attended = (scores.softmax(-1) @ v).transpose(0, 1).reshape(length, config.hidden_size)
        dense = attended @ state[f"{p}.attention.output.dense.weight"].T + state[f"{p}.attention.output.dense.bias"]
        x = ln(dense + x, f"{p}.attention.output.LayerNorm")
        gated = x @ state[f"{p}.mlp.gated_layers.weight"].T
        hidden = F.gelu(gated[:, :inter]) * gated[:, inter:]
        x = ln(hidden @ state[f"{p}.mlp.wo.weight"].T + state[f"{p}.mlp.wo.bias"] + x, f"{p}.mlp.layernorm")
    return x


def test_forward_matches_the_layer_math_with_nonzero_biases(demo_dir: Path, tmp_path: Path) -> None:
    # The demo has BERT's zero biases and unit LayerNorms; perturb them so that every tensor matters.
    state = load_state_dict(demo_dir / "pytorch_model.bin")
    generator = torch.Generator().manual_seed(1)
    state = {key: value + 0.05 * torch.randn(value.shape, generator=generator) for key, value in state.items()}
    checkpoint = tmp_path / "perturbed"
    checkpoint.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (checkpoint / name).write_bytes((demo_dir / name).read_bytes())
    save_file({key: value.contiguous() for key, value in state.items()}, checkpoint / "model.safetensors")
    loaded = load_dnabert2(str(checkpoint))
    config = DNABERT2Config.from_json_file(checkpoint / "config.json")
    ids = loaded.tokenizer.encode(SEQUENCES[0])
    with torch.inference_mode():
        ours = loaded.model(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.bool))[0]
        expected = _reference_forward(state, config, ids)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_bin_and_safetensors_give_identical_outputs_and_stable_digest(demo, demo_dir: Path, tmp_path: Path) -> None:
    converted = tmp_path / "converted"
    converted.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (converted / name).write_bytes((demo_dir / name).read_bytes())
    state = load_state_dict(demo_dir / "pytorch_model.bin")
    # safetensors refuses shared tensors; converters drop the tied decoder weight, so do the same here.
    state.pop("cls.predictions.decoder.weight")
    save_file(state, converted / "model.safetensors")
    assert [path.name for path in weights_files(converted)] == ["model.safetensors"]
    from_safetensors = load_dnabert2(str(converted))

    input_ids, mask = _batch(demo.tokenizer, SEQUENCES)
    with torch.inference_mode():
        torch.testing.assert_close(from_safetensors.model(input_ids, mask), demo.model(input_ids, mask), atol=0, rtol=0)

    weights = demo_dir / "pytorch_model.bin"
    assert demo.digest == "sha256:" + hashlib.sha256(weights.read_bytes()).hexdigest()
    assert load_dnabert2(str(demo_dir)).digest == demo.digest
    assert from_safetensors.digest == file_digest(converted / "model.safetensors") != demo.digest
    assert demo.checkpoint_dir == demo_dir and demo.molecules == frozenset({"dna"}) and demo.hidden_size == 64
    assert not demo.model.training and demo.extra["layout"] == "masked_lm"


def test_demo_checkpoint_is_deterministic(demo_dir: Path, tmp_path: Path) -> None:
    again = write_demo_checkpoint(tmp_path / "again")
    for name in (
        "config.json",
        "pytorch_model.bin",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ):
        assert file_digest(again / name) == file_digest(demo_dir / name), name
    other_seed = load_state_dict(write_demo_checkpoint(tmp_path / "seed1", seed=1) / "pytorch_model.bin")
    reference = load_state_dict(demo_dir / "pytorch_model.bin")
    key = "bert.encoder.layer.0.attention.self.Wqkv.weight"
    assert not torch.equal(other_seed[key], reference[key])
    assert reference[key].std().item() == pytest.approx(0.02, rel=0.1)


def test_bf16_runs_on_cpu_close_to_fp32(demo, demo_dir: Path) -> None:
    bf16 = load_dnabert2(str(demo_dir), dtype=torch.bfloat16)
    assert bf16.model.embeddings.word_embeddings.weight.dtype == torch.bfloat16
    input_ids, mask = _batch(demo.tokenizer, SEQUENCES)
    with torch.inference_mode():
        low = bf16.model(input_ids, mask)
        full = demo.model(input_ids, mask)
    assert low.dtype == torch.bfloat16 and torch.isfinite(low).all()
    similarity = F.cosine_similarity(low.float()[mask], full[mask], dim=-1)
    assert similarity.min().item() > 0.99
    assert (low.float() - full).abs().max().item() < 0.25
    # The other route to bf16: fp32 weights under autocast, as on GPU; the bias follows the autocast dtype.
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = demo.model(input_ids, mask)
    assert torch.isfinite(autocast).all()
    assert F.cosine_similarity(autocast.float()[mask], full[mask], dim=-1).min().item() > 0.99


# --- the unpadded path -----------------------------------------------------------------------------------

# 5 to 300 bp, so that most rows of the batch are mostly padding; one with Ns (one [UNK] each).
RAGGED_LENGTHS = [5, 300, 12, 180, 40, 260, 7, 95]


def _ragged_sequences(seed: int = 3) -> list[str]:
    rng = random.Random(seed)
    sequences = ["".join(rng.choices("ACGT", k=length)) for length in RAGGED_LENGTHS]
    sequences[3] = sequences[3][:50] + "NNNN" + sequences[3][54:]
    return sequences


def _hidden(model: DNABERT2Model, input_ids: torch.Tensor, mask: torch.Tensor, *, unpad: bool) -> torch.Tensor:
    """The model's last hidden state with `unpad` set for this call only (the fixture's model is shared)."""
    saved = model.unpad
    model.unpad = unpad
    try:
        with torch.inference_mode():
            return model(input_ids, mask)
    finally:
        model.unpad = saved


def test_unpadded_path_matches_the_padded_one(demo) -> None:
    assert demo.model.unpad is False  # the padded path stays the default
    input_ids, mask = _batch(demo.tokenizer, _ragged_sequences())
    lengths = mask.sum(1)
    assert lengths.min() < 5 and lengths.max() > 50 and 1 - mask.float().mean() > 0.4

    padded = _hidden(demo.model, input_ids, mask, unpad=False)
    unpadded = _hidden(demo.model, input_ids, mask, unpad=True)
    assert unpadded.shape == padded.shape == (len(RAGGED_LENGTHS), input_ids.shape[1], 64)
    torch.testing.assert_close(unpadded[mask], padded[mask], atol=1e-5, rtol=0)
    assert torch.all(unpadded[~mask] == 0) and torch.all(padded[~mask] == 0)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        padded_bf16 = _hidden(demo.model, input_ids, mask, unpad=False)
        unpadded_bf16 = _hidden(demo.model, input_ids, mask, unpad=True)
    assert unpadded_bf16.dtype == padded_bf16.dtype and torch.isfinite(unpadded_bf16).all()
    torch.testing.assert_close(unpadded_bf16[mask].float(), padded_bf16[mask].float(), atol=5e-2, rtol=0)
    assert torch.all(unpadded_bf16[~mask] == 0)

    # Without padding there is nothing to pack: the unpadded path is the padded one, bit for bit.
    full = input_ids[:, : int(lengths.min())]
    all_real = torch.ones_like(full, dtype=torch.bool)
    torch.testing.assert_close(
        _hidden(demo.model, full, all_real, unpad=True),
        _hidden(demo.model, full, all_real, unpad=False),
        atol=0,
        rtol=0,
    )


def test_unpadded_path_runs_token_wise_layers_on_real_tokens_only(demo) -> None:
    input_ids, mask = _batch(demo.tokenizer, _ragged_sequences())
    layer = demo.model.encoder.layer[1]
    seen: list[tuple[str, tuple[int, ...]]] = []
    modules = {"Wqkv": layer.attention.self.Wqkv, "dense": layer.attention.output.dense, "mlp": layer.mlp}
    handles = [
        module.register_forward_hook(lambda _module, args, _out, name=name: seen.append((name, tuple(args[0].shape))))
        for name, module in modules.items()
    ]
    try:
        _hidden(demo.model, input_ids, mask, unpad=True)
        n_real = int(mask.sum())
        assert seen == [("Wqkv", (n_real, 64)), ("dense", (n_real, 64)), ("mlp", (n_real, 64))]
        seen.clear()
        _hidden(demo.model, input_ids, mask, unpad=False)
        assert [shape for _, shape in seen] == [(*input_ids.shape, 64)] * 3
    finally:
        for handle in handles:
            handle.remove()


def test_unpadded_path_gives_the_same_mlm_logits_and_head_outputs(demo, tmp_path: Path) -> None:
    sequences = _ragged_sequences()[:4]
    input_ids, mask = _batch(demo.tokenizer, sequences)
    with torch.inference_mode():
        logits = [demo.mlm_head(_hidden(demo.model, input_ids, mask, unpad=unpad)[mask]) for unpad in (False, True)]
    torch.testing.assert_close(logits[1], logits[0], atol=1e-4, rtol=0)

    finetune = load_dnabert2(str(write_demo_checkpoint(tmp_path / "finetune", labels=["no", "yes"], seed=2)))
    with torch.inference_mode():
        outputs = [
            finetune.sequence_head.module(_hidden(finetune.model, input_ids, mask, unpad=unpad), mask)
            for unpad in (False, True)
        ]
    assert outputs[0].shape == (len(sequences), 2)
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-5, rtol=0)


def test_sequence_classification_layout_loads_the_same_encoder(demo, demo_dir: Path, tmp_path: Path) -> None:
    state = load_state_dict(demo_dir / "pytorch_model.bin")
    state = {key: value for key, value in state.items() if not key.startswith("cls.")}
    state["bert.pooler.dense.weight"] = torch.zeros(64, 64)
    state["bert.pooler.dense.bias"] = torch.zeros(64)
    state["classifier.weight"] = torch.zeros(2, 64)
    state["classifier.bias"] = torch.zeros(2)
    finetune = tmp_path / "finetune"
    finetune.mkdir()
    for name in ("config.json", "tokenizer.json"):
        (finetune / name).write_bytes((demo_dir / name).read_bytes())
    torch.save(state, finetune / "pytorch_model.bin")
    loaded = load_dnabert2(str(finetune))
    assert loaded.extra["layout"] == "sequence_classification"
    ids = torch.tensor([demo.tokenizer.encode(SEQUENCES[1])])
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model(ids), demo.model(ids), atol=0, rtol=0)

    del state["bert.encoder.layer.1.mlp.wo.bias"]
    state["bert.encoder.layer.1.mlp.surprise"] = torch.zeros(1)
    torch.save(state, finetune / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"missing tensors: encoder\.layer\.1\.mlp\.wo\.bias") as error:
        load_dnabert2(str(finetune))
    assert "encoder.layer.1.mlp.surprise" in str(error.value)


# --- masked LM ----------------------------------------------------------------------------------------------


def test_masked_lm_loads_strictly_and_gives_vocab_logits(demo, demo_dir: Path, tmp_path: Path) -> None:
    config = DNABERT2Config.from_json_file(demo_dir / "config.json")
    model = DNABERT2ForMaskedLM(config).eval()
    model.load_state_dict(load_state_dict(demo_dir / "pytorch_model.bin"), strict=True)
    input_ids, mask = _batch(demo.tokenizer, SEQUENCES)
    with torch.inference_mode():
        logits = model(input_ids, mask)
        assert logits.shape == (3, input_ids.shape[1], 4096)
        torch.testing.assert_close(model.bert(input_ids, mask), demo.model(input_ids, mask), atol=0, rtol=0)
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight

    # The same through the loader, from a safetensors copy without the tied decoder weight.
    converted = tmp_path / "mlm"
    converted.mkdir()
    (converted / "config.json").write_bytes((demo_dir / "config.json").read_bytes())
    state = load_state_dict(demo_dir / "pytorch_model.bin")
    state.pop("cls.predictions.decoder.weight")
    save_file(state, converted / "model.safetensors")
    loaded = load_dnabert2_masked_lm(converted)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(input_ids, mask), logits, atol=0, rtol=0)


def test_encoder_alone_keeps_the_bert_prefix_out_of_its_keys() -> None:
    with torch.device("meta"):
        encoder = DNABERT2Model(DNABERT2Config(num_hidden_layers=1))
    assert "embeddings.word_embeddings.weight" in encoder.state_dict()
    assert len(encoder.state_dict()) == 4 + 11


# --- checkpoint lookup --------------------------------------------------------------------------------------


@pytest.fixture
def offline_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    return tmp_path / "hf_home" / "hub"


def test_missing_directory_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "checkpoint"
    with pytest.raises(CheckpointNotFoundError, match="no such checkpoint directory") as error:
        resolve_checkpoint(str(missing))
    assert str(missing) in str(error.value)
    with pytest.raises(CheckpointNotFoundError, match="no such checkpoint directory"):
        resolve_checkpoint(missing)


def test_directory_without_required_files_names_them(demo_dir: Path, tmp_path: Path) -> None:
    assert resolve_checkpoint(str(demo_dir), required=("config.json", "tokenizer.json")) == demo_dir
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointNotFoundError, match=r"has no tokenizer\.json"):
        resolve_checkpoint(tmp_path, required=("config.json", "tokenizer.json"))
    with pytest.raises(CheckpointNotFoundError, match="no weights file"):
        weights_files(tmp_path)


@pytest.mark.parametrize(
    ("interface", "setting"),
    [
        (None, "that directory as the checkpoint"),
        (CLI, "`--checkpoint resources/checkpoints/DNABERT-2-117M`"),
        (WORKFLOW, "`checkpoint: resources/checkpoints/DNABERT-2-117M` in the config"),
        (SERVE, "`--checkpoint resources/checkpoints/DNABERT-2-117M` when starting `seqshard serve`"),
    ],
)
def test_uncached_hub_id_offline_says_what_to_download(offline_hub: Path, interface, setting: str) -> None:
    with pytest.raises(CheckpointNotFoundError) as error:
        resolve_checkpoint("zhihan1996/DNABERT-2-117M", interface=interface)
    message = str(error.value)
    assert "\n" not in message and "config.yaml" not in message
    assert "`hf download zhihan1996/DNABERT-2-117M --local-dir resources/checkpoints/DNABERT-2-117M`" in message
    assert f"then use {setting};" in message
    assert "HF_HOME" in message and str(offline_hub) in message
    with pytest.raises(CheckpointNotFoundError, match="--revision d064dec"):
        resolve_checkpoint("zhihan1996/DNABERT-2-117M@d064dec")


def test_hub_cache_layout_resolves_to_the_snapshot(offline_hub: Path) -> None:
    revision = "d064dec" + "0" * 33
    repo = offline_hub / "models--owner--name"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    assert resolve_checkpoint("owner/name") == snapshot
    assert resolve_checkpoint(f"owner/name@{revision}") == snapshot
    assert resolve_checkpoint("owner/name@d064dec") == snapshot  # short hashes, as quoted on model pages
    with pytest.raises(CheckpointNotFoundError, match=r"has no tokenizer\.json"):
        resolve_checkpoint("owner/name", required=("config.json", "tokenizer.json"))
