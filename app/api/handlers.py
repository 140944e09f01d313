"""The vote and results logic of the HTTP API, free of any framework.

The documented FastAPI routes and the fast ASGI path both call these functions, so the two
answer every request with the same status, body and headers.
"""

from __future__ import annotations

from typing import Any

import msgspec

from app.api.deadlines import BodyDeadlines, BodyTimeout
from app.api.validation import (
    MAX_VOTE_BODY,
    InvalidInput,
    check_poll_id,
    error,
    id_error,
    parse_vote_body,
)
from app.services.errors import TooManyOptions, VoteRejected
from app.services.instruments import Rejections
from app.services.polling_service import PollingService

Headers = list[tuple[bytes, bytes]]
Reply = tuple[int, bytes, Headers]
Receive = Any

encode = msgspec.json.encode
VOTE_ACCEPTED = encode({"status": "success", "message": "Vote accepted"})


def json_reply(status: int, payload: object, headers: Headers | None = None) -> Reply:
    return status, encode(payload), headers or []


def invalid_reply(errors: list[dict[str, Any]]) -> Reply:
    return json_reply(422, {"detail": errors})


def too_large_reply(limit: int) -> Reply:
    return json_reply(413, {"detail": f"request body must be at most {limit} bytes"})


def timeout_reply(exc: BodyTimeout) -> Reply:
    """408; the connection closes, since the rest of the body may still be on its way."""
    return json_reply(408, {"detail": str(exc)}, [(b"connection", b"close")])


def rejected_reply(exc: VoteRejected) -> Reply:
    if isinstance(exc, TooManyOptions):
        return invalid_reply([error(["body", "option_id"], exc.message, "too_many_options")])
    headers = [(b"retry-after", str(exc.retry_after).encode())] if exc.retry_after else []
    return json_reply(exc.status, {"detail": exc.message, "type": exc.kind}, headers)


REASON_BY_STATUS = {401: "unauthorized", 404: "not_found", 413: "too_large"}


def refused(rejected: Rejections, path: str, reply: Reply) -> Reply:
    """Count a refused vote request for the metrics, by reason: `invalid` for a 422, else
    the error `type` the client got (or what the status says when the reply has none)."""
    status, body, _ = reply
    reason = "invalid" if status == 422 else msgspec.json.decode(body).get("type")
    if not isinstance(reason, str):
        reason = REASON_BY_STATUS.get(status, f"http_{status}")
    rejected[path, reason] = rejected.get((path, reason), 0) + 1
    return reply


def vote_path(idempotency_key: str | None, bulk: bool = False) -> str:
    """The metrics' name for how a vote came in."""
    if idempotency_key is not None:
        return "keyed"
    return "bulk" if bulk else "adhoc"


async def read_body(
    receive: Receive,
    limit: int,
    content_length: bytes | None,
    deadlines: BodyDeadlines | None = None,
) -> bytes | None:
    """The request body, or None once it is known to be longer than `limit` bytes.
    Raises BodyTimeout when it has not all arrived by the deadline."""
    if deadlines is None:
        return await _read_body(receive, limit, content_length)
    return await deadlines.run(_read_body(receive, limit, content_length))


async def _read_body(receive: Receive, limit: int, content_length: bytes | None) -> bytes | None:
    if content_length is not None:
        try:
            if int(content_length) > limit:
                return None
        except ValueError:
            return None
    message = await receive()
    if message["type"] != "http.request":
        return b""  # client went away; the caller answers into the void
    body: bytes = message.get("body", b"")
    if len(body) > limit:
        return None
    if not message.get("more_body", False):
        return body  # the usual case: the whole body in one message
    chunks = [body]
    size = len(body)
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b""  # client went away mid-body: count nothing
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def key_problem(key: str | None) -> list[dict[str, Any]]:
    """An `Idempotency-Key` header that is present must be 1-64 id characters."""
    if key is None:
        return []
    problem = id_error(["header", "idempotency-key"], key)
    return [problem] if problem else []


def parse_vote(poll_id: str, body: bytes) -> tuple[str, list[dict[str, Any]]]:
    """The option id of a vote request, and every problem with its poll id and body."""
    problems = []
    poll_problem = id_error(["path", "poll_id"], poll_id)
    if poll_problem:
        problems.append(poll_problem)
    option_id = ""
    try:
        option_id = parse_vote_body(body)
    except InvalidInput as exc:
        problems += exc.errors
    return option_id, problems


async def vote(
    service: PollingService, poll_id: str, body: bytes | None, idempotency_key: str | None = None
) -> Reply:
    if body is None:
        return refused(service.rejected, vote_path(idempotency_key), too_large_reply(MAX_VOTE_BODY))
    option_id, problems = parse_vote(poll_id, body)
    problems = key_problem(idempotency_key) + problems
    if problems:
        return refused(service.rejected, vote_path(idempotency_key), invalid_reply(problems))
    try:
        if not service.options.knows(poll_id, option_id):
            await service.register({poll_id: [option_id]})
        if idempotency_key is not None:
            fingerprint = f"vote {poll_id} {option_id}"
            await service.vote_once(idempotency_key, fingerprint, {poll_id: {option_id: 1}})
        elif service.write_through:
            await service.vote_write_through({poll_id: {option_id: 1}})
        else:
            service.vote(poll_id, option_id)
            if service.waits_for_disk:
                await service.commit()
    except VoteRejected as exc:
        return refused(service.rejected, vote_path(idempotency_key), rejected_reply(exc))
    return 200, VOTE_ACCEPTED, []


async def results(service: PollingService, poll_id: str) -> Reply:
    try:
        check_poll_id(poll_id)
        found = await service.results(poll_id)
    except InvalidInput as exc:
        return invalid_reply(exc.errors)
    except VoteRejected as exc:
        return rejected_reply(exc)
    payload: dict[str, object] = {
        "poll_id": found.poll_id,
        "results": found.results,
        "served_via": found.served_via,
    }
    if found.stale:
        payload["stale"] = True
    return json_reply(200, payload)
