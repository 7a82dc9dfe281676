"""Rule demo_checkpoint: write one of the demo's random-weight checkpoints or heads (seqshard.demo)."""

from seqshard.demo import write_demo
from seqshard.jobs import recorded_job
from seqshard.logs import setup_logging

setup_logging(snakemake.log[0])
with recorded_job(snakemake.log[0], snakemake.threads):
    write_demo(snakemake.wildcards.demo, snakemake.output[0])
