"""The demo workflow on a real Slurm cluster through profiles/slurm: GPU requests, results, memory escalation.

A session fixture starts a one-node cluster with stand-in GPUs (tests/slurm/cluster.py) from Slurm 22.05 and
munge, which tests/setup-system installs. One workflow run serves every check: the real workflow through
profiles/slurm, with a first-attempt inference memory too small for torch given the way the README tells users
to set their own (`--set-resources infer_shard:mem_mb=...` with the attempt in it), so each inference job is
killed by Slurm for memory once and resubmitted with twice the memory. A
local run of the same configuration, started alongside, is the reference for the numbers; it asks for GPUs too,
so that seqshard's local GPU pool is exercised through the workflow as well.

Without them the module skips locally, naming tests/setup-system, and fails under CI=true.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from slurm.cluster import (
    SlurmCluster,
    SlurmUnavailable,
    check_slurm_installed,
    cluster_is_up,
    one_test_cluster_at_a_time,
    scontrol_job,
)

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "tests" / "output"
log = logging.getLogger(__name__)
WORKFLOW = REPO / "workflow" / "Snakefile"
PROFILE = REPO / "profiles" / "slurm"
DEMO = REPO / "resources" / "demo"
IN_CI = os.environ.get("CI", "").lower() in ("true", "1")
MERGED = ["results/sample_a/dnabert2/embed.parquet", "results/sample_b/dnabert2/embed.parquet"]
# The demo checkpoint is only needed by inference jobs, which Snakemake plans once packing is done; naming it
# as a target lets it build alongside the pack instead of as a stage of its own.
TARGETS = ["all", "resources/checkpoints/dnabert2-demo"]
# What this test adds to profiles/slurm, and why:
SLURM_ARGS = [
    # The profile's GPU request, and a first attempt too small for torch that doubles per attempt (a set-resources
    # given on the command line replaces the profile's list, so the GPU is named again). A demo inference job
    # peaks near 760 MB in its cgroup (torch, the model, the mapped checkpoint's pages): 500 MB is killed, 1000 MB
    # is not.
    "--set-resources", "infer_shard:gpu=1", "infer_shard:mem_mb=500 * 2 ** (attempt - 1)",
    # One CPU per inference job, so that all three run at once on the 4-CPU node (the local run does the same).
    "--set-threads", "infer_shard=1",
    # Status checks 10 s, 30 s, 60 s... after a submission; a stage of jobs here takes 20-50 s.
    "--slurm-init-seconds-before-status-checks", "10",
    "--latency-wait", "5",
    "--slurm-keep-successful-logs",
    # Debug logging is where the plugin prints each sbatch command line.
    "--verbose",
]  # fmt: skip
pytestmark = pytest.mark.workflow


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    try:
        check_slurm_installed()
    except SlurmUnavailable as error:
        if IN_CI:
            pytest.fail(f"CI=true and {error}")
        pytest.skip(str(error))
    with one_test_cluster_at_a_time():
        if cluster_is_up():
            # A cluster started outside the tests (e.g. by hand while developing): use it, start and stop nothing.
            yield None
            return
        cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"), cpus=4, gpus=3)
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()


def write_demo(workdir: Path) -> None:
    """The demo's DNA samples through the demo DNABERT-2 checkpoint: every rule of the workflow, few jobs."""
    config = {
        "samples": "samples.tsv",
        "on_invalid": "skip",
        # Three shards of the two samples' distinct sequences: per-shard jobs and a real merge, one stage of jobs.
        "shards": {"target_tokens": 40000},
        "models": {
            "dnabert2": {
                "architecture": "dnabert2",
                "checkpoint": "resources/checkpoints/dnabert2-demo",
                "tasks": ["embed"],
                # The GPUs here are stand-ins: jobs are scheduled as GPU jobs and, as configured, run on the CPU.
                # With device auto a job given a GPU that torch cannot use fails (tests/test_devices.py).
                "device": "cpu",
            }
        },
    }
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    rows = [("sample_a", DEMO / "sample_a.fa"), ("sample_b", DEMO / "sample_b.fa.gz")]
    sheet = "sample\tfasta\tmolecule\n" + "".join(f"{name}\t{path}\tdna\n" for name, path in rows)
    (workdir / "samples.tsv").write_text(sheet)


