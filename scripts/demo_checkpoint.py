"""Rule demo_checkpoint: write the small random-weight DNABERT-2 checkpoint the demo config points at."""

from pathlib import Path

from seqshard.logs import setup_logging
from seqshard.models.dnabert2 import write_demo_checkpoint

setup_logging(snakemake.log[0])
write_demo_checkpoint(Path(snakemake.output[0]).parent)
