"""What a running seqshard process measures about itself: GPU telemetry through NVML and process CPU/memory.

One module for both users of these figures: the workflow's inference jobs (their run figures, then the resource
report) and the HTTP server (its Prometheus gauges and /metrics). GPU figures come from NVML (`nvidia-ml-py`),
sampled in a background thread a few times a second. Without a GPU, or without the NVML library, the sampler says
so (`gpu_available: False` with the reason) and never reports zeros that look like measurements.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field

import psutil

log = logging.getLogger(__name__)


@dataclass
class _DeviceSeries:
    """Running sums and peaks of one GPU's samples (no per-sample list: memory stays flat on long jobs)."""

    index: int
    name: str
    uuid: str
    samples: int = 0
    utilization_sum: float = 0.0
    utilization_peak: float = 0.0
    memory_used_sum: float = 0.0
    memory_used_peak: int = 0
    memory_total: int = 0
    power_sum: float = 0.0
    power_peak: float = 0.0
    power_samples: int = 0
    latest: dict[str, float] = field(default_factory=dict)

    def add(self, utilization: float, memory_used: int, memory_total: int, power_watts: float | None) -> None:
        self.samples += 1
        self.utilization_sum += utilization
        self.utilization_peak = max(self.utilization_peak, utilization)
        self.memory_used_sum += memory_used
        self.memory_used_peak = max(self.memory_used_peak, memory_used)
        self.memory_total = memory_total
        if power_watts is not None:
            self.power_samples += 1
            self.power_sum += power_watts
            self.power_peak = max(self.power_peak, power_watts)
        self.latest = {
            "utilization_percent": utilization,
            "memory_used_bytes": float(memory_used),
            "memory_total_bytes": float(memory_total),
            **({"power_watts": power_watts} if power_watts is not None else {}),
        }

    def summary(self) -> dict[str, object]:
        n = max(self.samples, 1)
        return {
            "index": self.index,
            "name": self.name,
            "uuid": self.uuid,
            "samples": self.samples,
            "utilization_mean_percent": round(self.utilization_sum / n, 2),
            "utilization_peak_percent": self.utilization_peak,
            "memory_used_mean_bytes": int(self.memory_used_sum / n),
            "memory_used_peak_bytes": self.memory_used_peak,
            "memory_total_bytes": self.memory_total,
            "power_mean_watts": round(self.power_sum / self.power_samples, 2) if self.power_samples else None,
            "power_peak_watts": self.power_peak if self.power_samples else None,
        }


def _visible_selectors(environ: dict[str, str] | os._Environ[str]) -> list[str] | None:
    """CUDA_VISIBLE_DEVICES as a list of indices or UUIDs; None when unset (every device is visible)."""
    value = environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


