"""An HTTP hop between the services and a Pushpin's publish endpoint that records every item
published through it, so a test can count publishes per state.

It serves from a thread of its own, with its own event loop: served from the test's loop,
its answer waited behind a thousand streams on a loaded machine, past the service's publish
timeout (5 s), and the service then rightly sent the publish again, which the count took for
a second publish of the state."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.devtools.local_nodes import free_port


class PublishCounter:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.items: list[dict[str, Any]] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/publish/"
        app = Starlette(routes=[Route("/publish/", self._publish, methods=["POST"])])
        config = uvicorn.Config(app, port=self.port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._http: httpx.AsyncClient | None = None

    def _serve(self) -> None:
        async def serve() -> None:
            async with httpx.AsyncClient(timeout=10) as http:
                self._http = http
                await self._server.serve()

        asyncio.run(serve())

    async def _publish(self, request: Request) -> Response:
        assert self._http is not None
        body = await request.body()
        self.items += json.loads(body)["items"]
        reply = await self._http.post(self.upstream, content=body)
        return Response(reply.content, reply.status_code)

    def ids(self, channel: str) -> list[str]:
        return [item["id"] for item in list(self.items) if item["channel"] == channel]

    async def __aenter__(self) -> PublishCounter:
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the publish counter on port {self.port} did not start")
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *_: object) -> None:
        self._server.should_exit = True
        await asyncio.to_thread(self._thread.join, 10)
