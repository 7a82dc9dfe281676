"""`GET /health`: whether the model is loading, healthy or unhealthy. Never needs the API key."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from seqshard.serve.dependencies import Service
from seqshard.serve.routes import reply
from seqshard.serve.schemas import Health, HealthResponse

router = APIRouter(tags=["status"])


@router.head("/health", include_in_schema=False)  # load balancers that probe with HEAD: the same status, no body
@router.get(
    "/health",
    response_model=HealthResponse,
    response_model_exclude_none=True,
    responses={503: {"model": HealthResponse, "description": "loading or unhealthy (the load failed: `reason`)"}},
)
async def health(request: Request, response: Response, service: Service) -> HealthResponse:
    """200 when the model serves; 503 while it loads or when it could not be loaded (for load balancers and
    container health checks)."""
    data = Health.model_validate(service.health())
    if data.status != "healthy":
        response.status_code = 503
    return reply(request, HealthResponse, f"model {data.status}", data)
