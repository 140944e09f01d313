"""Shapes of the defined-poll API, as the OpenAPI page documents them."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from app.schemas.polls import Id
from app.schemas.text import Label, Question


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
    question: Question
    type: Literal["single", "multiple", "rating", "words", "quiz"] = "single"
    options: list[OptionIn] = Field(
        default_factory=list, max_length=20, description="2-20 for single, multiple, quiz."
    )
    votes_per_voter: int = Field(1, ge=1, le=20, description="single only; else 1.")
    results: Literal["live", "hidden"] = "live"
    closes_at: AwareDatetime | None = Field(None, description="ISO 8601 with a time zone.")
    max_choices: int | None = Field(None, ge=1, le=20, description="multiple: default 2.")
    min: int | None = Field(None, ge=-100, le=100, description="rating: default 1.")
    max: int | None = Field(None, ge=-100, le=100, description="rating: default 5.")
    max_words: int | None = Field(None, ge=1, le=5, description="words: default 3.")
    max_entries: int | None = Field(
        None, ge=1, le=10_000, description="words: distinct entries per poll, default 10,000."
    )
    correct: Id | None = Field(None, description="quiz: the correct option (required).")
    time_limit: int | None = Field(
        None, ge=5, le=3600, description="quiz: seconds from the moment it becomes current."
    )

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


# Fields that only some types take (the others must leave them out).
TYPE_ONLY = {
    "max_choices": ("multiple",),
    "min": ("rating",),
    "max": ("rating",),
    "max_words": ("words",),
    "max_entries": ("words",),
    "correct": ("quiz",),
    "time_limit": ("quiz",),
}


def _problem(field: str, message: str, kind: str) -> dict[str, object]:
    return {"loc": ["body", field], "msg": message, "type": kind}


def scale(body: PollCreate) -> tuple[int, int]:
    return (1 if body.min is None else body.min, 5 if body.max is None else body.max)


def type_problems(body: PollCreate) -> list[dict[str, object]]:
    """What the chosen `type` forbids or needs, each naming the field (422)."""
    problems = [
        _problem(name, f"{name} is for {' or '.join(types)} questions", "extra_forbidden")
        for name, types in TYPE_ONLY.items()
        if getattr(body, name) is not None and body.type not in types
    ]
    choices = body.type in ("single", "multiple", "quiz")
    if choices and len(body.options) < 2:
        problems.append(_problem("options", "at least 2 options", "too_short"))
    if not choices and body.options:
        problems.append(_problem("options", f"a {body.type} question has no options", "extra"))
    if body.type != "single" and body.votes_per_voter != 1:
        problems.append(_problem("votes_per_voter", "single questions only", "extra_forbidden"))
    ids = [o.id for o in body.options]
    if body.type == "multiple" and (body.max_choices or 2) > len(ids) >= 2:
        problems.append(_problem("max_choices", "at most the number of options", "too_large"))
    low, high = scale(body)
    if body.type == "rating" and low >= high:
        problems.append(_problem("max", "max must be greater than min", "too_small"))
    if body.type == "quiz" and body.correct not in ids:
        problems.append(_problem("correct", "correct must be one of the option ids", "missing"))
    return problems


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
