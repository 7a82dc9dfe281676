"""Warnings that mean something: each says what is wrong, how often, where it is worst, and what to change.

Findings are grouped: one per (rule, kind) with the number of jobs and the worst few, never one line per job. A
figure is judged only where it can mean something:
- CPU efficiency (CPU seconds / (wall seconds x threads)) only for jobs of at least `min_job_seconds`: a short
  job's time goes to starting Python and importing libraries, on one core, whatever its threads. Single-threaded
  jobs (reading, packing, merging: they wait on storage, and have no thread to give back) are judged only when
  their rule holds at least `light_rule_share` of the run's CPU-hours. A job given more threads than its host
  has cores is reported as that, its real cause, and not again as low efficiency.
- Batches: the token budget is judged when it is below `min_batch_tokens` and the batches really were that small;
  padding and model-load share as before; GPU utilization for GPU jobs of at least `min_job_seconds`.
A sample the pack could not read (`on_invalid: skip`) is a finding of its own, one per sample, counted in samples.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from seqshard.reports.analysis import inference_jobs, rule_summary


@dataclass(frozen=True)
class Thresholds:
    """Limits beyond which `find_warnings` reports jobs (config `report:`; config/README.md explains each)."""

    min_cpu_efficiency: float = 0.5
    max_padding_fraction: float = 0.2
    max_load_fraction: float = 0.5
    min_job_seconds: float = 60.0
    light_rule_share: float = 0.25
    min_batch_tokens: int = 1024
    min_gpu_utilization: float = 0.5


@dataclass(frozen=True)
class Finding:
    """One grouped warning: a kind of problem in one rule, the jobs it hit (worst first) and its fix."""

    rule: str
    kind: str
    title: str
    count: int
    total: int  # jobs of the rule
    detail: str  # the numbers behind it, worst jobs included
    fix: str
    worst: tuple[str, ...] = field(default_factory=tuple)
    unit: str = "jobs"  # what count and total count

    @property
    def text(self) -> str:
        return f"{self.rule}: {self.title} in {self.count} of {self.total} {self.unit} ({self.detail}). Fix: {self.fix}"


def _percent(value: float) -> str:
    return f"{value * 100:.0f} %" if value >= 0.1 else f"{value * 100:.1f} %"


def _worst(jobs: pd.DataFrame, column: str, ascending: bool, show: Callable[[pd.Series], str], n: int = 3) -> str:
    ordered = jobs.sort_values(column, ascending=ascending, kind="stable").head(n)
    return ", ".join(f"{row.job or row.rule} {show(row)}" for row in ordered.itertuples(index=False))


def _names(jobs: pd.DataFrame, n: int = 3) -> tuple[str, ...]:
    return tuple(jobs["job"].head(n))


def _models(jobs: pd.DataFrame) -> list[str]:
    return sorted({str(model) for model in jobs["model"].dropna()})


def _threads_over_cores(rule: str, jobs: pd.DataFrame, total: int, _: Thresholds) -> Finding | None:
    over = jobs[jobs["cpu_count"].notna() & (jobs["threads"] > jobs["cpu_count"])]
    if over.empty:
        return None
    cores = int(over["cpu_count"].min())
    over = over.sort_values("threads", ascending=False, kind="stable")
    return Finding(
        rule,
        "threads_over_cores",
        "more threads than the host has cores",
        len(over),
        total,
        f"{int(over['threads'].max())} threads on hosts with {cores} usable cores; "
        f"worst: {_worst(over, 'threads', False, lambda r: f'{r.threads} threads on {int(r.cpu_count)} cores')}",
        f"give {rule} at most {cores} threads (--set-threads {rule}={cores}, or set-threads in the profile) and "
        f"no more --cores than the machine has: threads beyond the cores only take turns on them",
        _names(over),
    )


def _cpu_efficiency(rule: str, jobs: pd.DataFrame, total: int, limits: Thresholds, share: float) -> Finding | None:
    judged = jobs[
        (jobs["wall_seconds"] >= limits.min_job_seconds)
        & ~(jobs["cpu_count"].notna() & (jobs["threads"] > jobs["cpu_count"]))
        & ((jobs["threads"] > 1) | (share >= limits.light_rule_share))
    ]
    low = judged[judged["cpu_efficiency"] < limits.min_cpu_efficiency]
    if low.empty:
        return None
    threads = int(low["threads"].max())
    busy = low[low["host_load"] > low["cpu_count"]]
    if threads > 1:
        fix = f"give {rule} fewer threads (--set-threads {rule}=N): the reserved cores sat idle"
    else:
        fix = (
            f"{rule} waits on storage, not on its CPU: put its files on faster or node-local storage, or give "
            "each job more work"
        )
    if len(busy):
        fix += (
            f"; on {len(busy)} of these jobs the host's load average exceeded its cores (up to "
            f"{busy['host_load'].max():.1f}): other work competed for them"
        )
    return Finding(
        rule,
        "cpu_efficiency",
        f"CPU efficiency below {_percent(limits.min_cpu_efficiency)}",
        len(low),
        total,
        f"judged on {len(judged)} jobs of at least {limits.min_job_seconds:g} s; worst: "
        + _worst(low, "cpu_efficiency", True, lambda r: f"{_percent(r.cpu_efficiency)} of {r.threads} threads"),
        fix,
        _names(low.sort_values("cpu_efficiency", kind="stable")),
    )


def _small_batches(rule: str, jobs: pd.DataFrame, total: int, limits: Thresholds) -> Finding | None:
    per_batch = jobs["n_computed_tokens"] / jobs["n_batches"].where(jobs["n_batches"] > 0)
    small = jobs.assign(per_batch=per_batch)
    small = small[(small["batch_tokens"] < limits.min_batch_tokens) & (small["per_batch"] < limits.min_batch_tokens)]
    if small.empty:
        return None
    models = _models(small)
    keys = ", ".join(f"models.{model}.batch_tokens" for model in models) or "batch_tokens"
    return Finding(
        rule,
        "small_batches",
        f"batches under {limits.min_batch_tokens} tokens",
        len(small),
        total,
        f"batch_tokens {int(small['batch_tokens'].min())}, about {small['per_batch'].mean():.0f} tokens computed "
        f"per forward pass; worst: {_worst(small, 'per_batch', True, lambda r: f'{r.per_batch:.0f} tokens/batch')}",
        f"raise {keys} (default 16384; more on a large GPU): each forward pass is too small to keep the device busy",
        _names(small.sort_values("per_batch", kind="stable")),
    )


def _padding(rule: str, jobs: pd.DataFrame, total: int, limits: Thresholds) -> Finding | None:
    padded = jobs[jobs["padding_fraction"] > limits.max_padding_fraction]
    if padded.empty:
        return None
    return Finding(
        rule,
        "padding",
        f"padding above {_percent(limits.max_padding_fraction)} of computed tokens",
        len(padded),
        total,
        "worst: " + _worst(padded, "padding_fraction", False, lambda r: _percent(r.padding_fraction)),
        "lower batch_tokens, or shard sequences of similar length together: batches mix very different lengths",
        _names(padded.sort_values("padding_fraction", ascending=False, kind="stable")),
    )


def _model_load(rule: str, jobs: pd.DataFrame, total: int, limits: Thresholds) -> Finding | None:
    share = jobs["load_seconds"] / jobs["wall_seconds"].where(jobs["wall_seconds"] > 0)
    slow = jobs.assign(load_share=share)[share > limits.max_load_fraction]
    if slow.empty:
        return None
    return Finding(
        rule,
        "model_load",
        f"loading the model took over {_percent(limits.max_load_fraction)} of the wall time",
        len(slow),
        total,
        "worst: " + _worst(slow, "load_share", False, lambda r: f"{r.load_seconds:.1f} s of {r.wall_seconds:.1f} s"),
        "use larger shards (shards.target_tokens) so that each model load scores more sequences",
        _names(slow.sort_values("load_share", ascending=False, kind="stable")),
    )


def _gpu_utilization(rule: str, jobs: pd.DataFrame, total: int, limits: Thresholds) -> Finding | None:
    judged = jobs[jobs["gpu_utilization_mean_percent"].notna() & (jobs["wall_seconds"] >= limits.min_job_seconds)]
    idle = judged[judged["gpu_utilization_mean_percent"] < limits.min_gpu_utilization * 100]
    if idle.empty:
        return None
    return Finding(
        rule,
        "gpu_utilization",
        f"GPU busy less than {_percent(limits.min_gpu_utilization)} of the time",
        len(idle),
        total,
        f"judged on {len(judged)} GPU jobs of at least {limits.min_job_seconds:g} s; worst: "
        + _worst(idle, "gpu_utilization_mean_percent", True, lambda r: f"{r.gpu_utilization_mean_percent:.0f} %"),
        "the GPU waited for work: raise batch_tokens, give the job more threads for reading and tokenizing, and "
        "use shards large enough that loading the model is a small part of the job",
        _names(idle.sort_values("gpu_utilization_mean_percent", kind="stable")),
    )


def find_warnings(table: pd.DataFrame, thresholds: Thresholds = Thresholds()) -> list[Finding]:
    """Grouped warnings for the per-job table, ordered by rule, then by how many jobs each hits.

    Missing figures (NaN) never warn.
    """
    shares = rule_summary(table).set_index("rule")["share_of_cpu_hours"].fillna(0.0).to_dict()
    inference = inference_jobs(table)
    findings: list[Finding] = []
    for rule, jobs in table.groupby("rule", sort=True):
        total = len(jobs)
        found = [
            _threads_over_cores(rule, jobs, total, thresholds),
            _cpu_efficiency(rule, jobs, total, thresholds, shares.get(rule, 0.0)),
        ]
        scored = inference[inference["rule"] == rule]
        if not scored.empty:
            found += [
                checker(rule, scored, total, thresholds)
                for checker in (_small_batches, _padding, _model_load, _gpu_utilization)
            ]
        findings += sorted((f for f in found if f is not None), key=lambda f: -f.count)
    return findings


def unreadable_samples(unreadable: pd.DataFrame) -> list[Finding]:
    """One finding per sample a pack set aside as unreadable (rows of `read_unreadable_samples`)."""
    return [
        Finding(
            "pack",
            "unreadable_sample",
            f"sample {row.sample} of models.{row.model} could not be read",
            1,
            int(row.n_samples),
            f"{row.fasta}: {row.error}; its results are empty, the entry's other {int(row.n_samples) - 1} sample(s) "
            "were merged",
            "repair or replace the file and run the same command again: the model entries that read it are packed, "
            "scored and merged again",
            (str(row.sample),),
            unit="samples",
        )
        for row in unreadable.itertuples(index=False)
    ]


def thresholds_text(thresholds: Thresholds) -> str:
    """The limits in one sentence, for the page."""
    return (
        f"CPU efficiency ≥ {_percent(thresholds.min_cpu_efficiency)} for jobs of at least "
        f"{thresholds.min_job_seconds:g} s (single-threaded rules only when they hold ≥ "
        f"{_percent(thresholds.light_rule_share)} of the CPU-hours); threads ≤ the host's cores; "
        f"batches ≥ {thresholds.min_batch_tokens} tokens; padding ≤ {_percent(thresholds.max_padding_fraction)}; "
        f"model load ≤ {_percent(thresholds.max_load_fraction)} of wall time; GPU utilization ≥ "
        f"{_percent(thresholds.min_gpu_utilization)}"
    )


def findings_table(findings: list[Finding]) -> pd.DataFrame:
    """The findings as rows (rule, kind, jobs, of_jobs, warning, detail, fix, worst_jobs, unit), for warnings.tsv;
    `unit` says what jobs and of_jobs count (`samples` for an unreadable sample, whose worst_jobs is its name)."""
    return pd.DataFrame(
        [
            {
                "rule": f.rule,
                "kind": f.kind,
                "jobs": f.count,
                "of_jobs": f.total,
                "warning": f.title,
                "detail": f.detail,
                "fix": f.fix,
                "worst_jobs": " ".join(f.worst),
                "unit": f.unit,
            }
            for f in findings
        ],
        columns=["rule", "kind", "jobs", "of_jobs", "warning", "detail", "fix", "worst_jobs", "unit"],
    )
