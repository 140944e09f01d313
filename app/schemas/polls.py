"""Request and response shapes, as the OpenAPI page documents them."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from app.core.ids import ID_MAX, ID_PATTERN

Id = Annotated[str, StringConstraints(min_length=1, max_length=ID_MAX, pattern=ID_PATTERN)]


class VoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"option_id": "A"}]})
    option_id: Id = Field(description="The option voted for.")


class VoteAccepted(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"status": "success", "message": "Vote accepted"}]}
    )
    status: str
    message: str


class PollResults(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"poll_id": "100", "results": {"A": 3, "B": 1}, "served_via": "redis_7000"}
            ]
        }
    )
    poll_id: str
    results: dict[str, int] = Field(description="Votes per option; empty if nobody voted.")
    served_via: str = Field(
        description="`in_memory`, `app_cache` on a cache hit, or the node label on a miss."
    )
    stale: bool | None = Field(
        None, description="Present and true when the node is down and a cached snapshot is served."
    )


class ErrorItem(BaseModel):
    loc: list[str | int] = Field(description="Where the problem is, e.g. ['body', 'option_id'].")
    msg: str
    type: str


class ValidationFailed(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "detail": [
                        {
                            "loc": ["body", "option_id"],
                            "msg": "option_id must not be empty",
                            "type": "string_too_short",
                        }
                    ]
                }
            ]
        }
    )
    detail: list[ErrorItem]


class Message(BaseModel):
    detail: str


class NodeHealth(BaseModel):
    label: str
    url: str = Field(description="The node's URL, password removed.")
    reachable: bool
    pending_votes: int
    in_flight_votes: int


class Health(BaseModel):
    status: str = Field(description="`ok` when every node answers, else `degraded`.")
    nodes: list[NodeHealth]
    buffer: dict[str, int]
    cache: dict[str, float]
    counters: dict[str, int] = Field(
        description=(
            "Since start, this worker: votes accepted, flushes, Redis round trips; defined "
            "polls: round trips and votes sent in them."
        )
    )


class BulkVote(BaseModel):
    model_config = ConfigDict(extra="forbid")

    poll_id: Id
    option_id: Id
    count: int = Field(ge=1, le=1_000_000)


class BulkAccepted(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"status": "success", "entries": 2, "votes": 15}]}
    )
    status: str
    entries: int
    votes: int
