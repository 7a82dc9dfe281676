"""Rule pack_<model>: validate a model entry's samples and cut their distinct sequences into shards."""

from pathlib import Path

from seqshard.io.interface import WORKFLOW
from seqshard.io.sequences import InputPolicy
from seqshard.plan.packing import SampleInput, pack_samples
from seqshard.runtime.jobs import recorded_job
from seqshard.runtime.logs import rule_script

# Each FASTA is read where Snakemake put it (a storage provider stages it on the node), in the samples' order.
samples = [
    SampleInput(name, str(fasta), molecule)
    for (name, _, molecule), fasta in zip(snakemake.params.samples, snakemake.input.fastas, strict=True)
]
with rule_script(snakemake.log[0]), recorded_job(snakemake.log[0], snakemake.threads):
    pack_samples(
        samples,
        Path(snakemake.output.manifest).parent,
        target_tokens=snakemake.params.target_tokens,
        max_sequences=snakemake.params.max_sequences,
        policy=InputPolicy(
            allowed_ambiguity=snakemake.params.allowed_ambiguity,
            on_invalid=snakemake.params.on_invalid,
            gaps=snakemake.params.gaps,
            internal_stops=snakemake.params.internal_stops,
            interface=WORKFLOW,
        ),
    )
