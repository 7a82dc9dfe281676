"""Tests for seqshard.reports: reading a run's files, the per-job table, timeline analysis, throughput and cost,
grouped warnings, and the files the report writes. Browser checks of the page are in test_report_page.py."""

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest

from seqshard.reports import (
    TABLE_COLUMNS,
    Prices,
    Thresholds,
    find_warnings,
    read_benchmarks,
    read_figures,
    read_job_records,
    resource_usage_table,
    settings_from_config,
    write_resource_report,
)
from seqshard.reports.analysis import assign_lanes, critical_path, slot_usage, throughput_by_model, timed_jobs

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time"


def write_benchmark(root: Path, relative: str, rows: list[dict[str, object]]) -> Path:
    """Write a benchmark file the way Snakemake 9 does: one header, one row per repeat."""
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [HEADER]
    for row in rows:
        seconds = row["s"]
        hms = "NA" if seconds == "NA" else f"0:00:{int(float(seconds)):02d}"
        values = (seconds, hms, row.get("max_rss", 100.0), 900.0, 90.0, 95.0, row.get("io_in", 1.0), 0.5,
                  row.get("mean_load", 80.0), row.get("cpu_time", 1.0))  # fmt: skip
        lines.append("\t".join(str(value) for value in values))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_record(log_root: Path, rule: str, job: str, **fields: object) -> Path:
    """Write a job record as seqshard.runtime.jobs.recorded_job does."""
    record = {"rule": rule, "job": job, "host": "node1", "cpu_count": 4, "threads": 1, "started_at": 0.0,
              "ended_at": 1.0, "status": "ok", "load_average": 1.0, **fields}  # fmt: skip
    path = log_root / rule / f"{job}.job.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path


def write_figures(directory: Path, shard: str, **overrides: object) -> Path:
    """Write one inference job's run figures as the workflow's rule script does."""
    job = f"dnabert2/hidden/{shard}"
    record: dict[str, object] = {
        "rule": "infer_shard", "job": job, "model": "dnabert2", "pass": "hidden", "tasks": "embed,classify",
        "shard": shard, "device": "cpu", "dtype": "fp32", "threads": 2, "n_records": 11, "n_sequences": 10,
        "n_tokens": 900,
        "n_computed_tokens": 1000, "n_batches": 2, "batch_tokens": 16384, "load_seconds": 0.5,
        "compute_seconds": 1.0, "sequences_per_second": 10.0, "tokens_per_second": 900.0,
        "peak_gpu_memory_bytes": None, "gpu": {"gpu_available": False, "gpu_reason": "the work ran on cpu"},
    }  # fmt: skip
    record.update(overrides)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{shard}.json"
    path.write_text(json.dumps(record))
    return path


TWO_GPUS = {
    "gpu_available": True,
    "gpus": [
        {"index": 0, "name": "A", "uuid": "GPU-a", "samples": 40, "utilization_mean_percent": 80.0,
         "utilization_peak_percent": 99.0, "memory_used_mean_bytes": 2**30, "memory_used_peak_bytes": 3 * 2**30,
         "memory_total_bytes": 80 * 2**30, "power_mean_watts": 300.0, "power_peak_watts": 400.0},
        {"index": 1, "name": "A", "uuid": "GPU-b", "samples": 38, "utilization_mean_percent": 60.0,
         "utilization_peak_percent": 90.0, "memory_used_mean_bytes": 2**30, "memory_used_peak_bytes": 2 * 2**30,
         "memory_total_bytes": 80 * 2**30, "power_mean_watts": 250.0, "power_peak_watts": 380.0},
    ],
}  # fmt: skip


@pytest.fixture
def run(tmp_path: Path) -> dict[str, object]:
    """A small run on one host: packing, then two inference shards (the second wasteful, on two GPUs)."""
    root, logs = tmp_path / "benchmarks", tmp_path / "logs"
    benchmarks = [
        # Two repeats: means are s=2.0, cpu=3.0, max_rss=200.0; io_in "NA" in one repeat leaves 4.0.
        write_benchmark(root, "infer_shard/dnabert2/hidden/0003.tsv",
                        [{"s": 1.5, "cpu_time": 2.5, "max_rss": 100.0, "io_in": "NA"},
                         {"s": 2.5, "cpu_time": 3.5, "max_rss": 300.0, "io_in": 4.0}]),
        # cpu 4.0 over 10 s on 2 threads: 20 % efficiency.
        write_benchmark(root, "infer_shard/dnabert2/hidden/0004.tsv",
                        [{"s": 10.0, "cpu_time": 4.0, "max_rss": 500.0}]),
        write_benchmark(root, "pack/dnabert2.tsv", [{"s": 4.0, "cpu_time": 3.6, "max_rss": 50.0}]),
    ]  # fmt: skip
    write_record(logs, "pack", "dnabert2", started_at=1000.0, ended_at=1004.0)
    write_record(logs, "infer_shard", "dnabert2/hidden/0003", threads=2, started_at=1005.0, ended_at=1007.0)
    write_record(logs, "infer_shard", "dnabert2/hidden/0004", threads=2, started_at=1007.0, ended_at=1017.0)
    figure_dir = tmp_path / "figures"
    figures = [
        write_figures(figure_dir, "0003"),
        write_figures(figure_dir, "0004", n_sequences=20, n_tokens=1800, n_computed_tokens=2000, load_seconds=1.0,
                      compute_seconds=5.0, device="cuda:0", dtype="bf16", peak_gpu_memory_bytes=3 * 2**30,
                      gpu=TWO_GPUS, n_records=20),
    ]  # fmt: skip
    return {"root": root, "logs": logs, "benchmarks": benchmarks, "figures": figures, "tmp": tmp_path}


