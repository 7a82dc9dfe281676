"""The HTTP connection as the server runs it: uvicorn's httptools protocol with limits on what one connection may
hold up, answered in the API's envelope where HTTP allows.

uvicorn (0.55) bounds none of these with httptools: a request head of any size is read whole (h11's
`h11_max_incomplete_event_size` exists, but h11 is the slower parser), there is no limit on the number of headers,
and a connection that never sends a byte, or sends its head a byte at a time, stays open for good. Its keep-alive
timeout only runs between two requests. So this subclass adds:

- `--idle-timeout`: uvicorn's keep-alive timer, armed from the moment a connection opens as well as after each
  answer: a connection with no request in progress is closed (silently: there is no request to answer);
- `--header-timeout`: from the first byte of a request to the end of its head, or 408 REQUEST_TIMEOUT;
- `--max-header-bytes` and `--max-headers`: 431 HEADERS_TOO_LARGE, refused before the parser holds more;
- `--body-timeout`, for bodies nobody reads: the API's middleware answers a slow body with 408 while a route
  reads it; a body still incomplete a second after that (a 404, say, whose body the application never reads)
  ends its connection here, with 408 if no answer was sent yet;
- malformed requests get a JSON 400 INVALID_REQUEST instead of uvicorn's plain-text one.

Each answer ends the connection and is counted in the metrics under the endpoint `(http)`. The end is a
lingering close, as web servers do it: the answer goes out with a FIN, what the client still sends is read and
dropped for a moment, then the socket closes. Closing at once, with the client's unread bytes in the socket,
would make the kernel reset the connection, and the client would lose the answer.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import uuid4

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from seqshard.serve.metrics import ServerMetrics
from seqshard.serve.schemas import ErrorCode, ErrorDetail, ErrorResponse

HTTP_LAYER = "(http)"  # the endpoint label of requests refused before they reach the application
LINGER_SECONDS = 1.0  # how long a refused connection's further bytes are read and dropped before it closes


@dataclass(frozen=True)
class ConnectionLimits:
    max_header_bytes: int
    max_headers: int
    header_timeout: float
    body_timeout: float


class _Refused(Exception):
    """Raised from a parser callback to stop parsing; the refusal is already chosen."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with `limits` (set on the subclass `protocol_class` makes)."""

    limits: ConnectionLimits
    metrics: ServerMetrics

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._reading_head = True  # no request head yet, or between a request's end and the next head
        self._head_bytes = 0
        self._headers = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._refusal: tuple[int, ErrorCode, str, str] | None = None
        self._refused = False  # answered and closing: what arrives now is dropped

    # --- connection and bytes ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if not self._reading_head:
            super().data_received(data)
            return
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_too_slow)
        room = self.limits.max_header_bytes - self._head_bytes
        if len(data) <= room:
            self._head_bytes += len(data)
            super().data_received(data)
            return
        super().data_received(data[:room])  # the head may end inside this part
        if self.transport.is_closing() or self._refused:
            return
        if self._reading_head:
            self._refuse(
                431, ErrorCode.HEADERS_TOO_LARGE,
                f"the request head is larger than this server accepts ({self.limits.max_header_bytes} bytes)",
                "send shorter headers and URL (--max-header-bytes)",
            )  # fmt: skip
            return
        super().data_received(data[room:])

    # --- parser callbacks ----------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._headers = 0
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers += 1
        if self._headers > self.limits.max_headers:
            self._refusal = (
                431, ErrorCode.HEADERS_TOO_LARGE, f"more than {self.limits.max_headers} headers in one request",
                "send fewer headers (--max-headers)",
            )  # fmt: skip
            raise _Refused  # the parser stops; uvicorn then calls send_400_response, which sends this refusal
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._head_bytes = 0
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().on_headers_complete()
        if not self.parser.should_upgrade():  # a body may follow; on_message_complete ends its timer
            grace = self.limits.body_timeout + 1.0  # the middleware answers first when a route reads the body
            self._body_timer = self.loop.call_later(grace, self._body_too_slow)

    def on_message_complete(self) -> None:
        self._reading_head = True
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().on_message_complete()

    # --- refusals ------------------------------------------------------------------------------------------

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._reading_head and not self.transport.is_closing() and not self._refused:
            self._refuse(
                408, ErrorCode.REQUEST_TIMEOUT,
                f"the request head did not arrive within {self.limits.header_timeout:g} s",
                "send the request line and headers at once (--header-timeout)",
            )  # fmt: skip

    def _body_too_slow(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or self._refused:
            return
        if self.cycle is not None and not self.cycle.response_started:
            self._refuse(
                408, ErrorCode.REQUEST_TIMEOUT,
                f"the request body did not arrive within {self.limits.body_timeout:g} s",
                "send the whole body at once (--body-timeout)",
            )  # fmt: skip
        else:
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request the parser refuses: the envelope instead of plain text."""
        refusal = self._refusal or (
            400,
            ErrorCode.INVALID_REQUEST,
            "malformed HTTP request",
            "the request could not be parsed as HTTP/1.1",
        )
        self._refuse(*refusal)

    def _refuse(self, status: int, code: ErrorCode, message: str, details: str) -> None:
        """Answer `status` in the envelope, close the connection, count it."""
        request_id = uuid4()
        body = ErrorResponse(
            message=message, error=ErrorDetail(code=code, details=details), timestamp=datetime.now(UTC),
            request_id=request_id,
        ).model_dump_json().encode()  # fmt: skip
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [b"content-type: application/json\r\ncontent-length: ", str(len(body)).encode(),
                 b"\r\nx-request-id: ", str(request_id).encode(), b"\r\nconnection: close\r\n\r\n"]  # fmt: skip
        self.transport.write(b"".join(head) + body)
        self.metrics.observe_request(HTTP_LAYER, "-", status, 0.0)
        self._refused = True
        self._unset_keepalive_if_required()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)


def protocol_class(limits: ConnectionLimits, metrics: ServerMetrics) -> type[LimitedHttpToolsProtocol]:
    """The protocol uvicorn instantiates per connection (`uvicorn.Config(http=...)`), bound to this server's
    limits and metrics."""
    return type("SeqshardHttpProtocol", (LimitedHttpToolsProtocol,), {"limits": limits, "metrics": metrics})
