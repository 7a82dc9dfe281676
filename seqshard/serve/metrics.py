"""What the server counts, as Prometheus series in the server's own registry, and the JSON of `GET /metrics`.

The series (text format on `--metrics-port`):
- `seqshard_http_requests_total{endpoint,method,status}`, `seqshard_http_request_duration_seconds{endpoint}`,
  `seqshard_http_requests_in_flight`. `endpoint` is a route's path template (also when the request is refused
  on its way there: 405, 408, 413), `(no route)` for other paths, `(http)` for what the HTTP layer refuses
  before the application sees it (malformed, 408 on a slow head, 431); status 499 counts requests whose client
  left first;
- `seqshard_batch_sequences`, `seqshard_batch_tokens`, `seqshard_batch_duration_seconds` (per batch gathered from
  the queue), `seqshard_queue_depth`, `seqshard_cancelled_sequences_total` (queued or computing sequences dropped
  because every client of their batch left, or the server stopped),
  `seqshard_model_batches_total`, `seqshard_tokens_total`, `seqshard_computed_tokens_total` (padding included),
  `seqshard_sequences_total{task_type}`, `seqshard_model_load_seconds`, `seqshard_model_loaded`;
- `process_cpu_seconds_total`, `process_resident_memory_bytes`, ... (prometheus_client's process collector);
- `seqshard_host_{cpu,memory,disk}_percent`, `seqshard_host_network_{sent,received}_bytes_total`;
- `seqshard_gpu_{utilization_percent,memory_used_bytes,memory_total_bytes,power_watts}{gpu,name,uuid}` through
  NVML, registered only when a GPU is present: without one there are no GPU series at all, never zeros.

The JSON figures are read back from the same series, so the two views cannot disagree.
"""

from __future__ import annotations

from collections.abc import Iterator

import psutil
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from seqshard.runtime.monitoring import GpuSampler, process_figures

PREDICT_ENDPOINTS = ("/predict", "/predict/batch")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SEQUENCE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
TOKEN_BUCKETS = tuple(float(2**power) for power in range(5, 19))  # 32 .. 262,144


class HostCollector(Collector):
    """Host CPU, memory and disk use and network bytes, read at each scrape (monitoring.process_figures)."""

    def __init__(self, process: psutil.Process) -> None:
        self.process = process

    def collect(self) -> Iterator[Metric]:
        figures = process_figures(self.process)
        for name, key, text in (
            ("cpu", "host_cpu_percent", "Host CPU use, percent of all cores, since the previous reading"),
            ("memory", "host_memory_percent", "Host memory in use, percent"),
            ("disk", "host_disk_percent", "Use of the disk holding the working directory, percent"),
        ):
            yield GaugeMetricFamily(f"seqshard_host_{name}_percent", text, value=figures[key])
        for name, key in (("sent", "host_network_sent_bytes"), ("received", "host_network_received_bytes")):
            yield CounterMetricFamily(
                f"seqshard_host_network_{name}_bytes", f"Bytes {name} over all host interfaces", value=figures[key]
            )


class GpuCollector(Collector):
    """The newest NVML sample of every visible GPU, labelled by index, name and UUID."""

    FIGURES = (
        ("utilization_percent", "GPU utilization, percent"),
        ("memory_used_bytes", "GPU memory in use, bytes"),
        ("memory_total_bytes", "GPU memory, bytes"),
        ("power_watts", "GPU power draw, watts"),
    )

    def __init__(self, sampler: GpuSampler) -> None:
        self.sampler = sampler

    def collect(self) -> Iterator[Metric]:
        latest = self.sampler.latest()
        for key, text in self.FIGURES:
            family = GaugeMetricFamily(f"seqshard_gpu_{key}", text, labels=["gpu", "name", "uuid"])
            for device in latest:
                if key in device:  # power is missing on boards that do not report it
                    family.add_metric([str(device["index"]), str(device["name"]), str(device["uuid"])], device[key])
            yield family