def table_of(run: dict) -> pd.DataFrame:
    benchmarks = read_benchmarks(run["root"], run["benchmarks"])
    records = read_job_records(run["logs"], zip(benchmarks["rule"], benchmarks["job"], strict=True))
    return resource_usage_table(benchmarks, read_figures(run["figures"]), records)


def test_read_benchmarks_derives_rule_and_job_and_averages_repeats(run: dict) -> None:
    table = read_benchmarks(run["root"], run["benchmarks"]).set_index(["rule", "job"])

    assert list(table.index) == [
        ("infer_shard", "dnabert2/hidden/0003"),
        ("infer_shard", "dnabert2/hidden/0004"),
        ("pack", "dnabert2"),
    ]
    repeated = table.loc[("infer_shard", "dnabert2/hidden/0003")]
    assert repeated["wall_seconds"] == pytest.approx(2.0)
    assert repeated["cpu_seconds"] == pytest.approx(3.0)
    assert repeated["max_rss_mb"] == pytest.approx(200.0)
    assert repeated["io_in_mb"] == pytest.approx(4.0)  # the "NA" repeat is skipped, not read as 0
    assert repeated["mean_load"] == pytest.approx(80.0)


def test_read_benchmarks_handles_missing_values_and_string_paths(tmp_path: Path) -> None:
    root = tmp_path / "benchmarks"
    path = write_benchmark(root, "merge.tsv", [{"s": 3.0, "cpu_time": "NA", "max_rss": "-"}])

    table = read_benchmarks(root, [str(path)])

    assert (table.loc[0, "rule"], table.loc[0, "job"]) == ("merge", "")
    assert table.loc[0, "wall_seconds"] == pytest.approx(3.0)
    assert math.isnan(table.loc[0, "cpu_seconds"]) and math.isnan(table.loc[0, "max_rss_mb"])


def test_read_benchmarks_finds_the_root_inside_a_storage_providers_local_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With a default storage provider, Snakemake hands the script its local copies of `benchmarks/...`.
    monkeypatch.chdir(tmp_path)
    staged = tmp_path / ".snakemake/storage/s3/bucket/run"
    path = write_benchmark(staged / "benchmarks", "infer_shard/sampleA/dnabert2/embed/0003.tsv", [{"s": 2.0}])

    table = read_benchmarks(Path("benchmarks"), [str(path.relative_to(tmp_path))])

    assert (table.loc[0, "rule"], table.loc[0, "job"]) == ("infer_shard", "sampleA/dnabert2/embed/0003")


def test_read_benchmarks_rejects_a_file_outside_the_root_or_not_a_benchmark(tmp_path: Path) -> None:
    path = write_benchmark(tmp_path / "elsewhere", "rule/job.tsv", [{"s": 1.0}])
    with pytest.raises(ValueError, match="not under the benchmark root"):
        read_benchmarks(tmp_path / "benchmarks", [path])
    other = tmp_path / "benchmarks" / "rule" / "job.tsv"
    other.parent.mkdir(parents=True)
    other.write_text("seconds\n1.0\n")
    with pytest.raises(ValueError, match=r"job.tsv is not a Snakemake benchmark file \(no 's' column\)"):
        read_benchmarks(tmp_path / "benchmarks", [other])