def snakemake_command(workdir: Path, snakefile: Path, targets: list[str], *args: str) -> list[str]:
    # Targets first: options such as --set-threads take every word after them.
    return [sys.executable, "-m", "snakemake", *targets, "-s", str(snakefile), "--directory", str(workdir),
            "--configfile", str(workdir / "config.yaml"), *args]  # fmt: skip


class SlurmRun:
    """The finished Slurm run: its directory, its output, and the Slurm job behind each submission."""

    def __init__(self, workdir: Path, output: str, reference: Path) -> None:
        self.workdir, self.output, self.reference = workdir, output, reference
        # "Job 7 has been submitted with SLURM jobid 12 (log: .../slurm_logs/rule_infer_shard/<wildcards>/12.log)."
        self.submissions = [
            (name, slurm_id)
            for slurm_id, name in re.findall(
                r"submitted with SLURM jobid (\d+) \(log: \S+/slurm_logs/\w+?_(\w+)/", output
            )
        ]
        self.sbatch_calls = re.findall(r"^sbatch call: (sbatch .*)$", output, re.MULTILINE)

    def jobs(self, rule: str) -> list[dict[str, str]]:
        return [scontrol_job(slurm_id) for name, slurm_id in self.submissions if name == rule]


@pytest.fixture(scope="module")
def slurm_run(slurm_cluster, tmp_path_factory) -> SlurmRun:
    workdir = tmp_path_factory.mktemp("slurm_run")
    reference = tmp_path_factory.mktemp("local_run")
    for directory in (workdir, reference):
        write_demo(directory)
    # The local reference runs alongside, at the lowest CPU priority: it fills the gaps while Slurm jobs wait for
    # status checks instead of slowing the jobs down. It also asks for a GPU per inference job out of two
    # stand-in devices, which exercises seqshard's local GPU pool (the numbers are CPU numbers either way).
    local_command = snakemake_command(
        reference, WORKFLOW, MERGED, "--cores", "2", "--set-threads", "infer_shard=1", "--resources", "gpu=2",
        "--set-resources", "infer_shard:gpu=1",
    )  # fmt: skip
    pool = {"SEQSHARD_GPUS": "0,1", "SEQSHARD_GPU_POOL": str(reference / "gpu-pool")}
    local = subprocess.Popen(
        ["nice", "-n", "19", *local_command],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=reference,
        env={**os.environ, **pool},
    )
    command = snakemake_command(workdir, WORKFLOW, TARGETS, "--profile", str(PROFILE), *SLURM_ARGS)
    result = subprocess.run(command, capture_output=True, text=True, cwd=workdir, timeout=420)
    (workdir / "snakemake.out").write_text(result.stdout + result.stderr)
    local_output, _ = local.communicate(timeout=300)
    assert local.returncode == 0, local_output[-5000:]
    assert result.returncode == 0, (result.stdout + result.stderr)[-8000:]
    return SlurmRun(workdir, result.stdout + result.stderr, reference)


def show(name: str, text: str) -> None:
    """Evidence worth quoting (the sbatch line, scontrol's view of a job): in the test's log, which pytest prints
    with a failure (or live with --log-cli-level=INFO), and in tests/output/<name>.txt, never in the progress line."""
    log.info("%s", text)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    (OUTPUT / f"{name}.txt").write_text(text + "\n")


def test_inference_jobs_asked_slurm_for_a_gpu_and_got_one(slurm_run: SlurmRun) -> None:
    calls = [call for call in slurm_run.sbatch_calls if "--comment rule_infer_shard_" in call]
    # Three shards, each submitted twice (the first attempt is killed for memory, see below).
    assert len(calls) == 6
    for call in calls:
        assert " --gpus=1" in call and "--gres" not in call
        assert re.search(r" -t 60 ", call) or re.search(r" -t 120 ", call)
    line = re.sub(r'--wrap=".*"$', '--wrap="<snakemake job>"', calls[-1])
    show("slurm_sbatch_line", f"sbatch line of one inference job:\n{line}")

    inference = slurm_run.jobs("infer_shard")
    assert len(inference) == 6
    for job in inference:
        # Read back from slurmctld: the GPU is part of the job's request and of what it was allocated.
        assert job["TresPerJob"] in ("gres:gpu:1", "gres/gpu:1"), job
        assert job["JOB_GRES"].startswith("gpu:1"), job
    # Jobs without a GPU request stay GPU-free.
    others = {"pack_dnabert2": 1, "demo_checkpoint": 1, "merge_dnabert2": 1, "resource_report": 1}
    assert Counter(name for name, _ in slurm_run.submissions) == {**others, "infer_shard": 6}
    for name in others:
        for job in slurm_run.jobs(name):
            assert "gpu" not in job.get("TresPerJob", "") + job["TRES"], job
            assert job["JobState"] == "COMPLETED"
    # Inside the job, seqshard kept the device Slurm assigned instead of taking one from its local pool.
    logs = sorted((slurm_run.workdir / "logs" / "infer_shard").rglob("*.log"))
    assert len(logs) == 3
    for log in logs:
        devices = re.findall(r"using GPU\(s\) (\S+) assigned by Slurm", log.read_text())
        assert devices and set(devices) <= {"0", "1", "2"}, log.read_text()[-2000:]


