"""What the per-job table says about the run as a whole: the timeline's lanes, the critical path, how much of the
run's slots sat idle, time per rule, and throughput and cost per model and task.

Definitions (the report's captions repeat them):
- A job's span is its record's start to end (`seqshard.runtime.jobs`): process start to the end of its work.
- Slots: on each host, the most threads the run's jobs held there at once, or the host's usable cores if more;
  a host's slot time runs from its first job's start to its last job's end. The idle share is the part of the
  slot time that no job held. On your own machine it shows where the run waited (a checkpoint before the next
  stage, a lone merge at the end); on a cluster, gaps between the jobs a node ran.
- Critical path: from the job that ended last, step back each time to the job that ended last before this one
  started, on any host, until none did. Without the DAG this is "what each job waited for": a dependency, or a
  slot that freed up. The gaps between steps are Snakemake's scheduling and job start-up.
- CPU-hours: threads x wall time, what a scheduler reserves and bills; GPU-hours: GPUs x wall time of the jobs
  whose telemetry saw a GPU.
"""

from __future__ import annotations

import bisect
import heapq
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Prices:
    """Prices per CPU-hour and GPU-hour (any currency); 0 leaves cost out of the report."""

    cpu_hour: float = 0.0
    gpu_hour: float = 0.0

    @property
    def shown(self) -> bool:
        return self.cpu_hour > 0 or self.gpu_hour > 0


# Times closer than this count as the same instant: records come from separate processes and clocks.
_SAME_INSTANT = 1e-3


def timed_jobs(table: pd.DataFrame) -> pd.DataFrame:
    """The jobs with a usable span (host, start and an end not before it), sorted by start."""
    usable = table["host"].notna() & table["started_at"].notna() & (table["ended_at"] >= table["started_at"])
    return table[usable].sort_values(["started_at", "ended_at"], kind="stable")


def assign_lanes(timed: pd.DataFrame) -> np.ndarray:
    """A lane per job, so that jobs on one host that overlap in time never share a lane (lowest free lane first).

    `timed` must be sorted by start (see `timed_jobs`).
    """
    lanes = np.zeros(len(timed), dtype=np.int64)
    busy: dict[str, list[tuple[float, int]]] = {}  # host -> heap of (end, lane) of the jobs running there
    free: dict[str, list[int]] = {}  # host -> heap of lanes free again
    width: dict[str, int] = {}
    hosts, starts, ends = timed["host"].to_numpy(), timed["started_at"].to_numpy(), timed["ended_at"].to_numpy()
    for row, (host, start, end) in enumerate(zip(hosts, starts, ends, strict=True)):
        running, idle = busy.setdefault(host, []), free.setdefault(host, [])
        while running and running[0][0] <= start + _SAME_INSTANT:
            heapq.heappush(idle, heapq.heappop(running)[1])
        if idle:
            lane = heapq.heappop(idle)
        else:
            lane = width.get(host, 0)
            width[host] = lane + 1
        heapq.heappush(running, (end, lane))
        lanes[row] = lane
    return lanes


@dataclass
class CriticalPath:
    """The chain of jobs the run waited on, in time order, with the gap before each step."""

    steps: pd.DataFrame  # rule, job, host, started_at, ended_at, seconds, waited_seconds; the index is the table's
    length_seconds: float  # first step's start to last step's end
    working_seconds: float
    waiting_seconds: float

    def by_rule(self) -> pd.DataFrame:
        """Steps and seconds on the path per rule, then the waiting between steps; with each one's share."""
        grouped = self.steps.groupby("rule", sort=False)["seconds"].agg(["count", "sum"]).reset_index()
        grouped.columns = ["rule", "jobs", "seconds"]
        grouped = grouped.sort_values("seconds", ascending=False, kind="stable")
        waiting = pd.DataFrame([{"rule": "(between jobs)", "jobs": 0, "seconds": self.waiting_seconds}])
        result = pd.concat([grouped, waiting], ignore_index=True)
        result["share"] = result["seconds"] / self.length_seconds if self.length_seconds > 0 else math.nan
        return result


