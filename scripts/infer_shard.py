"""Rule infer_shard: run one forward pass (and every task sharing it) of one model over one shard."""

from pathlib import Path

from seqshard.engine.driver import run_tasks
from seqshard.engine.types import Hardware, RunFiles, TaskSettings, Work
from seqshard.io.interface import WORKFLOW
from seqshard.io.sequences import InputPolicy
from seqshard.plan.packing import read_pack_manifest
from seqshard.runtime.cache import ResultCache
from seqshard.runtime.checkpoints import use_local_copy
from seqshard.runtime.devices import check_run_precision
from seqshard.runtime.gpus import gpus_for_job
from seqshard.runtime.jobs import recorded_job
from seqshard.runtime.logs import rule_script
from seqshard.runtime.storage import storage_settings, warm_up

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
    work = Work(
        settings["architecture"],
        settings["checkpoint"],
        tuple(tasks),
        molecule,
        # The pack validated and normalised the shard (RunFiles.packed reads it as such). Records that cannot be
        # scored are listed in the shard's rejects; the merge names them or fails, as on_invalid says.
        InputPolicy(allowed_ambiguity=snakemake.params.allowed_ambiguity, on_invalid="skip", interface=WORKFLOW),
        provenance={"model": snakemake.wildcards.model},
        # Figures only (the seams' cost), so read from the config rather than params: changing it reruns nothing.
        seam_sample=run["seam_sample"],
    )
    # The device follows the GPU request, so every shard of the run resolves alike; then the shards of the same run
    # that already started are checked (and this one claims its place) before anything is read or loaded.
    hardware = Hardware(run["device"], settings["dtype"], gpus, snakemake.threads, run["batch_tokens"]).resolved()
    check_run_precision(snakemake.output.figures, hardware.precision, work.run_key(hardware.dtype))
    storage = storage_settings(snakemake.config["storage"])
    files = RunFiles(
        Path(snakemake.input.shard),
        {task.task: scores / f"{task.task}.parquet" for task in tasks},
        rejects=scores / "rejects.tsv",
        figures=Path(snakemake.output.figures),
        packed=True,
        # The rule and job name the figures' job for the resource report, whatever the wildcards are.
        labels={
            "model": snakemake.wildcards.model,
            "pass": snakemake.wildcards.pass_,
            "shard": snakemake.wildcards.shard,
            "tasks": ",".join(task.task for task in tasks),
            **job.labels,
        },
        # The shard, checkpoint and head onto local disk before the model loads (object cache, JuiceFS warmup).
        warmup=warm_up([snakemake.input.shard, settings["checkpoint"], *(task.head for task in tasks)], storage),
    )
    cache = None
    if cache_settings["enabled"]:
        cache = ResultCache(cache_settings["dir"], int(cache_settings["max_size_gb"] * 1e9))
    run_tasks(work, files, hardware, cache)
