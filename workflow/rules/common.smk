# All Python of the workflow: config and sample-sheet validation, target lists and input functions.
import os

import pandas as pd
from snakemake.utils import validate

from seqshard.models import ARCHITECTURE_MOLECULES
from seqshard.sharding import read_manifest

validate(config, "../schemas/config.schema.yaml")

samples = pd.read_csv(config["samples"], sep="\t", dtype=str, comment="#").set_index(
    "sample", drop=False
)
validate(samples, "../schemas/samples.schema.yaml")
if samples.index.has_duplicates:
    raise ValueError(
        f"{config['samples']}: sample names must be unique; repeated: "
        f"{sorted(set(samples.index[samples.index.duplicated()]))}"
    )

DEMO_CHECKPOINT = "resources/checkpoints/dnabert2-demo"
DEMO_CHECKPOINT_FILES = [
    "config.json",
    "pytorch_model.bin",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
]


def samples_of(model):
    """The samples a model runs on, checked against the molecules its architecture accepts."""
    settings = config["models"][model]
    names = settings["samples"] or list(samples.index)
    unknown = sorted(set(names) - set(samples.index))
    if unknown:
        raise ValueError(
            f"models.{model}.samples names samples not in {config['samples']}: {unknown}"
        )
    accepted = ARCHITECTURE_MOLECULES[settings["architecture"]]
    wrong = [
        f"{s} ({samples.loc[s, 'molecule']})"
        for s in names
        if samples.loc[s, "molecule"] not in accepted
    ]
    if wrong:
        raise ValueError(
            f"models.{model} ({settings['architecture']}) accepts {sorted(accepted)} but would run on "
            f"{', '.join(wrong)}; list the samples it should run on under models.{model}.samples"
        )
    return names


def runs():
    """(sample, model, task) for every merged output the config asks for."""
    return [
        (sample, model, task)
        for model, settings in config["models"].items()
        for sample in samples_of(model)
        for task in settings["tasks"]
    ]


RUNS = (
    runs()
)  # computed at parse time so that a sample/model mismatch stops before any job starts
FINAL_OUTPUTS = [
    f"results/{sample}/{model}/{task}.parquet" for sample, model, task in RUNS
]


wildcard_constraints:
    sample="|".join(map(str, samples.index)),
    model="|".join(config["models"]),
    task="embed",
    shard=r"\d+",


def get_fasta(wildcards):
    return samples.loc[wildcards.sample, "fasta"]


def get_molecule(wildcards):
    return samples.loc[wildcards.sample, "molecule"]


def is_local_checkpoint(location):
    """A hub id looks like owner/name; anything that exists on disk or starts like a path is local."""
    return (
        os.path.exists(location)
        or location.startswith((".", "/"))
        or location.count("/") != 1
    )


def get_checkpoint_files(wildcards):
    """The checkpoint's config.json when it is a local directory, so the demo rule can make it if missing."""
    location = config["models"][wildcards.model]["checkpoint"]
    if not is_local_checkpoint(location):
        return []
    return [os.path.join(location, "config.json")]


def get_model_settings(wildcards):
    """Everything that shapes one model's numbers; a change here reruns that model's jobs and no others."""
    settings = config["models"][wildcards.model]
    return {
        "architecture": settings["architecture"],
        "checkpoint": settings["checkpoint"],
        "task": wildcards.task,
        "pooling": settings["pooling"],
        "dtype": settings["dtype"],
    }


def shard_names(sample):
    manifest = os.path.join(
        checkpoints.shard_fasta.get(sample=sample).output.shards, "manifest.tsv"
    )
    return [shard.name for shard in read_manifest(manifest)]


def get_shard_parquets(wildcards):
    return expand(
        "results/{sample}/{model}/{task}/shards/{shard}.parquet",
        sample=wildcards.sample,
        model=wildcards.model,
        task=wildcards.task,
        shard=shard_names(wildcards.sample),
    )


def get_shard_manifest(wildcards):
    return os.path.join(
        checkpoints.shard_fasta.get(sample=wildcards.sample).output.shards,
        "manifest.tsv",
    )


def get_report_inputs(wildcards):
    """Every figure and benchmark file the resource report reads, known once all samples are sharded."""
    figures, benchmarks = [], []
    for sample, model, task in RUNS:
        benchmarks.append(f"benchmarks/merge_shards/{sample}/{model}/{task}.tsv")
        for shard in shard_names(sample):
            figures.append(f"results/{sample}/{model}/{task}/figures/{shard}.json")
            benchmarks.append(
                f"benchmarks/infer_shard/{sample}/{model}/{task}/{shard}.tsv"
            )
    for sample in sorted({sample for sample, _, _ in RUNS}):
        benchmarks.append(f"benchmarks/shard_fasta/{sample}.tsv")
    return {"figures": figures, "benchmarks": benchmarks, "results": FINAL_OUTPUTS}
