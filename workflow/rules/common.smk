# All Python of the workflow: config and sample-sheet validation, target lists and input functions.

import mimetypes
from pathlib import Path

from snakemake.logging import logger
from snakemake.utils import validate

from seqshard.runtime.checkpoints import inference_memory_mb, is_local
from seqshard.demo import DEMOS
from seqshard.models import ARCHITECTURES
from seqshard.engine.types import INPUT_SETTINGS, PASSES, TASK_SETTINGS, TASKS, pass_of
from seqshard.engine.types import DEFAULT_STRANDS, VARIANT_TASK, TaskSettings
from seqshard.plan.packing import read_pack_manifest
from seqshard.plan.variants import read_variant_manifest
from seqshard.io.samples import VARIANT_COLUMNS, SampleSheetError, load_sample_sheet

validate(config, "../schemas/config.schema.yaml")


def stop_before_any_job(reason):
    """End parsing with the reason on one line and nothing after it. Snakemake prints an exception raised while
    parsing with the frames of common.smk and of the package below it; SystemExit ends the run after its cleanup
    (every error is an Exception to Snakemake's handlers) and the log line is all the user sees.
    """
    logger.error(f"seqshard: {reason}")
    raise SystemExit(1)


# Inputs in remote storage (--default-storage-provider) are not on this disk to check.
try:
    samples = load_sample_sheet(
        config["samples"],
        workflow.source_path("../schemas/samples.schema.yaml"),
        check_files=workflow.storage_settings.default_storage_provider is None,
    )
except SampleSheetError as error:
    stop_before_any_job(error)


def variant_kind(sample):
    """`vcf` or `mutations` for a variant set (a sample with that column filled), None for a sequence sample."""
    return next((c for c in VARIANT_COLUMNS if samples.loc[sample].get(c)), None)


def sequence_tasks(model):
    return [t for t in config["models"][model]["tasks"] if t != VARIANT_TASK]


def task_settings(model, task):
    """The settings a task's numbers depend on (TASK_SETTINGS): a change to another task's leaves it be. A null
    `strand` is the task's default (DEFAULT_STRANDS)."""
    settings = config["models"][model]
    shaping = {name: settings[name] for name in INPUT_SETTINGS + TASK_SETTINGS[task]}
    if "strand" in shaping and shaping["strand"] is None:
        shaping["strand"] = DEFAULT_STRANDS[task]
    return {"task": task, **shaping}


def entry_samples(model):
    """(sequence samples, variant sets) a model entry runs on: its `samples`, or every sample its tasks apply to,
    checked against the molecules its architecture accepts."""
    settings = config["models"][model]
    wants_sequences = bool(sequence_tasks(model))
    wants_variants = VARIANT_TASK in settings["tasks"]
    listed = settings["samples"]
    names = listed or [
        s
        for s in samples.index
        if (wants_variants if variant_kind(s) else wants_sequences)
    ]
    unknown = sorted(set(names) - set(samples.index))
    if unknown:
        raise ValueError(
            f"models.{model}.samples names samples not in {config['samples']}: {unknown}"
        )
    accepted = ARCHITECTURES[settings["architecture"]].molecules
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
    sequences = [s for s in names if not variant_kind(s)]
    variant_sets = [s for s in names if variant_kind(s)]
    if variant_sets and not wants_variants:
        raise ValueError(
            f"models.{model} runs on variant sets {variant_sets} (samples with a vcf or mutations column) but its "
            f"tasks do not include {VARIANT_TASK}; add it, or leave those samples out of models.{model}.samples"
        )
    if sequences and listed and not wants_sequences:
        raise ValueError(
            f"models.{model} lists sequence samples {sequences} but its only task is {VARIANT_TASK}, which runs on "
            "variant sets (samples with a vcf or mutations column)"
        )
    if wants_variants and not variant_sets:
        raise ValueError(
            f"models.{model} asks for {VARIANT_TASK} but runs on no variant set; give a sample a vcf (with its "
            "reference as fasta) or a mutations table (with its proteins as fasta) in the sample sheet"
        )
    if wants_sequences and not sequences:
        raise ValueError(
            f"models.{model} asks for {', '.join(sequence_tasks(model))} but runs on no sequence sample"
        )
    for task in sequence_tasks(model):
        shaping = TaskSettings(**task_settings(model, task))
        for sample in sequences:
            problem = shaping.molecule_problem(samples.loc[sample, "molecule"])
            if problem:
                raise ValueError(
                    f"models.{model} runs {task} on sample {sample}: {problem}"
                )
    return sequences, variant_sets


