"""Rule scripts' failures: an expected error is one line (log's last line and terminal), a bug keeps its traceback."""

import os
import subprocess
import sys

SCRIPT = """
import sys
from seqshard.runtime.logs import rule_script

with rule_script(sys.argv[1]):
    import logging
    logging.getLogger("seqshard").info("working")
    if sys.argv[2] == "expected":
        raise FileNotFoundError("resources/checkpoints/x: no config.json;\\nsee the README, 'Checkpoints'")
    if sys.argv[2] == "bug":
        {}["missing key"]
    if sys.argv[2] == "several":
        error = ValueError("sample a: a.fa: truncated\\nsample b: b.fa: empty file")
        error.lines = ["sample a: a.fa: truncated", "sample b: b.fa: empty file"]
        raise error
"""


def run_script(tmp_path, mode):
    log = tmp_path / f"{mode}.log"
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(log), mode], capture_output=True, text=True)
    return result, log.read_text()


def test_an_expected_error_ends_with_one_line_and_no_traceback(tmp_path):
    result, log = run_script(tmp_path, "expected")
    reason = "resources/checkpoints/x: no config.json; | see the README, 'Checkpoints'"
    assert result.returncode == 1
    assert result.stderr == f"\nseqshard: {reason}\n" and result.stdout == ""
    assert log.splitlines()[-1].endswith(f"ERROR seqshard: {reason}")
    assert "working" in log and "Traceback" not in log + result.stderr


def test_an_unexpected_error_keeps_its_traceback_in_the_log(tmp_path):
    result, log = run_script(tmp_path, "bug")
    assert result.returncode == 1
    pointer = f"\nseqshard: unexpected KeyError: 'missing key'; the traceback is in {tmp_path / 'bug.log'}\n"
    assert result.stderr == pointer
    assert "Traceback (most recent call last)" in log and "KeyError: 'missing key'" in log


def test_a_successful_script_leaves_the_terminal_quiet(tmp_path):
    result, log = run_script(tmp_path, "fine")
    assert (result.returncode, result.stderr) == (0, "") and "working" in log


def test_the_reason_gets_a_line_of_its_own_after_a_message_still_missing_its_newline(tmp_path):
    """Snakemake writes a message, then its newline: a job failing in between still shows its reason on its own
    line, as a user reading the terminal (and a search for '^seqshard: ') finds it."""
    log = tmp_path / "interleaved.log"
    command = f'printf "    output: results/x" >&2; "{sys.executable}" -c "$SCRIPT" {log} expected; printf "\\n" >&2'
    env = {**os.environ, "SCRIPT": SCRIPT}
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env)
    lines = result.stderr.splitlines()
    assert lines[0] == "    output: results/x" and lines[1].startswith("seqshard: resources/checkpoints/x: no")


def test_an_error_listing_several_faults_tells_each_on_its_own_line(tmp_path):
    """One line per unreadable sample (check_samples, a pack's SampleErrors): each its own `seqshard:` line on the
    terminal and its own ERROR line in the log, the last fault last."""
    result, log = run_script(tmp_path, "several")
    assert result.returncode == 1
    assert result.stderr == "\nseqshard: sample a: a.fa: truncated\nseqshard: sample b: b.fa: empty file\n"
    errors = [line.split(" ERROR seqshard: ")[1] for line in log.splitlines() if " ERROR " in line]
    assert errors == ["sample a: a.fa: truncated", "sample b: b.fa: empty file"]
    assert "Traceback" not in log
