"""Rule infer_shard: run one forward pass (and every task sharing it) of one model over one shard."""

from pathlib import Path

from seqshard.cache import ResultCache
from seqshard.checkpoints import use_local_copy
from seqshard.fasta import InputPolicy
from seqshard.gpus import gpus_for_job
from seqshard.inference import TaskSettings, run_tasks
from seqshard.interface import WORKFLOW
from seqshard.jobs import recorded_job
from seqshard.logs import rule_script
from seqshard.packing import read_pack_manifest
from seqshard.storage import storage_settings

settings = snakemake.params.settings
# Speed-only settings come from the config, not params, so changing them never reruns finished shards.
run = snakemake.config["models"][snakemake.wildcards.model]
scores = Path(snakemake.output.scores)
tasks = [TaskSettings(**task) for task in settings["tasks"]]
molecule = {shard.name: shard.molecule for shard in read_pack_manifest(snakemake.input.manifest)}[
    snakemake.wildcards.shard
]
cache_settings = snakemake.config["result_cache"]
# Local checkpoint and head directories are inputs: read them where Snakemake put them (a storage provider stages
# them on the node), while provenance keeps the names the config gives. s3:// URLs and hub ids are no inputs.
for key in ("checkpoint", "head"):
    if snakemake.input.get(key):
        use_local_copy(run[key], snakemake.input[key])
# A GPU job on the local executor takes free devices from a lock-file pool; Slurm's own assignment is kept.
gpus = int(snakemake.resources.get("gpu", 0) or 0)
with rule_script(snakemake.log[0]), recorded_job(snakemake.log[0], snakemake.threads) as job, gpus_for_job(gpus):
    cache = None
    if cache_settings["enabled"]:
        cache = ResultCache(cache_settings["dir"], int(cache_settings["max_size_gb"] * 1e9))
    run_tasks(
        snakemake.input.shard,
        {task.task: scores / f"{task.task}.parquet" for task in tasks},
        architecture=settings["architecture"],
        checkpoint=settings["checkpoint"],
        settings=tasks,
        molecule=molecule,
        batch_tokens=run["batch_tokens"],
        # The device follows the GPU request, so every shard of the run resolves alike; siblings are checked.
        device=run["device"],
        gpus=gpus,
        dtype=settings["dtype"],
        threads=snakemake.threads,
        # The pack validated and normalised the shard (packed=True reads it as such). Records that cannot be
        # scored are listed in the shard's rejects; the merge names them or fails, as on_invalid says.
        policy=InputPolicy(allowed_ambiguity=snakemake.params.allowed_ambiguity, on_invalid="skip", interface=WORKFLOW),
        rejects_out=scores / "rejects.tsv",
        figures_out=snakemake.output.figures,
        check_sibling_shards=True,
        # The rule and job name the figures' job for the resource report, whatever the wildcards are.
        labels={
            "model": snakemake.wildcards.model,
            "pass": snakemake.wildcards.pass_,
            "shard": snakemake.wildcards.shard,
            "tasks": ",".join(task.task for task in tasks),
            **job.labels,
        },
        provenance={"model": snakemake.wildcards.model},
        cache=cache,
        packed=True,
        storage=storage_settings(snakemake.config["storage"]),
    )
