rule merge_shards:
    input:
        shards=get_shard_parquets,
        manifest=get_shard_manifest,
        rejects="results/{sample}/rejects.tsv",
    output:
        report(
            "results/{sample}/{model}/{task}.parquet",
            caption="../report/merged.rst",
            category="Results",
            subcategory="{model}",
            labels={"sample": "{sample}", "model": "{model}", "task": "{task}"},
        ),
    log:
        "logs/merge_shards/{sample}/{model}/{task}.log",
    benchmark:
        "benchmarks/merge_shards/{sample}/{model}/{task}.tsv"
    conda:
        "../../envs/seqshard.yaml"
    threads: 1
    params:
        settings=get_model_settings,
    script:
        "../../scripts/merge_shards.py"
