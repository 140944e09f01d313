"""Events in this process (no nodes configured): what app/storage/events.py keeps."""

from __future__ import annotations

from dataclasses import replace

from app.storage.events import MAX_POLLS_PER_EVENT, EventRecord


class MemoryEventStore:
    def __init__(self) -> None:
        self._events: dict[str, EventRecord] = {}
        self._codes: dict[str, str] = {}
        self._names: dict[str, dict[str, str]] = {}
        self._index: dict[str, int] = {}

    async def index_add(self, event_id: str, created_at: int) -> None:
        self._index[event_id] = created_at

    async def index_remove(self, event_id: str) -> None:
        self._index.pop(event_id, None)

    async def index(self) -> dict[str, int]:
        return dict(self._index)

    async def claim_code(self, code: str, event_id: str) -> bool:
        return self._codes.setdefault(code, event_id) == event_id

    async def release_code(self, code: str, event_id: str) -> None:
        if self._codes.get(code) == event_id:
            del self._codes[code]

    async def code_event(self, code: str) -> str | None:
        return self._codes.get(code)

    async def create(self, event_id: str, title: str, code: str, created_at: int) -> bool:
        if event_id in self._events:
            return False
        self._events[event_id] = EventRecord(event_id, title, code, None, created_at, 1, [])
        return True

    async def load(self, event_id: str) -> EventRecord | None:
        found = self._events.get(event_id)
        return None if found is None else replace(found, polls=list(found.polls))

    def _change(self, event: EventRecord, **changes: object) -> None:
        self._events[event.event_id] = replace(event, version=event.version + 1, **changes)  # type: ignore[arg-type]

    async def add_poll(self, event_id: str, poll_id: str) -> int:
        event = self._events.get(event_id)
        if event is None:
            return -1
        if len(event.polls) >= MAX_POLLS_PER_EVENT:
            return 0
        self._change(event, polls=[*event.polls, poll_id])
        return len(event.polls) + 1

    async def set_current(self, event_id: str, poll_id: str | None) -> int:
        event = self._events.get(event_id)
        if event is None:
            return -1
        if poll_id is not None and poll_id not in event.polls:
            return 0
        if event.current != poll_id:
            self._change(event, current=poll_id)
        return 1

    async def reorder(self, event_id: str, poll_ids: list[str]) -> int:
        event = self._events.get(event_id)
        if event is None:
            return -1
        if sorted(poll_ids) != sorted(event.polls) or len(set(poll_ids)) != len(poll_ids):
            return 0
        self._change(event, polls=list(poll_ids))
        return 1

    async def join(self, event_id: str, voter: str, name: str) -> bool:
        if event_id not in self._events:
            return False
        self._names.setdefault(event_id, {})[voter] = name
        return True

    async def names(self, event_id: str) -> dict[str, str]:
        return dict(self._names.get(event_id, {}))

    async def delete(self, event_id: str) -> None:
        self._events.pop(event_id, None)
        self._names.pop(event_id, None)
