"""What the events API answers, free of any framework: an event, its public state (what
its stream sends), the leaderboard, the voter's own record, the event as CSV and JSON."""

from __future__ import annotations

import csv
import io
import re
from typing import Any

from app.api import defined
from app.services.events import Ranked
from app.services.question_types import allowance, vote_body
from app.storage.defined import PollRecord
from app.storage.events import EventRecord

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
PLAIN_NUMBER = re.compile(r"-?[0-9]+")


def cell(text: str) -> str:
    """A text cell that a spreadsheet shows as text: one that would start a formula gets a
    leading apostrophe (the usual defence against CSV injection); a plain integer such as a
    rating value of -2 is no formula and stays a number."""
    if text.startswith(FORMULA_START) and not PLAIN_NUMBER.fullmatch(text):
        return "'" + text
    return text


def poll_summary(record: PollRecord) -> dict[str, Any]:
    """A poll as an event lists it: its description, how many answered, no counts."""
    return {**defined.describe(record), "total_votes": record.total, "voters": record.voters}


def event_view(event: EventRecord, records: list[PollRecord]) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "title": event.title,
        "code": event.code,
        "created_at": defined.iso(event.created_at),
        "current_poll_id": event.current,
        "version": event.version,
        "polls": [poll_summary(r) for r in records],
    }


def event_listing(event: EventRecord) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "title": event.title,
        "code": event.code,
        "created_at": defined.iso(event.created_at),
        "current_poll_id": event.current,
        "poll_count": len(event.polls),
    }


def event_state(event: EventRecord, current: PollRecord | None) -> dict[str, Any]:
    """What a phone follows: the event and its current poll (null: a waiting screen)."""
    position = event.polls.index(event.current) + 1 if event.current in event.polls else None
    return {
        "event_id": event.event_id,
        "title": event.title,
        "code": event.code,
        "version": event.version,
        "current": poll_summary(current) if current is not None else None,
        "position": position,
        "poll_count": len(event.polls),
    }


def leaderboard(event_id: str, ranked: list[Ranked], quiz_polls: int, limit: int) -> dict[str, Any]:
    leaders = []
    rank = 0
    previous: tuple[int, int] | None = None
    for i, r in enumerate(ranked[:limit]):
        if (r.correct, r.time_ms) != previous:
            rank, previous = i + 1, (r.correct, r.time_ms)
        leaders.append(
            {
                "rank": rank,
                "name": r.name,
                "correct": r.correct,
                "answered": r.answered,
                "time_ms": r.time_ms,
            }
        )
    return {
        "event_id": event_id,
        "quiz_polls": quiz_polls,
        "voters": len(ranked),
        "leaders": leaders,
    }


def my_vote(record: PollRecord, used: int, payload: str) -> dict[str, Any]:
    d = record.definition
    left = d.votes_per_voter - used if d.type == "single" else 0 if used else allowance(d)
    choice: dict[str, Any] | None = None
    if used and payload:
        choice = vote_body(d, payload)
        if d.type == "single":
            choice["option_ids"] = payload.split("\n")
    return {
        "poll_id": d.poll_id,
        "type": d.type,
        "voted": used > 0,
        "votes_used": used,
        "choice": choice,
        "choices_left": left,
        "state": "closed" if record.closed else "open",
    }


def poll_rows(record: PollRecord) -> list[tuple[str, str, int]]:
    """(kind, key, label, count) rows of one poll: options, rating values, shown words."""
    d = record.definition
    if d.type == "rating":
        return [("value", v, n) for v, n in record.counts.items()]
    if d.type == "words":
        return [("word", w["text"], w["count"]) for w in defined.shown_words(record, None)]
    return [("option", o, record.counts.get(o, 0)) for o in d.option_ids]


CSV_HEADER = [
    "event_id",
    "position",
    "poll_id",
    "type",
    "question",
    "state",
    "kind",
    "key",
    "label",
    "count",
    "voters",
    "total_votes",
]


def event_csv(event: EventRecord, records: list[PollRecord]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_HEADER)
    for position, record in enumerate(records, start=1):
        d = record.definition
        labels = dict(d.options)
        state = "closed" if record.closed else "open"
        for kind, key, count in poll_rows(record):
            writer.writerow(
                [
                    event.event_id,
                    position,
                    cell(d.poll_id),
                    d.type,
                    cell(d.question),
                    state,
                    kind,
                    cell(key),
                    cell(labels.get(key, key)),
                    count,
                    record.voters,
                    record.total,
                ]
            )
    return out.getvalue()


def event_json(
    event: EventRecord, records: list[PollRecord], histories: list[list[dict[str, Any]]]
) -> dict[str, Any]:
    return {
        **event_listing(event),
        "polls": [
            {**defined.results_payload(r, "export"), "history": h}
            for r, h in zip(records, histories, strict=True)
        ],
    }
