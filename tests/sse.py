"""A Server-Sent Events client that drives the ASGI app in-process.

httpx's ASGITransport returns a response only once the app has finished it, so it cannot
read an endless stream; this driver calls the app itself and parses the body as it arrives.
It keeps only what a test checks (the events' count and the last one), so a thousand of
them cost little beside what the service holds per subscriber.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any


class StreamClient:
    def __init__(self, app: Any, path: str, headers: dict[str, str] | None = None) -> None:
        self.app = app
        self.path = path
        self.headers = [
            (k.lower().encode(), v.encode("latin-1")) for k, v in (headers or {}).items()
        ]
        self.status = 0
        self.response_headers: dict[str, str] = {}
        self.body = b""  # a non-stream answer, or the stream's unparsed tail
        self.events = 0
        self.last_id = 0
        self.last: dict[str, Any] | None = None
        self.pings = 0
        self.retry: int | None = None  # the `retry:` of the last event that had one
        self.ended = asyncio.Event()
        self._changed = asyncio.Event()
        self._leave = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> StreamClient:
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": self.path,
            "raw_path": self.path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"test"), *self.headers],
            "client": ("127.0.0.1", 1),
            "server": ("test", 80),
        }
        requested = False

        async def receive() -> dict[str, Any]:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await self._leave.wait()
            return {"type": "http.disconnect"}

        try:
            await self.app(scope, receive, self._send)
        finally:
            self.ended.set()
            self._changed.set()

    async def _send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.response_headers = {k.decode(): v.decode() for k, v in message["headers"]}
            return
        self.body += message.get("body", b"")
        if self.response_headers.get("content-type", "").startswith("text/event-stream"):
            self._parse()
        self._changed.set()

    def _parse(self) -> None:
        *blocks, self.body = self.body.split(b"\n\n")
        for block in blocks:
            fields = dict(line.split(": ", 1) for line in block.decode().split("\n"))
            if "" in fields:  # a comment line, ": ping"
                self.pings += 1
                continue
            if "retry" in fields:
                self.retry = int(fields["retry"])
            event_id = int(fields["id"])
            assert event_id > self.last_id, (event_id, self.last_id)
            self.last_id = event_id
            self.last = json.loads(fields["data"])
            self.events += 1

    async def wait_until(self, condition: Any) -> None:
        """Wait (no time limit of its own: pytest-timeout stops a stuck test) until
        `condition(self)` holds."""
        while not condition(self):
            if self.ended.is_set() and not condition(self):
                raise AssertionError(f"stream ended first: {self.status} {self.body!r}")
            self._changed.clear()
            await self._changed.wait()

    async def answered(self) -> StreamClient:
        await self.wait_until(lambda c: c.events > 0 or c.ended.is_set())
        return self

    async def close(self) -> None:
        """Disconnect, and wait until the app has finished with this request."""
        self._leave.set()
        if self._task is not None:
            await self._task

    def json(self) -> Any:
        return json.loads(self.body)
