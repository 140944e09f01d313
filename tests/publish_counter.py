"""An HTTP hop between the services and a Pushpin's publish endpoint that records every item
published through it, so a test can count publishes per state."""

from __future__ import annotations

import asyncio
import contextlib
import json
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
        self._http = httpx.AsyncClient(timeout=10)
        app = Starlette(routes=[Route("/publish/", self._publish, methods=["POST"])])
        config = uvicorn.Config(app, port=self.port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._task: asyncio.Task[None] | None = None

    async def _publish(self, request: Request) -> Response:
        body = await request.body()
        self.items += json.loads(body)["items"]
        reply = await self._http.post(self.upstream, content=body)
        return Response(reply.content, reply.status_code)

    def ids(self, channel: str) -> list[str]:
        return [item["id"] for item in self.items if item["channel"] == channel]

    async def __aenter__(self) -> PublishCounter:
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *_: object) -> None:
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._http.aclose()