def test_read_figures_keys_on_the_job_they_name_and_flattens_gpu_telemetry(run: dict, tmp_path: Path) -> None:
    figures = read_figures(run["figures"]).set_index("job")

    cpu, gpu = figures.loc["dnabert2/hidden/0003"], figures.loc["dnabert2/hidden/0004"]
    assert cpu["rule"] == "infer_shard" and cpu["shard"] == "0003"
    # No GPU: zero GPUs, no utilization (not 0 %), and the reason.
    assert cpu["gpu_count"] == 0 and math.isnan(cpu["gpu_utilization_mean_percent"])
    assert cpu["gpu_reason"] == "the work ran on cpu"
    # Two GPUs: mean of the means, highest peak, largest memory peak, summed power, fewest samples.
    assert gpu["gpu_count"] == 2 and gpu["gpu_reason"] is None
    assert gpu["gpu_utilization_mean_percent"] == pytest.approx(70.0)
    assert gpu["gpu_utilization_peak_percent"] == pytest.approx(99.0)
    assert gpu["gpu_memory_peak_mb"] == pytest.approx(3072.0)
    assert gpu["gpu_power_mean_watts"] == pytest.approx(550.0)
    assert gpu["gpu_samples"] == 38

    with pytest.raises(ValueError, match="several inference figure files for job"):
        read_figures([run["figures"][0], run["figures"][0]])
    anonymous = tmp_path / "anonymous.json"
    anonymous.write_text(json.dumps({"n_sequences": 3}))
    with pytest.raises(ValueError, match=r"anonymous.json lack rule and job: the rule script must label"):
        read_figures([anonymous])
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ValueError, match=r"broken.json is not valid JSON"):
        read_figures([broken])


def test_job_records_are_found_by_the_benchmark_name_and_missing_ones_are_left_out(run: dict) -> None:
    records = read_job_records(run["logs"], [("pack", "dnabert2"), ("merge", "dnabert2")])

    assert records["job"].tolist() == ["dnabert2"]
    assert records.loc[0, "started_at"] == 1000.0 and records.loc[0, "host"] == "node1"


def test_resource_usage_table_joins_records_and_figures(run: dict) -> None:
    table = table_of(run)

    assert list(table.columns) == TABLE_COLUMNS
    first, second, sharding = (table.iloc[i] for i in range(3))
    # cpu 3.0 s / (wall 2.0 s * 2 threads); 1 - 900 real / 1000 computed tokens
    assert first["cpu_efficiency"] == pytest.approx(0.75) and first["threads"] == 2
    assert first["padding_fraction"] == pytest.approx(0.1)
    assert (first["host"], first["started_at"], first["ended_at"], first["cpu_count"]) == ("node1", 1005, 1007, 4)
    assert second["cpu_efficiency"] == pytest.approx(0.2)
    assert second["peak_gpu_memory_mb"] == pytest.approx(3072.0) and second["gpu_count"] == 2
    # A rule without inference figures: its threads from its record.
    assert sharding["threads"] == 1 and sharding["cpu_efficiency"] == pytest.approx(0.9)
    assert sharding["shard"] is None and math.isnan(sharding["padding_fraction"])


def test_without_a_record_an_inference_job_takes_its_span_from_its_figures(run: dict) -> None:
    benchmarks = read_benchmarks(run["root"], run["benchmarks"][:1])
    figures = read_figures([write_figures(run["tmp"] / "other", "0003", host="gpu7", started_at=5.0, ended_at=9.0)])

    row = resource_usage_table(benchmarks, figures).iloc[0]

    assert (row["host"], row["started_at"], row["ended_at"], row["threads"]) == ("gpu7", 5.0, 9.0, 2)


def jobs(*rows: dict[str, object]) -> pd.DataFrame:
    """A per-job table from a few fields per job; everything else missing, efficiency and padding derived."""
    frame = pd.DataFrame([{column: None for column in TABLE_COLUMNS} | row for row in rows])
    defaults = {"host": "h1", "threads": 1, "cpu_count": 2, "wall_seconds": 10.0}
    for column, value in defaults.items():
        frame[column] = frame[column].fillna(value)
    numbers = [c for c in TABLE_COLUMNS if c not in ("rule", "job", "host", "model", "pass", "tasks", "gpu_reason")]
    frame[numbers] = frame[numbers].astype(float)
    frame["threads"] = frame["threads"].astype(int)
    reserved = frame["wall_seconds"] * frame["threads"]
    frame["cpu_efficiency"] = frame["cpu_efficiency"].fillna(frame["cpu_seconds"] / reserved)
    frame["padding_fraction"] = 1 - frame["n_tokens"] / frame["n_computed_tokens"]
    return frame


SCHEDULE = jobs(
    {"rule": "r1", "job": "a", "host": "h1", "started_at": 0.0, "ended_at": 10.0, "threads": 1, "cpu_count": 2},
    {"rule": "r2", "job": "b", "host": "h1", "started_at": 10.0, "ended_at": 30.0, "threads": 2, "cpu_count": 2},
    {"rule": "r2", "job": "c", "host": "h2", "started_at": 10.0, "ended_at": 15.0, "threads": 1, "cpu_count": 4},
    {"rule": "r3", "job": "d", "host": "h2", "started_at": 31.0, "ended_at": 40.0, "threads": 1, "cpu_count": 4},
    {"rule": "r2", "job": "e", "host": "h1", "started_at": 12.0, "ended_at": 20.0, "threads": 1, "cpu_count": 2},
    {"rule": "r9", "job": "never-recorded", "host": None},
)  # fmt: skip


