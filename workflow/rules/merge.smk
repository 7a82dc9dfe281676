# One merge per model entry: every sample's file for every task, rows in the sample's input order.
for model in SEQUENCE_MODELS:

    rule:
        name:
            f"merge_{model}"
        input:
            unpack(merge_inputs(model)),
        output:
            # What `rule all` and the report ask for: one small file, not thousands (see write_merge_summary).
            summary=f"results/packs/{model}/merged.tsv",
            merged=[
                report(
                    path,
                    caption="../report/merged.rst",
                    category="Results",
                    subcategory=model,
                    labels={"sample": sample, "model": model, "task": task},
                )
                for path, (sample, task) in zip(
                    merged_outputs(model), merged_keys(model), strict=True
                )
            ],
            rejects=model_rejects(model),
            sample_rejects=[
                report(
                    f"results/{sample}/rejects.tsv",
                    caption="../report/rejects.rst",
                    category="Input validation",
                    labels={"sample": sample},
                )
                for sample in owned_samples(model)
            ],
        log:
            f"logs/merge/{model}.log",
        benchmark:
            f"benchmarks/merge/{model}.tsv"
        conda:
            "../../envs/seqshard.yaml"
        threads: 1
        params:
            model=model,
            outputs=merged_keys(model),
            samples=samples_of(model),
            owned_samples=owned_samples(model),
            passes={task: pass_of(task) for task in sequence_tasks(model)},
            on_invalid=config["on_invalid"],
        script:
            "../../scripts/merge_model.py"


# One merge per model entry with variant_effect: each variant set's file, rows in the set's input order, and its
# rejects (variants refused when read, or that the model could not score).
for model in VARIANT_MODELS:

    rule:
        name:
            f"merge_variants_{model}"
        input:
            unpack(variant_merge_inputs(model)),
        output:
            summary=f"results/variant_packs/{model}/merged.tsv",
            merged=[
                report(
                    path,
                    caption="../report/variant_effect.rst",
                    category="Results",
                    subcategory=model,
                    labels={
                        "sample": sample,
                        "model": model,
                        "task": "variant_effect",
                    },
                )
                for path, sample in zip(
                    variant_outputs(model), variant_sets_of(model), strict=True
                )
            ],
            rejects=[
                report(
                    path,
                    caption="../report/variant_rejects.rst",
                    category="Input validation",
                    labels={"sample": sample, "model": model},
                )
                for path, sample in zip(
                    variant_rejects(model), variant_sets_of(model), strict=True
                )
            ],
        log:
            f"logs/merge_variants/{model}.log",
        benchmark:
            f"benchmarks/merge_variants/{model}.tsv"
        conda:
            "../../envs/seqshard.yaml"
        threads: 1
        params:
            model=model,
            sets=variant_sets_of(model),
            on_invalid=config["on_invalid"],
        script:
            "../../scripts/merge_variants.py"


# With `on_invalid: skip` an unreadable sample is set aside by the pack and gets empty files from the merge; this
# job then fails naming it, so that the run ends with an error while the entry's other files stay. It reads two
# small tables: run where Snakemake runs, not as a cluster job.
rule check_samples:
    input:
        summary="results/packs/{model}/merged.tsv",
        samples="results/packs/{model}/samples.tsv",
    output:
        flag="results/packs/{model}/checked.txt",
    log:
        "logs/check_samples/{model}.log",
    benchmark:
        "benchmarks/check_samples/{model}.tsv"
    localrule: True
    conda:
        "../../envs/seqshard.yaml"
    threads: 1
    script:
        "../../scripts/check_samples.py"
