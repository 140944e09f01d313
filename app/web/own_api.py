"""The pages read events through the service's own JSON API, called in-process (an ASGI
request to this app, no socket): a page shows exactly what the API answers, and the pages
depend on the API's documented shapes only, not on the modules behind it.

Every events path the server-rendered pages use is here (the browser's are in
static/event-api.js)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import msgspec
from fastapi import Request

API = "/api/v1"


def event_path(event_id: str) -> str:
    return f"{API}/events/{quote(event_id, safe='')}"


def code_path(code: str) -> str:
    return f"{API}/events/by-code/{quote(code, safe='')}"


async def api_get(request: Request, path: str, cookie: str | None = None) -> tuple[int, Any]:
    """GET `path` from this app: its status and its JSON (None when the body is not JSON)."""
    headers = [(b"accept", b"application/json"), (b"host", b"pages")]
    if cookie:
        headers.append((b"cookie", cookie.encode("latin-1")))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 0),
        "server": ("pages", 80),
        "app": request.app,
        "state": dict(request.scope.get("state") or {}),
    }
    sent = False
    status = 500
    body = bytearray()

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))

    await request.app(scope, receive, send)
    try:
        return status, msgspec.json.decode(bytes(body))
    except msgspec.DecodeError:
        return status, None
