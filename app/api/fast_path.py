"""A thin ASGI layer that answers `POST vote` and `GET results` without the framework.

FastAPI's routing, dependency injection and response classes cost several times more than
counting a vote. This middleware answers those two routes itself through the same handlers
the documented FastAPI routes use (`app.api.handlers`), so both paths answer alike; every
other request, and any method it does not handle, goes on to FastAPI.
"""

from __future__ import annotations

from typing import Any

from app.api import handlers
from app.api.validation import MAX_VOTE_BODY

Scope = dict[str, Any]
ASGIApp = Any

JSON_TYPE = (b"content-type", b"application/json")


class FastPath:
    def __init__(self, app: ASGIApp, prefix: str) -> None:
        self.app = app
        self.vote_prefix = f"{prefix}/vote/"
        self.results_prefix = f"{prefix}/results/"

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            method: str = scope["method"]
            if method == "POST" and path.startswith(self.vote_prefix):
                service = scope["app"].state.service
                length = None
                for name, value in scope["headers"]:
                    if name == b"content-length":
                        length = value
                body = await handlers.read_body(receive, MAX_VOTE_BODY, length)
                reply = await handlers.vote(service, path[len(self.vote_prefix) :], body)
                await _send(send, reply)
                return
            if method == "GET" and path.startswith(self.results_prefix):
                service = scope["app"].state.service
                reply = await handlers.results(service, path[len(self.results_prefix) :])
                await _send(send, reply)
                return
        await self.app(scope, receive, send)


async def _send(send: Any, reply: handlers.Reply) -> None:
    status, body, extra = reply
    headers = [JSON_TYPE, (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
