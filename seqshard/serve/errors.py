"""Errors as the API reports them: one exception type carrying code, status and message, one envelope writer,
and the handlers that turn FastAPI's own errors (validation, 404, 405) into the same envelope."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from uuid import UUID, uuid4

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from seqshard.serve.schemas import MAX_LISTED, ErrorCode, ErrorDetail, ErrorResponse

log = logging.getLogger(__name__)

STATUS = {
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.INVALID_SEQUENCE: 400,
    ErrorCode.SEQUENCE_TOO_LONG: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.REQUEST_TIMEOUT: 408,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.TOO_MANY_TOKENS: 413,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.HEADERS_TOO_LARGE: 431,
    ErrorCode.PREDICTION_FAILED: 500,
    ErrorCode.INTERNAL_ERROR: 500,
    ErrorCode.OVERLOADED: 503,
    ErrorCode.MODEL_NOT_LOADED: 503,
    ErrorCode.SHUTTING_DOWN: 503,
}
_CODE_OF_STATUS = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.METHOD_NOT_ALLOWED, 413: ErrorCode.PAYLOAD_TOO_LARGE}
CLIENT_GONE_STATUS = 499  # nginx's "client closed request": counted in the metrics, never sent


class ApiError(HTTPException):
    """An error with its API code; the status follows from the code. An HTTPException, so FastAPI passes it
    through unchanged from anywhere, the request body reader included."""

    def __init__(
        self, code: ErrorCode, message: str, details: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(STATUS[code], detail=message, headers=headers)
        self.code = code
        self.message = message
        self.details = details


class ClientGone(Exception):
    """The client closed its connection before its answer was ready; its work was cancelled and nothing is sent."""


def retry_after(seconds: float) -> dict[str, str]:
    """A Retry-After header: whole seconds, at least 1."""
    return {"Retry-After": str(max(1, int(-(-seconds // 1))))}


def error_response(request_id: UUID | None, error: ApiError) -> JSONResponse:
    body = ErrorResponse(
        message=error.message,
        error=ErrorDetail(code=error.code, details=error.details),
        timestamp=datetime.now(UTC),
        request_id=request_id or uuid4(),
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=error.status_code, headers=error.headers)


def request_id_of(request: Request) -> UUID | None:
    return getattr(request.state, "request_id", None)


def _describe_validation(error: RequestValidationError) -> str:
    """The first few of pydantic's errors as `location: message`, e.g. `body.options.batch_size: Input should be
    ...`, and how many more there are: an answer never grows with the request."""
    problems = error.errors()
    parts = []
    for item in problems[:MAX_LISTED]:
        location = ".".join(str(part) for part in item.get("loc", ()))
        parts.append(f"{location}: {item.get('msg', 'invalid')}")
    if len(problems) > MAX_LISTED:
        parts.append(f"and {len(problems) - MAX_LISTED} more problems")
    return "; ".join(parts)


def install_handlers(app: FastAPI) -> None:
    """Every error FastAPI or a route raises leaves as the error envelope."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(request_id_of(request), error)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        details = _describe_validation(error)
        bad_json = any(item.get("type") == "json_invalid" for item in error.errors())
        message = "the request body is not valid JSON" if bad_json else "the request does not match the API"
        if request.method == "POST" and "json" not in request.headers.get("content-type", ""):
            details += "; send the body as JSON with the header `Content-Type: application/json`"
        return error_response(request_id_of(request), ApiError(ErrorCode.INVALID_REQUEST, message, details))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        code = _CODE_OF_STATUS.get(error.status_code, ErrorCode.INVALID_REQUEST)
        message = str(error.detail)
        wrapped = ApiError(code, message, headers=dict(error.headers or {}))
        wrapped.status_code = error.status_code
        return error_response(request_id_of(request), wrapped)
