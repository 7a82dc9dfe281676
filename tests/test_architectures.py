"""Checkpoints given to the wrong architecture: each registered architecture's layout is recognised (config.json and
tensor names, `seqshard.models.CheckpointLayout`) and named, for every pair in `ARCHITECTURES`, in the spelling of
the interface in use; and a hub id that is nowhere to be found is one line naming that interface's setting."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from itertools import permutations
from pathlib import Path

import pytest
import torch

from seqshard.io.interface import CLI, SERVE, WORKFLOW
from seqshard.models import ARCHITECTURES, get_loader, rank_architectures, recognise_checkpoint
from seqshard.models.loading import read_weights


def _dnabert2_classifier(out: Path) -> Path:
    from seqshard.models.dnabert2 import write_demo_checkpoint

    return write_demo_checkpoint(out, labels=["non_promoter", "promoter"], seed=1)


def _lucaone(layout: str) -> Callable[[Path], Path]:
    def write(out: Path) -> Path:
        from seqshard.models.lucaone import write_demo_checkpoint

        return write_demo_checkpoint(out, layout=layout)

    return write


def _esm(module: str) -> Callable[[Path], Path]:
    def write(out: Path) -> Path:
        import importlib

        return importlib.import_module(f"seqshard.models.{module}").write_demo_checkpoint(out)

    return write


# Every published layout of every registered architecture (the masked-LM DNABERT-2 is the session's demo checkpoint).
# A new architecture must add its layouts here: the test below fails until it does.
LAYOUTS: dict[str, dict[str, Callable[[Path], Path] | None]] = {
    "dnabert2": {"masked_lm": None, "sequence_classification": _dnabert2_classifier},
    "lucaone": {"hf": _lucaone("hf"), "original": _lucaone("original")},
    "esm2": {"masked_lm": _esm("esm2")},
    "nucleotide_transformer": {"masked_lm": _esm("nucleotide_transformer")},
}
# Architectures of one file layout (transformers' `esm`), told apart by config.json only (its vocab_size).
SAME_TENSORS = {name: {"esm2", "nucleotide_transformer"} for name in ("esm2", "nucleotide_transformer")}


@pytest.fixture(scope="module")
def checkpoints(dnabert2_demo_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("layouts")
    return {
        architecture: [dnabert2_demo_checkpoint if write is None else write(root / f"{architecture}-{layout}")
                       for layout, write in layouts.items()]
        for architecture, layouts in LAYOUTS.items()
    }  # fmt: skip


def test_every_registered_architecture_has_its_layouts_here() -> None:
    assert set(LAYOUTS) == set(ARCHITECTURES)


def test_each_layout_is_recognised_as_its_own_architecture(checkpoints: dict[str, list[Path]]) -> None:
    import json

    for architecture, directories in checkpoints.items():
        for directory in directories:
            config = json.loads((directory / "config.json").read_text())
            seen = recognise_checkpoint(config, read_weights(directory).state)
            assert list(seen)[:1] == [architecture], (directory, seen)
            # Each alone is enough (config.json without the tensors, the tensors without config.json), but for
            # architectures of one file layout, which the tensors show alike.
            assert next(iter(recognise_checkpoint(config, []))) == architecture
            ranked = rank_architectures({}, read_weights(directory).state)
            strongest = {name for name, strength in ranked if strength == ranked[0][1]}
            assert strongest == SAME_TENSORS.get(architecture, {architecture}), (directory, ranked)


@pytest.mark.parametrize(("expected", "given"), list(permutations(ARCHITECTURES, 2)))
def test_a_checkpoint_of_another_architecture_is_named_for_what_it_is(
    expected: str, given: str, checkpoints: dict[str, list[Path]]
) -> None:
    """Before, a LucaOne model given a DNABERT-2 checkpoint said `alphabet 'gene_prot' with vocab_size 4096: only the
    published 'gene_prot' vocabulary of 39 tokens is supported`, and DNABERT-2 given LucaOne's said it had no
    tokenizer.json."""
    title, other = ARCHITECTURES[given].a_title, ARCHITECTURES[expected].a_title
    for directory in checkpoints[given]:
        for interface, fix in [(CLI, f"`--model {given}`"), (WORKFLOW, f"`architecture: {given}` in the config"),
                               (SERVE, f"`--model {given}` when starting `seqshard serve`"),
                               (None, f"the {given} architecture")]:  # fmt: skip
            with pytest.raises(ValueError) as error:
                get_loader(expected)(str(directory), "cpu", torch.float32, interface=interface)
            message = str(error.value)
            assert message.startswith(f"checkpoint {directory} looks like {title} checkpoint (")
            assert message.endswith(f"not {other} one: load it with {fix}, or give {other} checkpoint")
            assert "\n" not in message


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "seqshard", *args], capture_output=True, text=True, env=env)


def test_the_command_line_names_the_architecture_and_its_own_option(
    checkpoints: dict[str, list[Path]], tmp_path: Path
) -> None:
    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nACGTACGT\n")
    dnabert2 = checkpoints["dnabert2"][0]
    output = str(tmp_path / "out.parquet")
    result = run_cli("embed", "--model", "lucaone", "--checkpoint", str(dnabert2), str(fasta), "-o", output)
    assert result.returncode == 1 and result.stdout == "" and "Traceback" not in result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.split(" ERROR seqshard: ", 1)[1] == (
        f"checkpoint {dnabert2} looks like a DNABERT-2 checkpoint (config.json has alibi_starting_size; tensors "
        "bert.*, cls.predictions.*), not a LucaOne one: load it with `--model dnabert2`, or give a LucaOne checkpoint"
    )


def test_a_missing_hub_checkpoint_on_the_command_line_is_one_line_naming_its_option(tmp_path: Path) -> None:
    """Before, the command line was told to set `checkpoint:` in config/config.yaml, in six lines joined by ' | '."""
    import os

    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nACGTACGT\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_HUB_CACHE", None)
    result = run_cli("embed", "--checkpoint", "owner/name", str(fasta), "-o", str(tmp_path / "o"), env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert errors == result.stderr.splitlines()[-1:]
    reason = errors[0].split(" ERROR seqshard: ", 1)[1]
    assert reason == (
        f"checkpoint 'owner/name' is neither a local directory nor in the Hugging Face cache at {tmp_path}/hf/hub "
        "(HF_HUB_OFFLINE is set, so no download was tried): download it on a machine with internet access with "
        "`hf download owner/name --local-dir resources/checkpoints/name`, then use `--checkpoint "
        "resources/checkpoints/name`; or keep the hub id and download it into a cache this machine reads (HF_HOME)"
    )
    assert "config" not in reason and " | " not in reason
