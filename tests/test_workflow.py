"""The workflow, run for real: snakemake on the demo data in a temporary directory, then its report and lint.

One module-scoped run serves the output checks; the rerun test dry-runs against that completed run.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from browser import require_chromium, view_report

from seqshard.io.fasta import read_valid_records
from seqshard.io.parquet import read_provenance
from seqshard.io.sequences import InputPolicy
from seqshard.reports.analysis import slot_usage, timed_jobs
from seqshard.runtime.jobs import job_name
from seqshard.runtime.monitoring import usable_cpus

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"
DEMO = REPO / "resources" / "demo"

pytestmark = pytest.mark.workflow


def snakemake(workdir: Path, *args: str, config: str = "config.yaml") -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(workdir),
               "--configfile", str(workdir / config), "--cores", "2", *args]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, cwd=workdir)


def write_config(workdir: Path, name: str = "config.yaml", **changes) -> dict:
    config = {
        "samples": "samples.tsv",
        "on_invalid": "skip",
        "shards": {"target_tokens": 30000},
        "models": {
            "dnabert2": {"architecture": "dnabert2", "checkpoint": "resources/checkpoints/dnabert2-demo"},
            "dnabert2_cls": {
                "architecture": "dnabert2",
                "checkpoint": "resources/checkpoints/dnabert2-demo",
                "pooling": "cls",
                "samples": ["sample_b"],
            },
        },
    }
    for key, value in changes.items():
        config[key] = value
    (workdir / name).write_text(yaml.safe_dump(config))
    return config


def write_sheet(workdir: Path, rows: list[tuple[str, str, str]]) -> None:
    lines = ["sample\tfasta\tmolecule"] + ["\t".join(row) for row in rows]
    (workdir / "samples.tsv").write_text("\n".join(lines) + "\n")


def planned_jobs(dry_run_output: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, wildcards) for every job a dry run lists."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?(?:rule|checkpoint) \w+:)", dry_run_output):
        header = re.match(r"(?:local)?(?:rule|checkpoint) (\w+):", block)
        if not header:
            continue
        wildcards = re.search(r"^\s+wildcards: (.*)$", block, re.MULTILINE)
        pairs = dict(pair.split("=", 1) for pair in wildcards.group(1).split(", ")) if wildcards else {}
        jobs.append((header.group(1), pairs))
    return jobs


DEMO_SAMPLES = {"sample_a": 150, "sample_b": 60, "promoters": 16, "proteins": 30, "peptides": 12}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The shipped config/config.yaml and sample sheet, run in a fresh directory with the demo data linked in."""
    workdir = tmp_path_factory.mktemp("workflow")
    (workdir / "config").mkdir()
    (workdir / "resources").mkdir()
    (workdir / "resources" / "demo").symlink_to(DEMO)
    for name in ("config.yaml", "samples.tsv"):
        (workdir / "config" / name).write_text((REPO / "config" / name).read_text())
    result = snakemake(workdir, config="config/config.yaml")
    (workdir / "snakemake.out").write_text(result.stdout + result.stderr)  # what the run printed, for the tests
    assert result.returncode == 0, result.stderr[-5000:]
    return workdir


def jobs_run(output: str) -> list[tuple[str, str | None]]:
    """(rule, log) of every job a run's output shows starting; the log is None for a rule without one."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?(?:rule|checkpoint) \w+:)", output):
        header = re.match(r"(?:local)?(?:rule|checkpoint) (\w+):", block)
        if header:
            log = re.search(r"^\s+log: (\S+)", block, re.MULTILINE)
            jobs.append((header.group(1), log.group(1) if log else None))
    return jobs


def reported_jobs(workdir: Path) -> set[tuple[str, str]]:
    usage = pd.read_csv(workdir / "results/report/resource_usage.tsv", sep="\t", dtype={"rule": str, "job": str})
    return set(zip(usage["rule"], usage["job"].fillna(""), strict=True))


def assert_every_job_is_reported(workdir: Path, output: str) -> None:
    """Every job the run ran is a row of the resource report (named by its log, as its benchmark and record are),
    but the report's own job, which writes it, `all`, which runs nothing, and the `check_samples` jobs of an
    `on_invalid: skip` run, which the report does not wait for (they fail on purpose when a sample was unreadable,
    after the report is written; README, "How it runs")."""
    ran = jobs_run(output)
    assert {rule for rule, log in ran if log is None} == {"all"}
    unreported = {"resource_report", "check_samples"}
    expected = {job_name(log) for rule, log in ran if log is not None and rule not in unreported}
    assert len(expected) == len([rule for rule, _ in ran if rule not in unreported]) - 1
    assert reported_jobs(workdir) == expected


def shipped_outputs(workdir):
    """(sample, molecule, fasta, model, task) of every sequence task's output (variant sets: see below)."""
    config = yaml.safe_load((workdir / "config/config.yaml").read_text())
    sheet = pd.read_csv(workdir / "config/samples.tsv", sep="\t").set_index("sample")
    for model, settings in config["models"].items():
        for sample in settings["samples"]:
            for task in settings["tasks"]:
                if task != "variant_effect":
                    yield sample, sheet.loc[sample, "molecule"], sheet.loc[sample, "fasta"], model, task


