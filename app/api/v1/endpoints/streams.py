"""Live results streams (Server-Sent Events) for defined and ad-hoc polls.

Each event is a default message, `id: <n>` and `data: <the results JSON>`, sent at once on
connect and then whenever the results change, at most once per `STREAM_INTERVAL_SECONDS`
per poll; `: ping` every 15 s. Every event is the whole state, so `Last-Event-ID` is not
needed and not read: a reconnecting client gets the current state at once. Past the stream
caps (`STREAM_MAX_SUBSCRIBERS`, `STREAM_MAX_PER_CLIENT`) a stream answers 503 with
Retry-After. The broadcaster is `app.services.live_results` (docs/live-fan-out.md).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Depends, Request, Response

from app.api import cacheable, defined, handlers
from app.api.deps import DefinedDep, ServiceDep, SettingsDep
from app.api.grip_streams import grip_publishers, grip_stream
from app.api.handlers import invalid_reply, json_reply, rejected_reply
from app.api.responses import ERRORS, to_response
from app.api.sse import EventStreamResponse
from app.api.v1.endpoints.polls import is_organiser
from app.api.v1.endpoints.votes import PollId
from app.api.validation import InvalidInput, check_poll_id
from app.schemas.polls import Message
from app.services.defined_polls import DefinedPolls
from app.services.errors import HIDDEN, VoteRejected
from app.services.live_results import LiveResults, Reader, ReadFailed, Snapshot, Stopped
from app.services.polling_service import PollingService
from app.services.stream_caps import StreamsFull

router = APIRouter(tags=["live results"])
STOPPING = {"detail": "the service is stopping", "type": "shutting_down"}
NOT_YET = {"detail": "no such poll yet: it has no votes", "type": "poll_not_found"}
RETRY_SOON = [(b"retry-after", b"5")]


def get_live(request: Request) -> LiveResults:
    live: LiveResults = request.app.state.live
    return live


LiveDep = Annotated[LiveResults, Depends(get_live)]


class EventStream(Response):
    """For the OpenAPI page only: the answer is `text/event-stream`."""

    media_type = "text/event-stream"


def stream_responses(example: str, hidden: bool) -> dict[int | str, dict[str, Any]]:
    documented: dict[int | str, dict[str, Any]] = {
        200: {
            "description": "An endless event stream (a defined poll's ends after its final event).",
            "content": {"text/event-stream": {"schema": {"type": "string"}, "example": example}},
        },
        **ERRORS,
    }
    if hidden:
        documented[403] = {"model": Message, "description": "Hidden until revealed."}
        documented[404] = {"model": Message, "description": "No such poll."}
    return documented


def adhoc_reader(service: PollingService, poll_id: str) -> Reader:
    """Reads what `GET /results/{poll_id}` answers."""

    async def read() -> Snapshot:
        reply = await handlers.results(service, poll_id)
        if reply[0] != 200:
            raise ReadFailed(reply)
        payload = msgspec.json.decode(reply[1])
        results: dict[str, int] = payload["results"]
        signature = (tuple(sorted(results.items())), payload.get("stale", False))
        return Snapshot(reply[1], signature, sum(results.values()), empty=not results)

    return read


def defined_reader(polls: DefinedPolls, poll_id: str) -> Reader:
    """Reads what `GET /polls/{poll_id}/results` answers, and offers the node a history
    point while the totals differ from the last point this reader stored (the node keeps
    points a second apart, but always the final one)."""
    recorded = -1

    async def read() -> Snapshot:
        nonlocal recorded
        try:
            record = await polls.load(poll_id)
        except VoteRejected as exc:
            raise ReadFailed(rejected_reply(exc)) from exc
        if record.total != recorded:
            try:
                if await polls.record_point(record) or record.closed:
                    recorded = record.total
            except VoteRejected:
                pass  # the next read tries again
        body = handlers.encode(defined.results_payload(record, polls.store.served_via(poll_id)))
        # hidden words change what subscribers see without changing a count
        signature = cacheable.results_signature(record)
        hidden = not defined.results_visible(record, organiser=False)
        return Snapshot(
            body,
            signature,
            record.total,
            final=record.closed,
            hidden=hidden,
            moderated=record.moderated,
            redefined=record.redefined,
            made_at=record.definition.created_at,
        )

    return read


async def _open(
    live: LiveResults, key: str, read: Reader, request: Request, organiser: bool
) -> Response:
    """The stream, or the JSON error that the caps or the first read gave."""
    client = request.client.host if request.client else ""
    try:
        subscription = live.subscribe(key, read, client)
    except StreamsFull as exc:
        busy = {"detail": str(exc), "type": "too_many_streams"}
        return to_response(json_reply(503, busy, [*RETRY_SOON, (b"connection", b"close")]))
    streaming = False
    try:
        try:
            first = await subscription.first()
        except ReadFailed as exc:
            return to_response(exc.reply)
        except Stopped:
            return to_response(json_reply(503, STOPPING, RETRY_SOON))
        if first.snapshot.hidden and not organiser:
            return to_response(rejected_reply(HIDDEN))
        if live.too_many_empty(key):
            return to_response(json_reply(404, NOT_YET, RETRY_SOON))
        streaming = True
        return EventStreamResponse(subscription)
    finally:
        if not streaming:
            subscription.close()


async def open_stream(live: LiveResults, key: str, read: Reader, request: Request) -> Response:
    """A stream that anyone may follow (nothing in it is hidden)."""
    return await _open(live, key, read, request, organiser=True)


def _bad_id(poll_id: str) -> Response | None:
    try:
        check_poll_id(poll_id)
    except InvalidInput as exc:
        return to_response(invalid_reply(exc.errors))
    return None


DEFINED_EXAMPLE = (
    'id: 7\ndata: {"poll_id":"talk","question":"Which talk next?","options":[{"id":"A",'
    '"label":"Rust","count":3},{"id":"B","label":"Python","count":5}],"total_votes":8,'
    '"state":"open","final":false,"served_via":"redis_7001"}\n\n: ping\n\n'
)
ADHOC_EXAMPLE = (
    'id: 3\ndata: {"poll_id":"100","results":{"A":12,"B":7},"served_via":"app_cache"}\n\n'
)


@router.get(
    "/polls/{poll_id}/stream",
    summary="Live results of a defined poll (Server-Sent Events)",
    response_class=EventStream,
    responses=stream_responses(DEFINED_EXAMPLE, hidden=True),
)
async def defined_stream(
    poll_id: PollId, request: Request, polls: DefinedDep, live: LiveDep, settings: SettingsDep
) -> Response:
    """`text/event-stream`. Each event is a default message: `id: <increasing int>` and
    `data:` one line of JSON, exactly what `GET /polls/{poll_id}/results` answers. One event
    at once, then one whenever the results change, at most one per `STREAM_INTERVAL_SECONDS`;
    `: ping` every 15 s. Once the poll is closed the stream sends the final event
    (`"final": true`) and ends. `Last-Event-ID` is not needed (every event is the whole state)
    and is ignored. Hidden results: 403 without the organiser's token."""
    bad = _bad_id(poll_id)
    if bad is not None:
        return bad
    read = defined_reader(polls, poll_id)
    organiser = is_organiser(request, settings)
    if (grip := grip_publishers(request)) is not None:  # through Pushpin: held there
        return await grip_stream(request, grip, f"def:{poll_id}", read, organiser)
    return await _open(live, f"def:{poll_id}", read, request, organiser)


@router.get(
    "/results/{poll_id}/stream",
    summary="Live results of a poll (Server-Sent Events)",
    response_class=EventStream,
    responses=stream_responses(ADHOC_EXAMPLE, hidden=False),
)
async def adhoc_stream(
    poll_id: PollId, request: Request, service: ServiceDep, live: LiveDep
) -> Response:
    """`text/event-stream`. Each event is a default message: `id: <increasing int>` and
    `data:` one line of JSON, exactly what `GET /results/{poll_id}` answers. One event at once,
    then one whenever the counts change, at most one per `STREAM_INTERVAL_SECONDS`; `: ping`
    every 15 s. The stream does not end by itself. `Last-Event-ID` is ignored."""
    bad = _bad_id(poll_id)
    if bad is not None:
        return bad
    read = adhoc_reader(service, poll_id)
    if (grip := grip_publishers(request)) is not None:  # through Pushpin: held there
        return await grip_stream(request, grip, f"adhoc:{poll_id}", read, organiser=True)
    return await _open(live, f"adhoc:{poll_id}", read, request, organiser=True)
