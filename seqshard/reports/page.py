"""Write the resource report: the per-job TSV, per-model throughput and warnings TSVs, the plots as PNG files, and
one self-contained HTML page rendered from a Jinja2 template (`templates/resource_report.html.j2`).

The page inlines its CSS, its script (a sortable, filterable job table in plain JavaScript) and every plot as a
base64 PNG: one file that opens offline, can be mailed, and makes no network request.
"""

from __future__ import annotations

import base64
import datetime
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path

import jinja2
import pandas as pd

from seqshard.reports.analysis import (
    Prices,
    RunSummary,
    inference_jobs,
    rule_summary,
    summarize,
    throughput_by_model,
    timed_jobs,
)
from seqshard.reports.findings import (
    Finding,
    Thresholds,
    find_warnings,
    findings_table,
    thresholds_text,
    unreadable_samples,
)
from seqshard.reports.inputs import (
    read_benchmarks,
    read_figures,
    read_job_records,
    read_unreadable_samples,
    resource_usage_table,
)
from seqshard.reports.plots import build_plots, png_bytes, timeline_figure

_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("seqshard.reports", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def settings_from_config(report: Mapping[str, float]) -> tuple[Thresholds, Prices]:
    """Split the config's `report:` section into warning thresholds and prices."""
    names = {f.name for f in fields(Thresholds)}
    prices = Prices(float(report.get("cost_per_cpu_hour", 0.0)), float(report.get("cost_per_gpu_hour", 0.0)))
    unknown = sorted(set(report) - names - {"cost_per_cpu_hour", "cost_per_gpu_hour"})
    if unknown:
        raise ValueError(f"report: unknown setting(s) {', '.join(unknown)}")
    return Thresholds(**{key: value for key, value in report.items() if key in names}), prices


# ---------------------------------------------------------------------------------------------------------
# Formatting: every cell is (text shown, sort key); the key is the raw number, empty for a missing one.


@dataclass(frozen=True)
class Column:
    name: str  # the table's column
    label: str
    show: Callable[[float], str] | None = None  # None: text column

    def cell(self, value: object) -> tuple[str, str | None]:
        if self.show is None:
            return ("" if value is None else str(value), None)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ("NA", "")
        return (self.show(float(value)), repr(float(value)))


def _fixed(decimals: int) -> Callable[[float], str]:
    return lambda value: f"{value:,.{decimals}f}"


def _percent(value: float) -> str:
    return f"{value * 100:.1f} %"


def _hms(seconds: float) -> str:
    whole = int(round(seconds))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def _clock(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def _rows(frame: pd.DataFrame, columns: Iterable[Column]) -> list[list[tuple[str, str | None]]]:
    columns = list(columns)
    data = [frame[column.name].tolist() for column in columns]
    return [[column.cell(values[i]) for column, values in zip(columns, data, strict=True)] for i in range(len(frame))]


def _table(frame: pd.DataFrame, columns: Iterable[Column]) -> dict[str, object]:
    columns = list(columns)
    return {
        "columns": [(c.label, c.show is not None) for c in columns],
        "rows": _rows(frame, columns),
    }


_JOB_COLUMNS = [
    Column("rule", "rule"),
    Column("job", "job"),
    Column("host", "host"),
    Column("start_offset", "start (s)", _fixed(1)),
    Column("wall_seconds", "wall (s)", _fixed(2)),
    Column("threads", "threads", _fixed(0)),
    Column("cpu_count", "host cores", _fixed(0)),
    Column("cpu_efficiency", "CPU eff.", _percent),
    Column("max_rss_mb", "max RSS (MB)", _fixed(1)),
    Column("model", "model"),
    Column("tasks", "tasks"),
    Column("device", "device"),
    Column("n_records", "records", _fixed(0)),
    Column("n_tokens", "tokens", _fixed(0)),
    Column("padding_fraction", "padding", _percent),
    Column("batch_tokens", "batch tokens", _fixed(0)),
    Column("load_seconds", "load (s)", _fixed(2)),
    Column("compute_seconds", "compute (s)", _fixed(2)),
    Column("sequences_per_second", "seq/s", _fixed(1)),
    Column("tokens_per_second", "tokens/s", _fixed(0)),
    Column("gpu_utilization_mean_percent", "GPU util. (%)", _fixed(0)),
    Column("gpu_memory_peak_mb", "GPU mem. (MB)", _fixed(0)),
]

_RULE_COLUMNS = [
    Column("rule", "rule"),
    Column("jobs", "jobs", _fixed(0)),
    Column("wall_seconds", "wall (s, sum)", _fixed(1)),
    Column("mean_wall_seconds", "mean (s)", _fixed(2)),
    Column("max_wall_seconds", "longest (s)", _fixed(2)),
    Column("cpu_hours", "CPU-h reserved", _fixed(3)),
    Column("cpu_efficiency", "CPU eff.", _percent),
    Column("share_of_cpu_hours", "share of CPU-h", _percent),
    Column("max_rss_mb", "max RSS (MB)", _fixed(1)),
]

_PATH_COLUMNS = [
    Column("rule", "on the critical path"),
    Column("jobs", "jobs", _fixed(0)),
    Column("seconds", "seconds", _fixed(1)),
    Column("share", "share", _percent),
]

_HOST_COLUMNS = [
    Column("host", "host"),
    Column("jobs", "jobs", _fixed(0)),
    Column("peak_threads", "most threads at once", _fixed(0)),
    Column("slots", "slots", _fixed(0)),
    Column("span_seconds", "span (s)", _fixed(1)),
    Column("idle_share", "idle share", _percent),
]


def _model_columns(prices: Prices, gpu: bool) -> list[Column]:
    columns = [
        Column("model", "model"),
        Column("tasks", "tasks"),
        Column("jobs", "jobs", _fixed(0)),
        Column("records", "records", _fixed(0)),
        Column("sequences", "distinct computed", _fixed(0)),
        Column("sequences_per_second", "seq/s (compute)", _fixed(1)),
        Column("tokens_per_second", "tokens/s (compute)", _fixed(0)),
        Column("records_per_job_second", "records/s (job wall)", _fixed(2)),
        Column("useful_token_fraction", "useful tokens", _percent),
        Column("cpu_hours", "CPU-h", _fixed(4)),
        Column("gpu_hours", "GPU-h", _fixed(4)),
    ]
    if prices.shown:
        columns += [Column("cost", "cost", _fixed(4)), Column("cost_per_million_sequences", "cost / M seq.", _fixed(2))]
    if gpu:
        columns += [
            Column("gpu_utilization_mean_percent", "GPU util. (%)", _fixed(0)),
            Column("gpu_memory_peak_mb", "GPU mem. peak (MB)", _fixed(0)),
            Column("gpu_power_mean_watts", "GPU power (W)", _fixed(0)),
        ]
    return columns


def _change(change: str) -> Callable[[pd.Series], str]:
    return lambda row: (
        "NA"
        if pd.isna(row[f"seam_{change}_window_length"])
        else f"{row[f'seam_{change}_window_length']:.0f} / {row[f'seam_{change}_window_overlap']:.0f}"
    )


_SEAM_COLUMNS = [
    Column("model", "model"),
    Column("tasks", "tasks"),
    Column("sequences", "distinct computed", _fixed(0)),
    Column("windowed", "windowed", _fixed(0)),
    Column("seam_records", "probed", _fixed(0)),
    Column("window", "window / overlap"),
    Column("overlap_change", "overlap changed to"),
    Column("seam_overlap_cosine_mean", "cosine dist. (mean)", _fixed(6)),
    Column("seam_overlap_cosine_max", "(max)", _fixed(6)),
    Column("length_change", "length changed to"),
    Column("seam_length_cosine_mean", "cosine dist. (mean)", _fixed(6)),
    Column("seam_length_cosine_max", "(max)", _fixed(6)),
]


def _seam_table(throughput: pd.DataFrame) -> dict[str, object]:
    """The windows' seams per model entry (rows that windowed nothing are left out)."""
    seams = throughput[throughput["windowed"].fillna(0) > 0]
    if seams.empty:
        return _table(seams.assign(window="", overlap_change="", length_change=""), _SEAM_COLUMNS)
    seams = seams.assign(
        window=seams.apply(
            lambda row: "NA" if pd.isna(row["seam_window_length"])
            else f"{row['seam_window_length']:.0f} / {row['seam_window_overlap']:.0f}", axis=1,
        ),
        overlap_change=seams.apply(_change("overlap"), axis=1),
        length_change=seams.apply(_change("length"), axis=1),
    )  # fmt: skip
    return _table(seams, _SEAM_COLUMNS)


def _summary_rows(table: pd.DataFrame, summary: RunSummary, prices: Prices) -> list[tuple[str, str]]:
    rows = [("Jobs", f"{summary.jobs:,} of {summary.rules} rule(s) on {summary.hosts} host(s)")]
    if summary.first_start is not None and summary.last_end is not None:
        rows.append(
            ("Run", f"{_clock(summary.first_start)} to {_clock(summary.last_end)}: "
                    f"{summary.makespan_seconds:,.1f} s ({_hms(summary.makespan_seconds)})")
        )  # fmt: skip
        path = summary.path
        rows.append(
            ("Critical path", f"{path.length_seconds:,.1f} s through {len(path.steps):,} job(s): "
                              f"{path.working_seconds:,.1f} s in jobs, {path.waiting_seconds:,.1f} s between them")
        )  # fmt: skip
        slots = summary.slots
        rows.append(
            ("Idle share of the slots", f"{_percent(slots.idle_share)} of {slots.slot_seconds:,.0f} slot-seconds "
                                        f"({int(slots.hosts['slots'].sum())} slot(s) over {len(slots.hosts)} host(s))")
        )  # fmt: skip
    if summary.jobs_without_span:
        rows.append(("Jobs not on the timeline", f"{summary.jobs_without_span:,} (no start/end record)"))
    used = summary.cpu_hours_used / summary.cpu_hours if summary.cpu_hours > 0 else math.nan
    rows += [
        ("Job time (sum of wall times)", f"{summary.wall_seconds:,.1f} s ({_hms(summary.wall_seconds)})"),
        ("CPU-hours reserved (threads × wall)", f"{summary.cpu_hours:,.4f}, of which used {_percent(used)}"),
        ("GPU-hours", f"{summary.gpu_hours:,.4f}" if summary.gpu_hours > 0 else "none (no job ran on a GPU)"),
    ]
    if prices.shown:
        rows.append(
            ("Cost of all jobs", f"{summary.cost:,.4f} (CPU-hour {prices.cpu_hour:g}, GPU-hour {prices.gpu_hour:g})")
        )
    inference = inference_jobs(table)
    if inference.empty:
        rows.append(("Inference", "no inference data"))
        return rows
    records = float(inference["n_records"].fillna(inference["n_sequences"]).sum())
    sequences = float(inference["n_sequences"].sum())
    tokens = float(inference["n_tokens"].sum())
    computed = float(inference["n_computed_tokens"].sum())
    compute = float(inference["compute_seconds"].sum())
    rows += [
        (
            "Records scored",
            f"{records:,.0f} ({sequences:,.0f} distinct sequences computed) in {len(inference):,} inference job(s)",
        ),
        ("Tokens (real)", f"{tokens:,.0f}"),
        ("Useful-token fraction (real / computed)", _percent(tokens / computed) if computed else "NA"),
        ("Sequences per second of model compute", f"{sequences / compute:,.1f}" if compute else "NA"),
    ]
    windowed = float(inference["n_windowed"].fillna(0).sum())
    if windowed:
        probed = float(inference["seam_records"].fillna(0).sum())
        worst = inference[["seam_overlap_cosine_max", "seam_length_cosine_max"]].max().max()
        moved = f"; the pooled embedding of {probed:,.0f} probed moved by a cosine distance of at most {worst:.3g} " \
                "when the windows moved (see Windows and seams)" if probed and pd.notna(worst) else ""  # fmt: skip
        rows.append(("Sequences windowed", f"{windowed:,.0f} of {sequences:,.0f} distinct computed{moved}"))
    return rows


def _gpu_reasons(inference: pd.DataFrame) -> list[tuple[str, int]]:
    reasons = inference.loc[inference["gpu_utilization_mean_percent"].isna(), "gpu_reason"].fillna("unknown")
    return sorted(reasons.value_counts().items(), key=lambda item: -item[1])


def render_page(
    table: pd.DataFrame,
    summary: RunSummary,
    findings: list[Finding],
    thresholds: Thresholds,
    prices: Prices,
    images: list[tuple[str, str, bytes]],
    notes: list[str],
) -> str:
    """The HTML page for a per-job table; `images` are (stem, caption, PNG bytes), the timeline first."""
    origin = summary.first_start if summary.first_start is not None else 0.0
    jobs = table.assign(start_offset=table["started_at"] - origin)
    throughput = throughput_by_model(table, prices)
    gpu = bool(throughput["gpu_utilization_mean_percent"].notna().any())
    hosts = summary.slots.hosts
    hosts = hosts.assign(span_seconds=hosts["last_end"] - hosts["first_start"])
    longest_steps = summary.path.steps.sort_values("seconds", ascending=False, kind="stable").head(10)
    longest_steps = longest_steps.assign(start_offset=longest_steps["started_at"] - origin)
    encoded = [(stem, caption, base64.b64encode(png).decode("ascii")) for stem, caption, png in images]
    return _TEMPLATES.get_template("resource_report.html.j2").render(
        summary_rows=_summary_rows(table, summary, prices),
        rules=_table(rule_summary(table), _RULE_COLUMNS),
        findings=findings,
        thresholds=thresholds_text(thresholds),
        timeline=encoded[0],
        plots=encoded[1:],
        path=_table(summary.path.by_rule(), _PATH_COLUMNS),
        path_steps=_table(
            longest_steps,
            [
                Column("rule", "rule"),
                Column("job", "job"),
                Column("host", "host"),
                Column("start_offset", "start (s)", _fixed(1)),
                Column("seconds", "seconds", _fixed(1)),
                Column("waited_seconds", "waited before (s)", _fixed(1)),
            ],
        ),  # fmt: skip
        hosts=_table(hosts, _HOST_COLUMNS),
        models=_table(throughput, _model_columns(prices, gpu)),
        seams=_seam_table(throughput),
        prices=prices,
        gpu_reasons=[] if gpu else _gpu_reasons(inference_jobs(table)),
        jobs=_table(jobs, _JOB_COLUMNS),
        n_jobs=len(table),
        notes=notes,
    )


def write_resource_report(
    benchmark_root: Path | str,
    benchmark_paths: Iterable[Path | str],
    figure_paths: Iterable[Path | str],
    tsv_out: Path | str,
    html_out: Path | str,
    thresholds: Thresholds | None = None,
    plots_dir: Path | str | None = None,
    *,
    log_root: Path | str | None = None,
    prices: Prices | None = None,
    timeline_out: Path | str | None = None,
    throughput_out: Path | str | None = None,
    warnings_out: Path | str | None = None,
    pack_samples: Mapping[str, Path | str] | None = None,
) -> pd.DataFrame:
    """Write the per-job table (TSV) and the HTML page; return the table.

    `log_root` is where the job records are (`logs`); without it no job is placed on the timeline. Optional
    outputs: `plots_dir` gets every plot as `<stem>.png` (always the same set, with a "no data" placeholder
    where there is nothing to draw, so they can be declared as outputs), `timeline_out` the timeline PNG,
    `throughput_out` the per-model throughput and cost TSV, `warnings_out` the grouped warnings TSV.
    `pack_samples` (model entry -> its pack's samples.tsv) adds a warning, first, for each sample a pack could not
    read.
    """
    thresholds = thresholds or Thresholds()
    prices = prices or Prices()
    benchmarks = read_benchmarks(benchmark_root, benchmark_paths)
    figures = read_figures(figure_paths)
    records = None
    if log_root is not None:
        records = read_job_records(log_root, zip(benchmarks["rule"], benchmarks["job"], strict=True))
    table = resource_usage_table(benchmarks, figures, records)
    findings = unreadable_samples(read_unreadable_samples(pack_samples or {})) + find_warnings(table, thresholds)

    notes = []
    benchmarked = set(zip(benchmarks["rule"], benchmarks["job"], strict=True))
    named = zip(figures["rule"], figures["job"], strict=True)
    unmatched = sorted(f"{rule} {job}" for rule, job in named if (rule, job) not in benchmarked)
    if unmatched:
        shown = ", ".join(unmatched[:20]) + (" …" if len(unmatched) > 20 else "")
        notes.append(f"{len(unmatched)} inference figure file(s) had no benchmark and are not in the table: {shown}")

    timed = timed_jobs(table)
    summary = summarize(table, timed, prices)
    images = [("timeline", "Jobs over time by host, coloured by rule; the critical path outlined in black.",
               png_bytes(timeline_figure(timed, summary.path)))]  # fmt: skip
    images += [(stem, caption, png_bytes(fig)) for stem, caption, fig in build_plots(table, thresholds)]

    outputs = {"tsv": tsv_out, "html": html_out, "timeline": timeline_out, "throughput": throughput_out,
               "warnings": warnings_out}  # fmt: skip
    for path in outputs.values():
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(tsv_out, sep="\t", index=False, na_rep="NA")
    if throughput_out is not None:
        throughput_by_model(table, prices).to_csv(throughput_out, sep="\t", index=False, na_rep="NA")
    if warnings_out is not None:
        findings_table(findings).to_csv(warnings_out, sep="\t", index=False, na_rep="NA")
    if timeline_out is not None:
        Path(timeline_out).write_bytes(images[0][2])
    if plots_dir is not None:
        Path(plots_dir).mkdir(parents=True, exist_ok=True)
        for stem, _caption, png in images[1:]:  # the timeline is an output of its own
            (Path(plots_dir) / f"{stem}.png").write_bytes(png)
    page = render_page(table, summary, findings, thresholds, prices, images, notes)
    Path(html_out).write_text(page, encoding="utf-8")
    return table
