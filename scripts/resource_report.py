"""Rule resource_report: benchmarks and inference figures into resource_usage.tsv and .html."""

from pathlib import Path

from seqshard.logs import setup_logging
from seqshard.reports import Thresholds, write_resource_report

setup_logging(snakemake.log[0])
write_resource_report(
    Path(snakemake.params.benchmark_root),
    [Path(p) for p in snakemake.input.benchmarks],
    [Path(p) for p in snakemake.input.figures],
    Path(snakemake.output.tsv),
    Path(snakemake.output.html),
    Thresholds(**snakemake.params.thresholds),
    plots_dir=Path(snakemake.output.plots),
)
