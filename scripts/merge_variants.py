"""Rule merge_variants_<model>: every variant set's variant_effect file and rejects from its scored shards."""

from pathlib import Path

from seqshard.io.interface import WORKFLOW
from seqshard.io.sequences import InputPolicy
from seqshard.plan.variants import merge_variant_sets, write_variant_merge_summary
from seqshard.runtime.jobs import recorded_job
from seqshard.runtime.logs import rule_script

params = snakemake.params
with rule_script(snakemake.log[0]), recorded_job(snakemake.log[0], snakemake.threads):
    outputs = dict(zip(params.sets, snakemake.output.merged, strict=True))
    written = merge_variant_sets(
        Path(snakemake.input.manifest).parent,
        {Path(path).stem: path for path in snakemake.input.scores},
        outputs,
        dict(zip(params.sets, snakemake.output.rejects, strict=True)),
        policy=InputPolicy(on_invalid=params.on_invalid, interface=WORKFLOW),
        provenance={"model": params.model, "n_shards": len(snakemake.input.scores)},
    )
    write_variant_merge_summary(snakemake.output.summary, outputs, written)