def test_lanes_keep_overlapping_jobs_of_a_host_apart() -> None:
    timed = timed_jobs(SCHEDULE)

    lanes = dict(zip(timed["job"], assign_lanes(timed), strict=True))

    assert "never-recorded" not in lanes
    # b starts as a ends (same lane); e overlaps b (next lane); h2's jobs never overlap.
    assert lanes == {"a": 0, "b": 0, "e": 1, "c": 0, "d": 0}


def test_critical_path_walks_back_from_the_last_job_to_what_each_waited_for() -> None:
    path = critical_path(timed_jobs(SCHEDULE))

    # d (ended last) started at 31: b ended last before that (30); b started at 10: a ended then.
    assert path.steps["job"].tolist() == ["a", "b", "d"]
    assert path.steps["waited_seconds"].tolist() == [0.0, 0.0, 1.0]
    assert (path.length_seconds, path.working_seconds, path.waiting_seconds) == (40.0, 39.0, 1.0)
    by_rule = path.by_rule().set_index("rule")
    assert by_rule["seconds"].to_dict() == {"r2": 20.0, "r1": 10.0, "r3": 9.0, "(between jobs)": 1.0}
    assert by_rule.loc["r2", "share"] == pytest.approx(0.5)


def test_idle_share_is_the_slot_time_no_job_held() -> None:
    usage = slot_usage(timed_jobs(SCHEDULE))

    hosts = usage.hosts.set_index("host")
    # h1: b (2 threads) and e (1) overlap, 3 threads on a 2-core host: 3 slots over 0-30 s; held 10 + 40 + 8.
    assert hosts.loc["h1", "slots"] == 3 and hosts.loc["h1", "slot_seconds"] == 90.0
    assert hosts.loc["h1", "held_seconds"] == 58.0
    # h2: 4 cores, one thread at a time, over 10-40 s; held 5 + 9.
    assert hosts.loc["h2", "slots"] == 4 and hosts.loc["h2", "held_seconds"] == 14.0
    assert hosts["peak_threads"].to_dict() == {"h1": 3, "h2": 1}
    assert usage.idle_share == pytest.approx(1 - 72 / 210)


def test_throughput_and_cost_per_model_and_task() -> None:
    table = jobs(
        {"rule": "infer", "job": "1", "model": "m", "tasks": "embed", "wall_seconds": 100.0, "threads": 4,
         "n_records": 1100, "n_sequences": 1000, "n_tokens": 100_000, "n_computed_tokens": 125_000,
         "compute_seconds": 50.0, "gpu_count": 1, "gpu_utilization_mean_percent": 80.0, "gpu_memory_peak_mb": 900.0},
        {"rule": "infer", "job": "2", "model": "m", "tasks": "embed", "wall_seconds": 300.0, "threads": 4,
         "n_records": 2900, "n_sequences": 3000, "n_tokens": 300_000, "n_computed_tokens": 375_000,
         "compute_seconds": 150.0, "gpu_count": 1, "gpu_utilization_mean_percent": 40.0, "gpu_memory_peak_mb": 1200.0},
        {"rule": "merge", "job": "m", "wall_seconds": 50.0},
    )  # fmt: skip

    row = throughput_by_model(table, Prices(cpu_hour=0.9, gpu_hour=9.0)).iloc[0]

    assert (row["model"], row["tasks"], row["jobs"]) == ("m", "embed", 2)
    assert (row["records"], row["sequences"]) == (4000, 4000)
    assert row["sequences_per_second"] == pytest.approx(20.0)  # 4000 distinct / 200 compute seconds
    assert row["tokens_per_second"] == pytest.approx(2000.0)
    assert row["records_per_job_second"] == pytest.approx(10.0)  # 4000 records / 400 wall seconds
    assert row["useful_token_fraction"] == pytest.approx(0.8)
    assert row["cpu_hours"] == pytest.approx(400 * 4 / 3600) and row["gpu_hours"] == pytest.approx(400 / 3600)
    assert row["cost"] == pytest.approx(0.4 + 1.0)
    assert row["cost_per_million_sequences"] == pytest.approx(350.0)  # 1.4 per 4000 records
    assert row["gpu_utilization_mean_percent"] == pytest.approx(50.0)  # weighted by wall time
    assert row["gpu_memory_peak_mb"] == 1200.0
    assert math.isnan(throughput_by_model(table, Prices()).iloc[0]["cost_per_million_sequences"])