def test_demo_writes_every_task_with_one_row_per_valid_record_in_input_order(demo_run):
    outputs = list(shipped_outputs(demo_run))
    assert {task for *_, task in outputs} == {"embed", "mlm_score", "classify"}
    assert {molecule for _, molecule, *_ in outputs} == {"dna", "protein"}
    assert len(outputs) == 9
    for sample, molecule, fasta, model, task in outputs:
        records, report = read_valid_records(demo_run / fasta, molecule, InputPolicy(on_invalid="skip"))
        assert len(records) == DEMO_SAMPLES[sample]
        merged = demo_run / "results" / sample / model / f"{task}.parquet"
        frame = pd.read_parquet(merged)  # pandas and pyarrow both read it
        assert len(frame) == pq.read_table(merged).num_rows == len(records)
        assert list(frame["id"]) == [r.id for r in records]
        assert list(frame["length"]) == [len(r.sequence) for r in records]
        provenance = read_provenance(merged)
        assert provenance["model"] == model and provenance["task"] == task
        assert provenance["checkpoint_digest"].startswith("sha256:")
        rejects = pd.read_csv(demo_run / "results" / sample / "rejects.tsv", sep="\t")
        assert len(rejects) == len(report.rejected) == report.n_records - len(records)
        if task == "embed":
            assert np.stack(frame["embedding"]).shape == (len(records), 64)
        elif task == "mlm_score":
            assert (frame["pll"] < 0).all() and (frame["n_scored"] == frame["n_tokens"] - 2).all()
        else:
            probabilities = frame[[c for c in frame.columns if c.startswith("prob_")]].to_numpy()
            np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    rejected = pd.read_csv(demo_run / "results/sample_a/rejects.tsv", sep="\t")
    assert list(rejected["record_id"]) == ["seq_a_empty", "seq_a0010", "seq_a_bad"]
    # sample_a's 150 records and sample_b's 60 share dnabert2's pack: shards of distinct sequences across both.
    shards = pd.read_csv(demo_run / "results/packs/dnabert2/manifest.tsv", sep="\t")
    records = pd.read_parquet(demo_run / "results/packs/dnabert2/records.parquet")
    assert len(records) == 150 + 60
    assert shards["n_sequences"].sum() == len(records[["shard", "row"]].drop_duplicates())
    used = records.loc[records["sample"] == "sample_a", "shard"].nunique()
    assert int(read_provenance(demo_run / "results/sample_a/dnabert2/embed.parquet")["n_shards"]) == used
    # LucaOne on DNA and on protein: the token type follows the molecule, so the two runs differ in kind.
    assert read_provenance(demo_run / "results/sample_b/lucaone_dna/embed.parquet")["molecule"] == "dna"
    assert read_provenance(demo_run / "results/proteins/lucaone/embed.parquet")["molecule"] == "protein"
    # ESM-2 on the same proteins: its own architecture, 1,024 tokens from its checkpoint, <cls> and <eos> per row.
    esm2 = read_provenance(demo_run / "results/proteins/esm2/embed.parquet")
    assert esm2["architecture"] == "esm2" and esm2["max_tokens"] == "1024"
    esm2_rows = pd.read_parquet(demo_run / "results/proteins/esm2/embed.parquet")
    assert (esm2_rows["n_tokens"] == esm2_rows["length"] + 2).all()


@pytest.mark.slow
def test_demo_scores_every_variant_of_its_variant_sets(demo_run):
    import pysam

    with pysam.VariantFile(str(demo_run / "resources/demo/variants/calls.vcf.gz")) as calls:
        variants = [(n, a) for n, call in enumerate(calls, 1) for a, _ in enumerate(call.alts or (".",), 1)]
    rows = pd.read_parquet(demo_run / "results/calls/dnabert2_variants/variant_effect.parquet")
    rejects = pd.read_csv(demo_run / "results/calls/dnabert2_variants/variant_effect.rejects.tsv", sep="\t")
    assert len(rows) + len(rejects) == len(variants) == 34
    assert list(zip(rows["record"], rows["allele"], strict=True)) == [v for v in variants if v[0] not in
                                                                      set(rejects["record"])]  # fmt: skip
    assert [reason.split(" ")[0] for reason in rejects["reason"]] == ["REF", "symbolic", "ALT"]
    assert np.isfinite(rows[["llr", "llr_forward", "llr_reverse", "embedding_l2", "change_l2"]]).all().all()
    provenance = read_provenance(demo_run / "results/calls/dnabert2_variants/variant_effect.parquet")
    assert provenance["model"] == "dnabert2_variants" and provenance["variant_window"] == "256"
    assert provenance["n_shards"] == "2"  # max_variants: 16 cut the 31 distinct variants in two
    mutants = pd.read_parquet(demo_run / "results/mutants/lucaone_mutants/variant_effect.parquet")
    refused = pd.read_csv(demo_run / "results/mutants/lucaone_mutants/variant_effect.rejects.tsv", sep="\t")
    table = pd.read_csv(demo_run / "resources/demo/variants/mutations.tsv", sep="\t")
    assert len(mutants) + len(refused) == len(table) and list(refused["record"]) == [11, 12]
    assert mutants["wild_type_marginal"].notna().all() and read_provenance(
        demo_run / "results/mutants/lucaone_mutants/variant_effect.parquet")["molecule"] == "protein"  # fmt: skip