def critical_path(timed: pd.DataFrame) -> CriticalPath:
    """Walk back from the job that ended last (see the module docstring); empty when no job has a span."""
    columns = ["rule", "job", "host", "started_at", "ended_at", "seconds", "waited_seconds"]
    if timed.empty:
        return CriticalPath(pd.DataFrame(columns=columns), 0.0, 0.0, 0.0)
    order = np.argsort(timed["ended_at"].to_numpy(), kind="stable")
    ends = timed["ended_at"].to_numpy()[order]
    starts = timed["started_at"].to_numpy()
    position = int(order[-1])
    chain = [position]
    visited = {position}
    while True:
        # The job with the latest end at or before this start (by the same-instant tolerance), itself excepted.
        found = bisect.bisect_right(ends, starts[position] + _SAME_INSTANT) - 1
        while found >= 0 and int(order[found]) in visited:
            found -= 1
        if found < 0:
            break
        position = int(order[found])
        chain.append(position)
        visited.add(position)
    steps = timed.iloc[chain[::-1]][["rule", "job", "host", "started_at", "ended_at"]].copy()
    steps["seconds"] = steps["ended_at"] - steps["started_at"]
    previous_end = steps["ended_at"].shift(1)
    steps["waited_seconds"] = (steps["started_at"] - previous_end).fillna(0.0).clip(lower=0.0)
    length = float(steps["ended_at"].iloc[-1] - steps["started_at"].iloc[0])
    waiting = float(steps["waited_seconds"].sum())
    return CriticalPath(steps[columns], length, float(steps["seconds"].sum()), waiting)


@dataclass
class SlotUsage:
    """Slots per host and how much of their time jobs held (see the module docstring)."""

    # host, jobs, peak_threads, slots, cpu_count, first_start, last_end, slot_seconds, held_seconds, idle_share
    hosts: pd.DataFrame
    slot_seconds: float
    held_seconds: float

    @property
    def idle_share(self) -> float:
        return 1.0 - self.held_seconds / self.slot_seconds if self.slot_seconds > 0 else math.nan


def _peak_threads(starts: np.ndarray, ends: np.ndarray, threads: np.ndarray) -> int:
    """Most threads held at once; a job ending when another starts does not overlap it."""
    times = np.round(np.concatenate([ends, starts]) / _SAME_INSTANT)
    deltas = np.concatenate([-threads, threads])
    kinds = np.concatenate([np.zeros(len(ends)), np.ones(len(starts))])  # ends sort before starts at a tie
    order = np.lexsort((kinds, times))
    return int(max(0, np.cumsum(deltas[order]).max())) if len(order) else 0


def slot_usage(timed: pd.DataFrame) -> SlotUsage:
    rows = []
    for host, jobs in timed.groupby("host", sort=True):
        starts, ends = jobs["started_at"].to_numpy(), jobs["ended_at"].to_numpy()
        threads = jobs["threads"].to_numpy(dtype=np.int64)
        cores = jobs["cpu_count"].max()
        peak = _peak_threads(starts, ends, threads)
        slots = max(peak, 0 if math.isnan(cores) else int(cores))
        span = float(ends.max() - starts.min())
        held = float(((ends - starts) * np.minimum(threads, slots)).sum())
        rows.append(
            {
                "host": host,
                "jobs": len(jobs),
                "peak_threads": peak,
                "slots": slots,
                "cpu_count": cores,
                "first_start": float(starts.min()),
                "last_end": float(ends.max()),
                "slot_seconds": slots * span,
                "held_seconds": held,
                "idle_share": 1.0 - held / (slots * span) if slots * span > 0 else math.nan,
            }
        )
    hosts = pd.DataFrame(
        rows,
        columns=["host", "jobs", "peak_threads", "slots", "cpu_count", "first_start", "last_end", "slot_seconds",
                 "held_seconds", "idle_share"],
    )  # fmt: skip
    return SlotUsage(hosts, float(hosts["slot_seconds"].sum()), float(hosts["held_seconds"].sum()))


def _reserved_cpu_hours(jobs: pd.DataFrame) -> pd.Series:
    return jobs["wall_seconds"].fillna(0.0) * jobs["threads"] / 3600.0


def _gpu_hours(jobs: pd.DataFrame) -> pd.Series:
    return jobs["wall_seconds"].fillna(0.0) * jobs["gpu_count"].fillna(0.0) / 3600.0


