"""Rule score_variant_shard: score the distinct variants of one shard of a model entry's variant sets."""

from pathlib import Path

from seqshard.engine.types import VARIANT_TASK, Hardware, RunFiles, VariantWork
from seqshard.engine.variants import score_variant_shard
from seqshard.io.variants import VariantSettings
from seqshard.runtime.cache import ResultCache
from seqshard.runtime.checkpoints import use_local_copy
from seqshard.runtime.devices import check_run_precision
from seqshard.runtime.gpus import gpus_for_job
from seqshard.runtime.jobs import recorded_job
from seqshard.runtime.logs import rule_script
from seqshard.runtime.storage import storage_settings, warm_up

work_settings = snakemake.params.work
# Speed-only settings come from the config, not params, so changing them never reruns finished shards.
run = snakemake.config["models"][snakemake.wildcards.model]
if snakemake.input.get("checkpoint"):
    use_local_copy(run["checkpoint"], snakemake.input.checkpoint)
gpus = int(snakemake.resources.get("gpu", 0) or 0)
with rule_script(snakemake.log[0]), recorded_job(snakemake.log[0], snakemake.threads) as job, gpus_for_job(gpus):
    work = VariantWork(
        work_settings["architecture"],
        work_settings["checkpoint"],
        VariantSettings(**work_settings["settings"]),
        provenance={"model": snakemake.wildcards.model},
    )
    hardware = Hardware(run["device"], work_settings["dtype"], gpus, snakemake.threads, run["batch_tokens"]).resolved()
    check_run_precision(snakemake.output.figures, hardware.precision, work.run_key(hardware.dtype))
    storage = storage_settings(snakemake.config["storage"])
    files = RunFiles(
        Path(snakemake.input.shard),
        {VARIANT_TASK: Path(snakemake.output.scores)},
        figures=Path(snakemake.output.figures),
        labels={
            "model": snakemake.wildcards.model,
            "pass": "variant",
            "shard": snakemake.wildcards.shard,
            "tasks": VARIANT_TASK,
            **job.labels,
        },
        warmup=warm_up([snakemake.input.shard, work_settings["checkpoint"]], storage),
    )
    cache_settings = snakemake.config["result_cache"]
    cache = None
    if cache_settings["enabled"]:
        cache = ResultCache(cache_settings["dir"], int(cache_settings["max_size_gb"] * 1e9))
    score_variant_shard(work, files, hardware, cache)
