"""Events (sessions): create and list (organiser), join by code, the presenter's current
poll, the event's state stream, the quiz leaderboard. docs/sessions.md has the whole API."""

from __future__ import annotations

import unicodedata
from typing import Annotated, Any

import pydantic
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.api import defined
from app.api import events as shapes
from app.api.deps import SettingsDep
from app.api.handlers import Reply, encode, invalid_reply, json_reply, rejected_reply
from app.api.responses import ERRORS, read_request_body, to_response
from app.api.v1.endpoints.polls import MAX_DEFINITION_BODY, ORGANISER, _organiser, parse_definition
from app.api.v1.endpoints.streams import EventStream, LiveDep, open_stream, stream_responses
from app.api.v1.endpoints.votes import _json_body
from app.api.voters import cross_origin
from app.schemas.defined import PollCreate
from app.schemas.polls import Id, Message
from app.schemas.text import Title
from app.services.errors import VoteRejected
from app.services.events import MAX_NAME, Events
from app.services.live_results import Reader, ReadFailed, Snapshot
from app.storage.defined import PollDefinition
from app.storage.events import EventRecord

router = APIRouter(prefix="/events", tags=["events"])
NO_EVENT: dict[int | str, dict[str, Any]] = {
    404: {"model": Message, "description": "No such event."}
}
PUBLIC = {**ERRORS, **NO_EVENT}
ADMIN = {
    **ERRORS,
    **ORGANISER,
    404: {"model": Message, "description": "No such event, or no API_TOKEN is set."},
    413: {"model": Message, "description": "Body too large."},
}
VOTER_PARAMETER = {
    "name": "X-Voter-Id",
    "in": "header",
    "required": True,
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": 64,
        "pattern": r"^[A-Za-z0-9_.\-]{1,64}$",
    },
    "description": "The voter; a browser may send the signed voter cookie instead.",
}
EventId = Annotated[str, Path(pattern=r"^[0-9a-f]{12}$", description="12 hex digits.")]
MAX_SMALL_BODY = 4 * 1024


POLL_EXAMPLE = {
    "question": "Which languages do you use?",
    "type": "multiple",
    "max_choices": 2,
    "options": [
        {"id": "A", "label": "Rust"},
        {"id": "B", "label": "Python"},
        {"id": "C", "label": "Go"},
    ],
}
STREAM_EXAMPLE = 'id: 1\ndata: {"event_id":"065a10b307c0","current":null,"version":1}\n\n'


def get_events(request: Request) -> Events:
    events: Events = request.app.state.events
    return events


EventsDep = Annotated[Events, Depends(get_events)]


class EventCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    title: Title


