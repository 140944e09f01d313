"""A defined poll's results as CSV, and its totals over time."""

from __future__ import annotations

import csv
import io
from typing import Any

import msgspec
from fastapi import APIRouter, Request, Response

from app.api import defined
from app.api.deps import DefinedDep, SettingsDep
from app.api.events import cell, poll_rows
from app.api.handlers import json_reply, rejected_reply
from app.api.responses import ERRORS, to_response
from app.api.v1.endpoints.polls import visible_record
from app.api.v1.endpoints.votes import PollId
from app.schemas.defined import PollHistory
from app.schemas.polls import Message
from app.services.errors import VoteRejected
from app.storage.defined import PollRecord

router = APIRouter(prefix="/polls", tags=["defined polls"])
RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    403: {"model": Message, "description": "Hidden until revealed (token sees them)."},
    404: {"model": Message, "description": "No such poll."},
}


def results_csv(record: PollRecord) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["option_id", "label", "count"])
    labels = dict(record.definition.options)
    # Rating values and (shown) words have no label: the key stands for it.
    for _, key, count in poll_rows(record):
        writer.writerow([cell(key), cell(labels.get(key, key)), count])
    return out.getvalue()


@router.get(
    "/{poll_id}/results.csv",
    summary="Results of a defined poll as CSV",
    response_class=Response,
    responses={
        200: {
            "description": "`option_id,label,count`, one row per option.",
            "content": {
                "text/csv": {
                    "schema": {"type": "string"},
                    "example": "option_id,label,count\r\nA,Rust,3\r\nB,Python,5\r\n",
                }
            },
        },
        **RESPONSES,
    },
)
async def results_as_csv(
    poll_id: PollId, request: Request, polls: DefinedDep, settings: SettingsDep
) -> Response:
    """A header row `option_id,label,count`, then one row per option in the poll's order.
    Downloaded as `<poll_id>-results.csv`, or `<poll_id>-final-results.csv` once the poll is
    closed. Hidden results: 403 without the organiser's token."""
    found = await visible_record(poll_id, request, polls, settings)
    if isinstance(found, Response):
        return found
    name = f"{poll_id}-final-results.csv" if found.closed else f"{poll_id}-results.csv"
    return Response(
        results_csv(found),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="{name}"'},
    )


def _point(raw: str) -> dict[str, Any] | None:
    try:
        point = msgspec.json.decode(raw)
        at = defined.iso(int(point["at"]))
        return {"at": at, "counts": point["counts"], "total": point["total"]}
    except (msgspec.DecodeError, KeyError, TypeError, ValueError):
        return None  # a point someone damaged by hand is left out


@router.get(
    "/{poll_id}/history",
    summary="A defined poll's totals over time",
    response_model=PollHistory,
    responses=RESPONSES,
)
async def history(
    poll_id: PollId, request: Request, polls: DefinedDep, settings: SettingsDep
) -> Response:
    """Points `{at, counts, total}`, oldest first. A point is recorded about once a second
    while the total grows (by the instance that counted the votes, watched or not, and by
    live results streams), and always the final one at close. Hidden results: 403 without
    the organiser's token."""
    found = await visible_record(poll_id, request, polls, settings)
    if isinstance(found, Response):
        return found
    try:
        raw = await polls.history(poll_id)
    except VoteRejected as exc:
        return to_response(rejected_reply(exc))
    points = [p for p in map(_point, raw) if p is not None]
    return to_response(json_reply(200, {"poll_id": poll_id, "points": points}))
