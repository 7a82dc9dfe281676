rule demo_checkpoint:
    output:
        directory("resources/checkpoints/{demo}"),
    log:
        "logs/demo_checkpoint/{demo}.log",
    benchmark:
        "benchmarks/demo_checkpoint/{demo}.tsv"
    conda:
        "../../envs/seqshard.yaml"
    threads: 1
    script:
        "../../scripts/demo_checkpoint.py"


rule infer_shard:
    input:
        shard="results/{sample}/shards/{shard}.fa",
        checkpoint=get_checkpoint_files,
    output:
        parquet=temp("results/{sample}/{model}/{task}/shards/{shard}.parquet"),
        figures="results/{sample}/{model}/{task}/figures/{shard}.json",
    log:
        "logs/infer_shard/{sample}/{model}/{task}/{shard}.log",
    benchmark:
        "benchmarks/infer_shard/{sample}/{model}/{task}/{shard}.tsv"
    conda:
        "../../envs/seqshard.yaml"
    container:
        get_container
    threads: 2
    resources:
        gpu=gpu_count,
        gpu_model=gpu_model,
        gpu_manufacturer=gpu_manufacturer,
        nvidia_gpu=nvidia_gpu,
        mem_mb=infer_mem_mb,
        googlebatch_memory=googlebatch_memory,
        runtime=infer_runtime,
    params:
        settings=get_model_settings,
        molecule=get_molecule,
        allowed_ambiguity=config["allowed_ambiguity"],
    script:
        "../../scripts/infer_shard.py"
