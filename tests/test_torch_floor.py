"""The torch version floor in pyproject.toml is the newest "first release" among the torch APIs seqshard uses.

Only one torch can be installed here (2.13.0, CPU), so the floor cannot be proven by installing it. What is
checked for real instead: the table below (each API, the release that introduced it, and where that is recorded)
still describes the code, since every pattern must occur in the package; every API exists in the installed torch;
and pyproject's floor is the table's newest release. Adding a newer API to the code means adding its row, which
moves the floor.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]

# (pattern in seqshard/, first torch release with it, where that is recorded)
TORCH_APIS = [
    (r"torch\.get_autocast_dtype\(", "2.4",
     "pytorch/pytorch#124479 (device-generic autocast API), released in 2.4; NVIDIA/TransformerEngine#1277"),
    (r"torch\.is_autocast_enabled\(device_type\)", "2.4",
     "device_type argument from pytorch/pytorch#124479 (2.4); huggingface/transformers#43509 guards it for <2.4"),
    (r"torch\.OutOfMemoryError", "2.5",
     "device-generic torch.OutOfMemoryError since 2.5.0 (huggingface/accelerate#3475)"),
    (r"weights_only=True, mmap=True", "2.1", "torch.load(mmap=...) added in 2.1"),
    (r"assign=True", "2.1", "nn.Module.load_state_dict(assign=...) added in 2.1"),
    (r"F\.scaled_dot_product_attention\(", "2.0", "torch.nn.functional.scaled_dot_product_attention, 2.0"),
]  # fmt: skip


def package_source() -> str:
    return "\n".join(path.read_text() for path in sorted((REPO / "seqshard").rglob("*.py")))


def torch_floor() -> Version:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    (torch_requirement,) = [Requirement(d) for d in pyproject["project"]["dependencies"] if d.startswith("torch")]
    floors = [Version(spec.version) for spec in torch_requirement.specifier if spec.operator == ">="]
    assert len(floors) == 1, f"torch needs one >= floor in pyproject.toml, got {torch_requirement}"
    return floors[0]


@pytest.mark.parametrize(("pattern", "release", "source"), TORCH_APIS, ids=[row[0] for row in TORCH_APIS])
def test_each_listed_api_is_used_by_the_package(pattern: str, release: str, source: str) -> None:
    assert re.search(pattern, package_source()), f"{pattern} is no longer used: drop its row ({source})"


def test_the_listed_apis_exist_in_the_installed_torch() -> None:
    assert callable(torch.get_autocast_dtype) and torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert torch.is_autocast_enabled("cpu") is False
    assert issubclass(torch.OutOfMemoryError, RuntimeError)
    assert "mmap" in torch.load.__code__.co_varnames
    assert "assign" in torch.nn.Module.load_state_dict.__code__.co_varnames


def test_pyproject_floor_is_the_newest_api_release() -> None:
    newest = max(Version(release) for _, release, _ in TORCH_APIS)
    assert torch_floor() == newest == Version("2.5")
    assert Version(torch.__version__.split("+")[0]) >= torch_floor()