class ServerMetrics:
    """The server's series in a registry of its own (several servers in one process never share counts)."""

    def __init__(self, gpu_sampler: GpuSampler | None = None) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "seqshard_http_requests", "HTTP requests answered", ["endpoint", "method", "status"], registry=registry
        )
        self.latency = Histogram(
            "seqshard_http_request_duration_seconds", "Time to answer an HTTP request", ["endpoint"],
            buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.batch_sequences = Histogram(
            "seqshard_batch_sequences", "Sequences per batch gathered from the queue", buckets=SEQUENCE_BUCKETS,
            registry=registry,
        )  # fmt: skip
        self.batch_tokens = Histogram(
            "seqshard_batch_tokens", "Model tokens per batch gathered from the queue, padding excluded",
            buckets=TOKEN_BUCKETS, registry=registry,
        )  # fmt: skip
        self.batch_seconds = Histogram(
            "seqshard_batch_duration_seconds", "Time the model worker spent on one batch (tokenizing to results)",
            buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.model_batches = Counter("seqshard_model_batches", "Forward passes of the model", registry=registry)
        self.tokens = Counter("seqshard_tokens", "Model tokens of the sequences, padding excluded", registry=registry)
        self.computed_tokens = Counter(
            "seqshard_computed_tokens", "Tokens the model computed, padding included", registry=registry
        )
        self.sequences = Counter("seqshard_sequences", "Sequences predicted", ["task_type"], registry=registry)
        self.cancelled_sequences = Counter(
            "seqshard_cancelled_sequences", "Sequences not computed because nobody waited for them any more",
            registry=registry,
        )  # fmt: skip
        self.in_flight = Gauge(
            "seqshard_http_requests_in_flight", "HTTP requests received and not yet answered", registry=registry
        )
        self.queue_depth = Gauge(
            "seqshard_queue_depth", "Sequences waiting in the queue or computing", registry=registry
        )
        self.model_load_seconds = Gauge(
            "seqshard_model_load_seconds", "Seconds the model took to load", registry=registry
        )
        self.model_loaded = Gauge("seqshard_model_loaded", "1 when the model is loaded and serving", registry=registry)
        self.process = psutil.Process()
        ProcessCollector(registry=registry)
        registry.register(HostCollector(self.process))
        self.gpu_sampler = gpu_sampler if gpu_sampler is not None and gpu_sampler.available else None
        if self.gpu_sampler is not None:
            registry.register(GpuCollector(self.gpu_sampler))

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, method, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def observe_batch(
        self, task_type: str, n_sequences: int, n_tokens: int, n_computed: int, n_batches: int, seconds: float
    ) -> None:
        self.batch_seconds.observe(seconds)
        self.batch_sequences.observe(n_sequences)
        self.batch_tokens.observe(n_tokens)
        self.tokens.inc(n_tokens)
        self.computed_tokens.inc(n_computed)
        self.model_batches.inc(n_batches)
        self.sequences.labels(task_type).inc(n_sequences)

    def memory_usage(self) -> dict[str, float]:
        """This process's resident memory and the host's memory use (percent)."""
        return {"process_rss_bytes": self.process.memory_info().rss, "host_percent": psutil.virtual_memory().percent}

    def summary(self) -> dict[str, object]:
        """The figures of `GET /metrics`: prediction requests and latency, GPU, memory, host CPU/memory/disk/network."""
        total = succeeded = cancelled = 0
        for metric in self.requests.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total") and sample.labels["endpoint"] in PREDICT_ENDPOINTS:
                    total += int(sample.value)
                    succeeded += int(sample.value) if sample.labels["status"].startswith("2") else 0
                    cancelled += int(sample.value) if sample.labels["status"] == "499" else 0
        seconds = count = 0.0
        for metric in self.latency.collect():
            for sample in metric.samples:
                if sample.labels.get("endpoint") in PREDICT_ENDPOINTS:
                    if sample.name.endswith("_sum"):
                        seconds += sample.value
                    elif sample.name.endswith("_count"):
                        count += sample.value
        figures = process_figures(self.process)
        return {
            "model_metrics": {
                "total_requests": total,
                "successful_requests": succeeded,
                "failed_requests": total - succeeded - cancelled,
                "cancelled_requests": cancelled,
                "average_response_time": seconds / count if count else None,
                "gpu_utilization": self.gpu_sampler.latest() if self.gpu_sampler is not None else None,
                "memory_usage": self.memory_usage(),
            },
            "system_metrics": {
                "cpu_usage": figures["host_cpu_percent"],
                "memory_usage": figures["host_memory_percent"],
                "disk_usage": figures["host_disk_percent"],
                "network_io": {
                    "bytes_sent": int(figures["host_network_sent_bytes"]),
                    "bytes_recv": int(figures["host_network_received_bytes"]),
                },
            },
        }
