# One pack per model entry: its samples validated, their distinct sequences cut into token-balanced shards.
for model in SEQUENCE_MODELS:

    checkpoint:
        name:
            f"pack_{model}"
        input:
            fastas=pack_inputs(model),
        output:
            shards=directory(f"results/packs/{model}/shards"),
            manifest=f"results/packs/{model}/manifest.tsv",
            records=f"results/packs/{model}/records.parquet",
            samples=f"results/packs/{model}/samples.tsv",
            rejects=f"results/packs/{model}/rejects.tsv",
        log:
            f"logs/pack/{model}.log",
        benchmark:
            f"benchmarks/pack/{model}.tsv"
        conda:
            "../../envs/seqshard.yaml"
        threads: 1
        params:
            samples=pack_samples_param(model),
            on_invalid=config["on_invalid"],
            allowed_ambiguity=config["allowed_ambiguity"],
            gaps=config["gaps"],
            internal_stops=config["internal_stops"],
            target_tokens=config["shards"]["target_tokens"],
            max_sequences=config["shards"]["max_sequences"],
        script:
            "../../scripts/pack_samples.py"


# One pack per model entry with variant_effect: its variant sets read and checked, their distinct variants (the
# windows they are scored in) cut into shards.
for model in VARIANT_MODELS:

    checkpoint:
        name:
            f"pack_variants_{model}"
        input:
            variants=variant_pack_inputs(model)["variants"],
            sequences=variant_pack_inputs(model)["sequences"],
        output:
            shards=directory(f"results/variant_packs/{model}/shards"),
            maps=directory(f"results/variant_packs/{model}/maps"),
            manifest=f"results/variant_packs/{model}/manifest.tsv",
            sets=f"results/variant_packs/{model}/sets.tsv",
        log:
            f"logs/pack_variants/{model}.log",
        benchmark:
            f"benchmarks/pack_variants/{model}.tsv"
        conda:
            "../../envs/seqshard.yaml"
        threads: 1
        params:
            sets=variant_sets_param(model),
            # What placing a variant depends on: a change of flank, strand or pooling reruns the scoring only.
            placing={
                key: variant_settings(model)[key] for key in ("window", "max_length")
            },
            on_invalid=config["on_invalid"],
            allowed_ambiguity=config["allowed_ambiguity"],
            gaps=config["gaps"],
            internal_stops=config["internal_stops"],
            max_variants=config["shards"]["max_variants"],
        script:
            "../../scripts/pack_variants.py"


# `snakemake --cores 2 packs`: validate and pack every model entry's samples and variant sets, and run nothing else.
# Inference jobs are planned from the packs' manifests, so only afterwards does a dry run (`snakemake -n`) list them
# with the resources (GPUs, memory) each would ask for.
rule packs:
    input:
        PACK_MANIFESTS,
