"""The API's routers, one module per concern, and what they share: the success envelope and the documented
error responses."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypeVar

from fastapi import Request

from seqshard.serve.errors import request_id_of
from seqshard.serve.schemas import Envelope, ErrorResponse

E = TypeVar("E", bound=Envelope[Any])

_DESCRIPTIONS = {
    400: "INVALID_REQUEST, INVALID_SEQUENCE or SEQUENCE_TOO_LONG",
    401: "UNAUTHORIZED: missing or wrong API key (servers started with --api-key-file)",
    408: "REQUEST_TIMEOUT: the body did not arrive within --body-timeout",
    413: "PAYLOAD_TOO_LARGE (the body is over the size cap) or TOO_MANY_TOKENS (over --max-request-tokens)",
    429: "RATE_LIMITED, with Retry-After",
    500: "PREDICTION_FAILED (this request only) or INTERNAL_ERROR",
    503: "OVERLOADED (queue full, with Retry-After), MODEL_NOT_LOADED or SHUTTING_DOWN",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The error envelopes a route may answer with, for the OpenAPI document."""
    return {status: {"model": ErrorResponse, "description": _DESCRIPTIONS[status]} for status in statuses}


def reply(request: Request, envelope: type[E], message: str, data: object) -> E:
    """`data` in the success envelope, with the request's id and the time."""
    return envelope(message=message, data=data, timestamp=datetime.now(UTC), request_id=request_id_of(request))
