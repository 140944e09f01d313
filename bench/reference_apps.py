"""The two references the service is measured against, on the same uvicorn settings.

naive: what a straightforward FastAPI implementation gets (pydantic body, dict responses).
bare: a raw ASGI app that reads the body and answers a constant: the server's ceiling.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

naive = FastAPI()
_counts: dict[str, dict[str, int]] = {}


class Vote(BaseModel):
    option_id: str


@naive.post("/api/v1/vote/{poll_id}")
async def naive_vote(poll_id: str, vote: Vote) -> dict[str, str]:
    options = _counts.setdefault(poll_id, {})
    options[vote.option_id] = options.get(vote.option_id, 0) + 1
    return {"status": "success", "message": "Vote accepted"}


@naive.get("/api/v1/results/{poll_id}")
async def naive_results(poll_id: str) -> dict[str, Any]:
    return {"poll_id": poll_id, "results": _counts.get(poll_id, {}), "served_via": "naive"}


_BODY = b'{"status":"success","message":"Vote accepted"}'
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(_BODY))]


async def bare(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _BODY})
