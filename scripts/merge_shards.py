"""Rule merge_shards: stream a sample's shard Parquet files into one, checking the row count."""

from seqshard.logs import setup_logging
from seqshard.parquet import merge_sample_shards

setup_logging(snakemake.log[0])
merge_sample_shards(
    snakemake.input.shards,
    snakemake.input.manifest,
    snakemake.input.rejects,
    snakemake.output[0],
)
