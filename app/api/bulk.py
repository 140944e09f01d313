"""Bulk ingestion for edge collectors: many `{poll_id, option_id, count}` in one request."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Awaitable, Callable
from typing import Annotated

import msgspec

from app.api.handlers import (
    Reply,
    invalid_reply,
    json_reply,
    key_problem,
    refused,
    rejected_reply,
    too_large_reply,
    vote_path,
)
from app.api.validation import ID_MAX, error, id_error
from app.services.errors import VoteRejected
from app.services.polling_service import PollingService
from app.storage.base import Counts

MAX_ENTRIES = 10_000
MAX_COUNT = 1_000_000
MAX_BULK_BODY = 2 * 1024 * 1024

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=ID_MAX)]
SEPARATOR = "\x00"  # not an id character, so it cannot hide inside a valid id
_ONE_ID = r"(?!\.\.?(?:\x00|\Z))[A-Za-z0-9_.\-]+"  # id characters, but not `.` or `..`
ALL_IDS = re.compile(rf"{_ONE_ID}(?:\x00{_ONE_ID})*")


class BulkEntry(msgspec.Struct, forbid_unknown_fields=True):
    poll_id: Id
    option_id: Id
    # JSON Schema's "integer" includes 12.0, so a whole float is accepted too.
    count: (
        Annotated[int, msgspec.Meta(ge=1, le=MAX_COUNT)]
        | Annotated[float, msgspec.Meta(ge=1, le=MAX_COUNT)]
    )


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


def _first_problem(entries: list[BulkEntry]) -> dict[str, object] | None:
    """Check every id's characters with one regex over all of them (a per-id regex costs
    more than the rest of the request); only when that fails, find which one is wrong."""
    for index, entry in enumerate(entries):
        if isinstance(entry.count, float):
            if not entry.count.is_integer():
                return error(["body", index, "count"], "count must be a whole number", "int_type")
            entry.count = int(entry.count)
    ids = [i for e in entries for i in (e.poll_id, e.option_id)]
    joined = SEPARATOR.join(ids)
    if ALL_IDS.fullmatch(joined) and joined.count(SEPARATOR) == len(ids) - 1:
        return None
    for index, entry in enumerate(entries):
        for name in ("poll_id", "option_id"):
            problem = id_error(["body", index, name], getattr(entry, name))
            if problem:
                return problem
    return None  # pragma: no cover - the joined check only fails on a bad id


def _aggregate(entries: list[BulkEntry]) -> Counts:
    counts: Counts = {}
    for e in entries:
        options = counts.get(e.poll_id)
        if options is None:
            counts[e.poll_id] = {e.option_id: int(e.count)}
        else:
            options[e.option_id] = options.get(e.option_id, 0) + int(e.count)
    return counts


def authorised(expected: str | None, header: str | None) -> bool:
    """Constant-time check of an `Authorization: Bearer <token>` header."""
    if expected is None or header is None:
        return False
    scheme, _, token = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        token.strip().encode(), expected.encode()
    )


async def ingest(
    service: PollingService,
    token: str | None,
    authorization: str | None,
    read_body: Callable[[int], Awaitable[bytes | None]],
    idempotency_key: str | None = None,
) -> Reply:
    """The whole request: the token first (no body is read without it), then the entries."""
    reply = await _ingest(service, token, authorization, read_body, idempotency_key)
    if reply[0] != 200:
        refused(service.rejected, vote_path(idempotency_key, bulk=True), reply)
    return reply


async def _ingest(
    service: PollingService,
    token: str | None,
    authorization: str | None,
    read_body: Callable[[int], Awaitable[bytes | None]],
    idempotency_key: str | None,
) -> Reply:
    if token is None:
        return json_reply(404, {"detail": "Not Found"})
    if not authorised(token, authorization):
        return json_reply(
            401, {"detail": "a valid bearer token is required"}, [(b"www-authenticate", b"Bearer")]
        )
    body = await read_body(MAX_BULK_BODY)
    if body is None:
        return too_large_reply(MAX_BULK_BODY)
    try:
        entries = _decode(body)
    except msgspec.ValidationError as exc:
        message = str(exc)
        return invalid_reply([error(_loc(message), message.split(" - at ")[0], "invalid")])
    except msgspec.DecodeError:
        return invalid_reply([error(["body"], "body must be valid JSON", "json_invalid")])
    problems = key_problem(idempotency_key)
    problem = _first_problem(entries)
    if problem or problems:
        return invalid_reply([*problems, *([problem] if problem else [])])
    counts = _aggregate(entries)
    try:
        unknown = service.unknown_options(counts)
        if unknown:
            await service.register(unknown)
        if idempotency_key is not None:
            fingerprint = "bulk " + hashlib.sha256(body).hexdigest()
            total = await service.vote_once(idempotency_key, fingerprint, counts)
        elif service.write_through:
            total = await service.vote_write_through(counts, bulk=True)
        else:
            total = service.vote_many(counts)
            if service.waits_for_disk:
                await service.commit()
    except VoteRejected as exc:
        return rejected_reply(exc)
    return json_reply(200, {"status": "success", "entries": len(entries), "votes": total})
