"""The report's plots, drawn with matplotlib (Agg) into PNG bytes: the timeline, and per-job figures.

Per-job plots draw one bar per job up to `PER_JOB_LIMIT` jobs; past that a bar per job is unreadable (and slow
to draw), so they show each rule's (or model's) distribution as box plots instead. The timeline draws every job
as one rectangle of a single collection, which stays fast at tens of thousands of jobs.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import matplotlib
import numpy as np
import pandas as pd

from seqshard.reports.analysis import CriticalPath, assign_lanes, inference_jobs
from seqshard.reports.findings import Thresholds

# Reports are written on headless cluster nodes; Agg needs no display and must be chosen before pyplot loads.
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

#: Above this many jobs, per-job plots show distributions per group instead of a bar per job.
PER_JOB_LIMIT = 60

# Plot sizing: at 100 dpi, 12 inches is 1200 px, which a 1280 px window shows whole.
_WIDTH_IN = 12.0
_INCHES_PER_ROW = 0.22
_MIN_HEIGHT_IN = 3.0
_MAX_HEIGHT_IN = 16.0
_MAX_TICK_LABELS = 60
_LABEL_CHARS = 48
_DPI = 100
# Legends sit right of the axes: they never cover bars, and matplotlib's "best" placement search is slow.
_LEGEND_PLACE = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "borderaxespad": 0.0, "fontsize": 8}


def png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)
    plt.close(fig)
    return buffer.getvalue()


def _height(rows: int) -> float:
    return min(max(_MIN_HEIGHT_IN, 1.6 + _INCHES_PER_ROW * rows), _MAX_HEIGHT_IN)


def _short(label: str) -> str:
    # Keep the end of long job names: the shard number and task are what tell neighbouring bars apart.
    return label if len(label) <= _LABEL_CHARS else "…" + label[-(_LABEL_CHARS - 1) :]


def _label_rows(ax, labels: Sequence[str]) -> None:
    """Put row names on the y axis, at most `_MAX_TICK_LABELS` of them, first row at the top."""
    step = max(1, math.ceil(len(labels) / _MAX_TICK_LABELS))
    positions = list(range(0, len(labels), step))
    ax.set_yticks(positions, [labels[i] for i in positions], fontsize=8)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    if step > 1:
        ax.set_ylabel(f"1 in {step} of {len(labels)} labelled")


def _palette(names: Sequence[str]) -> dict[str, object]:
    colours = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {name: colours(i % colours.N) for i, name in enumerate(names)}


def _legend(ax, by_name: dict[str, object], title: str, extra: list | None = None) -> None:
    handles = list(extra or [])
    # One colour needs no key, and past 20 groups a key would be taller than most plots.
    grouped = 1 < len(by_name) <= 20
    if grouped:
        handles += [Patch(color=colour, label=name) for name, colour in by_name.items()]
    if handles:
        ax.legend(handles=handles, title=title if grouped else None, title_fontsize=8, **_LEGEND_PLACE)


def _message_figure(title: str, message: str) -> Figure:
    fig, ax = plt.subplots(figsize=(8, 2.5), dpi=_DPI)
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=12, transform=ax.transAxes)
    ax.set_axis_off()
    return fig


def _groups(table: pd.DataFrame, by: Sequence[str]) -> pd.Series:
    """Each row's group name: the `by` columns' values joined by spaces ("?" for a missing one)."""
    names = [table[column].fillna("?").astype(str) for column in by]
    joined = names[0]
    for more in names[1:]:
        joined = joined + " " + more
    return joined


def _per_job(
    table: pd.DataFrame,
    column: str,
    title: str,
    xlabel: str,
    by: Sequence[str] = ("rule",),
    threshold: float | None = None,
) -> Figure:
    """A bar per job coloured by group, or past `PER_JOB_LIMIT` jobs a box plot per group; NaN is left out."""
    values = table[column]
    if values.notna().sum() == 0:
        return _message_figure(title, "No data")
    groups = _groups(table, by)
    by_name = _palette(list(dict.fromkeys(groups)))
    extra = []
    if len(table) <= PER_JOB_LIMIT:
        fig, ax = plt.subplots(figsize=(_WIDTH_IN - 2, _height(len(table))), dpi=_DPI)
        ax.barh(range(len(table)), values.fillna(0.0), color=[by_name[g] for g in groups], height=0.8)
        names = zip(table["rule"], table["job"], strict=True)
        _label_rows(ax, [_short(f"{rule}: {job}" if job else rule) for rule, job in names])
        legend_groups = by_name
    else:
        names = sorted(by_name)
        data = [values[(groups == name).to_numpy()].dropna().to_numpy() for name in names]
        kept = [(name, points) for name, points in zip(names, data, strict=True) if len(points)]
        fig, ax = plt.subplots(figsize=(_WIDTH_IN - 2, _height(len(kept) * 2)), dpi=_DPI)
        boxes = ax.boxplot([points for _, points in kept], orientation="horizontal", patch_artist=True, showfliers=True,
                           flierprops={"markersize": 2, "alpha": 0.3})  # fmt: skip
        for patch, (name, _) in zip(boxes["boxes"], kept, strict=True):
            patch.set_facecolor(by_name[name])
        ax.set_yticks(range(1, len(kept) + 1), [f"{_short(name)} ({len(points):,})" for name, points in kept])
        ax.invert_yaxis()
        legend_groups = {}
        title += f" ({len(table):,} jobs, distribution per group)"
    if threshold is not None:
        extra.append(ax.axvline(threshold, color="crimson", linestyle="--", linewidth=1, label=f"limit {threshold:g}"))
    _legend(ax, legend_groups, " / ".join(by), extra)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def _time_unit(span: float) -> tuple[float, str]:
    if span <= 600:
        return 1.0, "seconds"
    if span <= 36_000:
        return 60.0, "minutes"
    return 3600.0, "hours"


def timeline_figure(timed: pd.DataFrame, path: CriticalPath) -> Figure:
    """A Gantt chart: one band per host, a lane per job running at once, coloured by rule; the critical path's
    jobs are outlined in black. `timed` as from `analysis.timed_jobs`."""
    title = "Timeline by host"
    if timed.empty:
        return _message_figure(title, "No job recorded its start and end")
    lanes = assign_lanes(timed)
    hosts = sorted(timed["host"].unique())
    widths = pd.Series(lanes, index=timed.index).groupby(timed["host"]).max().add(1).reindex(hosts)
    offsets = dict(zip(hosts, np.concatenate([[0], np.cumsum(widths.to_numpy())[:-1]]), strict=True))
    rows = int(widths.sum())
    origin = float(timed["started_at"].min())
    scale, unit = _time_unit(float(timed["ended_at"].max()) - origin)
    left = (timed["started_at"].to_numpy() - origin) / scale
    right = (timed["ended_at"].to_numpy() - origin) / scale
    y = np.array([offsets[host] for host in timed["host"]]) + lanes
    # Each lane is a band of height 0.8; rectangles as polygons in one collection (fast for 10^4 jobs).
    verts = np.stack(
        [np.column_stack([left, y - 0.4]), np.column_stack([left, y + 0.4]),
         np.column_stack([right, y + 0.4]), np.column_stack([right, y - 0.4])], axis=1,
    )  # fmt: skip
    rules = sorted(timed["rule"].unique())
    by_rule = _palette(rules)
    on_path = timed.index.isin(path.steps.index)
    fig, ax = plt.subplots(figsize=(_WIDTH_IN, min(max(_MIN_HEIGHT_IN, 1.8 + 0.2 * rows), _MAX_HEIGHT_IN)), dpi=_DPI)
    ax.add_collection(
        PolyCollection(
            verts,
            facecolors=[by_rule[rule] for rule in timed["rule"]],
            edgecolors=np.where(on_path[:, None], np.array([[0, 0, 0, 1.0]]), np.array([[1, 1, 1, 0.6]])),
            linewidths=np.where(on_path, 1.2, 0.3),
        )
    )
    ax.set_xlim(0, max(right.max(), 1e-9) * 1.01)
    ax.set_ylim(rows - 0.5, -0.5)
    for host in hosts[1:]:
        ax.axhline(offsets[host] - 0.5, color="#888", linewidth=0.6)
    step = max(1, math.ceil(len(hosts) / _MAX_TICK_LABELS))
    shown = hosts[::step]
    ax.set_yticks([offsets[h] + (widths[h] - 1) / 2 for h in shown], [_short(h) for h in shown], fontsize=8)
    ax.set_xlabel(f"{unit} since the first job started")
    ax.set_ylabel("host (one lane per job running at once)" if step == 1 else f"host (1 in {step} labelled)")
    ax.set_title(f"{title}: {len(timed):,} jobs on {len(hosts)} host(s); critical path outlined")
    ax.grid(axis="x", alpha=0.3)
    outline = Patch(facecolor="white", edgecolor="black", label="critical path")
    _legend(ax, by_rule, "rule", [outline])
    fig.tight_layout()
    return fig


def _load_compute_figure(inference: pd.DataFrame) -> Figure:
    title = "Warm-up, model load, compute and the rest of each inference job's wall time"
    if inference.empty:
        return _message_figure(title, "No inference data")
    if len(inference) <= PER_JOB_LIMIT:
        frame = inference
        labels = [_short(job) for job in inference["job"]]
    else:  # means per model and task
        groups = _groups(inference, ("model", "tasks"))
        columns = ["warmup_seconds", "load_seconds", "compute_seconds", "wall_seconds"]
        frame = inference.groupby(groups.to_numpy())[columns].mean()
        labels = [f"{name} (mean of {count:,})" for name, count in groups.value_counts().sort_index().items()]
        title += " (mean per model and task)"
    warmup = frame["warmup_seconds"].fillna(0.0).to_numpy()
    load = frame["load_seconds"].fillna(0.0).to_numpy()
    compute = frame["compute_seconds"].fillna(0.0).to_numpy()
    # What the wall clock saw beyond these: Python start-up and imports, reading, tokenizing, writing.
    other = np.clip(frame["wall_seconds"].fillna(0.0).to_numpy() - warmup - load - compute, 0.0, None)
    fig, ax = plt.subplots(figsize=(_WIDTH_IN - 2, _height(len(frame))), dpi=_DPI)
    rows = range(len(frame))
    ax.barh(rows, warmup, color="tab:green", height=0.8, label="warm-up")
    ax.barh(rows, load, left=warmup, color="tab:orange", height=0.8, label="model load")
    ax.barh(rows, compute, left=warmup + load, color="tab:blue", height=0.8, label="compute")
    ax.barh(rows, other, left=warmup + load + compute, color="lightgray", height=0.8, label="rest of wall time")
    _label_rows(ax, labels)
    ax.set_xlabel("seconds")
    ax.set_title(title)
    ax.legend(**_LEGEND_PLACE)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def _gpu_figure(inference: pd.DataFrame) -> Figure:
    title = "GPU utilization per inference job"
    with_gpu = inference[inference["gpu_utilization_mean_percent"].notna()]
    if with_gpu.empty:
        reasons = sorted({str(reason) for reason in inference["gpu_reason"].dropna()})
        return _message_figure(title, "No GPU telemetry: " + ("; ".join(reasons[:2]) or "no inference data"))
    return _per_job(with_gpu, "gpu_utilization_mean_percent", title, "mean GPU utilization (%)", by=("model",))


def build_plots(table: pd.DataFrame, thresholds: Thresholds) -> list[tuple[str, str, Figure]]:
    """(file stem, caption, figure) for every per-job plot; placeholders keep the set of files fixed."""
    inference = inference_jobs(table)
    return [
        ("wall_time", "Wall-clock seconds per job, coloured by rule (mean over benchmark repeats).",
         _per_job(table, "wall_seconds", "Wall time per job", "wall seconds")),
        ("max_rss", "Peak resident memory per job as measured by Snakemake.",
         _per_job(table, "max_rss_mb", "Max RSS per job", "max RSS (MB)")),
        ("cpu_efficiency", "CPU seconds / (wall seconds × threads); the dashed line is the warning limit (judged "
         "only for long enough jobs, see Warnings).",
         _per_job(table, "cpu_efficiency", "CPU efficiency per job", "CPU efficiency",
                  threshold=thresholds.min_cpu_efficiency)),
        ("throughput", "Sequences scored per second of model compute, per inference job, coloured by model and task.",
         _per_job(inference, "sequences_per_second", "Inference throughput per job", "sequences / s",
                  by=("model", "tasks"))),
        ("padding", "Share of computed tokens that were padding, per inference job; dashed line: the warning limit.",
         _per_job(inference, "padding_fraction", "Padding per job", "1 - real tokens / computed tokens",
                  by=("model", "tasks"), threshold=thresholds.max_padding_fraction)),
        ("load_vs_compute", "Warm-up, model load, compute and remaining wall seconds of each inference job.",
         _load_compute_figure(inference)),
        ("gpu_utilization", "Mean GPU utilization (NVML) of each inference job that ran on a GPU.",
         _gpu_figure(inference)),
    ]  # fmt: skip
