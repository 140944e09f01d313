"""GET /health: the nodes and the buffer."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import DefinedDep, ServiceDep
from app.schemas.polls import Health
from app.services.health_report import health_report

router = APIRouter(tags=["health"])


@router.get(
    "/health",
    summary="Nodes and buffer",
    response_model=Health,
    responses={503: {"model": Health, "description": "At least one node does not answer."}},
)
async def health(service: ServiceDep, polls: DefinedDep) -> JSONResponse:
    """Each node's label, URL (without password) and reachability, and what the buffer holds.
    200 when every node answers, 503 when one does not."""
    batcher = polls.batcher
    report = await health_report(
        service,
        {"defined_round_trips": batcher.round_trips, "defined_votes_sent": batcher.items_sent},
    )
    return JSONResponse(report, status_code=200 if report["status"] == "ok" else 503)
