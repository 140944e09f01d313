"""A thin ASGI layer in front of FastAPI that answers `POST vote` and `GET results` itself.

FastAPI's routing, dependency injection and response classes cost several times more than
counting a vote (see docs/performance.md). This layer answers those two routes
through the same handlers the documented FastAPI routes use (`app.api.handlers`), so both
paths answer alike; every other request, lifespan events included, goes on to FastAPI.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from app.api import defined, handlers
from app.api.deadlines import BodyTimeout
from app.api.validation import MAX_VOTE_BODY

Scope = dict[str, Any]

JSON_TYPE = (b"content-type", b"application/json")


def _headers(scope: Scope) -> dict[bytes, bytes]:
    """The request headers this layer reads; the first of a repeated name wins, as in
    Starlette's `request.headers.get`, so both paths read the same value."""
    found: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if name in WANTED_HEADERS and name not in found:
            found[name] = value
    return found


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


WANTED_HEADERS = {
    b"content-length",
    b"idempotency-key",
    b"x-voter-id",
    b"cookie",
    b"origin",
    b"host",
}


class FastPath:
    def __init__(self, api: FastAPI, prefix: str) -> None:
        self.api = api
        self.deadlines = api.state.body_deadlines
        self.vote_prefix = f"{prefix}/vote/"
        self.results_prefix = f"{prefix}/results/"
        self.polls_prefix = f"{prefix}/polls/"

    async def _body(self, receive: Any, headers: dict[bytes, bytes]) -> bytes | None:
        """The body, or None when it is too large; BodyTimeout when it does not arrive."""
        return await handlers.read_body(
            receive, MAX_VOTE_BODY, headers.get(b"content-length"), self.deadlines
        )

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        try:
            await self._serve(scope, receive, send)
        except BodyTimeout as exc:
            await _send(send, handlers.timeout_reply(exc))

    async def _serve(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            method: str = scope["method"]
            if method == "POST" and path.startswith(self.vote_prefix):
                headers = _headers(scope)
                body = await self._body(receive, headers)
                key = _text(headers.get(b"idempotency-key"))
                poll_id = path[len(self.vote_prefix) :]
                reply = await handlers.vote(self.api.state.service, poll_id, body, key)
                await _send(send, reply)
                return
            if (
                method == "POST"
                and path.startswith(self.polls_prefix)
                and path.endswith("/vote")
                and "/" not in path[len(self.polls_prefix) : -len("/vote")]
            ):
                headers = _headers(scope)
                body = await self._body(receive, headers)
                reply = await defined.vote(
                    self.api.state.defined,
                    self.api.state.voter_cookies,
                    path[len(self.polls_prefix) : -len("/vote")],
                    body,
                    defined.VoteHeaders(
                        _text(headers.get(b"x-voter-id")),
                        _text(headers.get(b"cookie")),
                        _text(headers.get(b"origin")),
                        _text(headers.get(b"host")),
                    ),
                )
                await _send(send, reply)
                return
            if (
                method == "GET"
                and path.startswith(self.results_prefix)
                and "/" not in path[len(self.results_prefix) :]  # not .../stream
            ):
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
