"""Test speeds: `slow` marks what the fast loop (`pytest -m "not slow"`) leaves to the full suite.

A test is slow when it starts a server (uvicorn, Prometheus, Redis, JuiceFS), a container (podman), a browser
(Chromium), a cluster (Slurm) or a Snakemake run. Every `workflow` test (one that runs Snakemake for real) is
slow; this hook marks them so, and the other slow tests carry the mark themselves.

Fixtures shared by several modules live here too.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("workflow") is not None and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def dnabert2_demo_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The DNABERT-2 demo checkpoint (masked-LM layout, seed 0), written once for every module that only reads it:
    training its tokenizer takes seconds, and the fast loop would otherwise do it in each of those modules."""
    from seqshard.models.dnabert2 import write_demo_checkpoint

    return write_demo_checkpoint(tmp_path_factory.mktemp("dnabert2-demo") / "dnabert2-demo")
