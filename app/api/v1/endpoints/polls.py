"""Defined polls: create, look up, vote, close, reveal, results."""

from __future__ import annotations

import time
from typing import Any

import pydantic
from fastapi import APIRouter, Request, Response

from app.api import cacheable, defined
from app.api.bulk import authorised
from app.api.deps import DefinedDep, SettingsDep
from app.api.handlers import Reply, invalid_reply, json_reply, rejected_reply, too_large_reply
from app.api.responses import ERRORS, read_request_body, to_response
from app.api.v1.endpoints.votes import PollId, _json_body
from app.api.voters import COOKIE, HEADER
from app.schemas.defined import DefinedResults, PollCreate, PollOut, scale, type_problems
from app.schemas.polls import Message, VoteAccepted, VoteRequest
from app.services.defined_polls import DefinedPolls, new_poll_id
from app.services.errors import HIDDEN, VoteRejected
from app.storage.defined import PollDefinition, PollRecord

router = APIRouter(prefix="/polls", tags=["defined polls"])
MAX_DEFINITION_BODY = 16 * 1024
CREATE_EXAMPLE = {
    "question": "Which talk next?",
    "options": [{"id": "A", "label": "Rust"}, {"id": "B", "label": "Python"}],
    "votes_per_voter": 1,
    "results": "live",
}
ORGANISER: dict[int | str, dict[str, Any]] = {
    401: {"model": Message, "description": "Missing or wrong bearer token."},
    404: {"model": Message, "description": "No such poll, or no API_TOKEN is set."},
}


def _organiser(request: Request, settings: Any) -> Reply | None:
    """None when the request carries the organiser's token, else the reply to give."""
    token = settings.api_token.get_secret_value() if settings.api_token else None
    if token is None:
        return json_reply(404, {"detail": "Not Found"})
    if not authorised(token, request.headers.get("authorization")):
        return json_reply(
            401, {"detail": "a valid bearer token is required"}, [(b"www-authenticate", b"Bearer")]
        )
    return None


def is_organiser(request: Request, settings: Any) -> bool:
    token = settings.api_token.get_secret_value() if settings.api_token else None
    return authorised(token, request.headers.get("authorization"))


async def visible_record(
    poll_id: str, request: Request, polls: DefinedPolls, settings: Any
) -> PollRecord | Response:
    """The poll as stored now, or the 404/403/503 answer its results get."""
    try:
        record = await polls.load(poll_id)
    except VoteRejected as exc:
        return to_response(rejected_reply(exc))
    if not defined.results_visible(record, is_organiser(request, settings)):
        return to_response(rejected_reply(HIDDEN))
    return record


def _definition(body: PollCreate, event_id: str | None = None) -> PollDefinition:
    closes_at = int(body.closes_at.timestamp() * 1000) if body.closes_at else None
    low, high = scale(body)
    return PollDefinition(
        body.poll_id or new_poll_id(),
        body.question,
        tuple((o.id, o.label) for o in body.options),
        body.votes_per_voter,
        body.results,
        closes_at,
        int(time.time() * 1000),
        type=body.type,
        max_choices=body.max_choices or 2,
        scale_min=low,
        scale_max=high,
        max_words=body.max_words or 3,
        max_entries=body.max_entries or 10_000,
        correct=body.correct,
        time_limit=body.time_limit,
        event_id=event_id,
    )


