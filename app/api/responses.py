"""Turning a handler's reply into a Starlette response, and the shared OpenAPI fragments."""

from __future__ import annotations

from typing import Any

from fastapi import Response

from app.api.handlers import Reply
from app.schemas.polls import Message, ValidationFailed


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
