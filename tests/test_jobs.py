"""Job records (seqshard.runtime.jobs): what every rule script writes beside its log for the report's timeline."""

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from seqshard.reports import read_job_records
from seqshard.reports.analysis import slot_usage, timed_jobs
from seqshard.runtime.jobs import job_name, record_path, recorded_job
from seqshard.runtime.monitoring import process_started_at, usable_cpus


def test_record_path_and_job_name_follow_the_log_path() -> None:
    log = Path("logs/infer_shard/dnabert2/hidden/0003.log")
    assert record_path(log) == Path("logs/infer_shard/dnabert2/hidden/0003.job.json")
    assert job_name(log) == ("infer_shard", "dnabert2/hidden/0003")
    # Rules made per model entry share a folder: pack_dnabert2 logs to logs/pack/dnabert2.log.
    assert job_name("logs/pack/dnabert2.log") == ("pack", "dnabert2")
    assert job_name("logs/resource_report/resource_report.log") == ("resource_report", "resource_report")
    assert job_name("logs/once.log") == ("once", "")
    assert job_name("/run/here/logs/merge/m.log") == ("merge", "m")


def test_a_log_outside_the_log_root_still_gets_a_name(caplog: pytest.LogCaptureFixture) -> None:
    assert job_name("elsewhere/step/job.log") == ("step", "job")
    assert "is not under logs/" in caplog.text


def test_recorded_job_writes_start_end_host_and_threads_beside_the_log(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "pack" / "dnabert2.log"
    before = time.time()
    with recorded_job(log, threads=3) as record:
        assert record.labels == {"rule": "pack", "job": "dnabert2"}
    written = json.loads((tmp_path / "logs" / "pack" / "dnabert2.job.json").read_text())
    assert written["rule"] == "pack" and written["job"] == "dnabert2"
    assert written["host"] == socket.gethostname()
    assert written["threads"] == 3 and written["cpu_count"] == usable_cpus() >= 1
    assert written["status"] == "ok"
    # The start is this process's start (pytest's), so before the block; the end is after it.
    assert written["started_at"] <= before <= written["ended_at"] <= time.time()
    assert written["load_average"] >= 0.0


def test_a_failed_job_is_recorded_as_failed_and_the_error_goes_on(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "infer_shard" / "m" / "hidden" / "0001.log"
    with pytest.raises(ValueError, match="broken"):
        with recorded_job(log, threads=1):
            raise ValueError("broken")
    written = json.loads(record_path(log).read_text())
    assert written["status"] == "failed" and written["job"] == "m/hidden/0001"
    assert written["ended_at"] >= written["started_at"]


# A rule script in miniature: a fresh Python process that records itself as a job and works for a moment.
JOB_SCRIPT = """
import sys, time
from seqshard.runtime.jobs import recorded_job

with recorded_job(sys.argv[1], threads=1):
    time.sleep(0.3)
"""


def run_jobs(log_root: Path, count: int, at_once: int) -> list[tuple[str, str]]:
    """`count` jobs, at most `at_once` running at a time, each started as soon as one ends (as Snakemake does)."""
    names = [("step", f"{index:02d}") for index in range(count)]
    running: list[subprocess.Popen] = []
    for rule, job in names:
        while len(running) >= at_once:
            running.pop(0).wait()
        log = log_root / rule / f"{job}.log"
        running.append(subprocess.Popen([sys.executable, "-c", JOB_SCRIPT, str(log)]))
    for process in running:
        assert process.wait() == 0
    return names


@pytest.mark.parametrize("at_once", [1, 2])
def test_job_records_of_a_run_show_no_more_jobs_at_once_than_ran(tmp_path: Path, at_once: int) -> None:
    """Jobs that ran back to back never overlap in their records, so the report's slots are what the run held.

    Starts used to be psutil's create_time(), on this test machine about half a second early (the kernel gives the
    boot time in whole seconds): each job then seemed to begin before the one it followed had ended, and a run of one
    job at a time showed two at once (a `--cores 2` demo showed 4 slots on a 2-core host)."""
    names = run_jobs(tmp_path, 6, at_once)
    records = read_job_records(tmp_path, names)
    assert len(records) == 6 and (records["ended_at"] > records["started_at"]).all()

    hosts = slot_usage(timed_jobs(records)).hosts

    assert hosts["peak_threads"].tolist() == [at_once]
    assert hosts["slots"].tolist() == [max(at_once, usable_cpus())]


def test_a_process_start_is_read_on_the_clock_its_end_is_read_on() -> None:
    before = time.time()
    child = subprocess.run(
        [sys.executable, "-c", "from seqshard.runtime.monitoring import process_started_at as p; print(repr(p()))"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    after = time.time()
    started = float(child.stdout)
    # Never before the process existed (the tick it started in is rounded up: at most 10 ms late).
    assert before <= started <= after
    assert process_started_at() <= time.time()
