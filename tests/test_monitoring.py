"""GPU telemetry and process figures. Without a GPU (as here) NVML's absence is the path under test: the sampler
must say there is no GPU and why, never report zeros as if measured."""

import time

from seqshard.monitoring import GpuSampler, process_figures


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
