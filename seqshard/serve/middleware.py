"""One ASGI middleware around the whole API: a request id for every request, the body size cap (enforced before
anything parses the body), request metrics by route, and the INTERNAL_ERROR envelope for unexpected failures.

A plain ASGI middleware rather than Starlette's BaseHTTPMiddleware: it adds no task or stream per request. The
body cap is not FastAPI's `max_body_size`: Starlette's limiter answers a declared oversize body with a plain-text
413 that replaces whatever the application sends, so the answer would leave the API's envelope.
"""

from __future__ import annotations

import logging
import time
from uuid import uuid4

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from seqshard.serve.errors import ApiError, error_response
from seqshard.serve.metrics import ServerMetrics
from seqshard.serve.schemas import ErrorCode

log = logging.getLogger(__name__)


class ApiMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, metrics: ServerMetrics) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    def _too_large(self, size: str) -> ApiError:
        return ApiError(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"the request body ({size}) is larger than this server accepts ({self.max_body_bytes} bytes)",
            "send fewer or shorter sequences per request",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid4()
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message.setdefault("headers", []).append((b"x-request-id", str(request_id).encode()))
            await send(message)

        received = 0

        async def capped_receive() -> Message:
            # Bodies sent without Content-Length (chunked) are counted as they arrive; FastAPI passes the
            # ApiError (an HTTPException) through its body reader unchanged.
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise self._too_large(f"over {self.max_body_bytes} bytes so far")
            return message

        self.metrics.in_flight.inc()
        try:
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
                await error_response(request_id, self._too_large(f"{length.decode(errors='replace')} bytes"))(
                    scope, receive, send_with_id
                )
            else:
                await self.app(scope, capped_receive, send_with_id)
        except Exception:
            log.exception("internal error answering %s %s (request %s)", scope["method"], scope["path"], request_id)
            if not response_started:
                error = ApiError(ErrorCode.INTERNAL_ERROR, "internal server error", f"request {request_id}")
                await error_response(request_id, error)(scope, receive, send_with_id)
        finally:
            self.metrics.in_flight.dec()
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"  # never the raw path: bounded label values
            self.metrics.observe_request(endpoint, scope["method"], status, time.perf_counter() - started)
