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
        shard="results/packs/{model}/shards/{shard}.fa",
        # The pack's manifest names each shard's molecule. An input rather than a param read through the
        # checkpoint: a job on a remote executor (Slurm) re-evaluates only its own inputs and has no checkpoints.
        manifest="results/packs/{model}/manifest.tsv",
        checkpoint=get_checkpoint_dir,
        head=get_head_dir,
    output:
        scores=temp(directory("results/packs/{model}/scores/{pass_}/{shard}")),
        figures="results/packs/{model}/figures/{pass_}/{shard}.json",
    log:
        "logs/infer_shard/{model}/{pass_}/{shard}.log",
    benchmark:
        "benchmarks/infer_shard/{model}/{pass_}/{shard}.tsv"
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
        settings=get_pass_settings,
        allowed_ambiguity=config["allowed_ambiguity"],
    script:
        "../../scripts/infer_shard.py"


rule score_variant_shard:
    input:
        shard="results/variant_packs/{model}/shards/{shard}.parquet",
        manifest="results/variant_packs/{model}/manifest.tsv",
        checkpoint=get_checkpoint_dir,
    output:
        scores=temp("results/variant_packs/{model}/scores/{shard}.parquet"),
        figures="results/variant_packs/{model}/figures/{shard}.json",
    log:
        "logs/score_variant_shard/{model}/{shard}.log",
    benchmark:
        "benchmarks/score_variant_shard/{model}/{shard}.tsv"
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
        work=get_variant_work,
    script:
        "../../scripts/score_variant_shard.py"
