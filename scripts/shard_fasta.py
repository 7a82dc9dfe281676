"""Rule shard_fasta: validate one sample's FASTA and cut it into balanced shards."""

from seqshard.logs import setup_logging
from seqshard.sharding import shard_fasta

setup_logging(snakemake.log[0])
shard_fasta(
    snakemake.input.fasta,
    snakemake.params.molecule,
    snakemake.output.shards,
    snakemake.output.rejects,
    target_tokens=snakemake.params.target_tokens,
    max_sequences=snakemake.params.max_sequences,
    allowed_ambiguity=snakemake.params.allowed_ambiguity,
    on_invalid=snakemake.params.on_invalid,
    manifest=snakemake.output.manifest,
)