def n_shards(workdir, model):
    return len(pd.read_csv(workdir / "results/packs" / model / "manifest.tsv", sep="\t"))


def n_variant_shards(workdir, model):
    return len(pd.read_csv(workdir / "results/variant_packs" / model / "manifest.tsv", sep="\t"))


def test_resource_report_covers_every_job(demo_run):
    usage = pd.read_csv(demo_run / "results/report/resource_usage.tsv", sep="\t")
    config = yaml.safe_load((demo_run / "config/config.yaml").read_text())
    variant_models = [m for m, s in config["models"].items() if s["tasks"] == ["variant_effect"]]
    models = {m: s for m, s in config["models"].items() if m not in variant_models}
    # One inference job per shard and forward pass: embed and classify of a model share one (lucaone).
    passes = {model: len({"mlm" if t == "mlm_score" else "hidden" for t in s["tasks"]}) for model, s in models.items()}
    counts = usage["rule"].value_counts().to_dict()
    demos = {s[key] for s in config["models"].values() for key in ("checkpoint", "head") if s.get(key)}
    assert counts == {
        "demo_checkpoint": len(demos),  # dnabert2-demo, dnabert2-promoter-demo, lucaone-demo and a head
        "infer_shard": sum(n_shards(demo_run, model) * passes[model] for model in models),
        "merge": len(models),
        "pack": len(models),
        "score_variant_shard": sum(n_variant_shards(demo_run, model) for model in variant_models),
        "merge_variants": len(variant_models),
        "pack_variants": len(variant_models),
    }
    inference = usage[usage["rule"] == "infer_shard"]
    assert set(inference["model"]) == set(models)
    assert set(inference.loc[inference["model"] == "lucaone", "tasks"]) == {"embed,classify"}
    embed = inference[inference["tasks"].str.contains("embed")]
    assert embed["n_sequences"].sum() == 150 + 60 + 30 + 60 + 30  # the demo's samples hold no repeated sequence
    assert (inference["n_computed_tokens"] >= inference["n_tokens"]).all()
    html = (demo_run / "results/report/resource_usage.html").read_text()
    assert html.count("data:image/png;base64,") >= 5
    plots = sorted(p.name for p in (demo_run / "results/report/plots").glob("*.png"))
    assert plots == sorted(
        ["wall_time.png", "max_rss.png", "cpu_efficiency.png", "throughput.png", "padding.png", "load_vs_compute.png",
         "gpu_utilization.png"]
    )  # fmt: skip
    assert (demo_run / "results/report/timeline.png").read_bytes().startswith(b"\x89PNG")


def test_every_job_of_the_run_is_in_the_resource_report(demo_run):
    """Before, the four demo_checkpoint jobs (about 10 s each) were missing: the timeline had unexplained gaps."""
    output = (demo_run / "snakemake.out").read_text()
    assert_every_job_is_reported(demo_run, output)
    assert {rule for rule, _ in reported_jobs(demo_run)} == {
        "demo_checkpoint", "pack", "infer_shard", "merge", "pack_variants", "score_variant_shard", "merge_variants",
    }  # fmt: skip


