"""Rule resource_report: benchmarks, job records and inference figures into the resource report's files."""

from pathlib import Path

from seqshard.reports import settings_from_config, write_resource_report
from seqshard.runtime.jobs import recorded_job
from seqshard.runtime.logs import rule_script

with rule_script(snakemake.log[0]), recorded_job(snakemake.log[0], snakemake.threads):
    thresholds, prices = settings_from_config(snakemake.params.settings)
    write_resource_report(
        snakemake.params.benchmark_root,
        snakemake.input.benchmarks,
        snakemake.input.figures,
        snakemake.output.tsv,
        snakemake.output.html,
        thresholds,
        plots_dir=snakemake.output.plots,
        log_root=snakemake.params.log_root,
        prices=prices,
        timeline_out=snakemake.output.timeline,
        throughput_out=snakemake.output.throughput,
        warnings_out=snakemake.output.warnings,
        # Each pack's samples.tsv is results/packs/<model>/samples.tsv (a storage provider keeps that ending).
        pack_samples={Path(path).parent.name: path for path in snakemake.input.pack_samples},
    )
