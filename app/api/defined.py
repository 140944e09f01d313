"""The defined-poll API, free of any framework: the fast path and the documented routes
both call these, so both answer alike."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from fastapi import Depends, Request

from app.api.handlers import (
    Reply,
    invalid_reply,
    json_reply,
    key_problem,
    parse_vote,
    refused,
    rejected_reply,
    too_large_reply,
)
from app.api.validation import MAX_VOTE_BODY, error, id_error
from app.api.voters import (
    HEADER,
    VoterCookies,
    cookie_value,
    cross_origin,
    valid_header_id,
    voter_key,
)
from app.services.defined_polls import DefinedPolls, DefinitionChanged, Refused, UnknownOption
from app.services.errors import VoteRejected
from app.services.question_types import VOTE_FIELDS, InvalidVote, allowance, vote_payload
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
        **type_fields(record),
    }


def type_fields(record: PollRecord) -> dict[str, Any]:
    """What a poll's type adds to its description (a quiz's answer only once closed)."""
    d = record.definition
    fields: dict[str, Any] = {"type": d.type, "event_id": d.event_id}
    if d.type == "multiple":
        fields["max_choices"] = d.max_choices
    elif d.type == "rating":
        fields.update(min=d.scale_min, max=d.scale_max)
    elif d.type == "words":
        fields.update(max_words=d.max_words, max_entries=d.max_entries)
    elif d.type == "quiz":
        fields.update(time_limit=d.time_limit, correct=d.correct if record.closed else None)
    fields["choices_allowed"] = allowance(d)
    return fields


WORDS_SHOWN = 200  # the most counted words that results and streams show


def shown_words(record: PollRecord, limit: int | None = WORDS_SHOWN) -> list[dict[str, Any]]:
    """The words entries not hidden, most counted first (then alphabetical)."""
    entries = [(-n, w) for w, n in record.counts.items() if w not in record.hidden and n > 0]
    entries.sort()
    return [{"text": w, "count": -n} for n, w in entries[:limit]]


def type_results(record: PollRecord) -> dict[str, Any]:
    d = record.definition
    found: dict[str, Any] = {"type": d.type, "voters": record.voters}
    if d.type == "rating":
        values = {v: record.counts.get(v, 0) for v in record.counts}
        weighted = sum(int(v) * n for v, n in values.items())
        found["values"] = values
        found["mean"] = round(weighted / record.voters, 2) if record.voters else None
    elif d.type == "words":
        found["words"] = shown_words(record)
    elif d.type == "quiz":
        found["correct"] = d.correct if record.closed else None
    return found


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
        **type_results(record),
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
    key: str | None = None  # Idempotency-Key


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


def parse_body(poll_id: str, body: bytes) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The vote body as an object, and every problem found without knowing the poll's type.
    A body without another type's field is read as today's `{"option_id": ...}`."""
    try:
        data = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        data = None
    if isinstance(data, dict) and VOTE_FIELDS.intersection(data) - {"option_id"}:
        poll_problem = id_error(["path", "poll_id"], poll_id)
        return data, [poll_problem] if poll_problem else []
    option_id, problems = parse_vote(poll_id, body)
    return {"option_id": option_id}, problems


async def _vote(
    polls: DefinedPolls,
    cookies: VoterCookies,
    poll_id: str,
    body: bytes | None,
    headers: VoteHeaders,
) -> Reply:
    if body is None:
        return too_large_reply(MAX_VOTE_BODY)
    data, problems = parse_body(poll_id, body)
    problems = key_problem(headers.key) + problems
    voter = voter_identity(cookies, headers.voter, headers.cookie)
    if isinstance(voter, dict):
        problems.append(voter)
    if problems:
        return invalid_reply(problems)
    assert isinstance(voter, str)
    if headers.voter is None and cross_origin(headers.origin, headers.host):
        return json_reply(403, CROSS_ORIGIN)
    remembered = polls.remembered(poll_id)
    try:
        try:
            await cast_vote(polls, poll_id, data, voter, headers.key, False)
        except (DefinitionChanged, InvalidVote, UnknownOption):
            if not remembered:  # checked against what the node holds now: final
                raise
            # this instance's memory of the poll may be older than a change made before
            # its first vote: read it again, once
            await cast_vote(polls, poll_id, data, voter, headers.key, True)
    except InvalidVote as exc:
        return invalid_reply(exc.errors)
    except UnknownOption as exc:
        field = "option_ids" if "option_ids" in data else "option_id"
        message = f"{field} must be one of {exc.allowed}"
        return invalid_reply([error(["body", field], message, "unknown_option")])
    except Refused as exc:
        known = await polls.definition(poll_id)  # in memory: the vote just read it
        return invalid_reply([refused_error(exc.outcome, known)])
    except DefinitionChanged:
        return json_reply(503, CHANGING, [(b"retry-after", b"1")])
    except VoteRejected as exc:
        return rejected_reply(exc)
    return json_reply(200, VOTE_COUNTED)


CHANGING = {"detail": "the poll is being redefined; retry", "type": "poll_changing"}


async def cast_vote(
    polls: DefinedPolls,
    poll_id: str,
    data: dict[str, Any],
    voter: str,
    key: str | None,
    fresh: bool,
) -> None:
    definition = await polls.definition(poll_id, fresh)
    payload = vote_payload(definition, data)
    await polls.vote(poll_id, payload, voter, key or "", definition.type)


def refused_error(outcome: str, definition: PollDefinition) -> dict[str, Any]:
    if outcome == "out_of_range":
        message = f"value must be from {definition.scale_min} to {definition.scale_max}"
        return error(["body", "value"], message, "out_of_range")
    message = (
        f"this poll holds its maximum of {definition.max_entries} distinct entries: "
        "only entries already given can be added"
    )
    return error(["body", "words"], message, "too_many_entries")


__all__ = ["MAX_VOTE_BODY", "PollDefinition", "describe", "results_payload", "vote"]
