"""The resource report page as a reader's browser shows it: a synthetic run of 10,000 jobs rendered and opened in
headless Chromium (tests/browser.py). The shipped demo's page is opened the same way in test_workflow.py.

Screenshots land in tests/output/ for people to look at: resource_report_10000_jobs.png here.
"""

from pathlib import Path

import pandas as pd
import pytest
from browser import Browser, require_chromium, view_report

from seqshard.reports import Prices, write_resource_report
from seqshard.reports.synthetic import write_synthetic_run

SCREENSHOTS = Path(__file__).resolve().parent / "output"
N_JOBS = 10_000

pytestmark = pytest.mark.slow  # a browser


@pytest.fixture(scope="module")
def big_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of a synthetic 10,000-job run on 16 hosts, with prices set."""
    require_chromium()
    directory = tmp_path_factory.mktemp("synthetic")
    run = write_synthetic_run(directory, N_JOBS)
    out = directory / "report"
    write_resource_report(
        run.benchmark_root, run.benchmarks, run.figures, out / "resource_usage.tsv", out / "resource_usage.html",
        plots_dir=out / "plots", log_root=run.log_root, prices=Prices(cpu_hour=0.05, gpu_hour=2.5),
        timeline_out=out / "timeline.png", throughput_out=out / "throughput.tsv", warnings_out=out / "warnings.tsv",
    )  # fmt: skip
    return out


def test_a_10000_job_report_opens_cleanly_and_shows_the_timeline_and_tables(big_report: Path) -> None:
    view = view_report(big_report / "resource_usage.html", SCREENSHOTS / "resource_report_10000_jobs.png")

    assert view.visit.errors == []
    # Nothing fetched but the page and its own embedded images.
    assert [url for url in view.visit.requests if not url.startswith("data:")] == [
        (big_report / "resource_usage.html").as_uri()
    ]
    assert view.ready and view.job_rows == N_JOBS
    assert view.sections == ["summary", "warnings", "timeline", "models", "plots", "jobs"]
    assert view.timeline_width == 1200 and view.broken_images == 0
    assert view.page_width <= 1280  # readable at 1280 px: nothing pushes the page sideways
    warnings = pd.read_csv(big_report / "warnings.tsv", sep="\t")
    assert len(view.warnings) == len(warnings) >= 1  # the slow-GPU model gets its one grouped line
    assert any(text.startswith("infer_shard: GPU busy less than 50 % of the time in") for text in view.warnings)
    assert len(pd.read_csv(big_report / "throughput.tsv", sep="\t")) == 3
    assert view.screenshot.read_bytes().startswith(b"\x89PNG") and view.screenshot.stat().st_size > 50_000


def test_the_job_table_sorts_and_filters_in_the_browser(big_report: Path) -> None:
    table = pd.read_csv(big_report / "resource_usage.tsv", sep="\t")
    page = big_report / "resource_usage.html"
    with Browser() as browser:
        assert browser.open(page).errors == []
        header = 'Array.from(document.querySelectorAll("#job-table th")).find(th => th.textContent === "wall (s)")'
        first_wall = 'parseFloat(document.querySelector("#job-table tbody tr").cells[4].getAttribute("data-v"))'
        browser.evaluate(f"{header}.click()")
        assert browser.evaluate(first_wall) == pytest.approx(table["wall_seconds"].min())
        browser.evaluate(f"{header}.click()")
        assert browser.evaluate(first_wall) == pytest.approx(table["wall_seconds"].max())
        assert browser.evaluate(f"{header}.getAttribute('aria-sort')") == "descending"

        browser.evaluate(
            'const f = document.getElementById("job-filter"); f.value = "merge";f.dispatchEvent(new Event("input"))'
        )
        shown = browser.evaluate('document.querySelectorAll("#job-table tbody tr:not([hidden])").length')
        assert shown == (table["rule"] == "merge").sum() == 3  # one merge per model entry
        assert browser.evaluate('document.getElementById("job-count").textContent') == f"{shown} of 10,000 jobs"
