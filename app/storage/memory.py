"""Stage 1: counts kept in this process; a restart loses them."""

from __future__ import annotations

from app.storage.base import Batch, Snapshot

MEMORY_NODE = "in_memory"


class MemoryStore:
    def __init__(self) -> None:
        self._counts: dict[str, dict[str, int]] = {}
        self._applied: dict[str, int] = {}  # flusher_id -> highest seq applied

    @property
    def nodes(self) -> list[str]:
        return [MEMORY_NODE]

    def node_for(self, poll_id: str) -> str:
        return MEMORY_NODE

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def read(self, poll_id: str, flusher_ids: list[str]) -> Snapshot:
        applied = {f: self._applied.get(f, 0) for f in flusher_ids}
        return Snapshot(dict(self._counts.get(poll_id, {})), applied)

    async def apply(self, batches: list[Batch]) -> None:
        for batch in batches:
            if batch.seq <= self._applied.get(batch.flusher_id, 0):
                continue
            for poll_id, options in batch.counts.items():
                stored = self._counts.setdefault(poll_id, {})
                for option_id, n in options.items():
                    stored[option_id] = stored.get(option_id, 0) + n
            self._applied[batch.flusher_id] = batch.seq

    async def increment(self, poll_id: str, option_id: str) -> None:
        stored = self._counts.setdefault(poll_id, {})
        stored[option_id] = stored.get(option_id, 0) + 1

    async def ping(self) -> dict[str, bool]:
        return {MEMORY_NODE: True}

    def describe(self) -> list[tuple[str, str]]:
        return [(MEMORY_NODE, "memory://")]
