"""Between the handlers and Starlette: reading a request body, turning a reply into a
response, and the OpenAPI fragments the routes share."""

from __future__ import annotations

from typing import Any

from fastapi import Request, Response

from app.api.handlers import Reply, read_body
from app.schemas.polls import Message, ValidationFailed


async def read_request_body(request: Request, limit: int) -> bytes | None:
    """The body, or None when it is longer than `limit` bytes; BodyTimeout past the deadline
    (the app answers that with 408)."""
    length = request.headers.get("content-length")
    deadlines = request.app.state.body_deadlines
    return await read_body(request.receive, limit, length.encode() if length else None, deadlines)


def to_response(reply: Reply) -> Response:
    status, body, headers = reply
    response = Response(body, status_code=status, media_type="application/json")
    for name, value in headers:
        response.headers[name.decode()] = value.decode()
    return response


ERRORS: dict[int | str, dict[str, Any]] = {
    422: {"model": ValidationFailed, "description": "A field is invalid; `loc` names it."},
    503: {"model": Message, "description": "A node is down or the service is shutting down."},
}
