"""Rule infer_shard: run one model over one shard and write its Parquet and run figures."""

from seqshard.gpus import gpus_for_job
from seqshard.inference import TaskSettings, run_task
from seqshard.logs import setup_logging

setup_logging(snakemake.log[0])
settings = snakemake.params.settings
# Speed-only settings come from the config, not params, so changing them never reruns finished shards.
run = snakemake.config["models"][snakemake.wildcards.model]
# A GPU job on the local executor takes free devices from a lock-file pool; Slurm's own assignment is kept.
with gpus_for_job(snakemake.resources.get("gpu", 0)):
    run_task(
        snakemake.input.shard,
        snakemake.output.parquet,
        architecture=settings["architecture"],
        checkpoint=settings["checkpoint"],
        settings=TaskSettings(**settings["task"]),
        molecule=snakemake.params.molecule,
        batch_tokens=run["batch_tokens"],
        device=run["device"],
        dtype=settings["dtype"],
        threads=snakemake.threads,
        allowed_ambiguity=snakemake.params.allowed_ambiguity,
        figures_out=snakemake.output.figures,
        labels={k: snakemake.wildcards[k] for k in ("sample", "model", "task", "shard")},
        provenance={"model": snakemake.wildcards.model, "sample": snakemake.wildcards.sample},
    )
