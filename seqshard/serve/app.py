"""The FastAPI application factory and the server that runs it.

Start-up order: uvicorn begins answering at once; the model loads in a thread meanwhile (`/health` says
`loading`, predictions get 503 MODEL_NOT_LOADED), then a worker thread runs the batches. SIGTERM (or Ctrl-C)
stops accepting connections, lets the requests in flight finish (up to `graceful_timeout`), then stops the
worker and the Prometheus exporter.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from seqshard import __version__
from seqshard.runtime.monitoring import GpuSampler
from seqshard.serve.dependencies import PROTECTED
from seqshard.serve.errors import install_handlers
from seqshard.serve.limits import SlidingWindowLimiter
from seqshard.serve.metrics import ServerMetrics
from seqshard.serve.middleware import ApiMiddleware
from seqshard.serve.queue import BatchQueue
from seqshard.serve.routes import health, metrics, model, predict
from seqshard.serve.service import ModelService
from seqshard.serve.settings import ServeSettings

log = logging.getLogger(__name__)

DESCRIPTION = """\
Sequence-model predictions (DNABERT-2, LucaOne, ESM-2, Nucleotide Transformer) over HTTP, computed by the same
code as `seqshard embed` / `score`.
Every response is a JSON envelope: `{success, message, data, timestamp, request_id}`; errors carry
`error: {code, details}` instead of `data`. With `--api-key-file`, every endpoint but `/health` needs
`Authorization: Bearer <key>`.
"""


def create_app(settings: ServeSettings, gpu_sampler: GpuSampler | None = None) -> FastAPI:
    """The application for `settings`; the model starts loading when the application starts."""
    sampler = gpu_sampler or GpuSampler()
    server_metrics = ServerMetrics(sampler)
    service = ModelService(settings, server_metrics)
    queue = BatchQueue(
        service.run_batch,
        batch_tokens=settings.batch_tokens,
        max_wait_seconds=settings.max_wait_ms / 1000.0,
        max_sequences=settings.max_queue,
        on_depth=server_metrics.queue_depth.set,
    )

    def worker_setup() -> None:
        import torch

        torch.set_num_threads(max(1, settings.threads))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sampler.start()
        threading.Thread(target=service.load, name="seqshard-model-loader", daemon=True).start()
        queue.start(before=worker_setup)
        try:
            yield
        finally:
            queue.stop()  # uvicorn has let the requests in flight finish by now
            sampler.stop()

    app = FastAPI(title="seqshard", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.service = service
    app.state.queue = queue
    app.state.metrics = server_metrics
    app.state.api_key = settings.api_key()
    app.state.limiter = SlidingWindowLimiter(settings.rate_limit)
    install_handlers(app)
    app.add_middleware(ApiMiddleware, max_body_bytes=settings.max_body_bytes, metrics=server_metrics)
    app.include_router(health.router)
    for router in (model.router, predict.router, metrics.router):
        app.include_router(router, dependencies=PROTECTED)
    _document_errors_as_they_are(app)
    return app


def _document_errors_as_they_are(app: FastAPI) -> None:
    """Validation errors answer 400 INVALID_REQUEST in the error envelope, not FastAPI's 422: drop the 422
    responses FastAPI adds to the OpenAPI document so that it describes what the server really sends."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
        return app.openapi_schema  # type: ignore[return-value]  # generate() stored it

    app.openapi = openapi  # type: ignore[method-assign]


def run_server(settings: ServeSettings, *, access_log: bool = False) -> None:
    """Serve until SIGTERM/SIGINT; the Prometheus exporter runs beside the API on --metrics-port."""
    import uvicorn
    from prometheus_client import start_http_server

    app = create_app(settings)
    exporter = None
    if settings.metrics_port is not None:
        try:
            exporter, _ = start_http_server(
                settings.metrics_port, addr=settings.host, registry=app.state.metrics.registry
            )
        except OSError as error:
            raise RuntimeError(f"--metrics-port {settings.metrics_port} on {settings.host}: {error}") from error
        log.info("Prometheus metrics on http://%s:%d/metrics", settings.host, settings.metrics_port)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        timeout_graceful_shutdown=settings.graceful_timeout,
        access_log=access_log,
        log_config=None,  # keep seqshard's logging set-up
    )
    try:
        uvicorn.Server(config).run()
    finally:
        if exporter is not None:
            exporter.shutdown()
            exporter.server_close()
