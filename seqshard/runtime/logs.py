"""Logging set-up and failure reporting shared by the command line and the workflow's rule scripts.

An expected failure (bad input, a missing file or checkpoint, a setting that cannot work) ends with one line
stating the reason, where the user looks: the last line of the log and the terminal. Anything else is a bug
and keeps its full traceback.
"""

from __future__ import annotations

import io
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

log = logging.getLogger("seqshard")

# What seqshard raises for bad input and settings (ValueError and its subclasses FastaFormatError and
# FastaValidationError), for missing or unreadable files and checkpoints (OSError: FileNotFoundError,
# CheckpointNotFoundError, PermissionError) and for an unusable device or GPU pool (RuntimeError).
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, RuntimeError)


def setup_logging(log_file: Path | str | None = None, verbose: bool = False) -> None:
    """Send log records (and, for rule scripts, all of stderr) to `log_file`, or to stderr when None.

    Rule scripts pass `snakemake.log[0]` so that tracebacks from torch or pyarrow land in the rule's log too.
    """
    if log_file is not None:
        sys.stderr = open(log_file, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - lives as long as the job
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def one_line(error: BaseException) -> str:
    """The error's message on one line (a multi-line message's lines joined), or its type when it has none."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " | ".join(lines) if lines else type(error).__name__


def reasons(error: BaseException) -> list[str]:
    """The lines an expected error is told in: one per fault when it lists several (a `lines` attribute: say, one
    per sample that cannot be read), else its message on one line."""
    lines = [
        " | ".join(part.strip() for part in line.splitlines() if part.strip()) for line in getattr(error, "lines", ())
    ]
    return [line for line in lines if line] or [one_line(error)]


def log_failure(error: BaseException) -> list[str]:
    """Log an expected error as one line per fault (its traceback only at debug level) and return those lines."""
    told = reasons(error)
    log.debug("where the error was raised:", exc_info=error)
    for line in told:
        log.error("%s", line)
    return told


@contextmanager
def rule_script(log_file: Path | str) -> Iterator[None]:
    """Run a rule script's body with logging to `log_file` and failures made readable.

    An expected error ends the job with exit status 1 and one line, the reason, as the log's last line and on
    the terminal (the original stderr: Snakemake's own output for a local job, the job's output file on a
    cluster); no traceback. An error that lists several faults (`lines`) gets a line for each. Any other
    exception keeps its traceback in the log, and the terminal gets one line pointing there.
    """
    terminal = sys.stderr
    setup_logging(log_file)
    try:
        yield
    except EXPECTED_ERRORS as error:
        _tell(terminal, "\n".join(f"seqshard: {line}" for line in log_failure(error)))
        raise SystemExit(1) from None
    except Exception as error:
        where = f"the traceback is in {log_file}"
        _tell(terminal, f"seqshard: unexpected {type(error).__name__}: {one_line(error)}; {where}")
        raise


def _tell(terminal: TextIO, line: str) -> None:
    """One line in a single write, on a line of its own: jobs running side by side share Snakemake's terminal,
    where two lines written in pieces could interleave, and Snakemake writes a message and its newline in two
    writes, so a job's line can arrive after a message's last line and before its newline. The line starts with
    a newline of its own for that reason (at worst an empty line before it)."""
    text = f"\n{line}\n"
    terminal.flush()
    try:
        os.write(terminal.fileno(), text.encode())
    except (AttributeError, OSError, io.UnsupportedOperation):  # not a real file, e.g. captured in a test
        terminal.write(text)
        terminal.flush()
