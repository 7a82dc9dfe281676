"""Read what a run left behind into one table, one row per job: Snakemake's benchmark files, the job records the
rule scripts wrote (start, end, host, threads: `seqshard.runtime.jobs`), and the inference jobs' run figures.

Nothing here knows the workflow's rules. A job is named by its benchmark path, `<benchmark root>/<rule>/<wildcards
...>.tsv`; its record is `<log root>/<rule>/<wildcards ...>.job.json`; run figures name their job themselves
(`rule` and `job` keys, written by the rule script). Files are parsed by hand rather than with `pandas.read_csv`,
which costs about a millisecond a file: a run of 10,000 jobs has 20,000 to 30,000 of them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from seqshard.plan.packing import UNREADABLE, read_pack_samples
from seqshard.runtime.jobs import RECORD_SUFFIX

# Snakemake benchmark column -> our column. Snakemake reports memory and I/O in MB (2**20 bytes).
_BENCHMARK_COLUMNS = {
    "s": "wall_seconds",
    "max_rss": "max_rss_mb",
    "cpu_time": "cpu_seconds",
    "mean_load": "mean_load",
    "io_in": "io_in_mb",
    "io_out": "io_out_mb",
}
BENCHMARK_TABLE_COLUMNS = ["rule", "job", *_BENCHMARK_COLUMNS.values()]

_RECORD_TEXT = ["host"]
_RECORD_NUMBERS = ["started_at", "ended_at", "threads", "cpu_count", "load_average"]
RECORD_TABLE_COLUMNS = ["rule", "job", *_RECORD_TEXT, *_RECORD_NUMBERS]

# An inference job runs one forward pass (`pass`) of one model entry over one shard, for every task sharing it.
_FIGURE_LABELS = ["model", "pass", "tasks", "shard"]
_FIGURE_TEXT = ["device", "dtype", "host", "gpu_reason"]
_COUNTS = ["n_records", "n_sequences", "n_cached", "n_tokens", "n_computed_tokens"]
_TIMES = ["warmup_seconds", "load_seconds", "compute_seconds", "sequences_per_second", "tokens_per_second"]
# Windows and what their seams cost (seqshard.engine.seams): sequences windowed, and the probe's figures.
SEAM_NUMBERS = [
    "n_windowed", "seam_records", "seam_window_length", "seam_window_overlap",
    *(f"seam_{change}_{figure}" for change in ("overlap", "length")
      for figure in ("window_length", "window_overlap", "cosine_mean", "cosine_max")),
]  # fmt: skip
_FIGURE_NUMBERS = [
    "threads", "cpu_count", "started_at", "ended_at", *_COUNTS, "n_batches", "batch_tokens", *_TIMES,
    "peak_gpu_memory_bytes", *SEAM_NUMBERS,
]  # fmt: skip
_GPU_NUMBERS = [
    "gpu_count",
    "gpu_samples",
    "gpu_utilization_mean_percent",
    "gpu_utilization_peak_percent",
    "gpu_memory_peak_mb",
    "gpu_power_mean_watts",
]
FIGURE_TABLE_COLUMNS = ["rule", "job", *_FIGURE_LABELS, *_FIGURE_TEXT, *_FIGURE_NUMBERS, *_GPU_NUMBERS]

#: Columns of the per-job table, in order.
TABLE_COLUMNS = [
    "rule", "job", "host", "started_at", "ended_at", *_FIGURE_LABELS, "device", "dtype",
    "wall_seconds", "max_rss_mb", "cpu_seconds", "threads", "cpu_count", "cpu_efficiency", "host_load",
    "io_in_mb", "io_out_mb",
    *_COUNTS, "padding_fraction", "n_batches", "batch_tokens", *_TIMES, "peak_gpu_memory_mb",
    *_GPU_NUMBERS, "gpu_reason", *SEAM_NUMBERS,
]  # fmt: skip
TEXT_COLUMNS = ["rule", "job", "host", "model", "pass", "tasks", "shard", "device", "dtype", "gpu_reason"]


def _relative_to_root(root: Path, path: Path) -> Path:
    try:
        return path.relative_to(root)
    except ValueError:
        pass
    try:
        # One side may be relative and the other absolute (Snakemake hands scripts relative paths).
        return path.resolve().relative_to(root.resolve())
    except ValueError:
        pass
    # A storage provider stages `benchmarks/...` under its own local prefix (.snakemake/storage/s3/<bucket>/...):
    # the root is then a run of the path's components, the last such run.
    for start in range(len(path.parts) - len(root.parts), -1, -1):
        if path.parts[start : start + len(root.parts)] == root.parts:
            return Path(*path.parts[start + len(root.parts) :])
    raise ValueError(f"{path} is not under {root}")


def job_of(root: Path, path: Path, suffix: str) -> tuple[str, str]:
    """Split `<root>/<rule>/<job><suffix>` into rule and job (the job keeps its slashes)."""
    text = _relative_to_root(root, path).as_posix().removesuffix(suffix)
    rule, _, job = text.partition("/")
    # `<root>/<rule><suffix>`: a rule that runs once has no wildcards.
    return rule, job


def _number(text: str) -> float:
    # Snakemake writes "NA" for figures it could not measure; some versions and tools write "-".
    try:
        return float(text)
    except ValueError:
        return math.nan


def _read_one_benchmark(path: Path) -> dict[str, float]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    header = lines[0].split("\t") if lines else []
    if "s" not in header:
        raise ValueError(f"{path} is not a Snakemake benchmark file (no 's' column)")
    rows = [line.split("\t") for line in lines[1:]]
    means: dict[str, float] = {}
    for source, target in _BENCHMARK_COLUMNS.items():
        values = [_number(row[header.index(source)]) for row in rows if source in header]
        values = [value for value in values if not math.isnan(value)]
        # Several rows are repeats of the same job (`repeat()`); their mean is the job's figure.
        means[target] = sum(values) / len(values) if values else math.nan
    return means


def read_benchmarks(benchmark_root: Path | str, paths: Iterable[Path | str]) -> pd.DataFrame:
    """Read Snakemake `benchmark:` TSV files into one row per file.

    Args:
        benchmark_root: directory the files live under; the first path component below it is the rule, the
            rest (without `.tsv`) is the job, e.g. `infer_shard` and `dnabert2/hidden/0003`.
        paths: the benchmark files (strings are accepted, as Snakemake passes them).

    Returns:
        Columns rule, job, wall_seconds, max_rss_mb, cpu_seconds, mean_load, io_in_mb, io_out_mb; numbers are
        the mean over repeats, NaN where Snakemake recorded nothing.
    """
    root = Path(benchmark_root)
    rows = []
    for raw_path in paths:
        path = Path(raw_path)
        try:
            rule, job = job_of(root, path, ".tsv")
        except ValueError:
            raise ValueError(f"benchmark file {path} is not under the benchmark root {root}") from None
        rows.append({"rule": rule, "job": job, **_read_one_benchmark(path)})
    return pd.DataFrame(rows, columns=BENCHMARK_TABLE_COLUMNS).astype({c: float for c in _BENCHMARK_COLUMNS.values()})


def _load_json(path: Path, what: str) -> dict[str, object]:
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{what} {path} is not valid JSON: {error}") from None
    if not isinstance(record, dict):
        raise ValueError(f"{what} {path} holds {type(record).__name__}, not an object")
    return record


def _float_or_nan(value: object) -> float:
    return math.nan if value is None else float(value)  # type: ignore[arg-type]


def read_job_records(log_root: Path | str, jobs: Iterable[tuple[str, str]]) -> pd.DataFrame:
    """The job records (`seqshard.runtime.jobs`) of the given (rule, job) pairs that have one, one row each.

    A job without a record (a rule whose script does not write one, or a run from before records existed) is
    simply absent; the report says how many jobs it could not place on the timeline.
    """
    root = Path(log_root)
    rows = []
    for rule, job in jobs:
        # Mirrors the benchmark: `<rule>/<job>.tsv`, or `<rule>.tsv` for a rule without wildcards.
        path = root / rule / f"{job}{RECORD_SUFFIX}" if job else root / f"{rule}{RECORD_SUFFIX}"
        if not path.is_file():
            continue
        record = _load_json(path, "job record")
        row: dict[str, object] = {"rule": rule, "job": job, "host": str(record.get("host") or "") or None}
        row.update({key: _float_or_nan(record.get(key)) for key in _RECORD_NUMBERS})
        rows.append(row)
    return pd.DataFrame(rows, columns=RECORD_TABLE_COLUMNS).astype({c: float for c in _RECORD_NUMBERS})


def _gpu_columns(gpu: object) -> dict[str, object]:
    """Flatten a `GpuSampler.summary()`: figures over the job's GPUs, or NaN and the reason there were none."""
    empty: dict[str, object] = {key: math.nan for key in _GPU_NUMBERS}
    if not isinstance(gpu, Mapping):
        return {**empty, "gpu_reason": "no GPU telemetry recorded"}
    if not gpu.get("gpu_available"):
        return {**empty, "gpu_count": 0.0, "gpu_reason": str(gpu.get("gpu_reason") or "no GPU")}
    devices = [device for device in gpu.get("gpus", []) if isinstance(device, Mapping)]
    if not devices:
        return {**empty, "gpu_reason": "GPU telemetry lists no device"}

    def values(key: str) -> list[float]:
        return [float(device[key]) for device in devices if device.get(key) is not None]

    power = values("power_mean_watts")
    return {
        "gpu_count": float(len(devices)),
        "gpu_samples": float(min(values("samples") or [0.0])),
        "gpu_utilization_mean_percent": float(np.mean(values("utilization_mean_percent") or [math.nan])),
        "gpu_utilization_peak_percent": max(values("utilization_peak_percent") or [math.nan]),
        "gpu_memory_peak_mb": max(values("memory_used_peak_bytes") or [math.nan]) / 2**20,
        # Several GPUs draw power side by side: the job's draw is their sum.
        "gpu_power_mean_watts": sum(power) if power else math.nan,
        "gpu_reason": None,
    }


