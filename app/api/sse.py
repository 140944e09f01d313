"""Server-Sent Events with nothing between a subscription and the socket.

One task per subscriber waits for the next state (or the heartbeat) and writes one frame; a
second, idle task waits for the client to leave. The per-event cost is what fan-out to
thousands of subscribers pays for (`make bench`, "Live results fan-out"), so nothing else
runs per event: no task group, no cancel scope, no per-event encoding object.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from starlette.responses import Response

from app.services.live_results import Stopped, Subscription, Update

PING = b": ping\n\n"
HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),  # nginx passes each event on at once
]


def frame(update: Update, retry_ms: int | None = None) -> bytes:
    """`id: <version>` and `data: <the results JSON>`; `retry:` first when given."""
    head = b"retry: %d\n" % retry_ms if retry_ms is not None else b""
    return head + b"id: %d\ndata: %s\n\n" % (update.version, update.snapshot.body)


class EventStreamResponse(Response):
    media_type = "text/event-stream"

    def __init__(
        self, subscription: Subscription, first: Update, heartbeat: float, final_retry_ms: int
    ) -> None:
        super().__init__(media_type=self.media_type)
        self.raw_headers = list(HEADERS)  # no content-length: the body never ends on its own
        self.subscription = subscription
        self.first = first
        self.heartbeat = heartbeat
        self.final_retry_ms = final_retry_ms

    async def _next(self, send: Any) -> Update:
        """The next state; a `: ping` comment every `heartbeat` seconds meanwhile."""
        while True:
            try:
                async with asyncio.timeout(self.heartbeat):
                    return await self.subscription.next()
            except TimeoutError:
                await send({"type": "http.response.body", "body": PING, "more_body": True})

    async def _stream(self, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        update = self.first
        with contextlib.suppress(Stopped):  # the service is stopping: end the stream cleanly
            while not update.snapshot.final:
                await send({"type": "http.response.body", "body": frame(update), "more_body": True})
                update = await self._next(send)
            # a browser must not reconnect: nothing follows the final state
            body = frame(update, self.final_retry_ms)
            await send({"type": "http.response.body", "body": body, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        streaming = asyncio.current_task()
        assert streaming is not None
        left = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            left.set()
            streaming.cancel()

        watcher = asyncio.create_task(watch())
        try:
            await self._stream(send)
        except asyncio.CancelledError:
            if not left.is_set():
                raise
            streaming.uncancel()  # the client left: that ends the stream, nothing else
        finally:
            watcher.cancel()
            self.subscription.close()
