"""The defined-poll API, free of any framework: the fast path and the documented routes
both call these, so both answer alike."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from app.api.handlers import (
    Reply,
    invalid_reply,
    json_reply,
    parse_vote,
    refused,
    rejected_reply,
    too_large_reply,
)
from app.api.validation import MAX_VOTE_BODY, error
from app.api.voters import (
    HEADER,
    VoterCookies,
    cookie_value,
    cross_origin,
    valid_header_id,
    voter_key,
)
from app.services.defined_polls import DefinedPolls, UnknownOption
from app.services.errors import VoteRejected
from app.storage.defined import PollDefinition, PollRecord


def get_cookies(request: Request) -> VoterCookies:
    cookies: VoterCookies = request.app.state.voter_cookies
    return cookies


CookiesDep = Annotated[VoterCookies, Depends(get_cookies)]
VOTE_COUNTED = {"status": "success", "message": "Vote counted"}
NO_VOTER = (
    "a voter identity is required: the X-Voter-Id header (1-64 letters, digits, '-', '_' "
    "or '.'), or the voter cookie that GET /api/v1/polls/{poll_id} or the poll's page sets"
)


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat().replace("+00:00", "Z")


def describe(record: PollRecord) -> dict[str, Any]:
    d = record.definition
    return {
        "poll_id": d.poll_id,
        "question": d.question,
        "options": [{"id": o, "label": label} for o, label in d.options],
        "votes_per_voter": d.votes_per_voter,
        "results": d.results,
        "closes_at": iso(d.closes_at),
        "created_at": iso(d.created_at),
        "state": "closed" if record.closed else "open",
        "results_visible": d.results == "live" or record.revealed,
    }


def results_payload(record: PollRecord, served_via: str) -> dict[str, Any]:
    d = record.definition
    return {
        "poll_id": d.poll_id,
        "question": d.question,
        "options": [
            {"id": o, "label": label, "count": record.counts.get(o, 0)} for o, label in d.options
        ],
        "total_votes": record.total,
        "state": "closed" if record.closed else "open",
        "final": record.closed,
        "served_via": served_via,
    }


def results_visible(record: PollRecord, organiser: bool) -> bool:
    return organiser or record.definition.results == "live" or record.revealed


def cookie_to_set(
    cookies: VoterCookies, cookie_header: str | None, secure: bool = False
) -> str | None:
    """The `Set-Cookie` value that gives a browser without a valid voter cookie a new one
    (`secure` when the page came over HTTPS)."""
    value = cookie_value(cookie_header)
    if value is None or cookies.verified(value) is None:
        return cookies.set_cookie_header(cookies.new(), secure)
    return None


def voter_identity(
    cookies: VoterCookies, header: str | None, cookie_header: str | None
) -> str | dict[str, Any]:
    """The voter's key for the node, or the 422 error item that says what is missing."""
    if header is not None:
        if not valid_header_id(header):
            return error(["header", HEADER], NO_VOTER, "voter_id_invalid")
        return voter_key("h", header)
    value = cookie_value(cookie_header)
    voter_id = cookies.verified(value) if value else None
    if voter_id is None:
        return error(["header", HEADER], NO_VOTER, "voter_id_missing")
    return voter_key("c", voter_id)


CROSS_ORIGIN = {
    "detail": "a vote by cookie must come from this service's own pages",
    "type": "cross_origin",
}


@dataclass(frozen=True)
class VoteHeaders:
    """The headers a defined-poll vote reads."""

    voter: str | None = None  # X-Voter-Id
    cookie: str | None = None
    origin: str | None = None
    host: str | None = None


async def vote(
    polls: DefinedPolls,
    cookies: VoterCookies,
    poll_id: str,
    body: bytes | None,
    headers: VoteHeaders,
) -> Reply:
    reply = await _vote(polls, cookies, poll_id, body, headers)
    if reply[0] != 200:
        refused(polls.rejected, "defined", reply)
    return reply


async def _vote(
    polls: DefinedPolls,
    cookies: VoterCookies,
    poll_id: str,
    body: bytes | None,
    headers: VoteHeaders,
) -> Reply:
    if body is None:
        return too_large_reply(MAX_VOTE_BODY)
    option_id, problems = parse_vote(poll_id, body)
    voter = voter_identity(cookies, headers.voter, headers.cookie)
    if isinstance(voter, dict):
        problems.append(voter)
    if problems:
        return invalid_reply(problems)
    assert isinstance(voter, str)
    if headers.voter is None and cross_origin(headers.origin, headers.host):
        return json_reply(403, CROSS_ORIGIN)
    try:
        await polls.vote(poll_id, option_id, voter)
    except UnknownOption as exc:
        message = f"option_id must be one of {exc.allowed}"
        return invalid_reply([error(["body", "option_id"], message, "unknown_option")])
    except VoteRejected as exc:
        return rejected_reply(exc)
    return json_reply(200, VOTE_COUNTED)


__all__ = ["MAX_VOTE_BODY", "PollDefinition", "describe", "results_payload", "vote"]
