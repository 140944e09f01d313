"""GET /health: the nodes and the buffer."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import ServiceDep
from app.schemas.polls import Health

router = APIRouter(tags=["health"])


@router.get(
    "/health",
    summary="Nodes and buffer",
    response_model=Health,
    responses={503: {"model": Health, "description": "At least one node does not answer."}},
)
async def health(service: ServiceDep) -> JSONResponse:
    """Each node's label, URL (without password) and reachability, and what the buffer holds.
    200 when every node answers, 503 when one does not."""
    report = await service.health()
    return JSONResponse(report, status_code=200 if report["status"] == "ok" else 503)
