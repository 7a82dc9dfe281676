"""Tests for seqshard.reports: benchmark parsing, the joined resource table, warnings and the HTML report."""

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest

from seqshard.reports import (
    TABLE_COLUMNS,
    Thresholds,
    find_warnings,
    read_benchmarks,
    read_figures,
    resource_usage_table,
    write_resource_report,
)

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time"


def write_benchmark(root: Path, relative: str, rows: list[dict[str, object]]) -> Path:
    """Write a benchmark file the way Snakemake 9 does: one header, one row per repeat."""
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [HEADER]
    for row in rows:
        seconds = row["s"]
        hms = "NA" if seconds == "NA" else f"0:00:{int(float(seconds)):02d}"
        lines.append(
            "\t".join(
                str(value)
                for value in (
                    seconds,
                    hms,
                    row.get("max_rss", 100.0),
                    row.get("max_vms", 900.0),
                    row.get("max_uss", 90.0),
                    row.get("max_pss", 95.0),
                    row.get("io_in", 1.0),
                    row.get("io_out", 0.5),
                    row.get("mean_load", 80.0),
                    row.get("cpu_time", 1.0),
                )
            )
        )
    path.write_text("\n".join(lines) + "\n")
    return path


def write_figures(directory: Path, shard: str, **overrides: object) -> Path:
    """Write one shard's inference figures as our inference code does."""
    record: dict[str, object] = {
        "sample": "sampleA",
        "model": "dnabert2",
        "task": "embed",
        "shard": shard,
        "device": "cpu",
        "dtype": "float32",
        "threads": 2,
        "n_sequences": 10,
        "n_tokens": 900,
        "n_computed_tokens": 1000,
        "n_batches": 2,
        "batch_tokens": 512,
        "load_seconds": 0.5,
        "compute_seconds": 1.0,
        "sequences_per_second": 10.0,
        "tokens_per_second": 900.0,
        "peak_gpu_memory_bytes": None,
    }
    record.update(overrides)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{record['sample']}.{record['model']}.{record['task']}.{shard}.json"
    path.write_text(json.dumps(record))
    return path


def table_of(run: dict) -> pd.DataFrame:
    return resource_usage_table(read_benchmarks(run["root"], run["benchmarks"]), read_figures(run["figures"]))


@pytest.fixture
def run(tmp_path: Path) -> dict[str, object]:
    """A small workflow run: two inference shards (one wasteful) and one sharding job."""
    root = tmp_path / "benchmarks"
    benchmarks = [
        # Two repeats: means are s=2.0, cpu=3.0, max_rss=200.0; io_in "NA" in one repeat leaves 4.0.
        write_benchmark(
            root,
            "infer_shard/sampleA/dnabert2/embed/0003.tsv",
            [
                {"s": 1.5, "cpu_time": 2.5, "max_rss": 100.0, "io_in": "NA"},
                {"s": 2.5, "cpu_time": 3.5, "max_rss": 300.0, "io_in": 4.0},
            ],
        ),
        # cpu 4.0 over 10 s on 2 threads: 20 % efficiency, below the 50 % default.
        write_benchmark(
            root,
            "infer_shard/sampleA/dnabert2/embed/0004.tsv",
            [{"s": 10.0, "cpu_time": 4.0, "max_rss": 500.0}],
        ),
        write_benchmark(root, "shard_fasta/sampleA.tsv", [{"s": 4.0, "cpu_time": 3.6, "max_rss": 50.0}]),
    ]
    figure_dir = tmp_path / "figures"
    figures = [
        write_figures(figure_dir, "0003"),
        write_figures(
            figure_dir,
            "0004",
            n_sequences=20,
            n_tokens=1800,
            n_computed_tokens=2000,
            load_seconds=1.0,
            compute_seconds=5.0,
            device="cuda:0",
            dtype="bfloat16",
            peak_gpu_memory_bytes=3 * 2**30,
        ),
    ]
    return {"root": root, "benchmarks": benchmarks, "figures": figures, "tmp": tmp_path}