def read_figures(paths: Iterable[Path | str]) -> pd.DataFrame:
    """Read inference run figures (JSON) into one row per job.

    Each file must name its job (`rule` and `job`, as the workflow's rule script labels them); its labels
    (model, pass, tasks, shard) and figures are read where present, NaN or None where not.

    Raises:
        ValueError: a file is not a JSON object, does not name its job, or two files name the same job.
    """
    rows = []
    for raw_path in paths:
        path = Path(raw_path)
        record = _load_json(path, "inference figures")
        missing = [key for key in ("rule", "job") if not isinstance(record.get(key), str) or not record[key]]
        if missing:
            raise ValueError(
                f"inference figures {path} lack {' and '.join(missing)}: the rule script must label the figures "
                "with the job they belong to (seqshard.runtime.jobs.recorded_job)"
            )
        row: dict[str, object] = {"rule": record["rule"], "job": record["job"]}
        for key in _FIGURE_LABELS + _FIGURE_TEXT:
            row[key] = None if record.get(key) is None else str(record[key])
        for key in _FIGURE_NUMBERS:
            row[key] = _float_or_nan(record.get(key))
        row.update(_gpu_columns(record.get("gpu")))
        rows.append(row)
    numbers = _FIGURE_NUMBERS + _GPU_NUMBERS
    figures = _none_for_missing_text(
        pd.DataFrame(rows, columns=FIGURE_TABLE_COLUMNS).astype({key: float for key in numbers}),
        ["rule", "job", *_FIGURE_LABELS, *_FIGURE_TEXT],
    )
    keys = figures["rule"] + " " + figures["job"]
    duplicated = keys[keys.duplicated()].unique()
    if len(duplicated):
        raise ValueError(f"several inference figure files for job(s): {', '.join(duplicated)}")
    return figures


