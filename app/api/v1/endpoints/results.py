"""GET /results/{poll_id}."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app.api import cacheable
from app.api.deps import ServiceDep, SettingsDep
from app.api.responses import ERRORS, to_response
from app.api.v1.endpoints.votes import PollId
from app.schemas.polls import PollResults

router = APIRouter(tags=["results"])


@router.get(
    "/results/{poll_id:anytext}",
    summary="Current results of a poll",
    response_model=PollResults,
    responses=ERRORS,
)
async def get_results(
    poll_id: PollId, request: Request, service: ServiceDep, settings: SettingsDep
) -> Response:
    """Stored counts plus votes not yet flushed, so a vote shows at once. `served_via` says
    where the stored part came from. If the poll's node is down, a cached snapshot is served
    with `"stale": true`, or 503 naming the node. `Cache-Control: public, max-age=<n>` and an
    `ETag`; 304 for a matching `If-None-Match`."""
    inm = request.headers.get("if-none-match")
    max_age = settings.results_max_age_seconds
    reply = await cacheable.adhoc_results(
        service, poll_id, max_age, inm.encode("latin-1") if inm else None
    )
    return to_response(reply)
