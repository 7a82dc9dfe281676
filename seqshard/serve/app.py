"""The FastAPI application factory and the server that runs it.

Start-up order: uvicorn begins answering at once; the model loads in a thread meanwhile (`/health` says
`loading`, predictions get 503 MODEL_NOT_LOADED), then a worker thread runs the batches. SIGTERM (or Ctrl-C)
stops accepting connections, lets the requests in flight finish (up to `graceful_timeout`); those still running
then get 503 SHUTTING_DOWN, their batch stops before its next model batch, and the process exits without
waiting for the model worker (a daemon thread), then the Prometheus exporter stops.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.routing import Route

from seqshard import __version__
from seqshard.runtime.monitoring import GpuSampler
from seqshard.serve.dependencies import protected
from seqshard.serve.errors import install_handlers
from seqshard.serve.limits import SlidingWindowLimiter
from seqshard.serve.metrics import ServerMetrics
from seqshard.serve.middleware import ApiMiddleware
from seqshard.serve.openapi import describe_this_server
from seqshard.serve.protocol import ConnectionLimits, protocol_class
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
        service.run_batch,  # type: ignore[arg-type]
        batch_tokens=settings.batch_tokens,
        max_wait_seconds=settings.max_wait_ms / 1000.0,
        max_sequences=settings.max_queue,
        on_depth=server_metrics.queue_depth.set,
        on_cancelled=server_metrics.cancelled_sequences.inc,
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
            # uvicorn has let the requests in flight finish, or cancelled those still running at the graceful
            # timeout: a batch still computing stops before its next model batch, and is not waited for.
            queue.stop()
            service.tokenizer_thread.shutdown(wait=False, cancel_futures=True)
            sampler.stop()

    # No slash redirects: a path has one spelling, and anything else is a 404 in the envelope.
    app = FastAPI(
        title="seqshard", version=__version__, description=DESCRIPTION, lifespan=lifespan, redirect_slashes=False
    )
    app.state.service = service
    app.state.queue = queue
    app.state.metrics = server_metrics
    app.state.api_key = settings.api_key()
    app.state.limiter = SlidingWindowLimiter(settings.rate_limit)
    install_handlers(app)
    app.include_router(health.router)
    for router in (model.router, predict.router, metrics.router):
        app.include_router(router, dependencies=protected(app.state.api_key))
    paths = [route.path for route in app.router.routes if isinstance(route, Route)]  # /openapi.json, /docs, ...
    paths += [route.path for router in (health.router, model.router, predict.router, metrics.router)
              for route in router.routes if isinstance(route, Route)]  # fmt: skip
    app.add_middleware(
        ApiMiddleware, max_body_bytes=settings.max_body_bytes, body_timeout=settings.body_timeout,
        metrics=server_metrics, paths=paths,
    )  # fmt: skip
    _document_this_server(app, service, settings)
    return app


def _document_this_server(app: FastAPI, service: ModelService, settings: ServeSettings) -> None:
    """The OpenAPI document of this server, with this model and these flags (`describe_this_server`); built
    once the model has loaded (before, a general one, not kept)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = describe_this_server(generate(), service, settings)
            if service.loaded is None:
                app.openapi_schema = None  # the task types are known once the model has loaded
                return schema
        return app.openapi_schema  # type: ignore[return-value]  # generate() stored it

    app.openapi = openapi  # type: ignore[method-assign]


def run_server(settings: ServeSettings, *, access_log: bool = False) -> None:
    """Serve until SIGTERM/SIGINT; the Prometheus exporter runs beside the API on --metrics-port."""
    import uvicorn
    from prometheus_client import start_http_server

    # The DNABERT-2 tokenizer's thread pool, sized as `seqshard embed` sizes it: its default (one thread per core)
    # spins beside the model worker for the server's small batches.
    os.environ.setdefault("RAYON_NUM_THREADS", str(max(1, settings.threads)))
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
    limits = ConnectionLimits(
        settings.max_header_bytes, settings.max_headers, settings.header_timeout, settings.body_timeout
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=protocol_class(limits, app.state.metrics),  # header limits and timeouts (seqshard.serve.protocol)
        timeout_keep_alive=settings.idle_timeout,  # type: ignore[arg-type]  # seconds, fractions work
        timeout_graceful_shutdown=settings.graceful_timeout,  # type: ignore[arg-type]
        access_log=access_log,
        log_config=None,  # keep seqshard's logging set-up
    )
    try:
        uvicorn.Server(config).run()
    finally:
        if exporter is not None:
            exporter.shutdown()
            exporter.server_close()