def parse_definition(body: bytes, event_id: str | None = None) -> PollDefinition | Reply:
    """The definition a create body asks for, or the 422 that names every bad field."""
    try:
        parsed = PollCreate.model_validate_json(body)
    except pydantic.ValidationError as exc:
        problems = [
            {"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]}
            for e in exc.errors(include_url=False, include_input=False)
        ]
        return invalid_reply(problems)
    more = type_problems(parsed)
    if more:
        return invalid_reply(list(more))
    return _definition(parsed, event_id)


@router.post(
    "",
    summary="Define a poll (organiser)",
    status_code=201,
    response_model=PollOut,
    responses={
        **ERRORS,
        **ORGANISER,
        409: {"model": Message, "description": "Id taken."},
        413: {"model": Message, "description": "Body over 16 KiB."},
    },
    openapi_extra=_json_body(PollCreate.model_json_schema(), CREATE_EXAMPLE),
)
async def create_poll(request: Request, polls: DefinedDep, settings: SettingsDep) -> Response:
    """Stores the definition on the poll's node. Needs `Authorization: Bearer <API_TOKEN>`."""
    refused = _organiser(request, settings)
    if refused:
        return to_response(refused)
    body = await read_request_body(request, MAX_DEFINITION_BODY)
    if body is None:
        return to_response(too_large_reply(MAX_DEFINITION_BODY))
    definition = parse_definition(body)
    if not isinstance(definition, PollDefinition):
        return to_response(definition)
    try:
        record = await polls.create(definition)
    except VoteRejected as exc:
        return to_response(rejected_reply(exc))
    return to_response(json_reply(201, defined.describe(record)))


@router.get(
    "/{poll_id}",
    summary="A poll's definition and state",
    response_model=PollOut,
    responses={**ERRORS, 404: {"model": Message, "description": "No such poll."}},
)
async def get_poll(
    poll_id: PollId, request: Request, polls: DefinedDep, cookies: defined.CookiesDep
) -> Response:
    """Also gives a browser without one the signed voter cookie it votes with."""
    try:
        record = await polls.load(poll_id)
    except VoteRejected as exc:
        return to_response(rejected_reply(exc))
    response = to_response(json_reply(200, defined.describe(record)))
    secure = request.url.scheme == "https"
    set_cookie = defined.cookie_to_set(cookies, request.headers.get("cookie"), secure)
    if set_cookie:
        response.headers["set-cookie"] = set_cookie
    return response


@router.post(
    "/{poll_id}/vote",
    summary="Vote in a defined poll",
    response_model=VoteAccepted,
    responses={
        **ERRORS,
        404: {"model": Message, "description": "No such poll."},
        409: {"model": Message, "description": "`already_voted` or `poll_closed`."},
        413: {"model": Message, "description": "Body over 1 KiB."},
    },
    openapi_extra={
        **_json_body(VoteRequest.model_json_schema(), {"option_id": "A"}),
        "parameters": [
            {
                "name": "X-Voter-Id",
                "in": "header",
                "required": True,
                "schema": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 64,
                    "pattern": r"^[A-Za-z0-9_.\-]{1,64}$",
                },
                "description": (
                    f"The voter. A browser may instead send the signed `{COOKIE}` cookie that "
                    "GET /api/v1/polls/{poll_id} gives it."
                ),
            }
        ],
    },
)
async def vote(
    poll_id: PollId, request: Request, polls: DefinedDep, cookies: defined.CookiesDep
) -> Response:
    """Checked and counted on the poll's node before the answer: 200 means counted once,
    409 `already_voted` or `poll_closed` means not counted."""
    body = await read_request_body(request, defined.MAX_VOTE_BODY)
    headers = request.headers
    reply = await defined.vote(
        polls,
        cookies,
        poll_id,
        body,
        defined.VoteHeaders(
            headers.get(HEADER),
            headers.get("cookie"),
            headers.get("origin"),
            headers.get("host"),
            headers.get("idempotency-key"),
        ),
    )
    return to_response(reply)


async def _set_state(
    action: str, poll_id: str, request: Request, polls: Any, settings: Any
) -> Response:
    refused = _organiser(request, settings)
    if refused:
        return to_response(refused)
    try:
        act = {"close": polls.close, "reveal": polls.reveal, "reopen": polls.reopen}[action]
        record = await act(poll_id)
    except VoteRejected as exc:
        return to_response(rejected_reply(exc))
    return to_response(json_reply(200, defined.describe(record)))


@router.post(
    "/{poll_id}/close",
    summary="Close a poll (organiser)",
    response_model=PollOut,
    responses={**ERRORS, **ORGANISER},
)
async def close_poll(
    poll_id: PollId, request: Request, polls: DefinedDep, settings: SettingsDep
) -> Response:
    """From the moment this answers, no instance accepts a vote for the poll."""
    return await _set_state("close", poll_id, request, polls, settings)


@router.post(
    "/{poll_id}/reveal",
    summary="Make hidden results visible (organiser)",
    response_model=PollOut,
    responses={**ERRORS, **ORGANISER},
)
async def reveal_poll(
    poll_id: PollId, request: Request, polls: DefinedDep, settings: SettingsDep
) -> Response:
    """Hidden results become visible to everyone."""
    return await _set_state("reveal", poll_id, request, polls, settings)


@router.post(
    "/{poll_id}/reopen",
    summary="Open a closed poll again, while nobody has answered it (organiser)",
    response_model=PollOut,
    responses={
        **ERRORS,
        **ORGANISER,
        409: {"model": Message, "description": "`votes_exist`: it has answers."},
    },
)
async def reopen_poll(
    poll_id: PollId, request: Request, polls: DefinedDep, settings: SettingsDep
) -> Response:
    """A question closed by mistake before anyone answered opens again (its closing time,
    if any, is cleared). Once it has an answer it stays closed: 409 `votes_exist`, checked
    on the node."""
    return await _set_state("reopen", poll_id, request, polls, settings)


@router.get(
    "/{poll_id}/results",
    summary="Results of a defined poll",
    response_model=DefinedResults,
    responses={
        **ERRORS,
        403: {"model": Message, "description": "Hidden until revealed (token sees them)."},
        404: {"model": Message, "description": "No such poll."},
    },
)
async def results(
    poll_id: PollId, request: Request, polls: DefinedDep, settings: SettingsDep
) -> Response:
    """Each option's count and `total_votes`, as read from the node at most
    `RESULTS_MAX_AGE_SECONDS` ago. Public results: `Cache-Control: public, max-age=<n>` and a
    weak `ETag` from the state's version (304 for a matching `If-None-Match`); hidden ones
    (the organiser's view) `private, no-store`."""
    inm = request.headers.get("if-none-match")
    reply = await cacheable.defined_results(
        polls,
        request.app.state.read_states,
        poll_id,
        is_organiser(request, settings),
        settings.results_max_age_seconds,
        inm.encode("latin-1") if inm else None,
    )
    return to_response(reply)
