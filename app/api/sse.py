"""Server-Sent Events: the handshake through ASGI, then the broadcaster writes the events.

Under uvicorn with our protocol (`app.core.service_protocol`), the scope carries the
connection (extension `RAW_STREAM`): after the response head (sent through ASGI, so
uvicorn sends it chunked), the poll's publisher writes each event, encoded once as a chunk,
straight to the connection's transport, from one loop for all subscribers. This task only
waits for the stream's end: it wakes once, not once per event. The connection tells us
when the client leaves (`on_lost`), so no task watches for that either.

Elsewhere (an in-process ASGI client in tests, another server) a stand-in transport queues
the bytes and this task sends them through ASGI, as a plain ASGI app would.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, Protocol

from starlette.responses import Response

from app.core.service_protocol import RAW_STREAM
from app.services.event_frames import unchunk
from app.services.live_results import LEFT, STALLED, Subscription

HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),  # nginx passes each event on at once
]


class RawConnection(Protocol):
    """What the broadcaster needs of a connection (`ServiceProtocol` has it)."""

    transport: asyncio.Transport
    on_lost: Callable[[], None] | None


class QueuedSink:
    """A stand-in transport for ASGI servers: bytes wait here until the task sends them."""

    __slots__ = ("pending", "ready")

    def __init__(self) -> None:
        self.pending = b""
        self.ready = asyncio.Event()

    def write(self, data: bytes) -> None:
        self.pending += unchunk(data)
        self.ready.set()

    def get_write_buffer_size(self) -> int:
        return len(self.pending)


class EventStreamResponse(Response):
    media_type = "text/event-stream"

    def __init__(self, subscription: Subscription) -> None:
        """`subscription` has its first state (`Subscription.first`)."""
        super().__init__(media_type=self.media_type)
        self.raw_headers = list(HEADERS)  # no content-length: the body never ends on its own
        self.subscription = subscription

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        connection: RawConnection | None = scope.get("extensions", {}).get(RAW_STREAM)
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            if connection is not None:
                outcome = await self._direct(connection, done)
            else:
                outcome = await self._through_asgi(receive, send, done)
        finally:
            self.subscription.close()
        if outcome == STALLED and connection is not None:
            connection.transport.abort()  # its buffer will not drain: drop it
        elif outcome != LEFT:
            try:  # the end waits for a full buffer to drain: not for ever
                async with asyncio.timeout(self.subscription.publisher.registry.stall_seconds):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
            except TimeoutError:
                if connection is not None:
                    connection.transport.abort()

    async def _direct(self, connection: RawConnection, done: asyncio.Future[str]) -> str:
        def lost() -> None:
            self.subscription.close()  # at once: nothing more is written to it
            if not done.done():
                done.set_result(LEFT)

        if connection.transport.is_closing():
            return LEFT
        connection.on_lost = lost
        try:
            self.subscription.attach(connection.transport, done)
            return await done
        finally:
            connection.on_lost = None

    async def _through_asgi(self, receive: Any, send: Any, done: asyncio.Future[str]) -> str:
        sink = QueuedSink()
        done.add_done_callback(lambda _: sink.ready.set())

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if not done.done():
                done.set_result(LEFT)

        watcher = asyncio.create_task(watch())
        try:
            self.subscription.attach(sink, done)
            while True:
                await sink.ready.wait()
                sink.ready.clear()
                data, sink.pending = sink.pending, b""
                if data:
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                if done.done() and not sink.pending:
                    return done.result()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
