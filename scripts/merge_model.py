"""Rule merge_<model>: every sample's file for every task of one model entry, from its scored shards."""

from pathlib import Path

from seqshard.plan.merge import merge_model, unreadable_samples, write_merge_summary
from seqshard.runtime.jobs import recorded_job
from seqshard.runtime.logs import rule_script

params = snakemake.params
by_pass = {}
for directory in map(Path, snakemake.input.scores):
    by_pass.setdefault(directory.parent.name, {})[directory.name] = directory
with rule_script(snakemake.log[0]), recorded_job(snakemake.log[0], snakemake.threads):
    outputs = {
        (sample, task): path for (sample, task), path in zip(params.outputs, snakemake.output.merged, strict=True)
    }
    written = merge_model(
        Path(snakemake.input.manifest).parent,
        {task: by_pass[pass_] for task, pass_ in params.passes.items()},
        outputs,
        dict(zip(params.samples, snakemake.output.rejects, strict=True)),
        model=params.model,
        on_invalid=params.on_invalid,
        sample_rejects=dict(zip(params.owned_samples, snakemake.output.sample_rejects, strict=True)),
    )
    write_merge_summary(
        snakemake.output.summary, outputs, written, unreadable_samples(Path(snakemake.input.manifest).parent)
    )
