"""Resource-usage reporting: join Snakemake benchmark files with our per-shard inference figures.

The result is one table (one row per benchmarked job), a list of plain-language warnings for jobs that waste
CPU, padding or model-load time, and a self-contained HTML page that can be mailed or attached to a
`snakemake --report` without any side files.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

# Reports are written on headless cluster nodes; Agg needs no display and must be chosen before pyplot loads.
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

__all__ = [
    "INFERENCE_RULE",
    "TABLE_COLUMNS",
    "Thresholds",
    "find_warnings",
    "read_benchmarks",
    "read_figures",
    "resource_usage_table",
    "write_resource_report",
]

#: The rule whose benchmark rows are joined with the per-shard inference figures.
INFERENCE_RULE = "infer_shard"

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

_FIGURE_ID_KEYS = ["model", "pass", "shard"]
_FIGURE_TEXT_KEYS = ["tasks", "device", "dtype"]
_FIGURE_NUMBER_KEYS = [
    "threads",
    "n_sequences",
    "n_tokens",
    "n_computed_tokens",
    "n_batches",
    "batch_tokens",
    "load_seconds",
    "compute_seconds",
    "sequences_per_second",
    "tokens_per_second",
    "peak_gpu_memory_bytes",
]
FIGURE_TABLE_COLUMNS = ["job", *_FIGURE_ID_KEYS, *_FIGURE_TEXT_KEYS, *_FIGURE_NUMBER_KEYS]

#: Columns of the resource-usage table, in order.
TABLE_COLUMNS = [
    "rule",
    "job",
    "model",
    "pass",
    "tasks",
    "shard",
    "device",
    "dtype",
    "wall_seconds",
    "max_rss_mb",
    "cpu_seconds",
    "threads",
    "cpu_efficiency",
    "n_sequences",
    "n_tokens",
    "n_computed_tokens",
    "padding_fraction",
    "n_batches",
    "batch_tokens",
    "load_seconds",
    "compute_seconds",
    "sequences_per_second",
    "tokens_per_second",
    "peak_gpu_memory_mb",
]

# Plot sizing: bars are drawn horizontally so job names stay readable; past these limits the figure stops
# growing and only every n-th job is labelled, which keeps a report of hundreds of shards legible.
_MAX_TICK_LABELS = 60
_INCHES_PER_ROW = 0.22
_MIN_HEIGHT_IN = 3.0
_MAX_HEIGHT_IN = 30.0
_LABEL_CHARS = 48
_DPI = 100


@dataclass(frozen=True)
class Thresholds:
    """Limits beyond which `find_warnings` reports a job.

    Attributes:
        min_cpu_efficiency: CPU seconds / (wall seconds * threads) below this means reserved cores sat idle.
        max_padding_fraction: share of computed tokens that were padding; above this, batches mix lengths
            badly.
        max_load_fraction: model-load seconds / wall seconds of an inference job; above this, shards are too
            small for the cost of loading the model.
    """

    min_cpu_efficiency: float = 0.5
    max_padding_fraction: float = 0.2
    max_load_fraction: float = 0.5


def _job_from_path(benchmark_root: Path, path: Path) -> tuple[str, str]:
    """Split `<root>/<rule>/<job>.tsv` into rule and job (the job keeps its slashes)."""
    try:
        relative = path.relative_to(benchmark_root)
    except ValueError:
        # One side may be relative and the other absolute (Snakemake hands scripts relative paths).
        try:
            relative = path.resolve().relative_to(benchmark_root.resolve())
        except ValueError:
            raise ValueError(f"benchmark file {path} is not under the benchmark root {benchmark_root}") from None
    parts = relative.with_suffix("").parts
    if len(parts) == 1:
        # `benchmarks/<rule>.tsv`: a rule that runs once has no job wildcards.
        return parts[0], ""
    return parts[0], "/".join(parts[1:])


def _read_one_benchmark(path: Path) -> dict[str, float]:
    # Snakemake writes "NA" for figures it could not measure; some versions and tools write "-".
    raw = pd.read_csv(path, sep="\t", na_values=["NA", "-"], dtype=str)
    if "s" not in raw.columns:
        raise ValueError(f"{path} is not a Snakemake benchmark file (no 's' column)")
    means: dict[str, float] = {}
    for source, target in _BENCHMARK_COLUMNS.items():
        if source in raw.columns:
            # Several rows are repeats of the same job (`repeat()`); their mean is the job's figure.
            means[target] = float(pd.to_numeric(raw[source], errors="coerce").mean())
        else:
            means[target] = math.nan
    return means


def read_benchmarks(benchmark_root: Path, paths: Iterable[Path | str]) -> pd.DataFrame:
    """Read Snakemake `benchmark:` TSV files into one row per file.

    Args:
        benchmark_root: directory the files live under; the first path component below it is the rule, the
            rest (without the suffix) is the job, e.g. `infer_shard` and `sampleA/dnabert2/embed/0003`.
        paths: the benchmark files (strings are accepted, as Snakemake passes them).

    Returns:
        Columns rule, job, wall_seconds, max_rss_mb, cpu_seconds, mean_load, io_in_mb, io_out_mb; numbers are
        the mean over repeats, NaN where Snakemake recorded nothing.
    """
    root = Path(benchmark_root)
    rows = []
    for raw_path in paths:
        path = Path(raw_path)
        rule, job = _job_from_path(root, path)
        rows.append({"rule": rule, "job": job, **_read_one_benchmark(path)})
    return pd.DataFrame(rows, columns=BENCHMARK_TABLE_COLUMNS).astype({c: float for c in _BENCHMARK_COLUMNS.values()})


def read_figures(paths: Iterable[Path | str]) -> pd.DataFrame:
    """Read the per-shard inference figure JSON files into one row per shard.

    Each file must name its sample, model, task and shard; other figures that are missing or null become NaN.
    The `job` column (`sample/model/task/shard`) is the key shared with the `infer_shard` benchmark.

    Raises:
        ValueError: a file lacks an identifying key, or two files describe the same job.
    """
    rows = []
    for raw_path in paths:
        path = Path(raw_path)
        record = json.loads(path.read_text())
        missing = [key for key in _FIGURE_ID_KEYS if record.get(key) in (None, "")]
        if missing:
            raise ValueError(f"inference figures {path} lack {', '.join(missing)}")
        row: dict[str, object] = {key: str(record[key]) for key in _FIGURE_ID_KEYS}
        row["job"] = "/".join(row[key] for key in _FIGURE_ID_KEYS)
        for key in _FIGURE_TEXT_KEYS:
            row[key] = None if record.get(key) is None else str(record[key])
        for key in _FIGURE_NUMBER_KEYS:
            value = record.get(key)
            row[key] = math.nan if value is None else float(value)
        rows.append(row)
    figures = pd.DataFrame(rows, columns=FIGURE_TABLE_COLUMNS).astype({k: float for k in _FIGURE_NUMBER_KEYS})
    duplicated = figures["job"][figures["job"].duplicated()].unique()
    if len(duplicated):
        raise ValueError(f"several inference figure files for job(s): {', '.join(duplicated)}")
    return figures


def _ratio(numerator: pd.Series, denominator: pd.Series) -> pd.Series:
    """numerator / denominator, NaN where the denominator is zero or missing (never inf)."""
    denominator = denominator.where(denominator > 0)
    return numerator / denominator


def resource_usage_table(benchmarks: pd.DataFrame, figures: pd.DataFrame) -> pd.DataFrame:
    """Join benchmarks with inference figures: one row per benchmarked job, sorted by rule then job.

    Inference figures are joined only to `infer_shard` rows with the same job; figures without a benchmark are
    left out. `threads` comes from the figures (1 for other rules, or when the figures do not say), so
    `cpu_efficiency` = cpu_seconds / (wall_seconds * threads). `padding_fraction` = 1 - n_tokens /
    n_computed_tokens. Other rules get NA in the inference columns.
    """
    figure_columns = [c for c in FIGURE_TABLE_COLUMNS if c != "job"]
    is_inference = benchmarks["rule"] == INFERENCE_RULE
    joined = benchmarks.merge(figures, on="job", how="left", validate="many_to_one")
    # A job key of another rule could collide with a shard key; only infer_shard rows own figures.
    joined.loc[~is_inference.to_numpy(), figure_columns] = np.nan

    joined["threads"] = joined["threads"].fillna(1).astype(int)
    joined["cpu_efficiency"] = _ratio(joined["cpu_seconds"], joined["wall_seconds"] * joined["threads"])
    joined["padding_fraction"] = 1.0 - _ratio(joined["n_tokens"], joined["n_computed_tokens"])
    joined["peak_gpu_memory_mb"] = joined["peak_gpu_memory_bytes"] / 2**20
    table = joined[TABLE_COLUMNS].sort_values(["rule", "job"], kind="stable").reset_index(drop=True)
    for column in ["model", "pass", "tasks", "shard", "device", "dtype"]:
        table[column] = table[column].astype(object).where(table[column].notna(), None)
    return table


def _percent(value: float, threshold: float) -> tuple[str, str]:
    """Format value and threshold as percentages; add a decimal when rounding would make them look equal."""
    decimals = 0
    while decimals < 3 and f"{value * 100:.{decimals}f}" == f"{threshold * 100:.{decimals}f}":
        decimals += 1
    return f"{value * 100:.{decimals}f} %", f"{threshold * 100:g} %"


def _present(value: object) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def find_warnings(table: pd.DataFrame, thresholds: Thresholds = Thresholds()) -> list[str]:
    """One sentence per job and crossed threshold, naming the job, the figure and what to change.

    Missing figures (NaN) never warn.
    """
    warnings: list[str] = []
    for row in table.itertuples(index=False):
        name = f"{row.rule} {row.job}".strip()
        efficiency = row.cpu_efficiency
        if _present(efficiency) and efficiency < thresholds.min_cpu_efficiency:
            shown, limit = _percent(efficiency, thresholds.min_cpu_efficiency)
            # A single-threaded job cannot give back threads; it is waiting on I/O or start-up instead.
            advice = (
                "give the rule fewer threads or larger shards"
                if row.threads > 1
                else "the job mostly waits on I/O or start-up; give each job more work"
            )
            warnings.append(f"{name}: CPU efficiency {shown} is below {limit} (threads={row.threads}): {advice}")
        padding = row.padding_fraction
        if _present(padding) and padding > thresholds.max_padding_fraction:
            shown, limit = _percent(padding, thresholds.max_padding_fraction)
            warnings.append(
                f"{name}: padding is {shown} of computed tokens, above {limit}: "
                "use a smaller token budget per batch or shard sequences of similar length together"
            )
        if _present(row.load_seconds) and _present(row.wall_seconds) and row.wall_seconds > 0:
            load_fraction = row.load_seconds / row.wall_seconds
            if load_fraction > thresholds.max_load_fraction:
                shown, limit = _percent(load_fraction, thresholds.max_load_fraction)
                warnings.append(
                    f"{name}: loading the model took {shown} of the wall time "
                    f"({row.load_seconds:.1f} s of {row.wall_seconds:.1f} s), above {limit}: "
                    "use larger shards so that each model load scores more sequences"
                )
    return warnings


# ---------------------------------------------------------------------------------------------------------
# Plots


def _short(label: str) -> str:
    # Keep the end of long job names: the shard number and task are what tell neighbouring bars apart.
    return label if len(label) <= _LABEL_CHARS else "…" + label[-(_LABEL_CHARS - 1) :]


def _job_labels(table: pd.DataFrame) -> list[str]:
    return [_short(f"{rule}: {job}" if job else rule) for rule, job in zip(table["rule"], table["job"], strict=True)]


def _new_figure(n_rows: int, width: float = 10.0) -> tuple[Figure, object]:
    height = min(max(_MIN_HEIGHT_IN, 1.6 + _INCHES_PER_ROW * n_rows), _MAX_HEIGHT_IN)
    fig, ax = plt.subplots(figsize=(width, height), dpi=_DPI)
    return fig, ax


def _label_rows(ax, labels: list[str]) -> None:
    """Put job names on the y axis, at most `_MAX_TICK_LABELS` of them, first job at the top."""
    step = max(1, math.ceil(len(labels) / _MAX_TICK_LABELS))
    positions = list(range(0, len(labels), step))
    ax.set_yticks(positions, [labels[i] for i in positions], fontsize=8)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    if step > 1:
        ax.set_ylabel(f"job (1 in {step} of {len(labels)} labelled)")


def _group_colors(groups: pd.Series) -> tuple[list, dict[str, object]]:
    names = list(dict.fromkeys(groups.fillna("?").astype(str)))
    palette = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    by_name = {name: palette(i % palette.N) for i, name in enumerate(names)}
    return [by_name[name] for name in groups.fillna("?").astype(str)], by_name


# Legends sit right of the axes: they never cover bars, and matplotlib's "best" placement search is slow
# with hundreds of bars.
_LEGEND_PLACE = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "borderaxespad": 0.0, "fontsize": 8}


def _legend(ax, by_name: dict[str, object], title: str, extra: list | None = None) -> None:
    handles = list(extra or [])
    # One colour needs no key, and past 20 groups a key would be taller than most plots.
    grouped = 1 < len(by_name) <= 20
    if grouped:
        handles += [Patch(color=color, label=name) for name, color in by_name.items()]
    if handles:
        ax.legend(handles=handles, title=title if grouped else None, title_fontsize=8, **_LEGEND_PLACE)


def _message_figure(title: str, message: str) -> Figure:
    fig, ax = plt.subplots(figsize=(8, 2.5), dpi=_DPI)
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=12, transform=ax.transAxes)
    ax.set_axis_off()
    return fig


def _per_job_bars(
    table: pd.DataFrame,
    column: str,
    title: str,
    xlabel: str,
    threshold: float | None = None,
    threshold_label: str = "",
) -> Figure:
    if table.empty:
        return _message_figure(title, "No benchmarked jobs")
    fig, ax = _new_figure(len(table))
    colors, by_name = _group_colors(table["rule"])
    values = table[column].fillna(0.0)
    ax.barh(range(len(table)), values, color=colors, height=0.8)
    _label_rows(ax, _job_labels(table))
    extra = []
    if threshold is not None:
        extra.append(ax.axvline(threshold, color="crimson", linestyle="--", linewidth=1.2, label=threshold_label))
    _legend(ax, by_name, "rule", extra)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def _inference_rows(table: pd.DataFrame) -> pd.DataFrame:
    return table[(table["rule"] == INFERENCE_RULE) & table["n_sequences"].notna()]


def _throughput_figure(inference: pd.DataFrame) -> Figure:
    title = "Inference throughput per shard"
    if inference.empty:
        return _message_figure(title, "No inference data")
    height = min(max(_MIN_HEIGHT_IN, 1.6 + _INCHES_PER_ROW * len(inference)), _MAX_HEIGHT_IN)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, height), dpi=_DPI, sharey=True)
    colors, by_name = _group_colors(inference["model"])
    labels = [_short(job) for job in inference["job"]]
    rows = range(len(inference))
    left.barh(rows, inference["sequences_per_second"].fillna(0.0), color=colors, height=0.8)
    right.barh(rows, inference["tokens_per_second"].fillna(0.0), color=colors, height=0.8)
    _label_rows(left, labels)
    left.set_xlabel("sequences / s")
    right.set_xlabel("tokens / s")
    for ax in (left, right):
        ax.grid(axis="x", alpha=0.3)
    _legend(right, by_name, "model")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _padding_figure(inference: pd.DataFrame, thresholds: Thresholds) -> Figure:
    title = "Padding overhead per shard"
    if inference.empty:
        return _message_figure(title, "No inference data")
    fig, ax = _new_figure(len(inference))
    colors, by_name = _group_colors(inference["model"])
    ax.barh(range(len(inference)), inference["padding_fraction"].fillna(0.0), color=colors, height=0.8)
    _label_rows(ax, [_short(job) for job in inference["job"]])
    ax.axvline(thresholds.max_padding_fraction, color="crimson", linestyle="--", linewidth=1.2)
    ax.text(
        thresholds.max_padding_fraction,
        1.0,
        f" limit {thresholds.max_padding_fraction:g}",
        color="crimson",
        fontsize=8,
        va="bottom",
        transform=ax.get_xaxis_transform(),
    )
    _legend(ax, by_name, "model")
    # Zoom to the data but keep the threshold in view; padding fractions never exceed 1.
    highest = max(float(inference["padding_fraction"].max(skipna=True) or 0.0), thresholds.max_padding_fraction)
    ax.set_xlim(0, min(1.0, highest * 1.15) if highest > 0 else 1.0)
    ax.set_xlabel("padding fraction = 1 - real tokens / computed tokens")
    ax.set_title(title, pad=14)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def _load_compute_figure(inference: pd.DataFrame) -> Figure:
    title = "Model load vs compute time per shard"
    if inference.empty:
        return _message_figure(title, "No inference data")
    fig, ax = _new_figure(len(inference))
    rows = range(len(inference))
    load = inference["load_seconds"].fillna(0.0).to_numpy()
    compute = inference["compute_seconds"].fillna(0.0).to_numpy()
    # What the wall clock saw beyond load + compute: reading FASTA, tokenizing, writing Parquet, start-up.
    other = np.clip(inference["wall_seconds"].fillna(0.0).to_numpy() - load - compute, 0.0, None)
    ax.barh(rows, load, color="tab:orange", height=0.8, label="model load")
    ax.barh(rows, compute, left=load, color="tab:blue", height=0.8, label="compute")
    ax.barh(rows, other, left=load + compute, color="lightgray", height=0.8, label="rest of wall time")
    _label_rows(ax, [_short(job) for job in inference["job"]])
    ax.set_xlabel("seconds")
    ax.set_title(title)
    ax.legend(**_LEGEND_PLACE)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def _build_plots(table: pd.DataFrame, thresholds: Thresholds) -> list[tuple[str, str, Figure]]:
    """(file stem, caption, figure) for every plot; placeholders keep the set of files fixed."""
    inference = _inference_rows(table)
    return [
        (
            "wall_time",
            "Wall-clock seconds per job, coloured by rule (mean over benchmark repeats).",
            _per_job_bars(table, "wall_seconds", "Wall time per job", "wall seconds"),
        ),
        (
            "max_rss",
            "Peak resident memory per job as measured by Snakemake.",
            _per_job_bars(table, "max_rss_mb", "Max RSS per job", "max RSS (MB)"),
        ),
        (
            "cpu_efficiency",
            "CPU seconds / (wall seconds × threads); the dashed line is the warning threshold.",
            _per_job_bars(
                table,
                "cpu_efficiency",
                "CPU efficiency per job",
                "CPU efficiency",
                threshold=thresholds.min_cpu_efficiency,
                threshold_label=f"threshold {thresholds.min_cpu_efficiency:g}",
            ),
        ),
        (
            "throughput",
            "Sequences and tokens scored per second of model compute, per shard, coloured by model.",
            _throughput_figure(inference),
        ),
        (
            "padding",
            "Share of computed tokens that were padding, per shard; dashed line: the warning threshold.",
            _padding_figure(inference, thresholds),
        ),
        (
            "load_vs_compute",
            "Model load, compute and remaining wall seconds per shard.",
            _load_compute_figure(inference),
        ),
    ]


def _png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)
    plt.close(fig)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------------
# HTML

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }
h1 { border-bottom: 2px solid #444; padding-bottom: 0.2em; }
h2 { margin-top: 1.6em; border-bottom: 1px solid #bbb; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; }
th { background: #f0f0f0; }
table.summary th { text-align: left; }
ul.warnings li { color: #8a1c1c; margin: 0.3em 0; }
p.ok { color: #1d6b2a; }
p.note { color: #555; font-style: italic; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #555; }
div.table-wrap { overflow-x: auto; }
"""


