"""`GET /model/info`: the loaded model, the task types it can do and the settings that shape its numbers."""

from __future__ import annotations

from fastapi import APIRouter, Request

from seqshard.serve.dependencies import Service
from seqshard.serve.routes import errors, reply
from seqshard.serve.schemas import ModelInfo, ModelInfoResponse

router = APIRouter(tags=["model"])


@router.get("/model/info", response_model=ModelInfoResponse, responses=errors(401, 429, 503))
async def model_info(request: Request, service: Service) -> ModelInfoResponse:
    return reply(request, ModelInfoResponse, "model information", ModelInfo.model_validate(service.info()))
