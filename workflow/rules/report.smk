rule resource_report:
    input:
        unpack(get_report_inputs),
    output:
        html=report(
            "results/report/resource_usage.html",
            caption="../report/resource_usage.rst",
            category="Resource usage",
            subcategory="Summary",
            labels={"item": "report page"},
        ),
        timeline=report(
            "results/report/timeline.png",
            caption="../report/timeline.rst",
            category="Resource usage",
            subcategory="Summary",
            labels={"item": "timeline"},
        ),
        throughput=report(
            "results/report/throughput.tsv",
            caption="../report/throughput.rst",
            category="Resource usage",
            subcategory="Summary",
            labels={"item": "throughput and cost per model"},
        ),
        warnings=report(
            "results/report/warnings.tsv",
            caption="../report/warnings.rst",
            category="Resource usage",
            subcategory="Summary",
            labels={"item": "warnings"},
        ),
        tsv=report(
            "results/report/resource_usage.tsv",
            caption="../report/resource_usage_table.rst",
            category="Resource usage",
            subcategory="Per job",
            labels={"item": "per-job table"},
        ),
        plots=report(
            directory("results/report/plots"),
            patterns=["{name}.png"],
            caption="../report/resource_plots.rst",
            category="Resource usage",
            subcategory="Per job",
            labels={"item": "{name}"},
        ),
    log:
        "logs/resource_report/resource_report.log",
    benchmark:
        "benchmarks/resource_report/resource_report.tsv"
    conda:
        "../../envs/seqshard.yaml"
    threads: 1
    params:
        benchmark_root="benchmarks",
        log_root="logs",
        settings=get_report_settings(),
    script:
        "../../scripts/resource_report.py"
