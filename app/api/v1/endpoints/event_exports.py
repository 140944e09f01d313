"""An event as one CSV (a row per poll and option, value or word) and as JSON with each
poll's results and history (organiser)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from app.api import events as shapes
from app.api.deps import SettingsDep
from app.api.handlers import json_reply, rejected_reply
from app.api.v1.endpoints.events import ADMIN, EventId, EventsDep, reply
from app.api.v1.endpoints.exports import _point as history_point
from app.api.v1.endpoints.polls import _organiser
from app.services.errors import VoteRejected
from app.services.events import Events
from app.storage.defined import PollRecord
from app.storage.events import EventRecord

router = APIRouter(prefix="/events", tags=["events"])


async def _export(
    event_id: str, request: Request, events: Events, settings: Any
) -> tuple[EventRecord, list[PollRecord]] | Response:
    refused = _organiser(request, settings)
    if refused:
        return reply(refused)
    try:
        event = await events.load(event_id)
        return event, await events.records(event)
    except VoteRejected as exc:
        return reply(rejected_reply(exc))


@router.get(
    "/{event_id}/export.csv",
    summary="The event as CSV (organiser)",
    response_class=Response,
    responses={
        200: {"description": "CSV.", "content": {"text/csv": {"schema": {"type": "string"}}}},
        **ADMIN,
    },
)
async def export_csv(
    event_id: EventId, request: Request, events: EventsDep, settings: SettingsDep
) -> Response:
    """One row per poll and option, rating value or (shown) word: `event_id, position,
    poll_id, type, question, state, kind, key, label, count, voters, total_votes`."""
    found = await _export(event_id, request, events, settings)
    if isinstance(found, Response):
        return found
    return Response(
        shapes.event_csv(*found),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="event-{event_id}.csv"'},
    )


@router.get(
    "/{event_id}/export.json",
    summary="The event as JSON, with each poll's results and history (organiser)",
    responses=ADMIN,
)
async def export_json(
    event_id: EventId, request: Request, events: EventsDep, settings: SettingsDep
) -> Response:
    """The event, and each poll's results (`GET /polls/{poll_id}/results`) with its
    `history` (points `{at, counts, total}`)."""
    found = await _export(event_id, request, events, settings)
    if isinstance(found, Response):
        return found
    event, records = found
    try:
        raw = [await events.polls.history(r.definition.poll_id) for r in records]
    except VoteRejected as exc:
        return reply(rejected_reply(exc))
    histories = [[p for p in map(history_point, points) if p is not None] for points in raw]
    return reply(json_reply(200, shapes.event_json(event, records, histories)))
