"""Changing a poll's definition (organiser): the question, `results` and `closes_at` at any
time; its type and what the type counts (options, limits, the correct answer) only while
it has no votes: after that, 422 naming the field, and nothing changes."""

from __future__ import annotations

from typing import Any

import msgspec
from fastapi import APIRouter, Request, Response

from app.api import defined
from app.api.deps import DefinedDep, SettingsDep
from app.api.handlers import invalid_reply, json_reply, rejected_reply
from app.api.responses import read_request_body, to_response
from app.api.v1.endpoints.events import ADMIN
from app.api.v1.endpoints.polls import MAX_DEFINITION_BODY, _organiser, parse_definition
from app.api.v1.endpoints.votes import PollId, _json_body
from app.api.validation import error
from app.schemas.defined import PollCreate
from app.schemas.polls import Message
from app.services.errors import VoteRejected
from app.storage.defined import PollDefinition, encode_definition

router = APIRouter(prefix="/polls", tags=["defined polls"])
# Stored fields that say what is counted, and the API field each stands for.
LOCKED = {
    "type": "type",
    "options": "options",
    "option_ids": "options",
    "votes_per_voter": "votes_per_voter",
    "max_choices": "max_choices",
    "scale_min": "min",
    "scale_max": "max",
    "max_words": "max_words",
    "max_entries": "max_entries",
    "correct": "correct",
}
KEPT = ("state", "revealed", "total", "created_at", "event_id", "started_at")


def body_of(d: PollDefinition) -> dict[str, Any]:
    """The create body that stands for a stored definition (without `closes_at`)."""
    body: dict[str, Any] = {"question": d.question, "type": d.type, "results": d.results}
    if d.options:
        body["options"] = [{"id": o, "label": label} for o, label in d.options]
    if d.type == "single":
        body["votes_per_voter"] = d.votes_per_voter
    elif d.type == "multiple":
        body["max_choices"] = d.max_choices
    elif d.type == "rating":
        body.update(min=d.scale_min, max=d.scale_max)
    elif d.type == "words":
        body.update(max_words=d.max_words, max_entries=d.max_entries)
    elif d.type == "quiz":
        body.update(correct=d.correct, time_limit=d.time_limit)
    return body


@router.patch(
    "/{poll_id}",
    summary="Change a poll's definition (organiser)",
    responses={**ADMIN, 404: {"model": Message, "description": "No such poll."}},
    openapi_extra=_json_body(PollCreate.model_json_schema(), {"question": "Which talk first?"}),
)
async def edit_poll(
    poll_id: PollId, request: Request, polls: DefinedDep, settings: SettingsDep
) -> Response:
    """Any fields of the create body but `poll_id`; the others stay. A new `type` starts
    from the question, `results` and `closes_at` only. Once the poll has votes, a change of
    `type`, `options`, `votes_per_voter`, `max_choices`, `min`, `max`, `max_words`,
    `max_entries` or `correct` answers 422 `votes_exist` naming it, and nothing changes."""
    refused = _organiser(request, settings)
    if refused:
        return to_response(refused)
    raw = await read_request_body(request, MAX_DEFINITION_BODY)
    if raw is None:
        return to_response(json_reply(413, {"detail": "request body must be at most 16 KiB"}))
    try:
        patch = msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        patch = None
    if not isinstance(patch, dict) or "poll_id" in patch:
        problem = error(["body"], "a JSON object of create fields, without poll_id", "object_type")
        return to_response(invalid_reply([problem]))
    try:
        current = (await polls.load(poll_id)).definition
        base = body_of(current)
        if "type" in patch and patch["type"] != current.type:
            base = {k: base[k] for k in ("question", "results")}
        body = msgspec.json.encode({**base, **patch, "poll_id": poll_id})
        merged = parse_definition(body, current.event_id)
        if not isinstance(merged, PollDefinition):
            return to_response(merged)
        flat = encode_definition(merged)
        fields = {k: v for k, v in zip(flat[::2], flat[1::2], strict=True) if k not in KEPT}
        if "closes_at" not in patch:
            fields.pop("closes_at")
        fields = {"type": fields.pop("type"), **fields}  # a changed type is named first
        locked = await polls.redefine(poll_id, fields, list(LOCKED))
        if locked is not None:
            name = LOCKED[locked]
            message = f"{name} cannot change once the poll has votes"
            return to_response(invalid_reply([error(["body", name], message, "votes_exist")]))
        record = await polls.load(poll_id)
    except VoteRejected as exc:
        return to_response(rejected_reply(exc))
    return to_response(json_reply(200, defined.describe(record)))
