from fastapi import APIRouter

from app.api.v1.endpoints import (
    event_exports,
    events,
    exports,
    health,
    poll_edit,
    poll_types,
    polls,
    results,
    streams,
    votes,
)

api_router = APIRouter()
api_router.include_router(votes.router)
api_router.include_router(streams.router)  # before results: /results/{id:anytext}
api_router.include_router(results.router)
api_router.include_router(polls.router)
api_router.include_router(exports.router)
api_router.include_router(events.router)
api_router.include_router(event_exports.router)
api_router.include_router(poll_types.router)
api_router.include_router(poll_edit.router)
api_router.include_router(health.router)
