rule resource_report:
    input:
        unpack(get_report_inputs),
    output:
        tsv=report(
            "results/report/resource_usage.tsv",
            caption="../report/resource_usage_table.rst",
            category="Resource usage",
        ),
        html=report(
            "results/report/resource_usage.html",
            caption="../report/resource_usage.rst",
            category="Resource usage",
        ),
        plots=report(
            directory("results/report/plots"),
            patterns=["{name}.png"],
            caption="../report/resource_plots.rst",
            category="Resource usage",
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
        thresholds=get_report_thresholds(),
    script:
        "../../scripts/resource_report.py"
