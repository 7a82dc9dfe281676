# One pack per model entry: its samples validated, their distinct sequences cut into token-balanced shards.
for model in config["models"]:

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
