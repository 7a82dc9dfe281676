"""Rule pack_variants_<model>: check a model entry's variant sets and cut their distinct variants into shards."""

from pathlib import Path

from seqshard.io.interface import WORKFLOW
from seqshard.io.sequences import InputPolicy
from seqshard.io.variants import VariantSettings
from seqshard.plan.variants import VariantSetInput, pack_variant_sets
from seqshard.runtime.jobs import recorded_job
from seqshard.runtime.logs import rule_script

params = snakemake.params
# Each file is read where Snakemake put it (a storage provider stages it on the node), in the sets' order.
sets = [
    VariantSetInput(name, kind, str(variants), str(sequences))
    for (name, kind, _, _), variants, sequences in zip(
        params.sets, snakemake.input.variants, snakemake.input.sequences, strict=True
    )
]
with rule_script(snakemake.log[0]), recorded_job(snakemake.log[0], snakemake.threads):
    pack_variant_sets(
        sets,
        Path(snakemake.output.manifest).parent,
        VariantSettings(**params.placing),
        InputPolicy(
            allowed_ambiguity=params.allowed_ambiguity,
            on_invalid=params.on_invalid,
            gaps=params.gaps,
            internal_stops=params.internal_stops,
            interface=WORKFLOW,
        ),
        max_units=params.max_variants,
    )
