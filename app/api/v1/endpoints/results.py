"""GET /results/{poll_id}."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.api import handlers
from app.api.deps import ServiceDep
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
async def get_results(poll_id: PollId, service: ServiceDep) -> Response:
    """Stored counts plus votes not yet flushed, so a vote shows at once. `served_via` says
    where the stored part came from. If the poll's node is down, a cached snapshot is served
    with `"stale": true`, or 503 naming the node."""
    return to_response(await handlers.results(service, poll_id))
