"""Rule demo_checkpoint: write one of the demo's random-weight checkpoints or heads (seqshard.demo)."""

from seqshard.demo import write_demo
from seqshard.runtime.jobs import recorded_job
from seqshard.runtime.logs import rule_script

with rule_script(snakemake.log[0]), recorded_job(snakemake.log[0], snakemake.threads):
    write_demo(snakemake.wildcards.demo, snakemake.output[0])