def _hms(seconds: float) -> str:
    whole = int(round(seconds))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def _summary_rows(table: pd.DataFrame) -> list[tuple[str, str]]:
    wall = float(table["wall_seconds"].sum())
    cpu = float(table["cpu_seconds"].sum())
    rows = [
        ("Jobs", f"{len(table):,}"),
        ("Total wall time (sum over jobs)", f"{wall:,.1f} s ({_hms(wall)})"),
        ("Total CPU time", f"{cpu:,.1f} s ({_hms(cpu)})"),
    ]
    inference = _inference_rows(table)
    if inference.empty:
        rows.append(("Inference", "no inference data"))
        return rows
    sequences = float(inference["n_sequences"].sum())
    tokens = float(inference["n_tokens"].sum())
    computed = float(inference["n_computed_tokens"].sum())
    compute_seconds = float(inference["compute_seconds"].sum())
    inference_wall = float(inference["wall_seconds"].sum())
    useful = f"{tokens / computed * 100:.1f} %" if computed > 0 else "NA"
    per_compute = f"{sequences / compute_seconds:,.1f}" if compute_seconds > 0 else "NA"
    per_wall = f"{sequences / inference_wall:,.1f}" if inference_wall > 0 else "NA"
    rows += [
        ("Inference shards", f"{len(inference):,}"),
        ("Sequences", f"{sequences:,.0f}"),
        ("Tokens (real)", f"{tokens:,.0f}"),
        ("Useful-token fraction (real / computed tokens)", useful),
        ("Sequences per second of model compute", per_compute),
        ("Sequences per wall second of inference jobs", per_wall),
    ]
    return rows


