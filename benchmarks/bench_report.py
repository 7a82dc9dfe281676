"""Report benchmark: time and peak memory of writing the resource report for a large run.

For each run size (`--jobs`, default 10,000, and the baseline `--baseline-jobs`, default 100) a synthetic run
(`seqshard.reports.synthetic`: benchmark TSVs, job records and inference figures as the workflow writes them, on
16 hosts for 10,000 jobs) is written, untimed, then a fresh Python process writes its whole report, every output
the workflow's resource_report rule writes (per-job TSV, HTML page, timeline, plots, throughput and warnings
TSVs). Measured in that process:
- report seconds: `write_resource_report` alone;
- process seconds: the child's whole life, Python start-up and imports included (what the rule's job costs);
- peak RSS: the kernel's high-water mark of the child (VmHWM).
Figures are medians of `--repeats` runs, sizes interleaved. The ratios large / baseline show how generation
scales; the issue's limits are 30 s and 1 GiB at 10,000 jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
LIMIT_SECONDS = 30.0
LIMIT_BYTES = 2**30

# Runs in a fresh process: imports, the report, then its own figures as JSON on the last line.
CHILD = """
import json, sys, time
started = time.perf_counter()
from pathlib import Path
from seqshard.reports import Prices, write_resource_report
spec = json.loads(Path(sys.argv[1]).read_text())
out = Path(spec["out"])
report_started = time.perf_counter()
write_resource_report(
    spec["benchmark_root"], spec["benchmarks"], spec["figures"], out / "resource_usage.tsv",
    out / "resource_usage.html", plots_dir=out / "plots", log_root=spec["log_root"], prices=Prices(0.05, 2.5),
    timeline_out=out / "timeline.png", throughput_out=out / "throughput.tsv", warnings_out=out / "warnings.tsv",
)
report_seconds = time.perf_counter() - report_started
status = open("/proc/self/status").read().split("VmHWM:")[1].split()
print(json.dumps({"report_seconds": report_seconds, "process_seconds": time.perf_counter() - started,
                  "peak_rss_bytes": int(status[0]) * 1024, "html_bytes": (out / "resource_usage.html").stat().st_size}))
"""


def machine_description() -> dict[str, Any]:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        "unknown",
    )  # fmt: skip
    return {"cpu": cpu, "cpu_cores": os.cpu_count(), "load_average_at_start": os.getloadavg()}


def write_run(directory: Path, jobs: int) -> dict[str, Any]:
    from seqshard.reports.synthetic import write_synthetic_run

    started = time.perf_counter()
    run = write_synthetic_run(directory, jobs)
    print(f"  wrote a synthetic run of {len(run.benchmarks):,} jobs in {time.perf_counter() - started:.1f} s")
    return {
        "benchmark_root": str(run.benchmark_root),
        "log_root": str(run.log_root),
        "benchmarks": [str(p) for p in run.benchmarks],
        "figures": [str(p) for p in run.figures],
        "jobs": len(run.benchmarks),
    }


def report_once(spec: dict[str, Any], out: Path) -> dict[str, float]:
    # The file list goes through a file: 20,000 paths are too long for a command line.
    spec_file = out.with_suffix(".json")
    spec_file.parent.mkdir(parents=True, exist_ok=True)
    spec_file.write_text(json.dumps({**spec, "out": str(out)}))
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(spec_file)], cwd=REPO, capture_output=True, text=True, check=True
    )
    return json.loads(child.stdout.splitlines()[-1])


def create_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs in the large run")
    parser.add_argument("--baseline-jobs", type=int, default=100, help="jobs in the baseline run")
    parser.add_argument("--repeats", type=int, default=3, help="reports per size; medians quoted")
    parser.add_argument("--scratch", type=Path, help="where temporary directories go (default: the system's)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON, e.g. benchmarks/results/<name>.json")
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {
        "benchmark": "bench_report",
        "machine": machine_description(),
        "settings": {"jobs": args.jobs, "baseline_jobs": args.baseline_jobs, "repeats": args.repeats},
        "limits": {"seconds": LIMIT_SECONDS, "peak_rss_bytes": LIMIT_BYTES},
    }
    print(f"machine: {result['machine']['cpu']} ({os.cpu_count()} cores), load {os.getloadavg()[0]:.1f}")
    sizes = {"baseline": args.baseline_jobs, "large": args.jobs}
    with tempfile.TemporaryDirectory(prefix="seqshard-bench-report-", dir=args.scratch) as scratch:
        specs = {name: write_run(Path(scratch) / name, jobs) for name, jobs in sizes.items()}
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in sizes}
        for repeat in range(args.repeats):
            for name, spec in specs.items():
                figures = report_once(spec, Path(scratch) / name / f"report-{repeat}")
                runs[name].append(figures)
                print(f"  {name} ({spec['jobs']:,} jobs) repeat {repeat + 1}: {figures['report_seconds']:.2f} s, "
                      f"peak RSS {figures['peak_rss_bytes'] / 2**20:.0f} MiB")  # fmt: skip
    for name, spec in specs.items():
        result[name] = {
            "jobs": spec["jobs"],
            "runs": runs[name],
            **{key: statistics.median(r[key] for r in runs[name]) for key in runs[name][0]},
        }
    large, base = result["large"], result["baseline"]
    result["ratios_large_to_baseline"] = {
        key: large[key] / base[key] for key in ("report_seconds", "process_seconds", "peak_rss_bytes", "html_bytes")
    }
    result["within_limits"] = large["process_seconds"] < LIMIT_SECONDS and large["peak_rss_bytes"] < LIMIT_BYTES
    result["machine"]["load_average_at_end"] = os.getloadavg()
    print_summary(result)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {args.out}")
    return result


def print_summary(result: dict[str, Any]) -> None:
    print(f"\nsummary (medians of {result['settings']['repeats']})")
    columns = ["run", "jobs", "report s", "process s", "peak RSS MiB", "HTML MiB", "ms/job"]
    print(" ".join(f"{name:>{width}}" for name, width in zip(columns, (10, 8, 9, 10, 13, 9, 7), strict=True)))
    for name in ("baseline", "large"):
        r = result[name]
        print(f"{name:>10} {r['jobs']:>8,} {r['report_seconds']:>9.2f} {r['process_seconds']:>10.2f} "
              f"{r['peak_rss_bytes'] / 2**20:>13.0f} {r['html_bytes'] / 2**20:>9.1f} "
              f"{1000 * r['report_seconds'] / r['jobs']:>7.2f}")  # fmt: skip
    ratios = result["ratios_large_to_baseline"]
    print(f"large / baseline: report time {ratios['report_seconds']:.2f}x, process time "
          f"{ratios['process_seconds']:.2f}x, peak RSS {ratios['peak_rss_bytes']:.2f}x, "
          f"for {result['large']['jobs'] / result['baseline']['jobs']:.0f}x the jobs")  # fmt: skip
    verdict = "within" if result["within_limits"] else "OUTSIDE"
    print(f"{result['large']['jobs']:,} jobs: {verdict} the limits of {LIMIT_SECONDS:.0f} s and "
          f"{LIMIT_BYTES / 2**30:.0f} GiB (process time and peak RSS)")  # fmt: skip


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)
    run(create_parser().parse_args())


if __name__ == "__main__":
    main()
