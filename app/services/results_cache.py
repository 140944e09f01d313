"""Stage 3: per-poll snapshots of the store, fresh for a TTL, capped in size (LRU)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from app.storage.base import Batch, Snapshot, holds


@dataclass
class CacheEntry:
    counts: dict[str, int]
    applied: dict[str, int]  # flusher id -> highest batch seq the counts hold
    stored_at: float

    def holds(self, batch: Batch) -> bool:
        return holds(self.applied, batch)


class ResultsCache:
    """Snapshots by poll. An entry stays fresh for `ttl` seconds; after that it is only
    used as a marked-stale answer while the poll's node is down. A TTL of 0 turns it off.

    `version` moves on every write-through vote, so a read that started before such a
    vote does not put an older snapshot into the cache after it.
    """

    def __init__(
        self, ttl: float, max_polls: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.max_polls = max_polls
        self.clock = clock
        self.version = 0
        self.hits = 0
        self.misses = 0
        self._entries: dict[str, CacheEntry] = {}

    @property
    def enabled(self) -> bool:
        return self.ttl > 0

    def __len__(self) -> int:
        return len(self._entries)

    def fresh(self, poll_id: str) -> CacheEntry | None:
        if not self.enabled:
            return None
        entry = self._entries.get(poll_id)
        if entry is not None and self.clock() - entry.stored_at < self.ttl:
            self.hits += 1
            return entry
        self.misses += 1
        return None

    def any(self, poll_id: str) -> CacheEntry | None:
        """The entry however old: served, marked stale, while the poll's node is down."""
        return self._entries.get(poll_id)

    def put(self, poll_id: str, snapshot: Snapshot, version: int) -> None:
        if not self.enabled or version != self.version:
            return
        self._entries.pop(poll_id, None)
        if len(self._entries) >= self.max_polls:
            del self._entries[next(iter(self._entries))]  # the least recently stored
        self._entries[poll_id] = CacheEntry(
            dict(snapshot.counts), dict(snapshot.applied), self.clock()
        )

    def apply_batch(self, batch: Batch) -> None:
        """A batch landed: cached snapshots take its deltas in the same step."""
        for poll_id, options in batch.counts.items():
            entry = self._entries.get(poll_id)
            if entry is None or entry.holds(batch):
                continue
            for option_id, n in options.items():
                entry.counts[option_id] = entry.counts.get(option_id, 0) + n
            entry.applied[batch.flusher_id] = batch.seq

    def forget(self, poll_ids: list[str]) -> None:
        """Write-through votes landed: drop these polls' snapshots, and stop reads that
        started before from storing theirs. (Adding the votes to a snapshot instead could
        count them twice: a read may already have seen them on the node.)"""
        self.version += 1
        for poll_id in poll_ids:
            self._entries.pop(poll_id, None)
