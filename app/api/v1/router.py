from fastapi import APIRouter

from app.api.v1.endpoints import health, polls, results, votes

api_router = APIRouter()
api_router.include_router(votes.router)
api_router.include_router(results.router)
api_router.include_router(polls.router)
api_router.include_router(health.router)