class GpuSampler:
    """Samples the GPUs this process may use (those CUDA_VISIBLE_DEVICES names, else all) in a daemon thread.

    Use as a context manager around the work to measure; `summary()` afterwards gives per-device mean and peak
    utilization, memory and power with the sample count, or `{"gpu_available": False, "gpu_reason": ...}`.
    `latest()` returns the newest sample per device for live gauges.

    `visible_index` narrows sampling to the n-th visible device (torch's `cuda:n`), so a job that uses one GPU of
    several is not credited with its neighbours' work; `disabled_reason` makes a sampler that samples nothing
    and gives that reason (see `for_device`).
    """

    def __init__(
        self, interval_seconds: float = 0.25, *, visible_index: int | None = None, disabled_reason: str | None = None
    ) -> None:
        self.interval_seconds = interval_seconds
        self.visible_index = visible_index
        self.reason: str | None = disabled_reason
        self._devices: list[tuple[object, _DeviceSeries]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._nvml = None
        if disabled_reason is None:
            self._open()

    @classmethod
    def for_device(cls, device: str, interval_seconds: float = 0.25) -> GpuSampler:
        """A sampler of the GPU a torch device string names (`cuda`, `cuda:1`); for any other device one that
        samples nothing and says the work ran there, so CPU jobs never report a GPU they did not use."""
        kind, _, index = device.partition(":")
        if kind != "cuda":
            return cls(interval_seconds, disabled_reason=f"the work ran on {device}, not on a GPU")
        return cls(interval_seconds, visible_index=int(index or 0))

    def _open(self) -> None:
        try:
            import pynvml
        except ImportError:
            self.reason = "nvidia-ml-py is not installed"
            return
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as error:
            self.reason = f"NVML unavailable: {error}"
            return
        self._nvml = pynvml
        selectors = _visible_selectors(os.environ)
        count = pynvml.nvmlDeviceGetCount()
        for index in range(count):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
            if (
                selectors is not None
                and str(index) not in selectors
                and not any(uuid.startswith(s) for s in selectors if s.startswith(("GPU-", "MIG-")))
            ):
                continue
            name = _text(pynvml.nvmlDeviceGetName(handle))
            self._devices.append((handle, _DeviceSeries(index, name, uuid)))
        if not self._devices:
            self.reason = f"NVML lists {count} GPU(s), none visible to this process (CUDA_VISIBLE_DEVICES)"
        elif self.visible_index is not None:
            if self.visible_index >= len(self._devices):
                self.reason = f"cuda:{self.visible_index} requested but {len(self._devices)} GPU(s) are visible"
                self._devices = []
            else:
                self._devices = [self._devices[self.visible_index]]

    @property
    def available(self) -> bool:
        return bool(self._devices)

    def sample(self) -> None:
        """Take one sample of every device now (the thread calls this; tests and the server may too)."""
        pynvml = self._nvml
        for handle, series in self._devices:
            try:
                utilization = float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
                memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
                try:
                    power: float | None = pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
                except pynvml.NVMLError:
                    power = None  # some boards (and MIG slices) do not report power
            except pynvml.NVMLError as error:
                log.debug("NVML sample of GPU %d failed: %s", series.index, error)
                continue
            with self._lock:
                series.add(utilization, int(memory.used), int(memory.total), power)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_seconds):
            self.sample()

    def start(self) -> GpuSampler:
        if self.available and self._thread is None:
            self.sample()
            self._thread = threading.Thread(target=self._run, name="seqshard-gpu-sampler", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self.sample()

    def __enter__(self) -> GpuSampler:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def summary(self) -> dict[str, object]:
        if not self.available:
            return {"gpu_available": False, "gpu_reason": self.reason}
        with self._lock:
            return {"gpu_available": True, "gpus": [series.summary() for _, series in self._devices]}

    def latest(self) -> list[dict[str, object]]:
        """Newest sample per device: index, name, uuid and the figures (empty without a GPU)."""
        with self._lock:
            return [
                {"index": series.index, "name": series.name, "uuid": series.uuid, **series.latest}
                for _, series in self._devices
                if series.latest
            ]


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def usable_cpus() -> int:
    """CPU cores this process may run on: its affinity mask (what Slurm's cgroup or taskset allow), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def process_started_at() -> float:
    """When this process started (epoch seconds), on the clock that `time.time()` reads: for a workflow rule script,
    when its job began.

    psutil's `create_time()` adds the process's start in clock ticks since boot to the boot time the kernel gives in
    whole seconds (`btime` in /proc/stat), so on Linux it is up to a second early, the same for every process since
    boot (about 1 s on the machine where back-to-back jobs appeared to overlap in the resource report). Here the
    process's age is measured instead, on one clock: now minus the start, both counted since boot, subtracted from
    `time.time()`. The start is counted in ticks (10 ms), rounded up, so it is never before the process existed.
    Elsewhere (no /proc, no CLOCK_BOOTTIME) the start is psutil's.
    """
    try:
        with open("/proc/self/stat", encoding="ascii") as handle:
            # Field 22, after the command name in parentheses (which may hold spaces): start time in ticks since boot.
            ticks = int(handle.read().rsplit(")", 1)[1].split()[19])
        since_boot = time.clock_gettime(time.CLOCK_BOOTTIME)
        now = time.time()
    except (OSError, AttributeError, IndexError, ValueError):
        return psutil.Process().create_time()
    started_since_boot = (ticks + 1) / os.sysconf("SC_CLK_TCK")
    return now - max(0.0, since_boot - started_since_boot)


def process_figures(process: psutil.Process | None = None) -> dict[str, float]:
    """This process's resident memory and CPU use (percent of one core since the previous call on the same
    `process` object: pass one that lives as long as the caller), plus the host's CPU, memory, disk use and network
    byte counters, for health endpoints and job figures."""
    process = process or psutil.Process()
    with process.oneshot():
        rss = process.memory_info().rss
        cpu = process.cpu_percent(interval=None)
    memory = psutil.virtual_memory()
    network = psutil.net_io_counters()
    return {
        "process_rss_bytes": float(rss),
        "process_cpu_percent": cpu,
        "host_memory_percent": memory.percent,
        "host_cpu_percent": psutil.cpu_percent(interval=None),
        "host_disk_percent": psutil.disk_usage(os.getcwd()).percent,
        "host_network_sent_bytes": float(network.bytes_sent),
        "host_network_received_bytes": float(network.bytes_recv),
        "time": time.time(),
    }
