"""Shapes of the defined-poll API, as the OpenAPI page documents them."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from app.schemas.polls import Id

Label = Annotated[str, Field(min_length=1, max_length=200)]


class OptionIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    id: Id
    label: Label


MAX_OPEN_DAYS = 366


class PollCreate(BaseModel):
    """Strict: `true` or `"2"` is no `votes_per_voter`, a number is no `closes_at`."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "question": "Which talk next?",
                    "options": [{"id": "A", "label": "Rust"}, {"id": "B", "label": "Python"}],
                    "votes_per_voter": 1,
                    "results": "live",
                }
            ]
        },
    )
    poll_id: Id | None = Field(None, description="Generated when absent.")
    question: str = Field(min_length=1, max_length=500)
    options: list[OptionIn] = Field(min_length=2, max_length=20)
    votes_per_voter: int = Field(1, ge=1, le=20)
    results: Literal["live", "hidden"] = "live"
    closes_at: AwareDatetime | None = Field(None, description="ISO 8601 with a time zone.")

    @field_validator("options")
    @classmethod
    def _distinct_ids(cls, options: list[OptionIn]) -> list[OptionIn]:
        ids = [o.id for o in options]
        if len(set(ids)) != len(ids):
            raise ValueError("option ids must be distinct")
        return options

    @field_validator("closes_at")
    @classmethod
    def _in_the_future(cls, value: dt.datetime | None) -> dt.datetime | None:
        now = dt.datetime.now(dt.UTC)
        if value is not None and value <= now:
            raise ValueError("closes_at must be in the future")
        if value is not None and value > now + dt.timedelta(days=MAX_OPEN_DAYS):
            raise ValueError(f"closes_at must be within {MAX_OPEN_DAYS} days")
        return value


class OptionOut(BaseModel):
    id: str
    label: str


class PollOut(BaseModel):
    poll_id: str
    question: str
    options: list[OptionOut]
    votes_per_voter: int
    results: str = Field(description="`live` or `hidden`.")
    closes_at: str | None
    created_at: str
    state: str = Field(description="`open` or `closed`.")
    results_visible: bool


class OptionCount(OptionOut):
    count: int


class DefinedResults(BaseModel):
    poll_id: str
    question: str
    options: list[OptionCount]
    total_votes: int = Field(description="Votes accepted: exact across instances at once.")
    state: str
    final: bool = Field(description="True once closed: every accepted vote is in the counts.")
    served_via: str


class HistoryPoint(BaseModel):
    at: str = Field(description="ISO 8601, UTC, the node's clock.")
    counts: dict[str, int]
    total: int


class PollHistory(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "poll_id": "talk",
                    "points": [
                        {"at": "2026-12-01T19:02:00.500Z", "counts": {"A": 1, "B": 0}, "total": 1},
                        {"at": "2026-12-01T19:02:01Z", "counts": {"A": 3, "B": 2}, "total": 5},
                    ],
                }
            ]
        }
    )
    poll_id: str
    points: list[HistoryPoint]
