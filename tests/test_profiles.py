"""Every profile under profiles/ parses and plans the demo, and each executor gets its own GPU tags for inference.

Dry runs only: nothing is submitted. Inference jobs are planned once packing is done, so the demo is packed
first (locally, for real). The cloud profiles keep their executor, but their bucket is swapped for the `fs`
storage plugin on a local folder, because a dry run checks which inputs exist in storage and there is no
network here; their GPU tags are read from a run of the same profile on the local filesystem.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from snakemake_executor_plugin_slurm.utils import set_gres_string

from seqshard.models.dnabert2 import write_demo_checkpoint
from seqshard.runtime.checkpoints import inference_memory_mb

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"
PROFILES = REPO / "profiles"
GPU_TAGS = ("gpu", "gpu_model", "gpu_manufacturer", "nvidia_gpu")
# What every inference job asks for on its first attempt (workflow/rules/common.smk), whatever the executor, while
# the demo checkpoints are not built yet: memory is 4000 MB plus twice the weights, and there are none yet.
FIRST_ATTEMPT = {"mem_mb": "4000", "runtime": "60", "googlebatch_memory": "3815"}


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


def demo_rules(stage: str) -> list[str]:
    """The demo's pack or merge rules: a model entry scoring variants has `pack_variants_` and `merge_variants_`."""
    import yaml

    models = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["models"]
    rules = []
    for name, entry in models.items():
        if set(entry["tasks"]) - {"variant_effect"}:
            rules.append(f"{stage}_{name}")
        if "variant_effect" in entry["tasks"]:
            rules.append(f"{stage}_variants_{name}")
    return rules


@pytest.fixture(scope="module")
def sharded_demo(tmp_path_factory) -> Path:
    """The demo packed and nothing else, as the README says to before a dry run: `snakemake --cores 2 packs`."""
    workdir = demo_copy(tmp_path_factory.mktemp("profiles"))
    (workdir / "packs.out").write_text(snakemake(workdir, "--cores", "2", "packs"))
    return workdir


@pytest.mark.workflow
def test_a_dry_run_lists_the_inference_jobs_once_the_inputs_are_packed(sharded_demo: Path, tmp_path: Path) -> None:
    """Inference jobs are planned from the packs (checkpoints): a dry run on a fresh tree cannot list them, and so
    cannot show their GPU requests; after `snakemake --cores 2 packs` it does."""
    gpu = "--set-resources", "infer_shard:gpu=1"
    fresh = [rule for rule, _ in planned(snakemake(demo_copy(tmp_path / "fresh"), *gpu, "--dry-run"))]
    assert "infer_shard" not in fresh and "pack_dnabert2" in fresh
    # `packs` ran the packs and nothing else (the target rule itself runs nothing): no demo checkpoint was built,
    # nothing was scored.
    ran = re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):", (sharded_demo / "packs.out").read_text(), re.MULTILINE)
    assert sorted(ran) == sorted(demo_rules("pack"))
    assert not (sharded_demo / "resources" / "checkpoints").exists()
    inference = [resources for rule, resources in planned(snakemake(sharded_demo, *gpu, "--dry-run"))
                 if rule == "infer_shard"]  # fmt: skip
    assert len(inference) >= 6 and all(resources["gpu"] == "1" for resources in inference)


@pytest.mark.workflow
def test_local_profile_plans_cpu_inference(sharded_demo: Path) -> None:
    tags = inference_tags(snakemake(sharded_demo, "--profile", str(PROFILES / "local"), "--dry-run"))
    assert not set(GPU_TAGS) & set(tags)
    assert {key: tags[key] for key in FIRST_ATTEMPT} == FIRST_ATTEMPT


@pytest.mark.workflow
def test_local_gpus_are_counted_per_job(sharded_demo: Path) -> None:
    output = snakemake(
        sharded_demo, "--profile", str(PROFILES / "local"), "--resources", "gpu=2",
        "--set-resources", "infer_shard:gpu=1", "--dry-run",
    )  # fmt: skip
    tags = inference_tags(output)
    assert (tags["gpu"], tags["gpu_manufacturer"], tags["nvidia_gpu"]) == ("1", "nvidia", "1")
    assert "gpu_model" not in tags


