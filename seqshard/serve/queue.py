"""Gather concurrent requests into batches for one model worker thread.

Requests are queued as jobs (one request's sequences, for one task and molecule). A single worker thread, never
the event loop, takes the oldest job, waits at most `max_wait` for more jobs of the same task and molecule until
their estimated tokens fill the token budget, and runs them as one call of the batch code path, which tokenizes
them together (one tokenizer call per batch, not per request) and sorts the inputs by length into token-budget
batches (`TokenBudgetBatcher`). While it computes, new jobs wait, so under load a batch fills at once and nobody
waits for company. Tokens are estimated from residues with the tokens-per-residue ratio of the batches computed
so far (about 0.2 for DNABERT-2's BPE, 1 for LucaOne).

A job whose client has gone (`Job.abandon`) is skipped if it has not started; if it has, the run stops before
its next model batch once every job of the batch has gone (`RunCancelled`), so the worker moves on to work
somebody waits for. A failed batch is run again job by job, so a request that cannot be predicted fails alone
and the other requests of its batch get their results.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from seqshard.engine.runner import RunCancelled

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """More sequences would be waiting or computing than the queue holds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"queue full; retry in {retry_after:.1f} s")
        self.retry_after = retry_after


class PredictionError(Exception):
    """One job's prediction failed (the message says why); other jobs of its batch are unaffected."""


@dataclass
class Job:
    key: Hashable  # jobs with the same key may share a batch (task and molecule)
    sequences: list[str]
    future: asyncio.Future[list[object]]
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.monotonic)
    gone: threading.Event = field(default_factory=threading.Event)

    @property
    def residues(self) -> int:
        return sum(len(sequence) for sequence in self.sequences)

    def abandon(self) -> None:
        """Nobody waits for this job any more (its client left): skip it, or stop its batch if it is alone."""
        self.gone.set()


# run(key, sequences of each job, should_stop) -> (results of each job, model tokens computed without padding);
# it may raise RunCancelled once should_stop says True
RunBatch = Callable[[Hashable, list[list[str]], Callable[[], bool]], tuple[list[list[object]], int]]


