"""GPU telemetry and process figures. Without a GPU (as here) NVML's absence is the path under test: the sampler
must say there is no GPU and why, never report zeros as if measured."""

import os
import time

from seqshard.runtime.monitoring import GpuSampler, process_figures, usable_cpus


def test_without_a_gpu_the_sampler_says_so_and_reports_no_numbers():
    with GpuSampler(interval_seconds=0.01) as sampler:
        time.sleep(0.05)
    summary = sampler.summary()
    assert summary["gpu_available"] is False
    assert "NVML" in summary["gpu_reason"] or "nvidia-ml-py" in summary["gpu_reason"]
    assert "gpus" not in summary
    assert sampler.latest() == []


def test_process_figures_measure_this_process():
    figures = process_figures()
    assert figures["process_rss_bytes"] > 10 * 2**20  # a Python process with pytest loaded
    assert 0.0 <= figures["host_memory_percent"] <= 100.0
    assert 0.0 <= figures["host_disk_percent"] <= 100.0


def test_a_sampler_for_the_cpu_samples_nothing_and_says_where_the_work_ran():
    with GpuSampler.for_device("cpu", interval_seconds=0.01) as sampler:
        time.sleep(0.03)
    assert sampler.summary() == {"gpu_available": False, "gpu_reason": "the work ran on cpu, not on a GPU"}
    assert sampler.latest() == []


def test_a_sampler_for_a_cuda_device_without_a_gpu_gives_nvmls_reason():
    summary = GpuSampler.for_device("cuda:1").summary()
    assert summary["gpu_available"] is False
    assert "NVML" in summary["gpu_reason"] or "nvidia-ml-py" in summary["gpu_reason"]


def test_usable_cpus_is_this_process_affinity():
    assert 1 <= usable_cpus() == len(os.sched_getaffinity(0)) <= os.cpu_count()