def test_snakemake_report(demo_run):
    result = snakemake(demo_run, "--report", "report.html", config="config/config.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    # Snakemake guesses each file's type from its name; the workflow declares Parquet's (common.smk).
    assert "Could not detect mimetype" not in result.stdout + result.stderr
    assert "Adding embed.parquet" in result.stdout + result.stderr
    html = (demo_run / "report.html").read_text()
    assert "resource_usage.html" in html and "embed.parquet" in html and "rejects.tsv" in html
    # The resource report's items, each with its caption and label.
    items = ("timeline.png", "throughput.tsv", "warnings.tsv", "gpu_utilization.png", "throughput and cost per model")
    for item in items:
        assert item in html, item


def test_demo_report_warns_about_nothing_that_is_normal(demo_run):
    """Before issue 14 this report opened with 25 warnings for a healthy run (every sharding, merge and
    inference job flagged for CPU efficiency); short and single-threaded I/O jobs are no longer judged."""
    usage = pd.read_csv(demo_run / "results/report/resource_usage.tsv", sep="\t")
    warnings = pd.read_csv(demo_run / "results/report/warnings.tsv", sep="\t")
    assert warnings[warnings["rule"].isin(["pack", "merge"])].empty
    # Inference jobs are judged only from 60 s; the demo's take seconds unless the machine is overloaded.
    allowed = {("infer_shard", "cpu_efficiency")} if (usage["wall_seconds"] >= 60).any() else set()
    assert set(zip(warnings["rule"], warnings["kind"], strict=True)) <= allowed
    # Every job recorded when and where it ran (the logs/benchmarks naming the records rely on holds), and the
    # inference jobs say they had no GPU rather than reporting zeros.
    assert usage["host"].notna().all() and (usage["ended_at"] >= usage["started_at"]).all()
    assert (usage["cpu_count"] == usable_cpus()).all()
    inference = usage[usage["rule"] == "infer_shard"]
    assert (inference["gpu_reason"] == "the work ran on cpu, not on a GPU").all()
    assert inference["gpu_utilization_mean_percent"].isna().all()


def test_demo_report_page_opens_cleanly_in_a_browser(demo_run):
    require_chromium()
    usage = pd.read_csv(demo_run / "results/report/resource_usage.tsv", sep="\t")
    page = demo_run / "results/report/resource_usage.html"

    view = view_report(page, REPO / "tests" / "output" / "resource_report_demo.png")

    assert view.visit.errors == []
    assert [url for url in view.visit.requests if not url.startswith("data:")] == [page.as_uri()]
    assert view.ready and view.job_rows == len(usage)
    assert view.timeline_width == 1200 and view.broken_images == 0 and view.page_width <= 1280
    assert view.warnings == [] or all("CPU efficiency" in text for text in view.warnings)
    assert view.screenshot.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("cores", [1, 2])
def test_the_report_counts_the_slots_a_run_of_known_concurrency_held(tmp_path, cores):
    """With --cores 1 no two jobs ran at once, with --cores 2 at most two threads did (two single-threaded demo
    builds side by side, or one 2-thread inference job). Before, a `--cores 2` demo on a 2-core host was reported as
    4 slots: job starts came from a clock about 1 s early, so back-to-back jobs seemed to overlap."""
    write_sheet(tmp_path, [("promoters", str(DEMO / "promoters.fa"), "dna")])
    models = {
        "dnabert2": {"architecture": "dnabert2", "checkpoint": "resources/checkpoints/dnabert2-demo"},
        "lucaone": {"architecture": "lucaone", "checkpoint": "resources/checkpoints/lucaone-demo"},
    }
    write_config(tmp_path, shards={"target_tokens": 3000}, models=models)
    command = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(tmp_path), "--configfile",
               str(tmp_path / "config.yaml"), "--cores", str(cores)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-5000:]
    assert_every_job_is_reported(tmp_path, result.stdout + result.stderr)
    usage = pd.read_csv(tmp_path / "results/report/resource_usage.tsv", sep="\t")
    assert (usage["rule"] == "infer_shard").sum() >= 2 and set(usage["threads"]) == {1, cores}

    hosts = slot_usage(timed_jobs(usage)).hosts

    assert hosts["peak_threads"].tolist() == [cores]
    slots = max(cores, usable_cpus())  # a host's slots are its cores when the run held fewer
    assert hosts["slots"].tolist() == [slots]
    html = (tmp_path / "results/report/resource_usage.html").read_text()
    assert f"({slots} slot(s) over 1 host(s))" in html


def run_bad_settings(workdir: Path, *args: str, **model_settings) -> tuple[pd.DataFrame, int]:
    """The demo's sample_a through DNABERT-2 with a bad setting: the run's grouped warnings, and its number of
    inference jobs."""
    write_sheet(workdir, [("sample_a", str(DEMO / "sample_a.fa"), "dna")])
    model = {"architecture": "dnabert2", "checkpoint": "resources/checkpoints/dnabert2-demo", **model_settings}
    write_config(workdir, shards={"target_tokens": 20000}, models={"dnabert2": model})
    result = snakemake(workdir, *args)
    assert result.returncode == 0, result.stderr[-5000:]
    usage = pd.read_csv(workdir / "results/report/resource_usage.tsv", sep="\t")
    return pd.read_csv(workdir / "results/report/warnings.tsv", sep="\t"), int((usage["rule"] == "infer_shard").sum())


def test_more_threads_than_cores_gives_exactly_that_warning_with_its_fix(tmp_path):
    cores = usable_cpus()
    threads = max(8, 2 * cores)  # the issue's `threads: 8` on a 2-core machine, wherever this runs
    warnings, jobs = run_bad_settings(tmp_path, "--cores", str(threads), "--set-threads", f"infer_shard={threads}")
    found = warnings[["rule", "kind", "jobs", "of_jobs"]].values.tolist()
    assert jobs > 1 and found == [["infer_shard", "threads_over_cores", jobs, jobs]]
    assert f"{threads} threads on hosts with {cores} usable cores" in warnings.loc[0, "detail"]
    assert f"--set-threads infer_shard={cores}" in warnings.loc[0, "fix"]


def test_a_tiny_batch_budget_gives_exactly_that_warning_with_its_fix(tmp_path):
    warnings, jobs = run_bad_settings(tmp_path, batch_tokens=64)
    found = warnings[["rule", "kind", "jobs", "of_jobs"]].values.tolist()
    assert jobs > 1 and found == [["infer_shard", "small_batches", jobs, jobs]]
    assert warnings.loc[0, "detail"].startswith("batch_tokens 64, about ")
    assert warnings.loc[0, "fix"].startswith("raise models.dnabert2.batch_tokens")


def test_lint_has_no_findings(demo_run):
    result = snakemake(demo_run, "--lint", config="config/config.yaml")
    assert result.returncode == 0, result.stderr
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr


