"""The resource report people read after a run: where time went, what it cost, and what to change.

It joins Snakemake's benchmark files, the job records every rule script writes (start, end, host, threads) and
the inference jobs' run figures (tokens, throughput, GPU telemetry) into one table per job, and from it writes a
self-contained HTML page (timeline by host with the critical path and the idle share of the run's slots,
throughput and cost per model and task, grouped warnings with their fix, plots, a sortable job table) plus TSVs
and PNGs that `snakemake --report` shows.

Modules: `inputs` (reading files into the table), `analysis` (timeline, critical path, slots, throughput and
cost), `findings` (warnings), `plots`, `page` (the template and the files written), `synthetic` (a made-up run
of any size, for tests and the benchmark).
"""

from seqshard.reports.analysis import Prices
from seqshard.reports.findings import Finding, Thresholds, find_warnings
from seqshard.reports.inputs import TABLE_COLUMNS, read_benchmarks, read_figures, read_job_records, resource_usage_table
from seqshard.reports.page import settings_from_config, write_resource_report

__all__ = [
    "TABLE_COLUMNS",
    "Finding",
    "Prices",
    "Thresholds",
    "find_warnings",
    "read_benchmarks",
    "read_figures",
    "read_job_records",
    "resource_usage_table",
    "settings_from_config",
    "write_resource_report",
]
