"""Test speeds: `slow` marks what the fast loop (`pytest -m "not slow"`) leaves to the full suite.

A test is slow when it starts a server (uvicorn, Prometheus, Redis, JuiceFS), a container (podman), a browser
(Chromium), a cluster (Slurm) or a Snakemake run. Every `workflow` test (one that runs Snakemake for real) is
slow; this hook marks them so, and the other slow tests carry the mark themselves.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("workflow") is not None and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)