@pytest.mark.workflow
def test_slurm_profile_asks_one_gpu_per_inference_job(sharded_demo: Path) -> None:
    tags = inference_tags(snakemake(sharded_demo, "--profile", str(PROFILES / "slurm"), "--dry-run"))
    assert tags["gpu"] == "1" and "gpu_model" not in tags
    assert {key: tags[key] for key in FIRST_ATTEMPT} == FIRST_ATTEMPT
    assert sbatch_gpu_flags(gpu=1) == " --gpus=1"


@pytest.mark.workflow
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
@pytest.mark.workflow
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
    assert sorted(rule for rule in rules if rule.startswith("pack_")) == sorted(demo_rules("pack"))
    assert sorted(rule for rule in rules if rule.startswith("merge_")) == sorted(demo_rules("merge"))
    assert rules[-1] == "all"
    assert f"{bucket}/results/packs/dnabert2/shards (send to storage)" in output

    # The profile's resources for inference jobs, planned on the local filesystem where the shards exist.
    on_local_files = "--executor", "local", "--default-storage-provider", "none"
    tags = inference_tags(snakemake(sharded_demo, "--profile", str(PROFILES / profile), *on_local_files, "--dry-run"))
    assert {key: tags.get(key) for key in expected} == expected
    assert {key: tags[key] for key in FIRST_ATTEMPT} == FIRST_ATTEMPT


@pytest.mark.workflow
def test_inference_memory_follows_the_checkpoint_size(sharded_demo: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    shutil.copytree(sharded_demo, workdir, symlinks=True)
    # A bigger DNABERT-2 where the demo's goes: the models that use it ask for more, the others for the base.
    checkpoint = write_demo_checkpoint(
        workdir / "resources" / "checkpoints" / "dnabert2-demo",
        hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
    )  # fmt: skip
    weights = (checkpoint / "pytorch_model.bin").stat().st_size
    expected = 4000 + math.ceil(2 * weights / 1e6)
    assert expected > 4030
    output = snakemake(workdir, "--profile", str(PROFILES / "local"), "--dry-run")
    by_model: dict[str, set[str]] = {}
    for block in re.split(r"\n(?=(?:local)?(?:rule|checkpoint) \w+:)", output):
        if block.startswith("rule infer_shard:"):
            model = re.search(r"model=([\w.-]+)", block).group(1)
            resources = dict(item.split("=", 1) for item in re.search(r"resources: (.*)", block).group(1).split(", "))
            by_model.setdefault(model, set()).add((resources["mem_mb"], resources["googlebatch_memory"]))
    mib = str(math.ceil(expected * 10**6 / 2**20))
    assert by_model["dnabert2"] == by_model["dnabert2_pll"] == {(str(expected), mib)}
    assert by_model["lucaone"] == {("4000", "3815")}  # lucaone-demo is not built in this copy


def test_inference_memory_of_local_sharded_missing_and_cached_checkpoints(tmp_path: Path, monkeypatch) -> None:
    single = tmp_path / "single"
    single.mkdir()
    (single / "pytorch_model.bin").write_bytes(b"\0" * 3_000_000)
    (single / "training_args.bin").write_bytes(b"\0" * 9_000_000)  # not weights: never counted
    assert inference_memory_mb(single) == 4000 + 6
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "model.safetensors.index.json").write_text(
        '{"weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors", "c": "model-1.safetensors"}}'
    )
    (sharded / "model-1.safetensors").write_bytes(b"\0" * 2_000_000)
    (sharded / "model-2.safetensors").write_bytes(b"\0" * 500_001)
    assert inference_memory_mb(str(sharded)) == 4000 + 6  # 2 x 2.500001 MB, rounded up
    # Not there yet (a demo the workflow builds first), or a hub id not in the cache: the base, and no download.
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert inference_memory_mb(tmp_path / "missing") == inference_memory_mb("owner/not-cached") == 4000
    snapshot = tmp_path / "hub" / "models--owner--cached" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"\0" * 1_000_000)
    (tmp_path / "hub" / "models--owner--cached" / "refs").mkdir()
    (tmp_path / "hub" / "models--owner--cached" / "refs" / "main").write_text("abc123")
    assert inference_memory_mb("owner/cached") == 4000 + 2