def kinds(table: pd.DataFrame) -> list[tuple[str, str, int]]:
    return [(f.rule, f.kind, f.count) for f in find_warnings(table)]


def test_threads_beyond_the_cores_give_one_grouped_warning_with_the_fix() -> None:
    table = jobs(*({"rule": "infer_shard", "job": f"s/{i}", "threads": 8, "cpu_count": 2, "wall_seconds": 300.0,
                    "cpu_seconds": 300.0 * 1.9} for i in range(5)))  # fmt: skip

    findings = find_warnings(table)

    # One line for the five jobs, and not a second one for their (consequently) low CPU efficiency.
    assert [(f.rule, f.kind, f.count, f.total) for f in findings] == [("infer_shard", "threads_over_cores", 5, 5)]
    assert "8 threads on hosts with 2 usable cores" in findings[0].text
    assert "--set-threads infer_shard=2" in findings[0].fix


def test_cpu_efficiency_is_judged_only_where_it_means_something() -> None:
    short = [{"rule": "infer", "job": f"short{i}", "threads": 2, "wall_seconds": 5.0, "cpu_seconds": 1.0}
             for i in range(3)]  # fmt: skip
    light = [{"rule": "merge", "job": f"m{i}", "wall_seconds": 100.0, "cpu_seconds": 5.0} for i in range(2)]
    heavy = [{"rule": "infer", "job": f"long{i}", "threads": 2, "wall_seconds": 2000.0, "cpu_seconds": 3800.0}
             for i in range(2)]  # fmt: skip
    # Short jobs and a light single-threaded rule (1 % of the CPU-hours) are not judged.
    assert kinds(jobs(*short, *light, *heavy)) == []
    # A single-threaded rule that holds most of the run is.
    assert kinds(jobs(*light)) == [("merge", "cpu_efficiency", 2)]
    assert "waits on storage" in find_warnings(jobs(*light))[0].fix
    # A long multi-threaded job that used a fifth of its threads, on a host busier than its cores.
    wasteful = {"rule": "infer", "job": "waste", "threads": 2, "wall_seconds": 600.0, "cpu_seconds": 240.0,
                "host_load": 6.5}  # fmt: skip
    [finding] = find_warnings(jobs(*short, *heavy, wasteful))
    assert (finding.kind, finding.count, finding.worst) == ("cpu_efficiency", 1, ("waste",))
    assert "20 % of 2 threads" in finding.detail and "fewer threads" in finding.fix
    assert "load average exceeded its cores (up to 6.5)" in finding.fix


def test_tiny_batches_warn_once_naming_the_models_setting() -> None:
    tiny = [{"rule": "infer_shard", "job": f"a/m/embed/{i}", "model": "m", "n_sequences": 10, "batch_tokens": 64,
             "n_tokens": 600, "n_computed_tokens": 600, "n_batches": 10} for i in range(4)]  # fmt: skip
    # A big budget whose batches came out small (few, varied sequences per shard) is not the setting's fault.
    fine = {"rule": "infer_shard", "job": "b/m2/embed/0", "model": "m2", "n_sequences": 10, "batch_tokens": 16384,
            "n_tokens": 600, "n_computed_tokens": 600, "n_batches": 10}  # fmt: skip

    [finding] = find_warnings(jobs(*tiny, fine))

    assert (finding.kind, finding.count, finding.total) == ("small_batches", 4, 5)
    assert "batch_tokens 64, about 60 tokens computed per forward pass" in finding.detail
    assert finding.fix.startswith("raise models.m.batch_tokens")


def test_padding_load_and_gpu_warnings_are_grouped_with_the_worst_jobs_first() -> None:
    padded = [{"rule": "infer", "job": f"p{i}", "n_sequences": 5, "n_tokens": 100 - i, "n_computed_tokens": 200,
               "batch_tokens": 16384, "n_batches": 1} for i in range(30)]  # fmt: skip
    slow_load = {"rule": "infer", "job": "load", "n_sequences": 5, "load_seconds": 8.0, "wall_seconds": 10.0}
    idle_gpu = {"rule": "infer", "job": "gpu", "n_sequences": 5, "wall_seconds": 120.0,
                "gpu_utilization_mean_percent": 12.0}  # fmt: skip
    short_gpu = {"rule": "infer", "job": "gpu-short", "n_sequences": 5, "wall_seconds": 10.0,
                 "gpu_utilization_mean_percent": 3.0}  # fmt: skip

    findings = {f.kind: f for f in find_warnings(jobs(*padded, slow_load, idle_gpu, short_gpu))}

    assert sorted(findings) == ["gpu_utilization", "model_load", "padding"]
    assert findings["padding"].count == 30 and findings["padding"].worst == ("p29", "p28", "p27")
    assert "worst: p29 64 %, p28 64 %, p27 64 %" in findings["padding"].detail  # 1 - 71/200, 72/200, 73/200
    assert findings["model_load"].worst == ("load",) and "8.0 s of 10.0 s" in findings["model_load"].detail
    assert findings["gpu_utilization"].count == 1 and findings["gpu_utilization"].worst == ("gpu",)


