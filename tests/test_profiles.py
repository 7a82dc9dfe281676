"""Every profile under profiles/ parses and plans the demo, and each executor gets its own GPU tags for inference.

Dry runs only: nothing is submitted. Inference jobs are planned once packing is done, so the demo is packed
first (locally, for real). The cloud profiles keep their executor, but their bucket is swapped for the `fs`
storage plugin on a local folder, because a dry run checks which inputs exist in storage and there is no
network here; their GPU tags are read from a run of the same profile on the local filesystem.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from snakemake_executor_plugin_slurm.utils import set_gres_string

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"
PROFILES = REPO / "profiles"
GPU_TAGS = ("gpu", "gpu_model", "gpu_manufacturer", "nvidia_gpu")
# What every inference job asks for on its first attempt (workflow/rules/common.smk), whatever the executor.
FIRST_ATTEMPT = {"mem_mb": "4000", "runtime": "60", "googlebatch_memory": "3815"}

pytestmark = pytest.mark.workflow


def snakemake(workdir: Path, *args: str) -> str:
    command = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(workdir), *args]
    result = subprocess.run(command, capture_output=True, text=True, cwd=workdir)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    return result.stdout + result.stderr


def demo_copy(workdir: Path) -> Path:
    """The shipped demo as a user runs it: config/ and resources/demo/ relative to the working directory."""
    shutil.copytree(REPO / "config", workdir / "config")
    (workdir / "resources").mkdir()
    (workdir / "resources" / "demo").symlink_to(REPO / "resources" / "demo")
    return workdir


def planned(output: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, resources) of every job a dry run lists."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?(?:rule|checkpoint) \w+:)", output):
        header = re.match(r"(?:local)?(?:rule|checkpoint) (\w+):", block)
        resources = re.search(r"^\s+resources: (.*)$", block, re.MULTILINE)
        if header and resources:
            jobs.append((header.group(1), dict(item.split("=", 1) for item in resources.group(1).split(", "))))
    return jobs


class JobResources(dict):
    """Job resources as the executor plugins read them: `resources.gpu` and `resources.get("gpu")`."""

    __getattr__ = dict.__getitem__


def sbatch_gpu_flags(**resources: object) -> str:
    """What the installed Slurm plugin adds to the sbatch line for these resources."""
    return set_gres_string(SimpleNamespace(resources=JobResources(resources)))


def inference_tags(output: str) -> dict[str, str]:
    """The executor tags shared by every planned inference job (the test fails if they differ between jobs)."""
    jobs = planned(output)
    inference = [resources for rule, resources in jobs if rule == "infer_shard"]
    assert len(inference) >= 6, output[-3000:]
    first = inference[0]
    assert all(resources == first for resources in inference)
    for rule, resources in jobs:
        if rule != "infer_shard":
            assert not set(GPU_TAGS) & set(resources), (rule, resources)
    return first


def demo_models() -> list[str]:
    import yaml

    return list(yaml.safe_load((REPO / "config" / "config.yaml").read_text())["models"])


@pytest.fixture(scope="module")
def sharded_demo(tmp_path_factory) -> Path:
    workdir = demo_copy(tmp_path_factory.mktemp("profiles"))
    snakemake(workdir, "--cores", "2", "--until", *(f"pack_{model}" for model in demo_models()))
    return workdir


def test_local_profile_plans_cpu_inference(sharded_demo: Path) -> None:
    tags = inference_tags(snakemake(sharded_demo, "--profile", str(PROFILES / "local"), "--dry-run"))
    assert not set(GPU_TAGS) & set(tags)
    assert {key: tags[key] for key in FIRST_ATTEMPT} == FIRST_ATTEMPT


def test_local_gpus_are_counted_per_job(sharded_demo: Path) -> None:
    output = snakemake(
        sharded_demo, "--profile", str(PROFILES / "local"), "--resources", "gpu=2",
        "--set-resources", "infer_shard:gpu=1", "--dry-run",
    )  # fmt: skip
    tags = inference_tags(output)
    assert (tags["gpu"], tags["gpu_manufacturer"], tags["nvidia_gpu"]) == ("1", "nvidia", "1")
    assert "gpu_model" not in tags


def test_slurm_profile_asks_one_gpu_per_inference_job(sharded_demo: Path) -> None:
    tags = inference_tags(snakemake(sharded_demo, "--profile", str(PROFILES / "slurm"), "--dry-run"))
    assert tags["gpu"] == "1" and "gpu_model" not in tags
    assert {key: tags[key] for key in FIRST_ATTEMPT} == FIRST_ATTEMPT
    assert sbatch_gpu_flags(gpu=1) == " --gpus=1"


def test_one_gpu_request_becomes_every_executors_tag(sharded_demo: Path) -> None:
    slurm = str(PROFILES / "slurm")
    several = "infer_shard:gpu=2", "infer_shard:gpu_model=a100"
    tags = inference_tags(snakemake(sharded_demo, "--profile", slurm, "--set-resources", *several, "--dry-run"))
    # Google Batch cannot ask for several GPUs of a named type: it gets the count (of its default type).
    assert {key: tags.get(key) for key in GPU_TAGS} == {
        "gpu": "2", "gpu_model": "a100", "gpu_manufacturer": "nvidia", "nvidia_gpu": "2",
    }  # fmt: skip
    assert sbatch_gpu_flags(gpu=2, gpu_model="a100") == " --gpus=a100:2"
    named = "infer_shard:gpu=1", "infer_shard:gpu_model=nvidia-l4"
    tags = inference_tags(snakemake(sharded_demo, "--profile", slurm, "--set-resources", *named, "--dry-run"))
    assert tags["nvidia_gpu"] == "nvidia-l4"


@pytest.mark.parametrize(
    ("profile", "expected"),
    [
        ("kubernetes", {"gpu": "1", "gpu_manufacturer": "nvidia", "disk_mb": "50000"}),
        ("googlebatch", {"nvidia_gpu": "1", "googlebatch_machine_type": "n1-standard-8"}),
    ],
)
def test_cloud_profile_plans_the_demo_and_tags_gpus(
    profile: str, expected: dict[str, str], sharded_demo: Path, tmp_path: Path
) -> None:
    # With the profile's own executor, against a local stand-in for its bucket holding the uploaded inputs.
    bucket = tmp_path / "bucket"
    (bucket / "resources").mkdir(parents=True)
    shutil.copytree(REPO / "resources" / "demo", bucket / "resources" / "demo")
    fresh = demo_copy(tmp_path / "workdir")
    output = snakemake(
        fresh, "--profile", str(PROFILES / profile), "--default-storage-provider", "fs",
        "--default-storage-prefix", str(bucket), "--dry-run",
    )  # fmt: skip
    rules = [rule for rule, _ in planned(output)]
    models = demo_models()
    assert sorted(rule for rule in rules if rule.startswith("pack_")) == sorted(f"pack_{m}" for m in models)
    assert sorted(rule for rule in rules if rule.startswith("merge_")) == sorted(f"merge_{m}" for m in models)
    assert rules[-1] == "all"
    assert f"{bucket}/results/packs/dnabert2/shards (send to storage)" in output

    # The profile's resources for inference jobs, planned on the local filesystem where the shards exist.
    on_local_files = "--executor", "local", "--default-storage-provider", "none"
    tags = inference_tags(snakemake(sharded_demo, "--profile", str(PROFILES / profile), *on_local_files, "--dry-run"))
    assert {key: tags.get(key) for key in expected} == expected
    assert {key: tags[key] for key in FIRST_ATTEMPT} == FIRST_ATTEMPT
