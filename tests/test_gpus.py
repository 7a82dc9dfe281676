"""The local GPU pool: concurrent jobs get different devices, wait when none is free, and never keep one."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from seqshard.gpus import (
    acquire_gpus,
    default_pool_dir,
    gpus_for_job,
    lock_path,
    scheduler_assigned_devices,
    visible_devices,
)

# A job in its own process: take N GPUs from the pool, report CUDA_VISIBLE_DEVICES, hold them until stdin closes.
HOLDER = """
import os, sys
from seqshard.gpus import acquire_gpus
with acquire_gpus(int(sys.argv[1]), sys.argv[2], sys.argv[3].split(","), poll_seconds=0.05):
    print(os.environ["CUDA_VISIBLE_DEVICES"], flush=True)
    sys.stdin.read()
"""


class Holder:
    def __init__(self, n: int, pool: Path, devices: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(n), str(pool), devices],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def devices(self, timeout: float = 10.0) -> str | None:
        """The CUDA_VISIBLE_DEVICES it got, or None if it is still waiting after `timeout` seconds."""
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        return self.process.stdout.readline().strip() if ready else None

    def release(self) -> None:
        self.process.stdin.close()
        assert self.process.wait(timeout=10) == 0

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture
def holders():
    started: list[Holder] = []
    yield lambda *args: started.append(Holder(*args)) or started[-1]
    for holder in started:
        if holder.process.poll() is None:
            holder.kill()


def test_two_jobs_get_different_devices_and_a_third_waits_for_a_release(tmp_path: Path, holders) -> None:
    first = holders(1, tmp_path, "0,1")
    assert first.devices() == "0"
    second = holders(1, tmp_path, "0,1")
    assert second.devices() == "1"
    third = holders(1, tmp_path, "0,1")
    assert third.devices(timeout=1.0) is None
    second.release()
    assert third.devices() == "1"
    first.release()
    third.release()


def test_a_crashed_job_frees_its_device(tmp_path: Path, holders) -> None:
    crashed = holders(1, tmp_path, "0")
    assert crashed.devices() == "0"
    waiting = holders(1, tmp_path, "0")
    assert waiting.devices(timeout=1.0) is None
    crashed.process.send_signal(signal.SIGKILL)
    assert waiting.devices() == "0"
    assert crashed.process.wait(timeout=10) == -signal.SIGKILL
    waiting.release()


def test_multi_gpu_jobs_take_all_their_devices_at_once(tmp_path: Path, holders) -> None:
    one = holders(1, tmp_path, "0,1,2")
    assert one.devices() == "0"
    two = holders(2, tmp_path, "0,1,2")
    assert two.devices() == "1,2"
    # Only device 0 would be free once `one` ends: a 2-GPU job must not sit on it while waiting for another.
    other = holders(2, tmp_path, "0,1,2")
    assert other.devices(timeout=1.0) is None
    one.release()
    single = holders(1, tmp_path, "0,1,2")
    assert single.devices() == "0"
    two.release()
    assert other.devices() == "1,2"
    single.release()
    other.release()


def test_device_ids_are_kept_as_listed_and_named_safely(tmp_path: Path, holders) -> None:
    job = holders(1, tmp_path, "GPU-8f1c/3,5")
    assert job.devices() == "GPU-8f1c/3"
    assert lock_path(tmp_path, "GPU-8f1c/3") == tmp_path / "gpuGPU-8f1c_3.lock"
    job.release()


def test_in_process_environment_is_set_and_restored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,7")
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    with acquire_gpus(1, tmp_path) as chosen:
        assert chosen == ["4"]
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "4"
        assert os.environ["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
        with acquire_gpus(1, tmp_path, visible=["4", "7"]) as nested:
            assert nested == ["7"]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,7"
    assert "CUDA_DEVICE_ORDER" not in os.environ
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu4.lock", "gpu7.lock"]


def test_asking_for_more_than_the_pool_fails_instead_of_waiting_for_ever(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"asks for 3 GPU\(s\) but this machine's pool has 2 \(0,1\)"):
        with acquire_gpus(3, tmp_path, visible=["0", "1"]):
            pass
    with pytest.raises(RuntimeError, match=r"pool has 0 \(none\)"):
        with acquire_gpus(1, tmp_path, visible=[]):
            pass


def test_pool_size_comes_from_override_then_cuda_then_nvidia_smi(tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    smi = fake / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 (UUID: GPU-a)'\necho 'GPU 1: NVIDIA H100 (UUID: GPU-b)'\n")
    smi.chmod(0o755)
    path = f"{fake}:{os.environ['PATH']}"
    assert visible_devices({"SEQSHARD_GPUS": "2,3", "CUDA_VISIBLE_DEVICES": "0", "PATH": path}) == ["2", "3"]
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "1, 0", "PATH": path}) == ["1", "0"]
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "", "PATH": path}) == []
    original = os.environ["PATH"]
    os.environ["PATH"] = path
    try:
        assert visible_devices({}) == ["0", "1"]
    finally:
        os.environ["PATH"] = original


def test_slurm_assignment_is_respected_and_allocations_get_their_own_pool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert scheduler_assigned_devices({"CUDA_VISIBLE_DEVICES": "0"}) is None
    assert scheduler_assigned_devices({"SLURM_JOB_ID": "7", "CUDA_VISIBLE_DEVICES": "1"}) == ["1"]
    assert default_pool_dir({"SEQSHARD_GPU_POOL": str(tmp_path)}) == tmp_path
    assert default_pool_dir({"SLURM_JOB_ID": "7"}).name == "slurm-7"

    monkeypatch.delenv("SEQSHARD_GPUS", raising=False)
    monkeypatch.setenv("SEQSHARD_GPU_POOL", str(tmp_path / "pool"))
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    # A Slurm job that got the one GPU it asked for keeps it and touches no pool.
    with gpus_for_job(1) as devices:
        assert devices == ["1"]
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    assert not (tmp_path / "pool").exists()
    # A local executor inside one 2-GPU allocation shares that allocation's devices through the pool.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with gpus_for_job("1") as devices:
        assert devices == ["0"]
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert [p.name for p in (tmp_path / "pool").iterdir()] == ["gpu0.lock"]


def test_cpu_jobs_skip_the_pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEQSHARD_GPU_POOL", str(tmp_path / "pool"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    for requested in (0, None, "0"):
        with gpus_for_job(requested) as devices:
            assert devices is None
    assert not (tmp_path / "pool").exists()


def test_waiting_job_starts_within_a_poll_of_the_release(tmp_path: Path, holders) -> None:
    holder = holders(1, tmp_path, "0")
    assert holder.devices() == "0"
    waiting = holders(1, tmp_path, "0")
    time.sleep(0.5)
    released = time.monotonic()
    holder.release()
    assert waiting.devices() == "0"
    assert time.monotonic() - released < 2.0
    waiting.release()