def _thresholds_text(thresholds: Thresholds) -> str:
    return (
        f"CPU efficiency ≥ {thresholds.min_cpu_efficiency * 100:g} %, "
        f"padding ≤ {thresholds.max_padding_fraction * 100:g} %, "
        f"model load ≤ {thresholds.max_load_fraction * 100:g} % of wall time"
    )


def _render_html(
    table: pd.DataFrame,
    warnings: list[str],
    thresholds: Thresholds,
    images: list[tuple[str, str, bytes]],
    unmatched_figures: list[str],
) -> str:
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        "<title>seqshard resource usage</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        "<h1>seqshard resource usage</h1>",
        '<section id="summary">',
        "<h2>Summary</h2>",
        '<table class="summary">',
    ]
    parts += [f"<tr><th>{esc(name)}</th><td>{esc(value)}</td></tr>" for name, value in _summary_rows(table)]
    parts.append("</table>")
    if _inference_rows(table).empty:
        parts.append(
            '<p class="note">There is no inference data: no per-shard inference figures matched an '
            f"{esc(INFERENCE_RULE)} benchmark, so throughput, padding and load plots are empty.</p>"
        )
    if unmatched_figures:
        parts.append(
            f'<p class="note">{len(unmatched_figures)} inference figure file(s) had no {esc(INFERENCE_RULE)} '
            f"benchmark and are not in the table: {esc(', '.join(unmatched_figures[:20]))}"
            f"{' …' if len(unmatched_figures) > 20 else ''}</p>"
        )
    parts += ["</section>", '<section id="warnings">', "<h2>Warnings</h2>"]
    if warnings:
        parts.append('<ul class="warnings">')
        parts += [f"<li>{esc(warning)}</li>" for warning in warnings]
        parts.append("</ul>")
        parts.append(f"<p>Thresholds: {esc(_thresholds_text(thresholds))}.</p>")
    else:
        parts.append(f'<p class="ok">No figure crossed a threshold ({esc(_thresholds_text(thresholds))}).</p>')
    parts += ["</section>", '<section id="plots">', "<h2>Plots</h2>"]
    for stem, caption, png in images:
        encoded = base64.b64encode(png).decode("ascii")
        parts.append(
            f'<figure id="{esc(stem)}"><img src="data:image/png;base64,{encoded}" alt="{esc(caption)}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>"
        )
    parts += ["</section>", '<section id="table">', "<h2>Per-job table</h2>", '<div class="table-wrap">']
    # to_html escapes cell text itself; rounding keeps the table readable without changing the TSV.
    parts.append(table.round(3).to_html(index=False, na_rep="NA", border=0, escape=True))
    parts += ["</div>", "</section>", "</body>", "</html>", ""]
    return "\n".join(parts)