def test_config_change_reruns_only_the_affected_model(demo_run):
    shipped = "config/config.yaml"
    assert planned_jobs(snakemake(demo_run, "-n", config=shipped).stdout) == []  # the completed run is up to date
    changed = yaml.safe_load((demo_run / shipped).read_text())
    changed["models"]["dnabert2"]["batch_tokens"] = 512  # speed only: nothing reruns
    changed["models"]["dnabert2"]["seam_sample"] = 0  # figures only: nothing reruns
    changed["models"]["dnabert2"]["strand"] = "forward"  # embed's default written out: the same setting as null
    changed["models"]["dnabert2_variants"]["strand"] = None  # variant_effect's default (both) left to the null
    (demo_run / "changed.yaml").write_text(yaml.safe_dump(changed))
    assert planned_jobs(snakemake(demo_run, "-n", config="changed.yaml").stdout) == []

    changed["models"]["dnabert2"]["layers"] = [-1, 0]  # shapes dnabert2's embeddings: its hidden pass reruns
    (demo_run / "changed.yaml").write_text(yaml.safe_dump(changed))
    rules = sorted(rule for rule, _ in planned_jobs(snakemake(demo_run, "-n", config="changed.yaml").stdout))
    assert rules == sorted(
        ["all", "merge_dnabert2", "check_samples", "resource_report"] + ["infer_shard"] * n_shards(demo_run, "dnabert2")
    )
    changed["models"]["dnabert2"]["layers"] = None

    changed["models"]["dnabert2"]["pooling"] = "cls"  # shapes dnabert2's numbers, and nothing else's
    (demo_run / "changed.yaml").write_text(yaml.safe_dump(changed))
    result = snakemake(demo_run, "-n", config="changed.yaml")
    assert result.returncode == 0, result.stderr
    jobs = planned_jobs(result.stdout)
    rules = sorted(rule for rule, _ in jobs)
    assert rules == sorted(
        ["all", "merge_dnabert2", "check_samples", "resource_report"] + ["infer_shard"] * n_shards(demo_run, "dnabert2")
    )
    assert {w["model"] for rule, w in jobs if rule == "check_samples"} == {"dnabert2"}
    assert {w["model"] for rule, w in jobs if rule == "infer_shard"} == {"dnabert2"}

    # The flank shapes a variant entry's scores, not how its variants are read and placed: scoring and merge only.
    changed = yaml.safe_load((demo_run / shipped).read_text())
    changed["models"]["dnabert2_variants"]["variant_flank"] = 2
    (demo_run / "changed.yaml").write_text(yaml.safe_dump(changed))
    result = snakemake(demo_run, "-n", config="changed.yaml")
    assert result.returncode == 0, result.stderr
    rules = sorted(rule for rule, _ in planned_jobs(result.stdout))
    assert rules == sorted(
        ["all", "merge_variants_dnabert2_variants", "resource_report"]
        + ["score_variant_shard"] * n_variant_shards(demo_run, "dnabert2_variants")
    )

    # Adding embed to lucaone_pll adds its `hidden` pass; the `mlm` pass it already ran is needed again by the merge
    # (per-shard scores are temporary), and comes back from the result cache without computing anything.
    changed = yaml.safe_load((demo_run / shipped).read_text())
    changed["models"]["lucaone_pll"]["tasks"] = ["mlm_score", "embed"]
    (demo_run / "changed.yaml").write_text(yaml.safe_dump(changed))
    result = snakemake(demo_run, config="changed.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads((demo_run / "results/packs/lucaone_pll/figures/mlm/0000.json").read_text())
    assert figures["n_sequences"] == 0 and figures["n_cached"] == figures["n_records"] == 12
    assert figures["n_computed_tokens"] == 0
    result = snakemake(demo_run, config=shipped)  # back to the shipped config for the tests after this one
    assert result.returncode == 0, result.stderr[-3000:]


def test_invalid_record_stops_the_run_naming_file_record_and_line(tmp_path):
    bad = tmp_path / "bad.fa"
    bad.write_text(">fine\nACGT\n>broken\nAC GT\n")
    write_sheet(tmp_path, [("bad", str(bad), "dna")])
    write_config(tmp_path, on_invalid="error", models={"dnabert2": {"architecture": "dnabert2", "checkpoint": "x/y"}})
    result = snakemake(tmp_path, "results/bad/rejects.tsv")
    assert result.returncode != 0
    log = (tmp_path / "logs/pack/dnabert2.log").read_text()
    reason = f"{bad}: record 'broken' (line 3): whitespace inside the sequence at line 4, column 3"
    assert reason in log
    # What the terminal shows, as the README says: the reason on a line of its own, then Snakemake's three lines
    # for the script's exit status, a timestamp, and its `Error in rule` block.
    lines = result.stderr.splitlines()
    at = next(index for index, line in enumerate(lines) if line.startswith("seqshard: "))
    assert lines[at] == "seqshard: " + log.splitlines()[-1].split(" ERROR seqshard: ", 1)[1] and reason in lines[at]
    assert lines[at + 1] == "RuleException:"
    assert lines[at + 2].startswith("CalledProcessError in file ") and "shard.smk" in lines[at + 2]
    assert lines[at + 3].startswith("Command ") and lines[at + 3].endswith("returned non-zero exit status 1.")
    assert re.fullmatch(r"\[.+\]", lines[at + 4]) and lines[at + 5] == "Error in rule pack_dnabert2:"
    assert lines[at + 6] == "    message: None"


@pytest.mark.slow
def test_variant_sets_in_the_sheet_are_checked_before_any_job(tmp_path):
    vcf = tmp_path / "calls.vcf"
    vcf.write_text("##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n")
    sheet = "sample\tfasta\tmolecule\tvcf\tmutations\nsnps\t{fasta}\t{molecule}\t{vcf}\t\n"
    (tmp_path / "samples.tsv").write_text(sheet.format(fasta=DEMO / "proteins.fa", molecule="protein", vcf=vcf))
    model = {"architecture": "lucaone", "checkpoint": "x/y", "tasks": ["variant_effect"]}
    write_config(tmp_path, models={"m": model})
    result = snakemake(tmp_path, "-n")
    assert result.returncode != 0
    assert "samples.tsv, line 2, column molecule: 'dna' was expected" in result.stdout + result.stderr
    (tmp_path / "samples.tsv").write_text(sheet.format(fasta=DEMO / "sample_a.fa", molecule="dna", vcf=vcf))
    write_config(tmp_path, models={"m": {**model, "tasks": ["embed"], "samples": ["snps"]}})
    result = snakemake(tmp_path, "-n")
    assert result.returncode != 0
    assert "models.m runs on variant sets ['snps'] (samples with a vcf or mutations column) but its tasks do not " \
           "include variant_effect" in result.stdout + result.stderr  # fmt: skip


@pytest.mark.slow
def test_a_bad_variant_stops_the_pack_naming_file_record_and_reason(tmp_path):
    reference = tmp_path / "ref.fa"
    reference.write_text(">c\n" + "ACGT" * 50 + "\n")
    vcf = tmp_path / "calls.vcf"
    vcf.write_text("##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
                   "c\t5\tok\tA\tG\t.\t.\t.\nc\t6\tbad\tA\tG\t.\t.\t.\n")  # fmt: skip
    (tmp_path / "samples.tsv").write_text(f"sample\tfasta\tmolecule\tvcf\nsnps\t{reference}\tdna\t{vcf}\n")
    model = {"architecture": "dnabert2", "checkpoint": "x/y", "tasks": ["variant_effect"]}
    write_config(tmp_path, on_invalid="error", models={"m": model})
    result = snakemake(tmp_path, "results/variant_packs/m/manifest.tsv")
    assert result.returncode != 0
    last = (tmp_path / "logs/pack_variants/m.log").read_text().rstrip("\n").splitlines()[-1]
    assert f"{vcf}: record 2 (c:6 bad A>G): REF A does not match the reference, which has C at position 6" in last
    assert "`on_invalid: skip` in the config" in last and "Traceback" not in result.stderr


def test_both_strands_on_a_protein_sample_fail_before_any_job(tmp_path):
    """`strand: both` reads DNA's other strand: an entry that would embed proteins with it stops at planning, with
    one line naming the entry, the sample and the reason."""
    protein = tmp_path / "p.fa"
    protein.write_text(">p\nMKTAYIAK\n")
    write_sheet(tmp_path, [("prot", str(protein), "protein"), ("sample_b", str(DEMO / "sample_b.fa.gz"), "dna")])
    lucaone = {"architecture": "lucaone", "checkpoint": "resources/checkpoints/lucaone-demo", "strand": "both"}
    write_config(tmp_path, models={"lucaone": lucaone})
    result = snakemake(tmp_path, "-n")
    assert result.returncode != 0
    assert (result.stdout + result.stderr).splitlines() == [
        "seqshard: models.lucaone runs embed on sample prot: strand: both reads DNA's reverse complement; protein "
        "sequences have one strand (use forward)"
    ]


def test_sample_model_mismatch_fails_before_any_job(tmp_path):
    protein = tmp_path / "p.fa"
    protein.write_text(">p\nMKTAYIAK\n")
    write_sheet(tmp_path, [("prot", str(protein), "protein"), ("sample_b", str(DEMO / "sample_b.fa.gz"), "dna")])
    write_config(tmp_path)
    result = snakemake(tmp_path, "-n")
    assert result.returncode != 0
    # One line and nothing after it: no `File ... common.smk` frames (issue 26).
    assert (result.stdout + result.stderr).splitlines() == [
        "seqshard: models.dnabert2 (dnabert2) accepts ['dna'] but would run on prot (protein); list the samples it "
        "should run on under models.dnabert2.samples"
    ]
    assert not (tmp_path / "results").exists()


def small_run_config(workdir: Path) -> None:
    """Two models over three demo samples, with the demo checkpoints the workflow builds itself."""
    sheet = [(name, str(DEMO / file), "dna") for name, file in
             (("sample_a", "sample_a.fa"), ("sample_b", "sample_b.fa.gz"), ("promoters", "promoters.fa"))]  # fmt: skip
    write_sheet(workdir, sheet)
    write_config(
        workdir,
        shards={"target_tokens": 8000},
        models={
            "dnabert2": {"architecture": "dnabert2", "checkpoint": "resources/checkpoints/dnabert2-demo",
                         "tasks": ["embed", "mlm_score"], "samples": ["promoters"]},
            "lucaone_dna": {"architecture": "lucaone", "checkpoint": "resources/checkpoints/lucaone-demo",
                            "samples": ["sample_a", "sample_b"]},
        },
    )  # fmt: skip


def result_bytes(workdir: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(workdir)): path.read_bytes()
        for pattern in ("results/*/*/*.parquet", "results/*/rejects.tsv", "results/*/*/rejects.tsv")
        for path in sorted(workdir.glob(pattern))
        if "packs" not in path.parts
    }