def test_merged_outputs_equal_a_local_run(slurm_run: SlurmRun) -> None:
    for merged in MERGED:
        on_slurm = pq.read_table(slurm_run.workdir / merged)
        local = pq.read_table(slurm_run.reference / merged)
        assert on_slurm.num_rows == local.num_rows > 0
        assert on_slurm.column("id").to_pylist() == local.column("id").to_pylist()
        assert on_slurm.column("n_tokens").to_pylist() == local.column("n_tokens").to_pylist()
        slurm_embeddings = np.stack(on_slurm.column("embedding").to_numpy(zero_copy_only=False))
        local_embeddings = np.stack(local.column("embedding").to_numpy(zero_copy_only=False))
        assert slurm_embeddings.shape == local_embeddings.shape
        np.testing.assert_allclose(slurm_embeddings, local_embeddings, rtol=0, atol=1e-6)


def test_out_of_memory_attempt_is_retried_with_twice_the_memory(slurm_run: SlurmRun) -> None:
    inference = slurm_run.jobs("infer_shard")
    by_shard: dict[str, list[dict[str, str]]] = {}
    for job in sorted(inference, key=lambda job: int(job["JobId"])):
        by_shard.setdefault(job["Comment"], []).append(job)
    assert len(by_shard) == 3
    for shard, (first, second) in by_shard.items():
        assert (first["MinMemoryNode"], first["JobState"]) == ("500M", "FAILED"), shard
        assert (second["MinMemoryNode"], second["JobState"]) == ("1000M", "COMPLETED"), shard
        assert (first["TimeLimit"], second["TimeLimit"]) == ("01:00:00", "02:00:00"), shard
        # Slurm itself killed the first attempt for its memory; the plugin keeps a failed job's log.
        log = next((slurm_run.workdir / ".snakemake" / "slurm_logs").rglob(f"{first['JobId']}.log")).read_text()
        assert re.search(r"exceeded memory limit \(\d+ > 524288000\), being killed", log), log[-2000:]
    assert slurm_run.output.count("Trying to restart job") == 3
    keys = ("JobId", "JobState", "MinMemoryNode", "TimeLimit", "TresPerJob")
    lines = ["  " + " ".join(f"{key}={job[key]}" for key in keys) for job in (first, second)]
    show("slurm_memory_retry", "\n".join([f"scontrol show job, both attempts of {shard}", *lines]))


def test_local_gpu_jobs_took_devices_from_the_pool_and_never_shared_one(slurm_run: SlurmRun) -> None:
    """Through the workflow, every GPU job of the local run took its device from seqshard's pool, and jobs whose
    holds overlapped held different devices. Whether two holds overlap here depends on timing (each lasts about a
    second, against three seconds of start-up per job); tests/test_gpus.py makes holders overlap for certain and
    checks that two get different devices and a third waits."""
    held = []
    for log in sorted((slurm_run.reference / "logs" / "infer_shard").rglob("*.log")):
        text = log.read_text()
        start = re.search(
            r"^(\S+ \S+) INFO seqshard.runtime.gpus: using GPU\(s\) (\d) from the pool", text, re.MULTILINE
        )
        end = re.search(r"^(\S+ \S+) INFO \S+: wrote \d+ rows", text, re.MULTILINE)
        assert start and end, text[-2000:]
        held.append((start.group(1), end.group(1), start.group(2)))
    assert len(held) == 3
    assert {device for _, _, device in held} <= {"0", "1"}, held  # SEQSHARD_GPUS=0,1
    overlapping = [(a, b) for i, a in enumerate(held) for b in held[i + 1 :] if a[0] < b[1] and b[0] < a[1]]
    assert all(a[2] != b[2] for a, b in overlapping), held
