"""A thin ASGI layer in front of FastAPI that answers `POST vote` and `GET results` itself.

FastAPI's routing, dependency injection and response classes cost several times more than
counting a vote (see the README's Performance section). This layer answers those two routes
through the same handlers the documented FastAPI routes use (`app.api.handlers`), so both
paths answer alike; every other request, lifespan events included, goes on to FastAPI.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from app.api import handlers
from app.api.deadlines import BodyTimeout
from app.api.validation import MAX_VOTE_BODY

Scope = dict[str, Any]

JSON_TYPE = (b"content-type", b"application/json")


class FastPath:
    def __init__(self, api: FastAPI, prefix: str) -> None:
        self.api = api
        self.deadlines = api.state.body_deadlines
        self.vote_prefix = f"{prefix}/vote/"
        self.results_prefix = f"{prefix}/results/"

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            method: str = scope["method"]
            if method == "POST" and path.startswith(self.vote_prefix):
                service = self.api.state.service
                length = None
                for name, value in scope["headers"]:
                    if name == b"content-length":
                        length = value
                try:
                    body = await handlers.read_body(receive, MAX_VOTE_BODY, length, self.deadlines)
                except BodyTimeout as exc:
                    await _send(send, handlers.timeout_reply(exc))
                    return
                reply = await handlers.vote(service, path[len(self.vote_prefix) :], body)
                await _send(send, reply)
                return
            if method == "GET" and path.startswith(self.results_prefix):
                service = self.api.state.service
                reply = await handlers.results(service, path[len(self.results_prefix) :])
                await _send(send, reply)
                return
        await self.api(scope, receive, send)


VOTE_ACCEPTED_HEADERS = [JSON_TYPE, (b"content-length", b"%d" % len(handlers.VOTE_ACCEPTED))]


async def _send(send: Any, reply: handlers.Reply) -> None:
    status, body, extra = reply
    if body is handlers.VOTE_ACCEPTED:
        headers = VOTE_ACCEPTED_HEADERS
    else:
        headers = [JSON_TYPE, (b"content-length", b"%d" % len(body)), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
