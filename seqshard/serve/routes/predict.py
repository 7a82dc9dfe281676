"""`POST /predict` and `POST /predict/batch`: validate, queue for the model worker, answer in input order."""

from __future__ import annotations

import time
from collections.abc import Hashable

from fastapi import APIRouter, Request

from seqshard.serve.dependencies import Service
from seqshard.serve.errors import ApiError, retry_after
from seqshard.serve.queue import PredictionError, QueueFull
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
    TaskType,
)

router = APIRouter(tags=["predict"])
ERRORS = errors(400, 401, 413, 429, 500, 503)


async def _predict(
    request: Request, key: Hashable, sequences: list[str], task_type: TaskType, options: PredictOptions
) -> list[dict[str, object]]:
    started = time.perf_counter()
    try:
        results = await request.app.state.queue.submit(key, sequences)
    except QueueFull as full:
        raise ApiError(
            ErrorCode.OVERLOADED, "the server's queue is full", str(full), headers=retry_after(full.retry_after)
        ) from None
    except PredictionError as error:
        raise ApiError(ErrorCode.PREDICTION_FAILED, "the prediction failed for this request", str(error)) from None
    elapsed = time.perf_counter() - started
    for result in results:
        result["task_type"] = task_type
        result["processing_time"] = elapsed
        if not options.return_confidence:
            result.pop("confidence", None)
    return results


@router.post("/predict", response_model=PredictResponse, response_model_exclude_none=True, responses=ERRORS)
async def predict(body: PredictRequest, request: Request, service: Service) -> PredictResponse:
    """One sequence. Concurrent requests are batched together by the server."""
    key, sequences = service.check_request([body.sequence], body.task_type, body.options, single=True)
    (result,) = await _predict(request, key, sequences, body.task_type, body.options)
    return reply(request, PredictResponse, "prediction done", Prediction.model_validate(result))


@router.post("/predict/batch", response_model=BatchPredictResponse, response_model_exclude_none=True, responses=ERRORS)
async def predict_batch(body: BatchPredictRequest, request: Request, service: Service) -> BatchPredictResponse:
    """Up to --max-batch-sequences sequences; predictions come back in input order, each with its sequence.
    `options.batch_size` is advisory: the server forms its own batches from all concurrent requests."""
    started = time.perf_counter()
    key, sequences = service.check_request(
        body.sequences, body.task_type, body.options, single=False, variants=body.variants
    )
    results = await _predict(request, key, sequences, body.task_type, body.options)
    items = [
        BatchItem.model_validate({**result, "sequence": sequence})
        for result, sequence in zip(results, body.sequences, strict=True)
    ]
    data = BatchPredictions(
        predictions=items, processing_time=time.perf_counter() - started, total_sequences=len(items)
    )
    return reply(request, BatchPredictResponse, f"{len(items)} predictions done", data)
