"""When, where and on how many threads each workflow job ran, recorded by the rule scripts for the report's timeline.

Snakemake's benchmark files say how long a job took and what it used, but not when it started or on which host.
Every rule script wraps its work in `recorded_job`, which writes a small JSON record beside the job's log:
`logs/<rule>/<wildcards>.log` gives `logs/<rule>/<wildcards>.job.json`. The workflow names a job's log and its
benchmark alike (`benchmarks/<rule>/<wildcards>.tsv`), so the resource report finds each benchmarked job's record
by that name, and nothing here depends on which rules the workflow has. `<rule>` is the folder below `logs/`:
the rule's name, or the name shared by the rules made per model entry (`pack` for `pack_<model>`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from seqshard.runtime.monitoring import process_started_at, usable_cpus

log = logging.getLogger(__name__)

#: A job record sits beside the job's log, named like it with this suffix instead of the log's.
RECORD_SUFFIX = ".job.json"
#: The folder the workflow's logs are under (`log:` paths are relative to the working directory).
LOG_ROOT = "logs"


def record_path(log_path: Path | str) -> Path:
    """`logs/<rule>/<wildcards>.log` -> `logs/<rule>/<wildcards>.job.json`."""
    path = Path(log_path)
    return path.with_name(path.name.removesuffix(path.suffix) + RECORD_SUFFIX)


def job_name(log_path: Path | str, log_root: str = LOG_ROOT) -> tuple[str, str]:
    """(rule, job) from a log path `<log root>/<rule>/<job>.log`: the same pair the report reads from the job's
    benchmark path `benchmarks/<rule>/<job>.tsv`. A log directly in the root, `<log root>/<rule>.log`, has job "".
    """
    parts = Path(log_path).with_suffix("").parts
    if log_root in parts[:-1]:
        below = parts[parts.index(log_root) + 1 :]
        return below[0], "/".join(below[1:])
    log.warning(
        "log %s is not under %s/ (%s/<rule>/<wildcards>.log): the resource report may not match this job's record "
        "to its benchmark",
        log_path,
        log_root,
        log_root,
    )
    return (parts[-2], parts[-1]) if len(parts) > 1 else (parts[-1], "")


@dataclass
class JobRecord:
    """One job's start and end (epoch seconds), host, usable cores and reserved threads, and how it ended."""

    rule: str  # the folder below logs/ (see the module docstring)
    job: str
    host: str
    cpu_count: int
    threads: int
    started_at: float
    ended_at: float | None = None
    status: str = "running"
    load_average: float | None = None  # the host's 1-minute load average as the job ended

    @property
    def labels(self) -> dict[str, str]:
        """`rule` and `job`: labels for files the job writes (run figures), naming the job for the report."""
        return {"rule": self.rule, "job": self.job}


@contextmanager
def recorded_job(log_path: Path | str, threads: int) -> Iterator[JobRecord]:
    """Record the job around the block and write the record beside `log_path`, whether the block succeeds or not.

    The start is the process's own start, so the record covers Python's start-up and imports as Snakemake's
    benchmark wall time does (a rule script's process is the job). Start and end are read on the same clock,
    `time.time()` (see `process_started_at`), so that a job started after another ended never appears to overlap it.
    """
    rule, job = job_name(log_path)
    record = JobRecord(
        rule=rule,
        job=job,
        host=socket.gethostname(),
        cpu_count=usable_cpus(),
        threads=int(threads),
        started_at=process_started_at(),
    )
    try:
        yield record
        record.status = "ok"
    except BaseException:
        record.status = "failed"
        raise
    finally:
        record.ended_at = time.time()
        record.load_average = os.getloadavg()[0]
        path = record_path(log_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(record), indent=2) + "\n")