def _none_for_missing_text(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Text columns as Python objects with None where missing (pandas would make them NaN in a string dtype)."""
    for column in columns:
        frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    return frame


def _ratio(numerator: pd.Series, denominator: pd.Series) -> pd.Series:
    """numerator / denominator, NaN where the denominator is zero or missing (never inf)."""
    return numerator / denominator.where(denominator > 0)


def resource_usage_table(
    benchmarks: pd.DataFrame, figures: pd.DataFrame, records: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Join benchmarks with job records and run figures on (rule, job): one row per benchmarked job, sorted by
    rule then job. Records and figures without a benchmark are left out.

    Start, end and host come from the job record, else from the run figures. `threads` likewise, else 1;
    `cpu_efficiency` = cpu_seconds / (wall_seconds x threads); `padding_fraction` = 1 - n_tokens /
    n_computed_tokens; `host_load` is the host's 1-minute load average as the job ended.
    """
    if records is None:
        records = pd.DataFrame(columns=RECORD_TABLE_COLUMNS)
    joined = benchmarks.merge(records, on=["rule", "job"], how="left", validate="one_to_one")
    joined = joined.merge(figures, on=["rule", "job"], how="left", validate="one_to_one", suffixes=("", "_figures"))
    for column in ("host", "started_at", "ended_at", "threads", "cpu_count"):
        joined[column] = joined[column].where(joined[column].notna(), joined[f"{column}_figures"])

    joined["threads"] = pd.to_numeric(joined["threads"]).fillna(1).astype(int)
    joined["cpu_efficiency"] = _ratio(joined["cpu_seconds"], joined["wall_seconds"] * joined["threads"])
    joined["padding_fraction"] = 1.0 - _ratio(joined["n_tokens"], joined["n_computed_tokens"])
    joined["peak_gpu_memory_mb"] = joined["peak_gpu_memory_bytes"] / 2**20
    joined["host_load"] = joined["load_average"]
    table = joined[TABLE_COLUMNS].sort_values(["rule", "job"], kind="stable").reset_index(drop=True)
    table = _none_for_missing_text(table, TEXT_COLUMNS)
    number_columns = [c for c in TABLE_COLUMNS if c not in TEXT_COLUMNS and c != "threads"]
    return table.astype({c: float for c in number_columns})


UNREADABLE_COLUMNS = ["model", "sample", "fasta", "error", "n_samples"]


def read_unreadable_samples(pack_samples: Mapping[str, Path | str]) -> pd.DataFrame:
    """The samples each model entry's pack set aside as unreadable (`on_invalid: skip`), from the packs'
    `samples.tsv` (model entry -> file): model, sample, fasta, error and the entry's number of samples."""
    rows = []
    for model, path in pack_samples.items():
        samples = read_pack_samples(path)
        rows += [
            {"model": model, "sample": sample, "fasta": row["fasta"], "error": row.get("error", ""),
             "n_samples": len(samples)}
            for sample, row in samples.items()
            if row.get("status") == UNREADABLE
        ]  # fmt: skip
    return pd.DataFrame(rows, columns=UNREADABLE_COLUMNS)