class BatchQueue:
    """Owns the worker thread; `submit` is called from the event loop and awaits the job's results."""

    def __init__(
        self, run: RunBatch, *, batch_tokens: int, max_wait_seconds: float, max_sequences: int,
        on_depth: Callable[[int], None] | None = None, on_cancelled: Callable[[int], None] | None = None,
    ) -> None:  # fmt: skip
        self.run = run
        self.batch_tokens = batch_tokens
        self.max_wait = max_wait_seconds
        self.max_sequences = max_sequences
        self.on_depth = on_depth or (lambda depth: None)
        self.on_cancelled = on_cancelled or (lambda sequences: None)  # sequences whose work was dropped
        self.tokens_per_residue = 1.0
        self._first_batch = True
        self._last_batch_end = 0.0
        self.sequences_per_second: float | None = None
        self._pending: deque[Job] = deque()
        self._depth = 0  # sequences waiting or computing
        self._condition = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def depth(self) -> int:
        return self._depth

    def start(self, before: Callable[[], None] | None = None) -> None:
        """Start the worker; `before` runs first in its thread (torch's thread count is set there)."""
        self._thread = threading.Thread(target=self._work, args=(before,), name="seqshard-model-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 0.2) -> None:
        """Stop the worker: it takes no new job, stops a running batch before its next model batch, and is waited
        for at most `timeout` seconds (a daemon thread, it cannot keep the process alive)."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.info("the model worker is still in a model batch; not waiting for it")
            self._thread = None

    def submit(self, key: Hashable, sequences: list[str]) -> Job:
        """Queue a job (raises QueueFull at once); await `job.future` for its results (or PredictionError)."""
        loop = asyncio.get_running_loop()
        job = Job(key, sequences, loop.create_future(), loop)
        with self._condition:
            if self._stopping:
                raise QueueFull(retry_after=5.0)
            if self._depth + len(sequences) > self.max_sequences:
                rate = self.sequences_per_second
                raise QueueFull(retry_after=self._depth / rate if rate else 1.0)
            self._depth += len(sequences)
            self._pending.append(job)
            self._condition.notify()
        self.on_depth(self._depth)
        return job

    # --- the worker thread ---------------------------------------------------------------------------------

    def _estimate(self, job: Job) -> float:
        return job.residues * self.tokens_per_residue + 2 * len(job.sequences)

    def _take(self) -> list[Job] | None:
        """The next batch: the oldest job and the following jobs with its key, up to the token budget."""
        with self._condition:
            while not self._pending and not self._stopping:
                self._condition.wait()
            if self._stopping:
                return None
            first = self._pending[0]
            # The wait also counts from the end of the previous batch: while the model computed, the event loop
            # had little time (the worker holds the GIL between torch calls) to read the requests that arrived,
            # and this pause lets it queue them, so that under load batches fill instead of staying small.
            deadline = max(first.enqueued, self._last_batch_end) + self.max_wait
            while not self._stopping:
                gathered = sum(self._estimate(job) for job in self._pending if job.key == first.key)
                remaining = deadline - time.monotonic()
                if gathered >= self.batch_tokens or remaining <= 0:
                    break
                self._condition.wait(remaining)
            batch, kept, tokens = [], deque(), 0.0
            for job in self._pending:
                fits = not batch or tokens + self._estimate(job) <= self.batch_tokens
                if job.key == first.key and fits:
                    batch.append(job)
                    tokens += self._estimate(job)
                else:
                    kept.append(job)
            self._pending = kept
            return batch

    def _work(self, before: Callable[[], None] | None) -> None:
        if before is not None:
            before()
        while (batch := self._take()) is not None:
            live = [job for job in batch if not job.gone.is_set()]  # clients that hung up get nothing
            started = time.monotonic()
            outcomes = self._run(live) if live else []
            self._last_batch_end = time.monotonic()
            elapsed = self._last_batch_end - started
            done = [job for job, outcome in zip(live, outcomes, strict=True) if not isinstance(outcome, RunCancelled)]
            if done and elapsed > 0:
                rate = sum(len(job.sequences) for job in done) / elapsed
                self.sequences_per_second = rate if self.sequences_per_second is None else (
                    0.8 * self.sequences_per_second + 0.2 * rate
                )  # fmt: skip
            dropped = sum(len(job.sequences) for job in batch) - sum(len(job.sequences) for job in done)
            if dropped:
                self.on_cancelled(dropped)
            with self._condition:
                self._depth -= sum(len(job.sequences) for job in batch)
            self.on_depth(self._depth)
            for job, outcome in zip(live, outcomes, strict=True):
                job.loop.call_soon_threadsafe(_settle, job.future, outcome)

    def _should_stop(self, jobs: list[Job]) -> Callable[[], bool]:
        return lambda: self._stopping or all(job.gone.is_set() for job in jobs)

    def _run(self, jobs: list[Job]) -> list[object]:
        """Each job's results, or the PredictionError that job alone raises, or RunCancelled for jobs whose batch
        was stopped (every client gone, or the server stopping)."""
        try:
            results, tokens = self.run(jobs[0].key, [job.sequences for job in jobs], self._should_stop(jobs))
        except RunCancelled as cancelled:
            log.info("stopped a batch of %d request(s) nobody waits for any more (%s)", len(jobs), cancelled)
            return [cancelled for _ in jobs]
        except Exception as error:  # noqa: BLE001 - any failure: find out whose it is, job by job
            if len(jobs) == 1:
                log.warning("prediction failed: %s", error, exc_info=not isinstance(error, ValueError))
                return [PredictionError(str(error))]
            log.info("a batch of %d requests failed (%s); running them one by one", len(jobs), error)
            return [outcome for job in jobs for outcome in self._run([job])]
        residues = sum(job.residues for job in jobs)
        if residues:
            ratio = max(tokens - 2 * sum(len(job.sequences) for job in jobs), 1) / residues
            self.tokens_per_residue = ratio if self._first_batch else 0.8 * self.tokens_per_residue + 0.2 * ratio
            self._first_batch = False
        return list(results)


def _settle(future: asyncio.Future[list[object]], outcome: object) -> None:
    if future.done():  # cancelled meanwhile: the client went away
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)  # type: ignore[arg-type]