def test_settings_from_config_split_thresholds_and_prices() -> None:
    config = {"min_job_seconds": 30, "cost_per_gpu_hour": 2.5, "max_padding_fraction": 0.1}
    thresholds, prices = settings_from_config(config)

    assert thresholds == Thresholds(min_job_seconds=30, max_padding_fraction=0.1)
    assert prices == Prices(cpu_hour=0.0, gpu_hour=2.5) and prices.shown
    with pytest.raises(ValueError, match="report: unknown setting"):
        settings_from_config({"min_cpu_effciency": 0.5})


def test_write_resource_report_writes_a_self_contained_page_and_its_tables(run: dict) -> None:
    out = run["tmp"] / "out"
    table = write_resource_report(
        run["root"], run["benchmarks"], run["figures"], out / "usage.tsv", out / "usage.html",
        Thresholds(min_job_seconds=5), plots_dir=out / "plots", log_root=run["logs"], prices=Prices(1.0, 10.0),
        timeline_out=out / "timeline.png", throughput_out=out / "throughput.tsv", warnings_out=out / "warnings.tsv",
    )  # fmt: skip

    assert len(table) == 3
    text = (out / "usage.html").read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    for expected in (
        "<th>Jobs</th><td>3 of 2 rule(s) on 1 host(s)</td>",
        # Jobs from 1000 to 1017 s: sharding 4 s, a 1 s gap, then the two shards back to back.
        "17.0 s (0:00:17)</td>",
        "<th>Critical path</th><td>17.0 s through 3 job(s): 16.0 s in jobs, 1.0 s between them</td>",
        # 4 slots (the host's cores) over 17 s; held 4 x 1 + 2 x 2 + 10 x 2 = 28 slot-seconds.
        "<th>Idle share of the slots</th><td>58.8 % of 68 slot-seconds (4 slot(s) over 1 host(s))</td>",
        "<th>Records scored</th><td>31 (30 distinct sequences computed) in 2 inference job(s)</td>",
        "<th>Useful-token fraction (real / computed)</th><td>90.0 %</td>",
        # 30 sequences over 6 compute seconds
        "<th>Sequences per second of model compute</th><td>5.0</td>",
        'id="timeline"', 'id="models"', 'id="job-table"',
        "infer_shard: CPU efficiency below 50 %</strong> in 1 of 2 jobs",
    ):  # fmt: skip
        assert expected in text, expected
    assert text.count('src="data:image/png;base64,') == 8  # the timeline and seven plots
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r'src="([^"]*)"', text))
    assert "<link" not in text and "http://" not in text and "https://" not in text
    assert sorted(p.name for p in (out / "plots").iterdir()) == [
        "cpu_efficiency.png", "gpu_utilization.png", "load_vs_compute.png", "max_rss.png", "padding.png",
        "throughput.png", "wall_time.png",
    ]  # fmt: skip
    assert (out / "timeline.png").read_bytes().startswith(b"\x89PNG")

    back = pd.read_csv(out / "usage.tsv", sep="\t")
    assert list(back.columns) == TABLE_COLUMNS and back.loc[0, "cpu_efficiency"] == pytest.approx(0.75)
    warnings = pd.read_csv(out / "warnings.tsv", sep="\t")
    assert warnings[["rule", "kind", "jobs", "of_jobs"]].values.tolist() == [["infer_shard", "cpu_efficiency", 1, 2]]
    throughput = pd.read_csv(out / "throughput.tsv", sep="\t")
    # (2 + 10 s) x 2 threads = 24 CPU-seconds at 1 per hour; 10 s x 2 GPUs at 10 per hour; over 31 records.
    assert throughput.loc[0, "cost"] == pytest.approx(24 / 3600 + 200 / 3600)
    assert throughput.loc[0, "cost_per_million_sequences"] == pytest.approx((24 + 200) / 3600 / 31 * 1e6)


