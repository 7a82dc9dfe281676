"""Dependencies shared by the routes: the model service, the API key, the rate limit and the batch size, each
checked once here instead of in every route."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from seqshard.serve.errors import ApiError, retry_after
from seqshard.serve.schemas import ErrorCode
from seqshard.serve.service import ModelService

_bearer = HTTPBearer(auto_error=False, description="the key in the server's --api-key-file, when it has one")


async def get_service(request: Request) -> ModelService:
    # async: FastAPI would run a plain function in a worker thread, a thread hop on every request for nothing
    return request.app.state.service


Service = Annotated[ModelService, Depends(get_service)]


async def require_api_key(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """With --api-key-file, `Authorization: Bearer <key>` must carry the key (compared in constant time)."""
    key: str | None = request.app.state.api_key
    if key is None:
        return
    if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), key.encode()):
        raise ApiError(
            ErrorCode.UNAUTHORIZED,
            "missing or wrong API key",
            "send the header `Authorization: Bearer <key>`",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def rate_limit(request: Request) -> None:
    """At most --rate-limit requests per minute from one client address (429 with Retry-After beyond)."""
    limiter = request.app.state.limiter
    client = request.client.host if request.client else "unknown"
    wait = limiter.check(client)
    if wait is not None:
        raise ApiError(
            ErrorCode.RATE_LIMITED,
            f"more than {limiter.limit} requests in a minute from {client}",
            f"retry in {wait:.1f} s",
            headers=retry_after(wait),
        )


async def limit_batch_sequences(request: Request) -> None:
    """At most --max-batch-sequences in `sequences`, counted before the body is validated: pydantic would check
    (and describe) every element of a 520,000-element array first. FastAPI has parsed the JSON body already
    (Starlette keeps it), and solves dependencies before it validates the body against the model."""
    if "json" not in request.headers.get("content-type", "") or not await request.body():
        return  # FastAPI refuses it as it is
    try:
        body = await request.json()
    except (ValueError, RecursionError):
        return  # FastAPI reports what it cannot parse
    sequences = body.get("sequences") if isinstance(body, dict) else None
    limit = request.app.state.service.settings.max_batch_sequences
    if isinstance(sequences, list) and len(sequences) > limit:
        raise ApiError(
            ErrorCode.INVALID_REQUEST,
            f"{len(sequences)} sequences in one batch; at most {limit}",
            "send several batches (the server batches concurrent requests by itself)",
        )


def protected(api_key: str | None) -> list[object]:
    """Every route but /health: the rate limit first, so that guessing keys is rate limited too; the key only
    when the server has one (so the OpenAPI document declares Bearer authentication only then)."""
    checks = [Depends(rate_limit)]
    return checks + [Depends(require_api_key)] if api_key is not None else checks