def test_read_benchmarks_derives_rule_and_job_and_averages_repeats(run: dict) -> None:
    table = read_benchmarks(run["root"], run["benchmarks"]).set_index(["rule", "job"])

    assert list(table.index) == [
        ("infer_shard", "sampleA/dnabert2/embed/0003"),
        ("infer_shard", "sampleA/dnabert2/embed/0004"),
        ("shard_fasta", "sampleA"),
    ]
    repeated = table.loc[("infer_shard", "sampleA/dnabert2/embed/0003")]
    assert repeated["wall_seconds"] == pytest.approx(2.0)
    assert repeated["cpu_seconds"] == pytest.approx(3.0)
    assert repeated["max_rss_mb"] == pytest.approx(200.0)
    assert repeated["io_in_mb"] == pytest.approx(4.0)  # the "NA" repeat is skipped, not read as 0
    assert repeated["mean_load"] == pytest.approx(80.0)


def test_read_benchmarks_handles_missing_values_and_string_paths(tmp_path: Path) -> None:
    root = tmp_path / "benchmarks"
    path = write_benchmark(root, "merge.tsv", [{"s": 3.0, "cpu_time": "NA", "max_rss": "-"}])

    table = read_benchmarks(root, [str(path)])

    assert table.loc[0, "rule"] == "merge"
    assert table.loc[0, "job"] == ""
    assert table.loc[0, "wall_seconds"] == pytest.approx(3.0)
    assert math.isnan(table.loc[0, "cpu_seconds"])
    assert math.isnan(table.loc[0, "max_rss_mb"])


def test_read_benchmarks_rejects_a_file_outside_the_root(tmp_path: Path) -> None:
    path = write_benchmark(tmp_path / "elsewhere", "rule/job.tsv", [{"s": 1.0}])

    with pytest.raises(ValueError, match="not under the benchmark root"):
        read_benchmarks(tmp_path / "benchmarks", [path])


def test_read_figures_builds_the_job_key_and_rejects_duplicates(run: dict) -> None:
    figures = read_figures(run["figures"])

    assert list(figures["job"]) == ["sampleA/dnabert2/embed/0003", "sampleA/dnabert2/embed/0004"]
    assert list(figures["shard"]) == ["0003", "0004"]
    assert math.isnan(figures.loc[0, "peak_gpu_memory_bytes"])
    with pytest.raises(ValueError, match="several inference figure files"):
        read_figures([run["figures"][0], run["figures"][0]])


def test_resource_usage_table_computes_efficiency_and_padding(run: dict) -> None:
    table = table_of(run)

    assert list(table.columns) == TABLE_COLUMNS
    assert list(zip(table["rule"], table["job"], strict=True)) == [
        ("infer_shard", "sampleA/dnabert2/embed/0003"),
        ("infer_shard", "sampleA/dnabert2/embed/0004"),
        ("shard_fasta", "sampleA"),
    ]
    first, second, sharding = (table.iloc[i] for i in range(3))
    # cpu 3.0 s / (wall 2.0 s * 2 threads)
    assert first["cpu_efficiency"] == pytest.approx(0.75)
    assert first["threads"] == 2
    # 1 - 900 real / 1000 computed tokens
    assert first["padding_fraction"] == pytest.approx(0.1)
    assert first["sample"] == "sampleA" and first["model"] == "dnabert2" and first["shard"] == "0003"
    assert math.isnan(first["peak_gpu_memory_mb"])
    assert second["cpu_efficiency"] == pytest.approx(0.2)
    assert second["peak_gpu_memory_mb"] == pytest.approx(3072.0)
    # A non-inference rule runs on one thread and has no inference figures.
    assert sharding["threads"] == 1
    assert sharding["cpu_efficiency"] == pytest.approx(0.9)
    assert sharding["shard"] is None
    assert math.isnan(sharding["padding_fraction"])


def test_cpu_efficiency_is_nan_when_wall_time_is_zero(tmp_path: Path) -> None:
    root = tmp_path / "benchmarks"
    path = write_benchmark(root, "touch/done.tsv", [{"s": 0.0, "cpu_time": 0.0}])

    table = resource_usage_table(read_benchmarks(root, [path]), read_figures([]))

    assert math.isnan(table.loc[0, "cpu_efficiency"])
    assert find_warnings(table, Thresholds()) == []


def test_warning_names_the_inefficient_job(run: dict) -> None:
    table = table_of(run)

    warnings = find_warnings(table, Thresholds())

    assert warnings == [
        "infer_shard sampleA/dnabert2/embed/0004: CPU efficiency 20 % is below 50 % (threads=2): "
        "give the rule fewer threads or larger shards"
    ]