def samples_of(model):
    """The sequence samples a model entry's sequence tasks run on."""
    return entry_samples(model)[0]


def variant_sets_of(model):
    """The variant sets a model entry's variant_effect runs on."""
    return entry_samples(model)[1]


def runs():
    """(sample, model, task) for every merged output of a sequence task the config asks for."""
    return [
        (sample, model, task)
        for model in config["models"]
        for sample in samples_of(model)
        for task in sequence_tasks(model)
    ]


# Computed at parse time so that a sample/model mismatch stops before any job starts.
try:
    RUNS = runs()
    # Model entries with sequence tasks (pack, infer, merge) and with variant_effect (pack_variants, score, merge).
    SEQUENCE_MODELS = [model for model in config["models"] if sequence_tasks(model)]
    VARIANT_MODELS = [
        model
        for model in config["models"]
        if VARIANT_TASK in config["models"][model]["tasks"]
    ]
    for _model in VARIANT_MODELS:
        variant_sets_of(_model)  # a model/variant-set mismatch stops here too
except ValueError as error:
    stop_before_any_job(error)
# Each merge's summary stands for every file that merge writes (per sample and task, and the rejects): Snakemake
# reruns a merge whose outputs are missing or older, and asking for 10,000 samples' files one by one would make
# planning quadratic in them.
FINAL_OUTPUTS = [f"results/packs/{model}/merged.tsv" for model in SEQUENCE_MODELS] + [
    f"results/variant_packs/{model}/merged.tsv" for model in VARIANT_MODELS
]
# With `on_invalid: skip`, each entry's check that every sample was read (see rule check_samples; with `error` an
# unreadable sample stops the pack). Apart from FINAL_OUTPUTS, so that the resource report does not wait on it.
SAMPLE_CHECKS = (
    [f"results/packs/{model}/checked.txt" for model in SEQUENCE_MODELS]
    if config["on_invalid"] == "skip"
    else []
)

# What every pack (a checkpoint) writes last: `rule packs` asks for them, so that `snakemake --cores 2 packs`
# validates and packs every input, after which a dry run lists the inference jobs planned from the packs.
PACK_MANIFESTS = [
    f"results/packs/{model}/manifest.tsv" for model in SEQUENCE_MODELS
] + [f"results/variant_packs/{model}/manifest.tsv" for model in VARIANT_MODELS]

# Snakemake's report takes each file's type from its name (Python's mimetypes), which knows no Parquet: without this
# it says "Could not detect mimetype" for every merged file and serves it as text. report() has no argument for it.
mimetypes.add_type("application/vnd.apache.parquet", ".parquet")


wildcard_constraints:
    sample="|".join(map(str, samples.index)),
    model="|".join(config["models"]),
    task="|".join(TASKS),
    shard=r"\d+",
    pass_="|".join(PASSES),
    demo="|".join(DEMOS),


def passes_of(model):
    """The forward passes a model entry needs: `hidden` for embed/classify/regress, `mlm` for mlm_score."""
    tasks = config["models"][model]["tasks"]
    return [p for p, wanted in PASSES.items() if set(tasks) & set(wanted)]


def tasks_of(model, pass_):
    return [t for t in config["models"][model]["tasks"] if t in PASSES[pass_]]


# Each sample's rejects table is written by the merge of the first model entry that runs on it.
REJECTS_OWNER = {}
for _sample, _model, _ in RUNS:
    REJECTS_OWNER.setdefault(_sample, _model)


def owned_samples(model):
    return [sample for sample, owner in REJECTS_OWNER.items() if owner == model]


def pack_inputs(model):
    return [samples.loc[sample, "fasta"] for sample in samples_of(model)]


def pack_samples_param(model):
    """(name, fasta, molecule) of the model's samples, in sheet order."""
    return [
        [sample, samples.loc[sample, "fasta"], samples.loc[sample, "molecule"]]
        for sample in samples_of(model)
    ]


def merged_keys(model):
    """(sample, task) of every merged file of a model entry, in the order of merged_outputs."""
    return [
        [sample, task] for sample in samples_of(model) for task in sequence_tasks(model)
    ]


