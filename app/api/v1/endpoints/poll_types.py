"""What the question types add to a poll: the voter's own record, hiding a word."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from app.api import defined
from app.api import events as shapes
from app.api.deps import DefinedDep, SettingsDep
from app.api.handlers import invalid_reply, json_reply, rejected_reply
from app.api.responses import ERRORS, to_response
from app.api.v1.endpoints.events import ADMIN, VOTER_PARAMETER, parse
from app.api.v1.endpoints.polls import _organiser
from app.api.v1.endpoints.votes import PollId, _json_body
from app.api.validation import error
from app.schemas.polls import Message
from app.services.errors import VoteRejected
from app.services.question_types import MAX_WORD_CHARS, normalise_word

router = APIRouter(prefix="/polls", tags=["defined polls"])


class Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    text: str = Field(min_length=1, max_length=200)


@router.get(
    "/{poll_id}/my-vote",
    summary="The voter's own vote in a poll",
    responses={**ERRORS, 404: {"model": Message, "description": "No such poll."}},
    openapi_extra={"parameters": [VOTER_PARAMETER]},
)
async def my_vote(
    poll_id: PollId, request: Request, polls: DefinedDep, cookies: defined.CookiesDep
) -> Response:
    """For `X-Voter-Id` or the voter cookie: whether they voted, what they chose (the body
    they sent, normalised), and `choices_left`."""
    headers = request.headers
    voter = defined.voter_identity(cookies, headers.get("x-voter-id"), headers.get("cookie"))
    if isinstance(voter, dict):
        return to_response(invalid_reply([voter]))
    try:
        record = await polls.load(poll_id)
        used, payload = await polls.mine(poll_id, voter)
    except VoteRejected as exc:
        return to_response(rejected_reply(exc))
    return to_response(json_reply(200, shapes.my_vote(record, used, payload)))


async def _hide(
    poll_id: str, request: Request, polls: DefinedDep, settings: SettingsDep, hidden: bool
) -> Response:
    refused = _organiser(request, settings)
    if refused:
        return to_response(refused)
    body = await parse(request, Entry)
    if isinstance(body, tuple):
        return to_response(body)
    entry = normalise_word(body.text)
    if not entry or len(entry) > MAX_WORD_CHARS:
        message = f"text must be 1-{MAX_WORD_CHARS} characters once normalised"
        return to_response(invalid_reply([error(["body", "text"], message, "string_length")]))
    try:
        record = await polls.load(poll_id)
        if record.definition.type != "words":
            message = "only the entries of a words question can be hidden"
            return to_response(invalid_reply([error(["path", "poll_id"], message, "not_words")]))
        record = await polls.hide(poll_id, entry, hidden)
    except VoteRejected as exc:
        return to_response(rejected_reply(exc))
    payload = defined.results_payload(record, polls.store.served_via(poll_id))
    return to_response(json_reply(200, {**payload, "hidden_words": sorted(record.hidden)}))


@router.post(
    "/{poll_id}/hide",
    summary="Hide a words entry from every public view (organiser)",
    responses=ADMIN,
    openapi_extra=_json_body(Entry.model_json_schema(), {"text": "Rust"}),
)
async def hide(
    poll_id: PollId, request: Request, polls: DefinedDep, settings: SettingsDep
) -> Response:
    """`{"text": ...}` (normalised as votes are). The counts stay on the node; results,
    streams and exports leave the entry out. Answers the results with `hidden_words`."""
    return await _hide(poll_id, request, polls, settings, True)


@router.post(
    "/{poll_id}/unhide",
    summary="Show a hidden words entry again (organiser)",
    responses=ADMIN,
    openapi_extra=_json_body(Entry.model_json_schema(), {"text": "Rust"}),
)
async def unhide(
    poll_id: PollId, request: Request, polls: DefinedDep, settings: SettingsDep
) -> Response:
    """`{"text": ...}`: the entry shows again in results, streams and exports."""
    return await _hide(poll_id, request, polls, settings, False)