def test_killed_runs_resume_to_byte_identical_results(tmp_path):
    """Two clean runs give byte-identical files; so does a run killed (SIGKILL, whole process group) three
    times at random moments and then resumed with --rerun-incomplete."""
    import os
    import random
    import signal
    import time

    clean, again, killed = tmp_path / "clean", tmp_path / "again", tmp_path / "killed"
    for workdir in (clean, again, killed):
        workdir.mkdir()
        small_run_config(workdir)
    for workdir in (clean, again):
        result = snakemake(workdir)
        assert result.returncode == 0, result.stderr[-3000:]
    expected = result_bytes(clean)
    assert len(expected) == 2 + 2 + 3 + 1 + 2  # parquets (dnabert2: 2 tasks, lucaone_dna: 2 samples), rejects
    assert result_bytes(again) == expected

    rng = random.Random(20261129)
    command = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(killed), "--configfile",
               str(killed / "config.yaml"), "--cores", "2", "--rerun-incomplete"]  # fmt: skip
    for _ in range(3):
        process = subprocess.Popen(command, cwd=killed, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)  # fmt: skip
        time.sleep(rng.uniform(3.0, 20.0))
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        snakemake(killed, "--unlock")
    result = snakemake(killed, "--rerun-incomplete")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result_bytes(killed) == expected


