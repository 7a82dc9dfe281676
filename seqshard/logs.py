"""Logging set-up shared by the command line and the workflow's rule scripts."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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


@contextmanager
def one_line_errors(*expected: type[BaseException]) -> Iterator[None]:
    """In a rule script, log an expected error as its one-line message and exit 1, without a traceback.

    The job still fails, so Snakemake's retries apply; unexpected errors keep their traceback.
    """
    try:
        yield
    except expected as error:
        logging.getLogger("seqshard").error("%s", error)
        sys.exit(1)
