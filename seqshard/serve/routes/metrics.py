"""`GET /metrics`: request counts and latency, GPU and memory, host CPU/memory/disk/network, as JSON. The
Prometheus text format is served on --metrics-port."""

from __future__ import annotations

from fastapi import APIRouter, Request

from seqshard.serve.routes import errors, reply
from seqshard.serve.schemas import Metrics, MetricsResponse

router = APIRouter(tags=["status"])


@router.get("/metrics", response_model=MetricsResponse, responses=errors(401, 429))
async def metrics(request: Request) -> MetricsResponse:
    return reply(request, MetricsResponse, "metrics", Metrics.model_validate(request.app.state.metrics.summary()))