def test_keep_going_finishes_the_other_models_and_reports_what_ran(tmp_path):
    """A bad sample stops the model entries that run on it (their samples are validated and packed together,
    before any inference); with --keep-going the other entries finish, and the resource report covers them."""
    bad = tmp_path / "bad.fa"
    bad.write_text(">fine\nACGTACGT\n>broken\nACGTXACGT\n")
    write_sheet(tmp_path, [("bad", str(bad), "dna"), ("good", str(DEMO / "sample_b.fa.gz"), "dna")])
    checkpoint = "resources/checkpoints/dnabert2-demo"
    write_config(
        tmp_path,
        on_invalid="error",
        models={
            "with_bad": {"architecture": "dnabert2", "checkpoint": checkpoint, "samples": ["bad", "good"]},
            "only_good": {"architecture": "dnabert2", "checkpoint": checkpoint, "samples": ["good"]},
        },
    )
    result = snakemake(tmp_path, "--keep-going")
    assert result.returncode != 0
    assert f"{bad}: record 'broken' (line 3): character 'X'" in (tmp_path / "logs/pack/with_bad.log").read_text()
    assert len(pd.read_parquet(tmp_path / "results/good/only_good/embed.parquet")) == DEMO_SAMPLES["sample_b"]
    assert not (tmp_path / "results/good/with_bad/embed.parquet").exists()
    usage = pd.read_csv(tmp_path / "results/report/resource_usage.tsv", sep="\t")
    assert set(usage.loc[usage["rule"] == "infer_shard", "model"]) == {"only_good"}
    assert "merge" in set(usage["rule"]) and "reports on the jobs that ran" in result.stderr


def truncated_gzip(path: Path) -> Path:
    """A gzip FASTA cut at byte 3000, as an interrupted download leaves it: records can be read before the cut."""
    import gzip
    import random

    rng = random.Random(26)
    text = "".join(f">t{i}\n{''.join(rng.choice('ACGT') for _ in range(300))}\n" for i in range(200))
    path.write_bytes(gzip.compress(text.encode())[:3000])
    return path


def isolation_run_config(workdir: Path, on_invalid: str) -> Path:
    """dnabert2 on two demo samples and an unreadable one (a truncated gzip) in one entry; one LucaOne entry on a DNA
    and a protein sample."""
    bad = truncated_gzip(workdir / "bad.fa.gz")
    write_sheet(workdir, [("good_b", str(DEMO / "sample_b.fa.gz"), "dna"), ("bad", str(bad), "dna"),
                          ("promoters", str(DEMO / "promoters.fa"), "dna"),
                          ("proteins", str(DEMO / "proteins.fa"), "protein")])  # fmt: skip
    write_config(
        workdir,
        on_invalid=on_invalid,
        shards={"target_tokens": 8000},
        models={
            "dnabert2": {"architecture": "dnabert2", "checkpoint": "resources/checkpoints/dnabert2-demo",
                         "samples": ["good_b", "bad", "promoters"]},
            "lucaone_mixed": {"architecture": "lucaone", "checkpoint": "resources/checkpoints/lucaone-demo",
                              "samples": ["promoters", "proteins"]},
        },
    )  # fmt: skip
    return bad


