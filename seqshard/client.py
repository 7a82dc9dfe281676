"""A Python client of `seqshard serve` (httpx), and `seqshard predict`: a FASTA file through a server into the
same Parquet schema as `seqshard embed` / `score`, so served and batch results are interchangeable.

    from seqshard.client import SeqshardClient
    with SeqshardClient("http://127.0.0.1:8000", api_key="...") as client:
        vector = client.predict("ACGTAGGCTA", "embedding")["embedding"]

Answers 429 (rate limited) and 503 (queue full, model loading) are retried after the server's Retry-After
(else after an exponential back-off), at most `max_retries` times; refused connections are retried by httpx's
transport. Other errors raise `ServerError` with the API's code, message and details.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any

import httpx

log = logging.getLogger(__name__)

RETRY_STATUSES = (429, 503)


class ServerError(RuntimeError):
    """An error answer of the server: HTTP status, API code (e.g. INVALID_SEQUENCE), message and details."""

    def __init__(self, status: int, code: str, message: str, details: str | None, request_id: str | None) -> None:
        self.status, self.code, self.message, self.details, self.request_id = status, code, message, details, request_id
        super().__init__(f"{code} ({status}): {message}" + (f": {details}" if details else ""))


def _retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds: a number of seconds or an HTTP date."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class SeqshardClient:
    """Calls one server. Thread-safe (one httpx client with a connection pool); use as a context manager."""

    def __init__(
        self, url: str, *, api_key: str | None = None, timeout: float = 300.0, max_retries: int = 8,
        max_retry_wait: float = 60.0, connect_retries: int = 3,
    ) -> None:  # fmt: skip
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.url = url.rstrip("/")
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, transport=httpx.HTTPTransport(retries=connect_retries)
        )

    def __enter__(self) -> SeqshardClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, body: dict[str, Any] | None = None, *, ok: Sequence[int] = ()) -> Any:
        """The `data` of the answer; statuses in `ok` are returned like 2xx (GET /health answers 503 while loading)."""
        for attempt in range(self.max_retries + 1):
            try:
                response = self._http.request(method, path, json=body)
            except httpx.TransportError as error:  # refused connections were already retried by the transport
                raise ConnectionError(f"{self.url}{path}: {type(error).__name__}: {error}") from error
            if response.status_code in RETRY_STATUSES and response.status_code not in ok and attempt < self.max_retries:
                wait = _retry_after_seconds(response.headers.get("Retry-After"))
                wait = min(self.max_retry_wait, wait if wait is not None else 0.5 * 2**attempt)
                log.info("%s %s answered %d; retrying in %.1f s", method, path, response.status_code, wait)
                time.sleep(wait)
                continue
            return self._data(response, ok)
        raise AssertionError("unreachable: the last attempt returns or raises")

    @staticmethod
    def _data(response: httpx.Response, ok: Sequence[int]) -> Any:
        try:
            payload = response.json()
        except ValueError:
            raise ServerError(
                response.status_code, "INVALID_RESPONSE", "the answer is not JSON", response.text[:200], None
            ) from None
        if response.is_success or response.status_code in ok:
            return payload["data"]
        error = payload.get("error") or {}
        raise ServerError(
            response.status_code, error.get("code", "UNKNOWN"), payload.get("message", response.reason_phrase),
            error.get("details"), payload.get("request_id"),
        )  # fmt: skip

    def health(self) -> dict[str, Any]:
        return self.request("GET", "/health", ok=(503,))

    def model_info(self) -> dict[str, Any]:
        return self.request("GET", "/model/info")

    def metrics(self) -> dict[str, Any]:
        return self.request("GET", "/metrics")

    def predict(self, sequence: str, task_type: str = "embedding", **options: Any) -> dict[str, Any]:
        return self.request("POST", "/predict", {"sequence": sequence, "task_type": task_type, "options": options})

    def predict_batch(self, sequences: Sequence[str], task_type: str = "embedding", **options: Any) -> dict[str, Any]:
        body = {"sequences": list(sequences), "task_type": task_type, "options": options}
        return self.request("POST", "/predict/batch", body)

    def wait_until_healthy(self, timeout: float = 300.0, interval: float = 0.5) -> dict[str, Any]:
        """Poll /health until the model serves; raises when the load failed or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                health = self.health()
            except ConnectionError:
                health = {"status": "starting"}
            if health["status"] == "healthy":
                return health
            if health["status"] == "unhealthy":
                raise ServerError(
                    503, "MODEL_NOT_LOADED", "the server could not load its model", health.get("reason"), None
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.url} not healthy after {timeout:.0f} s (status {health['status']})")
            time.sleep(interval)


# --- seqshard predict: FASTA in, Parquet out -------------------------------------------------------------------


def _bounded_map(pool: ThreadPoolExecutor, function: Any, items: Iterator[Any], window: int) -> Iterator[Any]:
    """`pool.map` in input order with at most `window` calls in flight, so a huge input is never read ahead."""
    pending: deque[Future[Any]] = deque()
    for item in items:
        pending.append(pool.submit(function, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    while chunk := list(islice(items, size)):
        yield chunk


def predict_fasta(
    url: str, fasta: Path | str, out: Path | str, *, task_type: str = "embedding", molecule: str | None = None,
    api_key: str | None = None, batch_size: int = 100, concurrency: int = 4,
) -> int:  # fmt: skip
    """Predict every record of `fasta` on the server at `url` and write the Parquet `out`; returns the row count.

    Records are validated here with the server's molecule and ambiguity codes (the FASTA reader of the batch
    path: a faulty file is refused with every fault listed), then sent as /predict/batch requests of
    `batch_size` sequences, `concurrency` at a time, and written in input order, one row group per request.
    """
    from seqshard.io.fasta import iter_valid_records
    from seqshard.io.parquet import TableWriter, task_table
    from seqshard.io.sequences import InputPolicy
    from seqshard.serve.columns import columns_from_predictions
    from seqshard.serve.schemas import SEQSHARD_TASK, TaskType

    task = SEQSHARD_TASK[TaskType(task_type)]
    with SeqshardClient(url, api_key=api_key) as client:
        info = client.model_info()
        if task_type not in info["tasks"]:
            raise ValueError(f"{url} cannot do {task_type}; it can do {', '.join(info['tasks'])}")
        settings = info["settings"]
        molecule = molecule or info["input_format"]["default_molecule"]
        # The server's own input policy, so that the file is checked here as the server checks each sequence.
        policy = InputPolicy(
            allowed_ambiguity=str(settings["allowed_ambiguity"]), gaps=settings.get("gaps", "reject"),
            internal_stops=settings.get("internal_stops", "reject"),
        )  # fmt: skip
        records = iter_valid_records(fasta, molecule, policy)
        metadata = {**settings, "task": task, "task_type": task_type, "molecule": molecule, "served_from": url}

        def send(chunk: list[Any]) -> tuple[list[Any], list[dict[str, Any]]]:
            sequences = [record.sequence for record in chunk]
            data = client.predict_batch(sequences, task_type, molecule=molecule)
            return chunk, data["predictions"]

        with TableWriter(out) as writer, ThreadPoolExecutor(max_workers=concurrency) as pool:
            for chunk, predictions in _bounded_map(pool, send, _chunks(records, batch_size), 2 * concurrency):
                columns = columns_from_predictions(task, [record.id for record in chunk], predictions)
                base = {name: columns.pop(name) for name in ("id", "length", "n_tokens", "n_windows", "truncated")}
                writer.write(task_table(task, int(info["embedding_dimension"]), base, columns, metadata))
        return writer.n_rows