def test_report_without_records_or_figures_is_still_written(tmp_path: Path) -> None:
    root = tmp_path / "benchmarks"
    benchmark = write_benchmark(root, "pack/dnabert2.tsv", [{"s": 4.0, "cpu_time": 3.6}])
    page = tmp_path / "usage.html"

    table = write_resource_report(root, [benchmark], [], tmp_path / "usage.tsv", page, log_root=tmp_path / "logs")

    assert len(table) == 1
    text = page.read_text(encoding="utf-8")
    assert "<th>Jobs not on the timeline</th><td>1 (no start/end record)</td>" in text
    assert "No job recorded its start and end" not in text  # the message is drawn into the timeline PNG
    assert "<th>Inference</th><td>no inference data</td>" in text
    assert '<p class="ok">No warnings.</p>' in text


def test_report_escapes_names_taken_from_paths(tmp_path: Path) -> None:
    root = tmp_path / "benchmarks"
    benchmark = write_benchmark(root, "pack/<b>model&1.tsv", [{"s": 1.0, "cpu_time": 0.1}])
    page = tmp_path / "usage.html"

    write_resource_report(root, [benchmark], [], tmp_path / "usage.tsv", page)

    text = page.read_text(encoding="utf-8")
    assert "<b>model" not in text and "&lt;b&gt;model&amp;1" in text


def test_a_sample_a_pack_could_not_read_is_a_warning_of_its_own(tmp_path: Path) -> None:
    root = tmp_path / "benchmarks"
    benchmark = write_benchmark(root, "pack/dnabert2.tsv", [{"s": 4.0, "cpu_time": 3.6}])
    samples = tmp_path / "packs" / "dnabert2" / "samples.tsv"
    samples.parent.mkdir(parents=True)
    samples.write_text(
        "sample\tfasta\tmolecule\tn_records\tn_valid\tn_rejected\tcrlf_lines\tstatus\terror\n"
        "a\ta.fa\tdna\t3\t3\t0\t0\tok\t\n"
        "b\tb.fa.gz\tdna\t26\t0\t0\t0\tunreadable\ttruncated gzip file: it ends at byte 3000\n"
        "c\tc.fa\tdna\t5\t5\t0\t0\tok\t\n"
    )
    page, out = tmp_path / "usage.html", tmp_path / "warnings.tsv"

    write_resource_report(root, [benchmark], [], tmp_path / "usage.tsv", page, warnings_out=out,
                          pack_samples={"dnabert2": samples})  # fmt: skip

    warnings = pd.read_csv(out, sep="\t")
    assert warnings[["rule", "kind", "jobs", "of_jobs", "unit", "worst_jobs"]].values.tolist() == [
        ["pack", "unreadable_sample", 1, 3, "samples", "b"]
    ]
    assert warnings.loc[0, "warning"] == "sample b of models.dnabert2 could not be read"
    detail = "b.fa.gz: truncated gzip file: it ends at byte 3000; its results are empty, the entry's other 2 sample(s)"
    assert warnings.loc[0, "detail"] == detail + " were merged"
    text = page.read_text(encoding="utf-8")
    assert "<strong>pack: sample b of models.dnabert2 could not be read</strong> in 1 of 3 samples (" in text


def test_windowed_records_and_the_cost_of_their_seams_are_reported_per_model(run: dict) -> None:
    """Jobs' seam figures (seqshard.engine.seams): sequences windowed summed, the probe's cosine distances as the
    mean weighted by the records each job probed and the largest; a page table and a summary line say so."""
    seam = {
        "seam_window_length": 1000,
        "seam_window_overlap": 250,
        "seam_overlap_window_length": 1000,
        "seam_overlap_window_overlap": 125,
        "seam_length_window_length": 750,
        "seam_length_window_overlap": 187,
    }
    write_figures(
        run["tmp"] / "figures",
        "0003",
        n_windowed=3,
        seam_records=1,
        seam_overlap_cosine_mean=0.01,
        seam_overlap_cosine_max=0.01,
        seam_length_cosine_mean=0.02,
        seam_length_cosine_max=0.02,
        **seam,
    )
    write_figures(run["tmp"] / "figures", "0004", n_windowed=5, seam_records=3, seam_overlap_cosine_mean=0.03,
                  seam_overlap_cosine_max=0.05, seam_length_cosine_mean=0.04, seam_length_cosine_max=0.09,
                  n_sequences=20, n_records=20, **seam)  # fmt: skip
    out = run["tmp"] / "out"
    write_resource_report(run["root"], run["benchmarks"], run["figures"], out / "usage.tsv", out / "usage.html",
                          log_root=run["logs"], throughput_out=out / "throughput.tsv")  # fmt: skip
    (row,) = pd.read_csv(out / "throughput.tsv", sep="\t").to_dict("records")
    assert (row["windowed"], row["seam_records"], row["seam_window_length"], row["seam_window_overlap"]) == (
        8, 4, 1000, 250
    )  # fmt: skip
    assert row["seam_overlap_cosine_mean"] == pytest.approx((0.01 + 3 * 0.03) / 4)
    assert row["seam_length_cosine_mean"] == pytest.approx((0.02 + 3 * 0.04) / 4)
    assert (row["seam_overlap_cosine_max"], row["seam_length_cosine_max"]) == (0.05, 0.09)
    assert (row["seam_length_window_length"], row["seam_length_window_overlap"]) == (750, 187)
    text = (out / "usage.html").read_text(encoding="utf-8")
    assert 'id="seams"' in text and "1000 / 250" in text and "750 / 187" in text and "1000 / 125" in text
    assert ("<th>Sequences windowed</th><td>8 of 30 distinct computed; the pooled embedding of 4 probed moved by a "
            "cosine distance of at most 0.09 when the windows moved") in text  # fmt: skip
    assert list(pd.read_csv(out / "usage.tsv", sep="\t").columns) == TABLE_COLUMNS