def rule_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per rule: jobs, wall seconds (total, mean, longest), CPU-hours reserved and used, CPU efficiency of the
    reserved time, largest max RSS, and the rule's share of the run's reserved CPU time."""
    frame = table.assign(reserved=_reserved_cpu_hours(table), used=table["cpu_seconds"].fillna(0.0) / 3600.0)
    grouped = frame.groupby("rule", sort=True).agg(
        jobs=("job", "size"),
        wall_seconds=("wall_seconds", "sum"),
        mean_wall_seconds=("wall_seconds", "mean"),
        max_wall_seconds=("wall_seconds", "max"),
        cpu_hours=("reserved", "sum"),
        cpu_hours_used=("used", "sum"),
        max_rss_mb=("max_rss_mb", "max"),
    )
    grouped["cpu_efficiency"] = grouped["cpu_hours_used"] / grouped["cpu_hours"].where(grouped["cpu_hours"] > 0)
    total = grouped["cpu_hours"].sum()
    grouped["share_of_cpu_hours"] = grouped["cpu_hours"] / total if total > 0 else math.nan
    return grouped.reset_index()


def inference_jobs(table: pd.DataFrame) -> pd.DataFrame:
    """The jobs with inference figures."""
    return table[table["n_sequences"].notna()]


# What windows cost in faithfulness, beside what they cost in compute: per model entry and tasks.
SEAM_COLUMNS = [
    "windowed",
    "seam_records",
    "seam_window_length",
    "seam_window_overlap",
    *(f"seam_{change}_{figure}" for change in ("overlap", "length")
      for figure in ("window_length", "window_overlap", "cosine_mean", "cosine_max")),
]  # fmt: skip
THROUGHPUT_COLUMNS = [
    "model",
    "tasks",
    "jobs",
    "records",
    "sequences",
    "tokens",
    "sequences_per_second",
    "tokens_per_second",
    "records_per_job_second",
    "useful_token_fraction",
    "cpu_hours",
    "gpu_hours",
    "cost",
    "cost_per_million_sequences",
    "gpu_utilization_mean_percent",
    "gpu_memory_peak_mb",
    "gpu_power_mean_watts",
    *SEAM_COLUMNS,
]


def _seams(jobs: pd.DataFrame) -> pd.DataFrame:
    """Per model entry and tasks: distinct sequences windowed, and the seam probes (seqshard.engine.seams) of its
    jobs: records probed, the run's window and each changed one (the first job's: one entry, one fit), the cosine
    distance's mean (weighted by the records each job probed) and max."""
    probed = jobs["seam_records"].fillna(0.0)
    weighted = {
        f"{change}_weighted": jobs[f"seam_{change}_cosine_mean"].fillna(0.0) * probed
        for change in ("overlap", "length")
    }
    jobs = jobs.assign(seam_records=probed, **weighted)
    aggregations: dict[str, tuple[str, str]] = {
        "windowed": ("n_windowed", "sum"),
        "seam_records": ("seam_records", "sum"),
    }
    for name in ("seam_window_length", "seam_window_overlap"):
        aggregations[name] = (name, "first")
    for change in ("overlap", "length"):
        aggregations[f"seam_{change}_window_length"] = (f"seam_{change}_window_length", "first")
        aggregations[f"seam_{change}_window_overlap"] = (f"seam_{change}_window_overlap", "first")
        aggregations[f"{change}_weighted"] = (f"{change}_weighted", "sum")
        aggregations[f"seam_{change}_cosine_max"] = (f"seam_{change}_cosine_max", "max")
    grouped = jobs.groupby(["model", "tasks"], sort=True).agg(**aggregations)
    for change in ("overlap", "length"):
        records = grouped["seam_records"].where(grouped["seam_records"] > 0)
        grouped[f"seam_{change}_cosine_mean"] = grouped.pop(f"{change}_weighted") / records
    return grouped[SEAM_COLUMNS]