def test_padding_and_load_warnings_fire_past_their_thresholds(run: dict) -> None:
    table = table_of(run)

    warnings = find_warnings(
        table, Thresholds(min_cpu_efficiency=0.1, max_padding_fraction=0.05, max_load_fraction=0.2)
    )

    assert len(warnings) == 3
    assert warnings[0].startswith("infer_shard sampleA/dnabert2/embed/0003: padding is 10 % of computed tokens")
    # load 0.5 s of wall 2.0 s
    assert warnings[1].startswith(
        "infer_shard sampleA/dnabert2/embed/0003: loading the model took 25 % of the wall time (0.5 s of 2.0 s)"
    )
    assert warnings[2].startswith("infer_shard sampleA/dnabert2/embed/0004: padding is 10 %")


def test_no_warning_when_every_figure_is_fine(run: dict) -> None:
    benchmarks = [p for p in run["benchmarks"] if not p.name.startswith("0004")]
    table = resource_usage_table(read_benchmarks(run["root"], benchmarks), read_figures(run["figures"]))

    assert len(table) == 2
    assert find_warnings(table, Thresholds()) == []


def test_write_resource_report_writes_self_contained_html_and_tsv(run: dict) -> None:
    tmp = run["tmp"]
    tsv, page, plots = tmp / "out" / "usage.tsv", tmp / "out" / "usage.html", tmp / "out" / "plots"

    table = write_resource_report(run["root"], run["benchmarks"], run["figures"], tsv, page, plots_dir=plots)

    assert len(table) == 3
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    # Summary: 3 jobs, wall 2 + 10 + 4 s, CPU 3 + 4 + 3.6 s, 30 sequences, 2,700 of 3,000 tokens useful,
    # 30 sequences over 6 compute seconds and over 12 wall seconds of inference.
    for expected in (
        "<th>Jobs</th><td>3</td>",
        "16.0 s (0:00:16)",
        "10.6 s (0:00:11)",
        "<td>30</td>",
        "<td>2,700</td>",
        "<td>90.0 %</td>",
        "<th>Sequences per second of model compute</th><td>5.0</td>",
        "<th>Sequences per wall second of inference jobs</th><td>2.5</td>",
    ):
        assert expected in text
    assert text.count('src="data:image/png;base64,') >= 5
    assert "sampleA/dnabert2/embed/0004: CPU efficiency 20 % is below 50 % (threads=2)" in text
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r'src="([^"]*)"', text))
    assert "<link" not in text and "<script" not in text
    assert sorted(p.name for p in plots.iterdir()) == [
        "cpu_efficiency.png",
        "load_vs_compute.png",
        "max_rss.png",
        "padding.png",
        "throughput.png",
        "wall_time.png",
    ]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in plots.iterdir())

    back = pd.read_csv(tsv, sep="\t")
    assert list(back.columns) == TABLE_COLUMNS
    assert len(back) == 3
    assert back.loc[0, "cpu_efficiency"] == pytest.approx(0.75)
    assert back["shard"].isna().tolist() == [False, False, True]


def test_report_without_inference_figures_is_still_written(tmp_path: Path) -> None:
    root = tmp_path / "benchmarks"
    benchmark = write_benchmark(root, "shard_fasta/sampleA.tsv", [{"s": 4.0, "cpu_time": 3.6}])
    tsv, page = tmp_path / "usage.tsv", tmp_path / "usage.html"

    table = write_resource_report(root, [benchmark], [], tsv, page)

    assert len(table) == 1
    text = page.read_text(encoding="utf-8")
    assert "no inference data" in text.lower()
    assert "No figure crossed a threshold" in text
    assert "CPU efficiency ≥ 50 %" in text
    assert text.count('src="data:image/png;base64,') == 6
    assert len(pd.read_csv(tsv, sep="\t")) == 1


def test_report_escapes_names_taken_from_paths(tmp_path: Path) -> None:
    root = tmp_path / "benchmarks"
    benchmark = write_benchmark(root, "shard_fasta/<b>sample&1.tsv", [{"s": 1.0, "cpu_time": 0.1}])
    page = tmp_path / "usage.html"

    write_resource_report(root, [benchmark], [], tmp_path / "usage.tsv", page)

    text = page.read_text(encoding="utf-8")
    assert "<b>sample" not in text
    assert "&lt;b&gt;sample&amp;1" in text