def test_a_run_that_windowed_nothing_has_no_seam_table(run: dict) -> None:
    out = run["tmp"] / "out"
    write_resource_report(run["root"], run["benchmarks"], run["figures"], out / "usage.tsv", out / "usage.html",
                          log_root=run["logs"])  # fmt: skip
    text = (out / "usage.html").read_text(encoding="utf-8")
    assert 'id="seams"' not in text and "Sequences windowed" not in text


def test_the_seam_figures_a_real_run_writes_reach_the_report_unchanged(run: dict, dnabert2_demo_checkpoint) -> None:
    """End to end from the engine: an inference run over windowed records (the seam probe on, as in the workflow)
    writes its figures file; the report counts its windowed records and shows the probe's distances as measured."""
    import numpy as np

    from seqshard.engine.driver import run_tasks
    from seqshard.engine.types import Hardware, RunFiles, TaskSettings, Work

    rng = np.random.default_rng(5)
    lengths = {"long": 1001, "longer": 1500, "short": 80}
    fasta = run["tmp"] / "windowed.fa"
    fasta.write_text("".join(f">{name}\n{''.join(rng.choice(list('ACGT'), n))}\n" for name, n in lengths.items()))
    job = "dnabert2/hidden/0005"
    labels = {"rule": "infer_shard", "job": job, "model": "dnabert2", "pass": "hidden", "shard": "0005",
              "tasks": "embed"}  # fmt: skip
    path = run["tmp"] / "figures" / "0005.json"
    settings = TaskSettings(window_length=300, window_overlap=75, max_tokens=128)
    run_tasks(Work("dnabert2", str(dnabert2_demo_checkpoint), (settings,), "dna"),
              RunFiles(fasta, {"embed": run["tmp"] / "embed.parquet"}, figures=path, labels=labels),
              Hardware("cpu", "fp32"))  # fmt: skip
    figures = json.loads(path.read_text())
    assert (figures["n_windowed"], figures["seam_records"]) == (2, 2)
    benchmark = write_benchmark(run["root"], f"infer_shard/{job}.tsv", [{"s": 3.0, "cpu_time": 2.0}])
    write_record(run["logs"], "infer_shard", job, threads=1, started_at=1017.0, ended_at=1020.0)
    out = run["tmp"] / "out"
    write_resource_report(run["root"], [*run["benchmarks"], benchmark], [*run["figures"], path], out / "usage.tsv",
                          out / "usage.html", log_root=run["logs"], throughput_out=out / "throughput.tsv")  # fmt: skip
    rows = pd.read_csv(out / "throughput.tsv", sep="\t").set_index("tasks")
    row = rows.loc["embed"]
    assert (row["windowed"], row["seam_records"]) == (2, 2)
    assert (row["seam_window_length"], row["seam_window_overlap"]) == (300, 75)
    for change in ("overlap", "length"):
        assert row[f"seam_{change}_cosine_mean"] == pytest.approx(figures[f"seam_{change}_cosine_mean"])
        assert row[f"seam_{change}_cosine_max"] == pytest.approx(figures[f"seam_{change}_cosine_max"])
        assert 0 < figures[f"seam_{change}_cosine_mean"] <= figures[f"seam_{change}_cosine_max"]
    assert rows.loc["embed,classify", "windowed"] == 0  # the fixture's jobs windowed nothing
    text = (out / "usage.html").read_text(encoding="utf-8")
    worst = max(figures["seam_overlap_cosine_max"], figures["seam_length_cosine_max"])
    assert 'id="seams"' in text and "300 / 75" in text and "300 / 37" in text and "225 / 56" in text
    assert f"<th>Sequences windowed</th><td>2 of 33 distinct computed; the pooled embedding of 2 probed moved by a " \
           f"cosine distance of at most {worst:.3g} when the windows moved" in text  # fmt: skip
