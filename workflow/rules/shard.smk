checkpoint shard_fasta:
    input:
        fasta=get_fasta,
    output:
        shards=directory("results/{sample}/shards"),
        manifest="results/{sample}/shards.tsv",
        rejects=report(
            "results/{sample}/rejects.tsv",
            caption="../report/rejects.rst",
            category="Input validation",
            labels={"sample": "{sample}"},
        ),
    log:
        "logs/shard_fasta/{sample}.log",
    benchmark:
        "benchmarks/shard_fasta/{sample}.tsv"
    conda:
        "../../envs/seqshard.yaml"
    threads: 1
    params:
        molecule=get_molecule,
        on_invalid=config["on_invalid"],
        allowed_ambiguity=config["allowed_ambiguity"],
        target_tokens=config["shards"]["target_tokens"],
        max_sequences=config["shards"]["max_sequences"],
    script:
        "../../scripts/shard_fasta.py"