def merged_outputs(model):
    return [
        f"results/{sample}/{model}/{task}.parquet"
        for sample, task in merged_keys(model)
    ]


def model_rejects(model):
    return [f"results/{sample}/{model}/rejects.tsv" for sample in samples_of(model)]


def local_checkpoints():
    """Every local checkpoint and head directory the config names: built first, beside sharding, if a demo."""
    locations = []
    for settings in config["models"].values():
        for location in (settings["checkpoint"], settings["head"]):
            if location and is_local(location) and location not in locations:
                locations.append(location)
    return locations


def local_model_directory(model, key):
    """A model's checkpoint or head directory as a job input, so that the demo rule makes it when missing and
    a storage provider stages it; [] for a hub id or URL (fetched by the job itself) or no head.
    """
    location = config["models"][model][key]
    return location if location and is_local(location) else []


def get_checkpoint_dir(wildcards):
    return local_model_directory(wildcards.model, "checkpoint")


def get_head_dir(wildcards):
    return local_model_directory(wildcards.model, "head")


def get_container(wildcards):
    """The image of the model's architecture (config `containers`); used only under `--sdm apptainer`."""
    architecture = config["models"][wildcards.model]["architecture"]
    if architecture not in config["containers"]:
        raise ValueError(
            f"containers.{architecture} is not set; add the image for models.{wildcards.model} to the config"
        )
    return config["containers"][architecture]


def get_pass_settings(wildcards):
    """Everything that shapes one forward pass of one model entry: a change reruns that pass's jobs only
    (a pooling change reruns the `hidden` pass, never the costly `mlm` one)."""
    settings = config["models"][wildcards.model]
    return {
        "architecture": settings["architecture"],
        "checkpoint": settings["checkpoint"],
        "dtype": settings["dtype"],
        "tasks": [
            task_settings(wildcards.model, task)
            for task in tasks_of(wildcards.model, wildcards.pass_)
        ],
    }


def pack_checkpoint(model):
    return getattr(checkpoints, f"pack_{model}").get()


def local_checkpoint_output(path):
    """A checkpoint's output file, readable here whether or not a storage provider holds it.

    With a default storage provider, Snakemake uploads a checkpoint's outputs and removes the local copy before
    the DAG is re-evaluated; fetch it back (again when storage holds a newer one) before opening it.
    """
    if path.is_storage:
        stored = path.storage_object
        local = stored.local_path()
        if not local.exists() or local.stat().st_mtime < stored.mtime():
            local.parent.mkdir(parents=True, exist_ok=True)
            stored.retrieve_object()
    return path


def pack_manifest(model):
    return read_pack_manifest(
        local_checkpoint_output(pack_checkpoint(model).output.manifest)
    )


def shard_names(model):
    return [shard.name for shard in pack_manifest(model)]


def merge_inputs(model):
    """The merge of one model entry reads its pack and every scored shard of every pass (known once packed)."""

    def inputs(wildcards):
        pack = pack_checkpoint(model).output
        scores = expand(
            "results/packs/{model}/scores/{pass_}/{shard}",
            model=model,
            pass_=passes_of(model),
            shard=shard_names(model),
        )
        return {
            "records": pack.records,
            "samples": pack.samples,
            "manifest": pack.manifest,
            "rejects": pack.rejects,
            "scores": scores,
        }

    return inputs


def get_report_settings():
    """Report thresholds and prices in a fixed key order: Snakemake compares params as text, and YAML order
    may vary."""
    return {key: config["report"][key] for key in sorted(config["report"])}


def report_what_ran():
    """The resource report from the figures and benchmarks of the jobs that ran, for a run that failed (see
    `onerror` in the Snakefile): with --keep-going, what finished is still reported."""
    from seqshard.reports import settings_from_config, write_resource_report

    figures = sorted(Path("results/packs").glob("*/figures/*/*.json")) + sorted(
        Path("results/variant_packs").glob("*/figures/*.json")
    )
    pack_samples = {
        path.parent.name: path
        for path in sorted(Path("results/packs").glob("*/samples.tsv"))
        if path.parent.name in config["models"]
    }
    benchmarks = sorted(Path("benchmarks").glob("**/*.tsv"))
    if not figures and not benchmarks:
        return
    thresholds, prices = settings_from_config(get_report_settings())
    out = Path("results/report")
    try:
        write_resource_report(
            Path("benchmarks"),
            benchmarks,
            figures,
            out / "resource_usage.tsv",
            out / "resource_usage.html",
            thresholds,
            plots_dir=out / "plots",
            log_root=Path("logs"),
            prices=prices,
            timeline_out=out / "timeline.png",
            throughput_out=out / "throughput.tsv",
            warnings_out=out / "warnings.tsv",
            pack_samples=pack_samples,
        )
    # The run failed already; a report that cannot be made must not hide why.
    except Exception as error:
        logger.warning(f"no resource report for the jobs that ran: {error}")
        return
    logger.warning(
        "the run failed; results/report/resource_usage.html reports on the jobs that ran "
        f"({len(benchmarks)} benchmarked jobs)"
    )


