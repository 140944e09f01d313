"""Bulk ingestion for edge collectors: many `{poll_id, option_id, count}` in one request."""

from __future__ import annotations

import hmac
import re
from typing import Annotated

import msgspec

from app.api.handlers import Reply, invalid_reply, json_reply, rejected_reply, too_large_reply
from app.api.validation import ID_MAX, error
from app.services.errors import VoteRejected
from app.services.polling_service import PollingService

MAX_ENTRIES = 10_000
MAX_COUNT = 1_000_000
MAX_BULK_BODY = 2 * 1024 * 1024

# \Z, not $: msgspec searches, and $ would let a trailing newline through.
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=ID_MAX, pattern=r"^[A-Za-z0-9_.\-]+\Z")]


class BulkEntry(msgspec.Struct):
    poll_id: Id
    option_id: Id
    count: Annotated[int, msgspec.Meta(ge=1, le=MAX_COUNT)]


_decode = msgspec.json.Decoder(
    Annotated[list[BulkEntry], msgspec.Meta(min_length=1, max_length=MAX_ENTRIES)]
).decode
_PATH_PART = re.compile(r"\[(\d+)\]|\.(\w+)")


def _loc(message: str) -> list[str | int]:
    """`... - at `$[3].poll_id`` -> ['body', 3, 'poll_id']."""
    loc: list[str | int] = ["body"]
    _, _, where = message.rpartition(" - at `")
    for index, name in _PATH_PART.findall(where.rstrip("`")):
        loc.append(int(index) if index else name)
    return loc


def authorised(expected: str | None, header: bytes | None) -> bool:
    """Constant-time check of an `Authorization: Bearer <token>` header."""
    if expected is None or header is None:
        return False
    scheme, _, token = header.decode("latin-1").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        token.strip().encode(), expected.encode()
    )


async def ingest(
    service: PollingService, token: str | None, authorization: bytes | None, body: bytes | None
) -> Reply:
    if token is None:
        return json_reply(404, {"detail": "Not Found"})
    if not authorised(token, authorization):
        return json_reply(
            401, {"detail": "a valid bearer token is required"}, [(b"www-authenticate", b"Bearer")]
        )
    if body is None:
        return too_large_reply(MAX_BULK_BODY)
    try:
        entries = _decode(body)
    except msgspec.ValidationError as exc:
        message = str(exc)
        return invalid_reply([error(_loc(message), message.split(" - at ")[0], "invalid")])
    except msgspec.DecodeError:
        return invalid_reply([error(["body"], "body must be valid JSON", "json_invalid")])
    votes = [(e.poll_id, e.option_id, e.count) for e in entries]
    try:
        service.vote_many(votes)
        if service.write_through:
            await service.flusher.flush()
    except VoteRejected as exc:
        return rejected_reply(exc)
    total = sum(n for _, _, n in votes)
    return json_reply(200, {"status": "success", "entries": len(votes), "votes": total})
