"""POST /vote/{poll_id} and the bulk POST /votes."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from starlette.convertors import PathConvertor, register_url_convertor

from app.api import bulk, handlers
from app.api.deps import ServiceDep, SettingsDep
from app.api.responses import ERRORS, read_request_body, to_response
from app.api.validation import ID_MAX, ID_PATTERN, MAX_VOTE_BODY
from app.schemas.polls import BulkAccepted, BulkVote, Message, VoteAccepted, VoteRequest

router = APIRouter(tags=["votes"])


class AnyTextConvertor(PathConvertor):
    """Like Starlette's `path`, but newlines too: `.*` stops at one, and then `/vote/\n`
    would reach the route as an empty poll id (or `/vote/a\nb` would not match at all)."""

    regex = r"[\s\S]*"


register_url_convertor("anytext", AnyTextConvertor())

PollId = Annotated[
    str,
    Path(
        description="The poll: 1-64 letters, digits, '-', '_' or '.', but not `.` or `..`.",
        examples=["100"],
        json_schema_extra={"minLength": 1, "maxLength": ID_MAX, "pattern": ID_PATTERN},
    ),
]


def _json_body(schema: dict[str, Any], example: object) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema, "example": example}},
        }
    }


@router.post(
    "/vote/{poll_id:anytext}",
    summary="Cast one vote",
    response_model=VoteAccepted,
    responses={**ERRORS, 413: {"model": Message, "description": "Body over 1 KiB."}},
    openapi_extra=_json_body(VoteRequest.model_json_schema(), {"option_id": "A"}),
)
async def cast_vote(poll_id: PollId, request: Request, service: ServiceDep) -> Response:
    """Counts one vote for `option_id` in the poll. The vote is acknowledged once it is held
    by the service; it reaches Redis with the next batch flush (or at once when batching is
    off). Answers 503 with `Retry-After` when the poll's node has too large a backlog."""
    body = await read_request_body(request, MAX_VOTE_BODY)
    key = request.headers.get("idempotency-key")
    return to_response(await handlers.vote(service, poll_id, body, key))


BULK_SCHEMA = {
    "type": "array",
    "minItems": 1,
    "maxItems": bulk.MAX_ENTRIES,
    "items": BulkVote.model_json_schema(),
}


@router.post(
    "/votes",
    summary="Ingest many votes (edge collectors)",
    response_model=BulkAccepted,
    responses={
        **ERRORS,
        401: {"model": Message, "description": "Missing or wrong bearer token."},
        404: {"model": Message, "description": "Bulk ingestion is off: no API_TOKEN is set."},
        413: {"model": Message, "description": "Body over 2 MiB."},
    },
    openapi_extra=_json_body(
        BULK_SCHEMA,
        [
            {"poll_id": "100", "option_id": "A", "count": 12},
            {"poll_id": "7", "option_id": "B", "count": 3},
        ],
    ),
)
async def ingest_votes(request: Request, service: ServiceDep, settings: SettingsDep) -> Response:
    """Adds up to 10,000 `{poll_id, option_id, count}` entries, all or nothing. Needs
    `Authorization: Bearer <API_TOKEN>`; with no token configured the endpoint is off (404)."""
    token = settings.api_token.get_secret_value() if settings.api_token else None

    async def body(limit: int) -> bytes | None:
        return await read_request_body(request, limit)

    authorization = request.headers.get("authorization")
    key = request.headers.get("idempotency-key")
    return to_response(await bulk.ingest(service, token, authorization, body, key))
