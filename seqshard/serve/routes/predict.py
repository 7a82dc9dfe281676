"""`POST /predict` and `POST /predict/batch`: validate, admit (the token cap), queue for the model worker, answer in
input order; if the client leaves first, its work is cancelled."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable

from fastapi import APIRouter, Depends, Request

from seqshard.engine.runner import RunCancelled
from seqshard.serve.dependencies import Service, limit_batch_sequences
from seqshard.serve.errors import ApiError, ClientGone, retry_after
from seqshard.serve.queue import Job, PredictionError, QueueFull
from seqshard.serve.routes import errors, reply
from seqshard.serve.schemas import (
    BatchItem,
    BatchPredictions,
    BatchPredictRequest,
    BatchPredictResponse,
    ErrorCode,
    Prediction,
    PredictOptions,
    PredictRequest,
    PredictResponse,
)
from seqshard.serve.service import ModelService

router = APIRouter(tags=["predict"])
ERRORS = errors(400, 401, 408, 413, 429, 500, 503)


async def _client_gone(request: Request) -> None:
    """Returns when the client closes its connection. The body has been read by now, so the server's next
    message on this request is the disconnect (or nothing, until the answer is sent)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _outcome(request: Request, job: Job) -> list[object]:
    """The job's results; ClientGone (the job abandoned, so its batch stops) if the client leaves first."""
    watcher = asyncio.ensure_future(_client_gone(request))
    try:
        await asyncio.wait((job.future, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not job.future.done():  # the client left, or this task was cancelled (the server stopping)
            job.abandon()
            job.future.cancel()
        watcher.cancel()
    if job.future.cancelled():
        raise ClientGone()
    return job.future.result()


async def _predict(
    request: Request, service: ModelService, key: Hashable, sequences: list[str], options: PredictOptions
) -> list[dict[str, object]]:
    started = time.perf_counter()
    await service.admit(key, sequences)
    try:
        results = await _outcome(request, request.app.state.queue.submit(key, sequences))
    except QueueFull as full:
        raise ApiError(
            ErrorCode.OVERLOADED, "the server's queue is full", str(full), headers=retry_after(full.retry_after)
        ) from None
    except PredictionError as error:
        raise ApiError(ErrorCode.PREDICTION_FAILED, "the prediction failed for this request", str(error)) from None
    except RunCancelled:
        raise ApiError(ErrorCode.SHUTTING_DOWN, "the server stopped before this prediction was done") from None
    elapsed = time.perf_counter() - started
    task_type = key[0]  # type: ignore[index]
    for result in results:
        result["task_type"] = task_type  # type: ignore[index]
        result["processing_time"] = elapsed  # type: ignore[index]
        if not options.return_confidence:
            result.pop("confidence", None)  # type: ignore[union-attr]
    return results  # type: ignore[return-value]


@router.post("/predict", response_model=PredictResponse, response_model_exclude_none=True, responses=ERRORS)
async def predict(body: PredictRequest, request: Request, service: Service) -> PredictResponse:
    """One sequence. Concurrent requests are batched together by the server."""
    key, sequences = service.check_request([body.sequence], body.task_type, body.options, single=True)
    (result,) = await _predict(request, service, key, sequences, body.options)
    return reply(request, PredictResponse, "prediction done", Prediction.model_validate(result))


@router.post(
    "/predict/batch", response_model=BatchPredictResponse, response_model_exclude_none=True, responses=ERRORS,
    dependencies=[Depends(limit_batch_sequences)],
)  # fmt: skip
async def predict_batch(body: BatchPredictRequest, request: Request, service: Service) -> BatchPredictResponse:
    """Up to --max-batch-sequences sequences; predictions come back in input order, each with its sequence.
    `options.batch_size` is advisory: the server forms its own batches from all concurrent requests."""
    started = time.perf_counter()
    key, sequences = service.check_request(
        body.sequences, body.task_type, body.options, single=False, variants=body.variants
    )
    results = await _predict(request, service, key, sequences, body.options)
    items = [
        BatchItem.model_validate({**result, "sequence": sequence})
        for result, sequence in zip(results, body.sequences, strict=True)
    ]
    data = BatchPredictions(
        predictions=items, processing_time=time.perf_counter() - started, total_sequences=len(items)
    )
    return reply(request, BatchPredictResponse, f"{len(items)} predictions done", data)
