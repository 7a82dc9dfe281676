"""One ASGI middleware around the whole API: a request id for every request, the body size cap and the body
timeout (enforced before anything parses the body), request metrics by endpoint, and the envelope for what
would otherwise leave without one: unexpected failures (INTERNAL_ERROR) and requests still running when the
graceful shutdown ends (SHUTTING_DOWN).

A plain ASGI middleware rather than Starlette's BaseHTTPMiddleware: it adds no task or stream per request. The
body cap is not FastAPI's `max_body_size`: Starlette's limiter answers a declared oversize body with a plain-text
413 that replaces whatever the application sends, so the answer would leave the API's envelope.

Endpoint labels are bounded: the path template of the route the request's path belongs to, whatever the method
or the outcome (a 405, a 413 refused before routing, a 408), and `(no route)` for paths the API does not have;
the HTTP layer's own refusals are counted by `seqshard.serve.protocol` as `(http)`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from uuid import uuid4

from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from seqshard.serve.errors import CLIENT_GONE_STATUS, ApiError, ClientGone, error_response
from seqshard.serve.metrics import ServerMetrics
from seqshard.serve.schemas import ErrorCode

log = logging.getLogger(__name__)

NO_ROUTE = "(no route)"


class ApiMiddleware:
    def __init__(
        self, app: ASGIApp, *, max_body_bytes: int, body_timeout: float, metrics: ServerMetrics, paths: list[str]
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        self.metrics = metrics
        self.paths = [(compile_path(path)[0], path) for path in paths]  # the API's path templates

    def _too_large(self, size: str) -> ApiError:
        return ApiError(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"the request body ({size}) is larger than this server accepts ({self.max_body_bytes} bytes)",
            "send fewer or shorter sequences per request",
        )

    def _too_slow(self, received: int) -> ApiError:
        return ApiError(
            ErrorCode.REQUEST_TIMEOUT,
            f"the request body did not arrive within {self.body_timeout:g} s ({received} bytes received)",
            "send the whole body at once (--body-timeout)",
            headers={"Connection": "close"},
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
        body_done = False
        deadline = time.monotonic() + self.body_timeout

        async def capped_receive() -> Message:
            # Bodies sent without Content-Length (chunked) are counted as they arrive, and the whole body must
            # arrive within --body-timeout; FastAPI passes the ApiError (an HTTPException) through its body
            # reader unchanged. Once the body is in, the next message is the disconnect, whenever it comes.
            nonlocal received, body_done
            if body_done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise self._too_slow(received) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
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
        except ClientGone:
            status = CLIENT_GONE_STATUS
            log.info("%s %s: the client left before its answer was ready (request %s); work cancelled",
                     scope["method"], scope["path"], request_id)  # fmt: skip
        except asyncio.CancelledError:
            # uvicorn cancels the requests still running when --graceful-timeout ends; they get a JSON 503 rather
            # than its plain-text 500 and a traceback, and the task ends normally, which is all uvicorn waits for.
            if not response_started:
                error = ApiError(ErrorCode.SHUTTING_DOWN, "the server stopped before this request was answered",
                                 f"request {request_id}; --graceful-timeout ended")  # fmt: skip
                await error_response(request_id, error)(scope, receive, send_with_id)
        except Exception:
            log.exception("internal error answering %s %s (request %s)", scope["method"], scope["path"], request_id)
            if not response_started:
                error = ApiError(ErrorCode.INTERNAL_ERROR, "internal server error", f"request {request_id}")
                await error_response(request_id, error)(scope, receive, send_with_id)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.observe_request(self._endpoint(scope["path"]), scope["method"], status,
                                         time.perf_counter() - started)  # fmt: skip

    def _endpoint(self, path: str) -> str:
        """The template of the API path `path` is, whatever the method or the outcome; NO_ROUTE for any other path
        (never the raw path: label values stay bounded)."""
        return next((template for pattern, template in self.paths if pattern.match(path)), NO_ROUTE)