class CurrentSet(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    poll_id: Id | None


class Reorder(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    poll_ids: list[Id] = Field(max_length=200)


class Join(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(
        min_length=1,
        max_length=MAX_NAME,
        description="Control and format characters are dropped, spaces collapsed; a name "
        "with nothing else left clears the voter's name.",
    )

    @field_validator("name")
    @classmethod
    def _clean(cls, value: str) -> str:
        kept = "".join(c for c in value if unicodedata.category(c)[0] != "C" or c in "\t\n")
        return " ".join(kept.split())


async def parse(request: Request, model: type[pydantic.BaseModel]) -> Any:
    """The body as `model`, or the Reply (413, 422) to give instead."""
    body = await read_request_body(request, MAX_SMALL_BODY)
    if body is None:
        return json_reply(413, {"detail": f"request body must be at most {MAX_SMALL_BODY} bytes"})
    try:
        return model.model_validate_json(body)
    except pydantic.ValidationError as exc:
        problems = [
            {"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]}
            for e in exc.errors(include_url=False, include_input=False)
        ]
        return invalid_reply(problems)


async def organiser_body(request: Request, settings: Any, model: type[pydantic.BaseModel]) -> Any:
    """The organiser's parsed body, or the answer that refuses it (the token first, then
    the body), as a Response."""
    refused = _organiser(request, settings)
    if refused:
        return reply(refused)
    body = await parse(request, model)
    if isinstance(body, tuple):
        return reply(body)
    return body


def reply(found: Reply) -> Response:
    return to_response(found)


async def _view(events: Events, event: EventRecord) -> Reply:
    return json_reply(200, shapes.event_view(event, await events.records(event)))


async def state(events: Events, event: EventRecord) -> dict[str, Any]:
    current = None
    if event.current is not None:
        current = await events.poll_or_none(event.current)
    return shapes.event_state(event, current)


@router.post(
    "",
    summary="Create an event (organiser)",
    status_code=201,
    responses=ADMIN,
    openapi_extra=_json_body(EventCreate.model_json_schema(), {"title": "Team meeting"}),
)
async def create_event(request: Request, events: EventsDep, settings: SettingsDep) -> Response:
    """`{"title": ...}` -> 201 with `event_id` and a 6-character join `code`."""
    body = await organiser_body(request, settings, EventCreate)
    if isinstance(body, Response):
        return body
    try:
        event = await events.create(body.title)
    except VoteRejected as exc:
        return reply(rejected_reply(exc))
    return reply(json_reply(201, shapes.event_view(event, [])))


@router.get("", summary="Every event (organiser)", responses=ADMIN)
async def list_events(request: Request, events: EventsDep, settings: SettingsDep) -> Response:
    """Every event, oldest first, with its code, current poll and number of polls."""
    refused = _organiser(request, settings)
    if refused:
        return reply(refused)
    try:
        found = await events.all()
    except VoteRejected as exc:
        return reply(rejected_reply(exc))
    return reply(json_reply(200, {"events": [shapes.event_listing(e) for e in found]}))


@router.get(
    "/by-code/{code}", summary="The event a join code names, and its state", responses=PUBLIC
)
async def by_code(code: Annotated[str, Path(max_length=20)], events: EventsDep) -> Response:
    """Case-insensitive; spaces and dashes are ignored, a dropped look-alike is read as the
    character kept (`B`->`8`, `G`->`6`, `S`->`5`, `Z`->`2`, `V`->`U`). 404 `event_not_found`."""
    try:
        event = await events.by_code(code)
        return reply(json_reply(200, await state(events, event)))
    except VoteRejected as exc:
        return reply(rejected_reply(exc))


@router.get("/{event_id}", summary="An event and its polls, in order", responses=PUBLIC)
async def get_event(event_id: EventId, events: EventsDep) -> Response:
    """The event, its current poll and each poll's description with `total_votes` and
    `voters` (no counts per option)."""
    try:
        return reply(await _view(events, await events.load(event_id)))
    except VoteRejected as exc:
        return reply(rejected_reply(exc))


@router.get("/{event_id}/state", summary="What the event's stream sends now", responses=PUBLIC)
async def get_state(event_id: EventId, events: EventsDep) -> Response:
    """The event and its current poll (`current: null`: the waiting screen)."""
    try:
        return reply(json_reply(200, await state(events, await events.load(event_id))))
    except VoteRejected as exc:
        return reply(rejected_reply(exc))


@router.post(
    "/{event_id}/polls",
    summary="Add a poll to the event (organiser)",
    status_code=201,
    responses={**ADMIN, 409: {"model": Message, "description": "Id taken, or event full."}},
    openapi_extra=_json_body(PollCreate.model_json_schema(), POLL_EXAMPLE),
)
async def add_poll(
    event_id: EventId, request: Request, events: EventsDep, settings: SettingsDep
) -> Response:
    """The body of `POST /api/v1/polls` with `type` (docs/sessions.md)."""
    refused = _organiser(request, settings)
    if refused:
        return reply(refused)
    body = await read_request_body(request, MAX_DEFINITION_BODY)
    if body is None:
        return reply(json_reply(413, {"detail": "request body must be at most 16 KiB"}))
    definition = parse_definition(body, event_id)
    if not isinstance(definition, PollDefinition):
        return reply(definition)
    try:
        record = await events.add_poll(event_id, definition)
    except VoteRejected as exc:
        return reply(rejected_reply(exc))
    return reply(json_reply(201, shapes.poll_summary(record)))


@router.post(
    "/{event_id}/current",
    summary="Choose the current poll, or null (organiser)",
    responses=ADMIN,
    openapi_extra=_json_body(CurrentSet.model_json_schema(), {"poll_id": "talk"}),
)
async def set_current(
    event_id: EventId, request: Request, events: EventsDep, settings: SettingsDep
) -> Response:
    """`{"poll_id": ...}` of one of the event's polls, or `null` for a waiting screen. The
    first time a poll becomes current its start is stamped (a quiz's time limit starts)."""
    body = await organiser_body(request, settings, CurrentSet)
    if isinstance(body, Response):
        return body
    try:
        return reply(await _view(events, await events.set_current(event_id, body.poll_id)))
    except VoteRejected as exc:
        return reply(rejected_reply(exc))


@router.post(
    "/{event_id}/order",
    summary="Reorder the event's polls (organiser)",
    responses=ADMIN,
    openapi_extra=_json_body(Reorder.model_json_schema(), {"poll_ids": ["b", "a"]}),
)
async def reorder(
    event_id: EventId, request: Request, events: EventsDep, settings: SettingsDep
) -> Response:
    """`{"poll_ids": [...]}`: every poll of the event once, in the new order."""
    body = await organiser_body(request, settings, Reorder)
    if isinstance(body, Response):
        return body
    try:
        return reply(await _view(events, await events.reorder(event_id, body.poll_ids)))
    except VoteRejected as exc:
        return reply(rejected_reply(exc))


@router.delete(
    "/{event_id}",
    summary="Delete the event and its polls (organiser)",
    status_code=204,
    responses=ADMIN,
)
async def delete_event(
    event_id: EventId, request: Request, events: EventsDep, settings: SettingsDep
) -> Response:
    """The event, its code (free again), its polls and their votes."""
    refused = _organiser(request, settings)
    if refused:
        return reply(refused)
    try:
        await events.delete(event_id)
    except VoteRejected as exc:
        return reply(rejected_reply(exc))
    return Response(status_code=204)


@router.post(
    "/{event_id}/join",
    summary="Give the voter's display name for the leaderboard",
    responses={**PUBLIC, 403: {"model": Message, "description": "Cookie from another site."}},
    openapi_extra={
        **_json_body(Join.model_json_schema(), {"name": "Ann"}),
        "parameters": [VOTER_PARAMETER],
    },
)
async def join(
    event_id: EventId, request: Request, events: EventsDep, cookies: defined.CookiesDep
) -> Response:
    """`{"name": ...}` (1-32 characters) for the voter of `X-Voter-Id` or the voter cookie."""
    headers = request.headers
    voter = defined.voter_identity(cookies, headers.get("x-voter-id"), headers.get("cookie"))
    if isinstance(voter, dict):
        return reply(invalid_reply([voter]))
    body = await parse(request, Join)
    if isinstance(body, tuple):
        return reply(body)
    if headers.get("x-voter-id") is None and cross_origin(
        headers.get("origin"), headers.get("host")
    ):
        return reply(json_reply(403, defined.CROSS_ORIGIN))
    try:
        await events.join(event_id, voter, body.name)
    except VoteRejected as exc:
        return reply(rejected_reply(exc))
    return reply(json_reply(200, {"event_id": event_id, "name": body.name or None}))


@router.get("/{event_id}/leaderboard", summary="Quiz leaderboard of the event", responses=PUBLIC)
async def get_leaderboard(
    event_id: EventId,
    events: EventsDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> Response:
    """Voters ranked by correct answers over the event's closed quiz polls, ties by total
    answer time (ms from each question becoming current)."""
    try:
        ranked, quiz_polls = await events.leaderboard(event_id)
    except VoteRejected as exc:
        return reply(rejected_reply(exc))
    return reply(json_reply(200, shapes.leaderboard(event_id, ranked, quiz_polls, limit)))


def event_reader(events: Events, event_id: str) -> Reader:
    async def read() -> Snapshot:
        try:
            event = await events.load(event_id)
            payload = await state(events, event)
        except VoteRejected as exc:
            raise ReadFailed(rejected_reply(exc)) from exc
        current = payload["current"]
        signature = (
            event.version,
            None if current is None else (current["state"], current["results_visible"]),
        )
        return Snapshot(encode(payload), signature, event.version)

    return read


@router.get(
    "/{event_id}/stream",
    summary="The event's state (Server-Sent Events)",
    response_class=EventStream,
    responses={**stream_responses(STREAM_EXAMPLE, hidden=False), **NO_EVENT},
)
async def event_stream(
    event_id: EventId, events: EventsDep, live: LiveDep, request: Request
) -> Response:
    """`text/event-stream`: what `GET /events/{event_id}/state` answers, at once and whenever
    the current poll, the event's polls, or the current poll's state change, at most once per
    `STREAM_INTERVAL_SECONDS`; `: ping` every 15 s. The stream does not end by itself."""
    return await open_stream(live, f"event:{event_id}", event_reader(events, event_id), request)