def demo_benchmarks():
    """The benchmark of every demo checkpoint the demo_checkpoint rule makes for this config.

    A demo directory already there without a benchmark (written by `seqshard demo-checkpoint`, or shared by
    tests) was not made by this workflow: asking for its benchmark would make the rule run again and rewrite it,
    so it is left out, as a job that did not run. Decided once, when the workflow is read.
    """
    made = []
    for location in local_checkpoints():
        path = Path(location)
        if path.parent.as_posix() != "resources/checkpoints" or path.name not in DEMOS:
            continue
        benchmark = Path("benchmarks/demo_checkpoint") / f"{path.name}.tsv"
        if not path.exists() or benchmark.exists():
            made.append(benchmark.as_posix())
    return made


DEMO_BENCHMARKS = demo_benchmarks()


def get_report_inputs(wildcards):
    """Every figure and benchmark file the resource report reads, known once every model entry is packed (one
    benchmark per job of every rule that runs, but the report's own), and each pack's samples.tsv (a sample it
    could not read is a warning)."""
    figures, benchmarks = [], list(DEMO_BENCHMARKS)
    pack_samples = [pack_checkpoint(model).output.samples for model in SEQUENCE_MODELS]
    for model in SEQUENCE_MODELS:
        benchmarks += [f"benchmarks/pack/{model}.tsv", f"benchmarks/merge/{model}.tsv"]
        for pass_ in passes_of(model):
            for shard in shard_names(model):
                figures.append(f"results/packs/{model}/figures/{pass_}/{shard}.json")
                benchmarks.append(f"benchmarks/infer_shard/{model}/{pass_}/{shard}.tsv")
    for model in VARIANT_MODELS:
        benchmarks += [
            f"benchmarks/pack_variants/{model}.tsv",
            f"benchmarks/merge_variants/{model}.tsv",
        ]
        for shard in variant_shard_names(model):
            figures.append(f"results/variant_packs/{model}/figures/{shard}.json")
            benchmarks.append(f"benchmarks/score_variant_shard/{model}/{shard}.tsv")
    return {
        "figures": figures,
        "benchmarks": benchmarks,
        "results": FINAL_OUTPUTS,
        "pack_samples": pack_samples,
    }


# Variant sets (variant_effect): one pack per model entry (its sets' distinct variants cut into shards), one scoring
# job per shard, one merge writing every set's file. The same shape as the sequence path, so planning stays linear.


def variant_pack_inputs(model):
    """The variant files and the FASTA files they refer to, of every variant set of the entry."""
    sets = variant_sets_of(model)
    return {
        "variants": [samples.loc[s, variant_kind(s)] for s in sets],
        "sequences": [samples.loc[s, "fasta"] for s in sets],
    }


def variant_sets_param(model):
    """(name, kind, variants, sequences) of the entry's variant sets, in sheet order."""
    return [
        [s, variant_kind(s), samples.loc[s, variant_kind(s)], samples.loc[s, "fasta"]]
        for s in variant_sets_of(model)
    ]


def variant_settings(model):
    """How the entry places and scores variants (seqshard.io.variants.VariantSettings), from its config."""
    settings = config["models"][model]
    return {
        "window": settings["variant_window"],
        "flank": settings["variant_flank"],
        "strand": settings["strand"] or DEFAULT_STRANDS[VARIANT_TASK],
        "max_length": settings["max_variant_length"],
        "pooling": settings["pooling"],
        "wild_type_marginal": settings["wild_type_marginal"],
    }


def get_variant_work(wildcards):
    """Everything that shapes a variant shard's numbers: a change reruns the entry's scoring jobs."""
    settings = config["models"][wildcards.model]
    return {
        "architecture": settings["architecture"],
        "checkpoint": settings["checkpoint"],
        "dtype": settings["dtype"],
        "settings": variant_settings(wildcards.model),
    }


