"""Job records (seqshard.runtime.jobs): what every rule script writes beside its log for the report's timeline."""

import json
import socket
import time
from pathlib import Path

import pytest

from seqshard.runtime.jobs import job_name, record_path, recorded_job
from seqshard.runtime.monitoring import usable_cpus


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