def test_under_skip_an_unreadable_sample_fails_alone_and_a_fixed_file_reruns_only_its_entry(tmp_path):
    """Issue 26: with `on_invalid: skip`, one unreadable file among a model entry's samples no longer stops the
    entry: the readable samples are packed, scored and merged, the bad one gets empty files that say so, its own
    line on the terminal, in its rejects and in the resource report, and the run ends non-zero. One LucaOne entry
    on DNA and protein merges both (before, the merge refused shards of two molecules)."""
    bad = isolation_run_config(tmp_path, "skip")
    result = snakemake(tmp_path, "--keep-going")
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    told = [line for line in result.stderr.splitlines() if line.startswith("seqshard: ")]
    assert len(told) == 1 and re.fullmatch(
        rf"seqshard: sample bad \({re.escape(str(bad))}\): truncated gzip file: it ends at byte 3000 .*; its "
        r"results are empty \(models\.dnabert2: the entry's other 2 sample\(s\) were merged\)",
        told[0],
    ), told
    assert "Error in rule check_samples" in result.stderr
    for sample, rows in (("good_b", DEMO_SAMPLES["sample_b"]), ("promoters", DEMO_SAMPLES["promoters"])):
        merged = tmp_path / "results" / sample / "dnabert2" / "embed.parquet"
        assert len(pd.read_parquet(merged)) == rows and read_provenance(merged)["status"] == "ok"
    empty = tmp_path / "results/bad/dnabert2/embed.parquet"
    provenance = read_provenance(empty)
    assert pq.read_table(empty).num_rows == 0 and provenance["status"] == "unreadable"
    assert provenance["error"].startswith(f"{bad}: truncated gzip file: it ends at byte 3000")
    rejects = pd.read_csv(tmp_path / "results/bad/rejects.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert rejects[["file", "record_id", "line"]].values.tolist() == [[str(bad), "", "0"]]
    summary = pd.read_csv(tmp_path / "results/packs/dnabert2/merged.tsv", sep="\t")
    assert summary[["sample", "rows", "status"]].values.tolist() == [
        ["good_b", 60, "ok"], ["bad", 0, "unreadable"], ["promoters", 16, "ok"]
    ]  # fmt: skip
    assert not (tmp_path / "results/packs/dnabert2/checked.txt").exists()
    assert (tmp_path / "results/packs/lucaone_mixed/checked.txt").exists()
    warnings = pd.read_csv(tmp_path / "results/report/warnings.tsv", sep="\t")
    unreadable = warnings[warnings["kind"] == "unreadable_sample"]
    assert unreadable[["rule", "jobs", "of_jobs", "unit", "warning"]].values.tolist() == [
        ["pack", 1, 3, "samples", "sample bad of models.dnabert2 could not be read"]
    ]
    # One LucaOne entry, two molecules: each sample merged with its own molecule.
    for sample, molecule, rows in (("promoters", "dna", 16), ("proteins", "protein", 30)):
        merged = tmp_path / "results" / sample / "lucaone_mixed" / "embed.parquet"
        assert len(pd.read_parquet(merged)) == rows and read_provenance(merged)["molecule"] == molecule
    assert set(pd.read_csv(tmp_path / "results/packs/lucaone_mixed/manifest.tsv", sep="\t")["molecule"]) == {
        "dna", "protein"
    }  # fmt: skip

    # Run again unchanged: only the check, which fails again. Fix the file: only the entries that read it rerun.
    assert [rule for rule, _ in planned_jobs(snakemake(tmp_path, "-n").stdout)] == ["check_samples", "all"]
    bad.write_bytes((DEMO / "promoters.fa").read_bytes().replace(b">", b">fixed_"))
    result = snakemake(tmp_path, "-n")  # (the inference jobs are known once the pack has run)
    rules = {rule for rule, _ in planned_jobs(result.stdout)}
    assert rules == {"pack_dnabert2", "merge_dnabert2", "check_samples", "resource_report", "all"}
    untouched = {path: path.stat().st_mtime_ns for path in (tmp_path / "results").glob("*/lucaone_mixed/*")}
    result = snakemake(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {path: path.stat().st_mtime_ns for path in untouched} == untouched
    fixed = tmp_path / "results/bad/dnabert2/embed.parquet"
    assert len(pd.read_parquet(fixed)) == 16 and read_provenance(fixed)["status"] == "ok"
    assert (tmp_path / "results/packs/dnabert2/checked.txt").exists()


def test_under_error_an_unreadable_sample_stops_its_entry_naming_the_samples_held_back(tmp_path):
    bad = isolation_run_config(tmp_path, "error")
    result = snakemake(tmp_path, "--keep-going")
    assert result.returncode != 0
    told = [line for line in result.stderr.splitlines() if line.startswith("seqshard: ")]
    held_back = (
        "seqshard: held back: the 2 other sample(s) of this model entry, packed with it: good_b, promoters; fix the "
        "file(s) named, or set `on_invalid: skip` in the config so that a bad record or file stops only itself"
    )
    assert (
        len(told) == 2
        and told[0].startswith(f"seqshard: sample bad: {bad}: truncated gzip file")
        and told[1] == held_back
    )
    log = (tmp_path / "logs/pack/dnabert2.log").read_text().splitlines()
    assert log[-1].endswith("ERROR " + held_back) and "Traceback" not in "\n".join(log)
    assert (
        not (tmp_path / "results/good_b/dnabert2").exists()
        and not (tmp_path / "results/packs/dnabert2/checked.txt").exists()
    )
    # The other entry (promoters and proteins through LucaOne) finished; no check job runs under `error`.
    assert len(pd.read_parquet(tmp_path / "results/proteins/lucaone_mixed/embed.parquet")) == 30
    assert not (tmp_path / "logs/check_samples").exists()