def write_resource_report(
    benchmark_root: Path,
    benchmark_paths: Iterable[Path | str],
    figure_paths: Iterable[Path | str],
    tsv_out: Path,
    html_out: Path,
    thresholds: Thresholds = Thresholds(),
    plots_dir: Path | None = None,
) -> pd.DataFrame:
    """Write the resource-usage table as TSV and a self-contained HTML report; return the table.

    The HTML embeds every plot as a base64 PNG and inlines its CSS, so it is a single portable file. When
    `plots_dir` is given, the same plots are also saved there as `wall_time.png`, `max_rss.png`,
    `cpu_efficiency.png`, `throughput.png`, `padding.png` and `load_vs_compute.png`; all six are always
    written (with a "no data" placeholder when there is nothing to plot) so they can be declared as outputs.
    """
    benchmarks = read_benchmarks(Path(benchmark_root), benchmark_paths)
    figures = read_figures(figure_paths)
    table = resource_usage_table(benchmarks, figures)
    warnings = find_warnings(table, thresholds)
    benchmarked = set(benchmarks.loc[benchmarks["rule"] == INFERENCE_RULE, "job"])
    unmatched = sorted(job for job in figures["job"] if job not in benchmarked)

    tsv_out, html_out = Path(tsv_out), Path(html_out)
    tsv_out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(tsv_out, sep="\t", index=False, na_rep="NA")

    images = [(stem, caption, _png_bytes(fig)) for stem, caption, fig in _build_plots(table, thresholds)]
    if plots_dir is not None:
        plots_dir = Path(plots_dir)
        plots_dir.mkdir(parents=True, exist_ok=True)
        for stem, _caption, png in images:
            (plots_dir / f"{stem}.png").write_bytes(png)

    html_out.parent.mkdir(parents=True, exist_ok=True)
    html_out.write_text(_render_html(table, warnings, thresholds, images, unmatched), encoding="utf-8")
    return table