def variant_pack_checkpoint(model):
    return getattr(checkpoints, f"pack_variants_{model}").get()


def variant_shard_names(model):
    manifest = variant_pack_checkpoint(model).output.manifest
    return [
        shard.name for shard in read_variant_manifest(local_checkpoint_output(manifest))
    ]


def variant_merge_inputs(model):
    """The merge of an entry's variant sets reads its pack and every scored shard (known once packed)."""

    def inputs(wildcards):
        pack = variant_pack_checkpoint(model).output
        scores = expand(
            "results/variant_packs/{model}/scores/{shard}.parquet",
            model=model,
            shard=variant_shard_names(model),
        )
        return {
            "manifest": pack.manifest,
            "sets": pack.sets,
            "maps": pack.maps,
            "scores": scores,
        }

    return inputs


def variant_outputs(model):
    return [
        f"results/{s}/{model}/variant_effect.parquet" for s in variant_sets_of(model)
    ]


def variant_rejects(model):
    return [
        f"results/{s}/{model}/variant_effect.rejects.tsv"
        for s in variant_sets_of(model)
    ]


# Executor resources. A rule's GPUs are asked for once, with the standard resources in a profile or on the
# command line (`--set-resources infer_shard:gpu=1 infer_shard:gpu_model=a100`); the functions below derive
# every executor's own tag from that one request: `gpu`/`gpu_model` (Slurm: --gpus=[model:]N; local:
# counted against --resources gpu=N), `gpu_manufacturer` (Kubernetes), `nvidia_gpu` (Google Batch, which
# ignores `gpu`). No request means a CPU job on every executor. config.yaml stays free of hardware settings.
# Memory and time are derived likewise: mem_mb (Slurm, Kubernetes), googlebatch_memory (Google Batch).

# Wall time (minutes) of one inference job on its first attempt; its host memory comes from the checkpoint's
# size (seqshard.runtime.checkpoints.inference_memory_mb). Each retry doubles the memory and adds the first attempt's
# time, so `--retries` escalates after an out-of-memory kill or a timeout.
INFER_RUNTIME_MIN = 60


def gpu_request(rulename):
    """(count, model) of GPUs a rule was given with --set-resources; (0, None) when none were asked for."""
    asked = workflow.resource_settings.overwrite_resources.get(rulename, {})
    # The CLI parses `gpu=1` to a Resource whose raw text is the literal; the Python API may pass plain values.
    count, model = (
        getattr(asked[name], "raw", asked[name]) if name in asked else None
        for name in ("gpu", "gpu_model")
    )
    try:
        count = int(count or 0)
    except ValueError:
        raise ValueError(
            f"{rulename}:gpu must be a whole number of GPUs per job, got {count!r}"
        ) from None
    return count, (str(model) if count and model else None)


def gpu_count(wildcards, rulename):
    return gpu_request(rulename)[0] or None


def gpu_model(wildcards, rulename):
    return gpu_request(rulename)[1]


def gpu_manufacturer(wildcards, rulename):
    """Kubernetes refuses a `gpu` request without it; the models here need CUDA, so NVIDIA."""
    return "nvidia" if gpu_request(rulename)[0] else None


def nvidia_gpu(wildcards, rulename):
    """Google Batch's accelerator: one GPU of a named type (gpu_model, e.g. nvidia-l4) or N of its default type.

    The plugin's default type is nvidia-tesla-t4; it has no way to ask for several GPUs of a named type.
    """
    count, model = gpu_request(rulename)
    if not count:
        return None
    return model if model and count == 1 else count


def infer_mem_mb(wildcards, attempt):
    """First attempt: 4000 MB plus twice the model's weights files (see the README); each retry doubles it."""
    location = config["models"][wildcards.model]["checkpoint"]
    return inference_memory_mb(location) * 2 ** (attempt - 1)


def infer_runtime(wildcards, attempt):
    return INFER_RUNTIME_MIN * attempt


def googlebatch_memory(wildcards, attempt):
    """Google Batch sizes a task by its own tag, in MiB, and ignores mem_mb: the same memory, converted."""
    # Rounded up, as Snakemake rounds mem_mib.
    return -(-infer_mem_mb(wildcards, attempt) * 10**6 // 2**20)
