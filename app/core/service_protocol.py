"""The service's uvicorn protocol: the header cap (`HeaderCappedProtocol`), and no door for
idle connections.

- A connection that has not sent a complete request head within `HEAD_TIMEOUT_SECONDS`
  (from when it opened, or from the end of its last response) is closed, also when it
  never sent a byte.
- Past `max_connections()` open connections (the open-file limit less `FILES_RESERVED`),
  a new connection is answered 503 with Retry-After and closed at once, so the journal and
  the nodes always find a file handle.
- Each request's scope carries this connection as the extension `RAW_STREAM`, so a live
  results stream can write to the transport itself (`app.api.sse`); `on_lost` is called
  when the connection goes.

Run it with `uvicorn --http app.core.service_protocol:ServiceProtocol` (`PROTOCOL`).
"""

from __future__ import annotations

import asyncio
import resource
from collections.abc import Callable
from functools import cache
from typing import Any

from app.core.config import load_settings
from app.core.http_protocol import HeaderCappedProtocol

RAW_STREAM = "app.raw_stream"
BUSY_BODY = b'{"detail":"too many open connections, try again","type":"too_many_connections"}'
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"retry-after: 5\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s"
    % (len(BUSY_BODY), BUSY_BODY)
)


def open_file_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


@cache
def max_connections() -> int:
    """Open connections this process accepts: the open-file limit less the reserve."""
    return max(1, open_file_limit() - load_settings().files_reserved)


@cache
def head_timeout() -> float:
    return load_settings().head_timeout_seconds


class ServiceProtocol(HeaderCappedProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        HeaderCappedProtocol.__init__(self, *args, **kwargs)
        self.on_lost: Callable[[], None] | None = None
        self.head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        HeaderCappedProtocol.connection_made(self, transport)
        if len(self.connections) > max_connections():
            transport.write(BUSY)
            transport.close()
            return
        self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
        self.head_timer = self.loop.call_later(head_timeout(), self._head_late)

    def _head_late(self) -> None:
        self.head_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def on_message_begin(self) -> None:
        HeaderCappedProtocol.on_message_begin(self)
        self.scope["extensions"] = {RAW_STREAM: self}  # type: ignore[dict-item]

    def on_headers_complete(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        HeaderCappedProtocol.on_headers_complete(self)

    def on_response_complete(self) -> None:
        HeaderCappedProtocol.on_response_complete(self)
        if not self.transport.is_closing() and not self.pipeline:
            self._arm_head_timer()  # the next request's head gets the same deadline

    def connection_lost(self, exc: Exception | None) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        HeaderCappedProtocol.connection_lost(self, exc)
        lost, self.on_lost = self.on_lost, None
        if lost is not None:
            lost()
