"""Rule check_samples: end with one line per sample of a model entry that could not be read (with `on_invalid:
skip` the pack set it aside and the merge wrote the others), so that the run fails naming it; else write the flag."""

from pathlib import Path

from seqshard.plan.merge import check_merged
from seqshard.runtime.jobs import recorded_job
from seqshard.runtime.logs import rule_script

with rule_script(snakemake.log[0]), recorded_job(snakemake.log[0], snakemake.threads):
    check_merged(Path(snakemake.input.samples).parent, snakemake.wildcards.model, snakemake.output.flag)