def throughput_by_model(table: pd.DataFrame, prices: Prices) -> pd.DataFrame:
    """Per model entry and the tasks one forward pass computes together (an inference job's `tasks`).

    `records`: input sequences scored (each record once, duplicates and cache hits included); `sequences`: the
    distinct sequences the model computed. Sequences and tokens per second of model compute, records per second
    of the jobs' wall time, useful-token fraction, CPU- and GPU-hours of the inference jobs, their cost and the
    cost per million records (NaN when no price is set), the GPU telemetry (utilization weighted by each
    job's wall time), and the windows' seams (`_seams`).
    """
    jobs = inference_jobs(table)
    if jobs.empty:
        return pd.DataFrame(columns=THROUGHPUT_COLUMNS)
    jobs = jobs.assign(
        model=jobs["model"].fillna("?"),
        tasks=jobs["tasks"].fillna("?"),
        records=jobs["n_records"].fillna(jobs["n_sequences"]),
        cpu_h=_reserved_cpu_hours(jobs),
        gpu_h=_gpu_hours(jobs),
        gpu_weight=jobs["wall_seconds"].fillna(0.0).where(jobs["gpu_utilization_mean_percent"].notna(), 0.0),
    )
    jobs = jobs.assign(gpu_weighted=jobs["gpu_utilization_mean_percent"].fillna(0.0) * jobs["gpu_weight"])
    grouped = jobs.groupby(["model", "tasks"], sort=True).agg(
        jobs=("job", "size"),
        records=("records", "sum"),
        sequences=("n_sequences", "sum"),
        tokens=("n_tokens", "sum"),
        computed=("n_computed_tokens", "sum"),
        compute_seconds=("compute_seconds", "sum"),
        wall_seconds=("wall_seconds", "sum"),
        cpu_hours=("cpu_h", "sum"),
        gpu_hours=("gpu_h", "sum"),
        gpu_weighted=("gpu_weighted", "sum"),
        gpu_weight=("gpu_weight", "sum"),
        gpu_memory_peak_mb=("gpu_memory_peak_mb", "max"),
        gpu_power_mean_watts=("gpu_power_mean_watts", "mean"),
    )

    def per(numerator: str, denominator: str) -> pd.Series:
        return grouped[numerator] / grouped[denominator].where(grouped[denominator] > 0)

    grouped["sequences_per_second"] = per("sequences", "compute_seconds")
    grouped["tokens_per_second"] = per("tokens", "compute_seconds")
    grouped["records_per_job_second"] = per("records", "wall_seconds")
    grouped["useful_token_fraction"] = per("tokens", "computed")
    grouped["gpu_utilization_mean_percent"] = per("gpu_weighted", "gpu_weight")
    if prices.shown:
        grouped["cost"] = grouped["cpu_hours"] * prices.cpu_hour + grouped["gpu_hours"] * prices.gpu_hour
        grouped["cost_per_million_sequences"] = grouped["cost"] / grouped["records"].where(grouped["records"] > 0)
        grouped["cost_per_million_sequences"] *= 1e6
    else:
        grouped["cost"] = grouped["cost_per_million_sequences"] = math.nan
    grouped = grouped.join(_seams(jobs))
    return grouped.reset_index()[THROUGHPUT_COLUMNS]


@dataclass
class RunSummary:
    """The headline figures of a run."""

    jobs: int
    rules: int
    hosts: int
    first_start: float | None
    last_end: float | None
    jobs_without_span: int
    wall_seconds: float  # summed over jobs
    cpu_hours: float  # reserved: threads x wall
    cpu_hours_used: float
    gpu_hours: float
    cost: float  # NaN without prices
    slots: SlotUsage
    path: CriticalPath

    @property
    def makespan_seconds(self) -> float:
        if self.first_start is None or self.last_end is None:
            return math.nan
        return self.last_end - self.first_start


def summarize(table: pd.DataFrame, timed: pd.DataFrame, prices: Prices) -> RunSummary:
    cpu_hours = float(_reserved_cpu_hours(table).sum())
    gpu_hours = float(_gpu_hours(table).sum())
    return RunSummary(
        jobs=len(table),
        rules=int(table["rule"].nunique()),
        hosts=int(timed["host"].nunique()),
        first_start=float(timed["started_at"].min()) if not timed.empty else None,
        last_end=float(timed["ended_at"].max()) if not timed.empty else None,
        jobs_without_span=len(table) - len(timed),
        wall_seconds=float(table["wall_seconds"].sum()),
        cpu_hours=cpu_hours,
        cpu_hours_used=float(table["cpu_seconds"].sum()) / 3600.0,
        gpu_hours=gpu_hours,
        cost=cpu_hours * prices.cpu_hour + gpu_hours * prices.gpu_hour if prices.shown else math.nan,
        slots=slot_usage(timed),
        path=critical_path(timed),
    )
