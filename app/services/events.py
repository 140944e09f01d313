"""Events (sessions): an organiser's event with a join code, its polls in order, the
presenter's current poll, the voters' display names and the quiz leaderboard.

Each step is one atomic script on one node (app/storage/events.py). Steps over several
nodes are ordered so that a crash between two leaves nothing a reader could mistake:
create adds the event to the list, claims its code, then stores the event (a listed or
claimed event that does not exist is skipped: 404); a poll is created, then appended to
its event (a poll not appended is only reachable by its id); delete removes the event
first, then its code, its polls and its place in the list.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
import unicodedata
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from app.services.defined_polls import DefinedPolls
from app.services.errors import NodeDown, PollExists, PollNotFound, VoteRejected
from app.storage.base import NodeUnavailable
from app.storage.defined import PollDefinition, PollRecord
from app.storage.events import EventRecord, event_tag

T = TypeVar("T")
# Readable aloud, typed on a phone: no 0/O, no 1/I/L, and of each look-alike pair the
# digit or U kept (B/8, G/6, S/5, Z/2, U/V): 18 letters and 8 digits, 26**6 codes.
CODE_ALPHABET = "ACDEFHJKMNPQRTUWXY23456789"
# The alphabet of codes made before the look-alikes went: such an event still joins.
OLD_CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
# A dropped look-alike typed for the character it looks like.
LOOK_ALIKES = str.maketrans("BGSZV", "8652U")
TYPED_APART = re.compile(r"[\s\-\u2010-\u2015]")  # spaces and dashes in a typed code
CODE_LENGTH = 6
CODE_TRIES = 20
MAX_NAME = 32


class EventNotFound(VoteRejected):
    status = 404
    retry_after = None
    kind = "event_not_found"


class EventFull(VoteRejected):
    status = 409
    retry_after = None
    kind = "event_full"


class NotInEvent(VoteRejected):
    status = 422
    retry_after = None
    kind = "not_in_event"


class EventStore(Protocol):
    async def index_add(self, event_id: str, created_at: int) -> None: ...
    async def index_remove(self, event_id: str) -> None: ...
    async def index(self) -> dict[str, int]: ...
    async def claim_code(self, code: str, event_id: str) -> bool: ...
    async def release_code(self, code: str, event_id: str) -> None: ...
    async def code_event(self, code: str) -> str | None: ...
    async def create(self, event_id: str, title: str, code: str, created_at: int) -> bool: ...
    async def load(self, event_id: str) -> EventRecord | None: ...
    async def add_poll(self, event_id: str, poll_id: str) -> int: ...
    async def set_current(self, event_id: str, poll_id: str | None) -> int: ...
    async def reorder(self, event_id: str, poll_ids: list[str]) -> int: ...
    async def join(self, event_id: str, voter: str, name: str) -> bool: ...
    async def names(self, event_id: str) -> dict[str, str]: ...
    async def delete(self, event_id: str) -> None: ...


def new_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def normalise_code(text: str) -> str | None:
    """What a person typed, as a code: full-width characters as plain ones (NFKC), spaces
    and dashes dropped, upper case; None if it cannot be a code of either alphabet."""
    code = TYPED_APART.sub("", unicodedata.normalize("NFKC", text)).upper()
    if len(code) != CODE_LENGTH or any(c not in OLD_CODE_ALPHABET for c in code):
        return None
    return code


def code_lookups(text: str) -> list[str]:
    """The stored codes a typed code may name, in the order tried: as typed (an event made
    with the old alphabet keeps its code), then with each look-alike as the character kept
    (`S8Z` typed for `582`). Empty when it cannot be a code."""
    code = normalise_code(text)
    if code is None:
        return []
    kept = code.translate(LOOK_ALIKES)
    return [code] if kept == code else [code, kept]


@dataclass(frozen=True)
class Ranked:
    voter: str
    name: str | None
    correct: int
    answered: int
    time_ms: int


class Events:
    def __init__(self, store: EventStore, polls: DefinedPolls) -> None:
        self.store = store
        self.polls = polls

    async def _on(self, name: str, step: Awaitable[T]) -> T:
        """Run a step on the node of `name` once it is whole there (a ring change)."""
        try:
            await self.polls.ready(name)
            return await step
        except NodeUnavailable as exc:
            raise NodeDown(f"{exc}; retry later") from exc

    async def create(self, title: str) -> EventRecord:
        event_id = secrets.token_hex(6)
        now = int(time.time() * 1000)
        await self._on("events:all", self.store.index_add(event_id, now))
        for _ in range(CODE_TRIES):
            code = new_code()
            if await self._on(f"code:{code}", self.store.claim_code(code, event_id)):
                break
        else:
            raise NodeDown("no free join code found; retry")
        await self._on(event_tag(event_id), self.store.create(event_id, title, code, now))
        return EventRecord(event_id, title, code, None, now, 1, [])

    async def load(self, event_id: str) -> EventRecord:
        found = await self._on(event_tag(event_id), self.store.load(event_id))
        if found is None:
            raise EventNotFound(f"event {event_id} does not exist")
        return found

    async def by_code(self, code: str) -> EventRecord:
        for stored in code_lookups(code):
            event_id = await self._on(f"code:{stored}", self.store.code_event(stored))
            if event_id is not None:
                return await self.load(event_id)
        raise EventNotFound(f"no event has the code {code!r}")

    async def all(self) -> list[EventRecord]:
        index = await self._on("events:all", self.store.index())
        ordered = sorted(index, key=lambda e: (index[e], e))
        found = await asyncio.gather(*(self._maybe(e) for e in ordered))
        return [e for e in found if e is not None]

    async def _maybe(self, event_id: str) -> EventRecord | None:
        try:
            return await self.load(event_id)
        except EventNotFound:
            return None

    async def records(self, event: EventRecord) -> list[PollRecord]:
        """The event's polls as stored now, in order (a poll deleted by hand is skipped)."""
        found = await asyncio.gather(*(self.poll_or_none(p) for p in event.polls))
        return [r for r in found if r is not None]

    async def poll_or_none(self, poll_id: str) -> PollRecord | None:
        try:
            return await self.polls.load(poll_id)
        except PollNotFound:
            return None

    async def add_poll(self, event_id: str, definition: PollDefinition) -> PollRecord:
        await self.load(event_id)
        record = await self.polls.create(definition)
        added = await self._on(
            event_tag(event_id), self.store.add_poll(event_id, definition.poll_id)
        )
        if added <= 0:
            await self.polls.delete(definition.poll_id)
            if added == 0:
                raise EventFull(f"event {event_id} holds its maximum number of polls")
            raise EventNotFound(f"event {event_id} does not exist")
        return record

    async def set_current(self, event_id: str, poll_id: str | None) -> EventRecord:
        found = await self._on(event_tag(event_id), self.store.set_current(event_id, poll_id))
        if found < 0:
            raise EventNotFound(f"event {event_id} does not exist")
        if found == 0:
            raise NotInEvent(f"poll {poll_id} is not a poll of event {event_id}")
        if poll_id is not None:
            await self.polls.start(poll_id)
        return await self.load(event_id)

    async def reorder(self, event_id: str, poll_ids: list[str]) -> EventRecord:
        found = await self._on(event_tag(event_id), self.store.reorder(event_id, poll_ids))
        if found < 0:
            raise EventNotFound(f"event {event_id} does not exist")
        if found == 0:
            raise NotInEvent("poll_ids must hold every poll of the event once, in the new order")
        return await self.load(event_id)

    async def delete(self, event_id: str) -> None:
        event = await self.load(event_id)
        await self._on(event_tag(event_id), self.store.delete(event_id))
        await self._on(f"code:{event.code}", self.store.release_code(event.code, event_id))
        for poll_id in event.polls:
            await self.polls.delete(poll_id)
        await self._on("events:all", self.store.index_remove(event_id))

    async def join(self, event_id: str, voter: str, name: str) -> None:
        if not await self._on(event_tag(event_id), self.store.join(event_id, voter, name)):
            raise EventNotFound(f"event {event_id} does not exist")

    async def name_of(self, event_id: str, voter: str) -> str | None:
        names = await self._on(event_tag(event_id), self.store.names(event_id))
        return names.get(voter) or None

    async def leaderboard(self, event_id: str) -> tuple[list[Ranked], int]:
        """Voters ranked by correct answers over the event's closed quiz polls, ties by
        total answer time; and the number of those polls."""
        event = await self.load(event_id)
        quizzes = [r for r in await self.records(event) if r.definition.type == "quiz"]
        closed = [r for r in quizzes if r.closed]
        answers = await asyncio.gather(*(self.polls.answers(r.definition.poll_id) for r in closed))
        names = await self._on(event_tag(event_id), self.store.names(event_id))
        scores: dict[str, list[int]] = {}  # voter -> [correct, answered, time]
        for record, found in zip(closed, answers, strict=True):
            for voter, (option, ms) in found.items():
                score = scores.setdefault(voter, [0, 0, 0])
                score[0] += option == record.definition.correct
                score[1] += 1
                score[2] += ms
        ranked = [Ranked(v, names.get(v) or None, s[0], s[1], s[2]) for v, s in scores.items()]
        ranked.sort(key=lambda r: (-r.correct, r.time_ms, r.voter))
        return ranked, len(closed)


__all__ = ["EventNotFound", "Events", "PollExists", "code_lookups", "normalise_code"]
