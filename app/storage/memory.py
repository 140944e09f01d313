"""Stage 1: counts kept in this process; a restart loses them."""

from __future__ import annotations

from app.storage.base import Applied, Batch, Counts, Snapshot

MEMORY_NODE = "in_memory"


class MemoryStore:
    def __init__(self) -> None:
        self._counts: Counts = {}
        self._applied: dict[str, int] = {}  # flusher_id -> highest seq applied
        self._options: dict[str, set[str]] = {}
        self._idempotency: dict[str, str] = {}
        self._claims: dict[str, str] = {}

    @property
    def nodes(self) -> list[str]:
        return [MEMORY_NODE]

    def node_for(self, poll_id: str) -> str:
        return MEMORY_NODE

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def check_node(self, node: str) -> None:
        return None

    async def read(self, poll_id: str, flusher_ids: list[str]) -> Snapshot:
        applied = {f: self._applied.get(f, 0) for f in flusher_ids}
        return Snapshot(dict(self._counts.get(poll_id, {})), applied)

    def _add(self, counts: Counts) -> None:
        for poll_id, options in counts.items():
            stored = self._counts.setdefault(poll_id, {})
            for option_id, n in options.items():
                stored[option_id] = stored.get(option_id, 0) + n

    async def apply(self, batches: list[Batch]) -> Applied:
        for batch in batches:
            if batch.seq <= self._applied.get(batch.flusher_id, 0):
                continue
            self._add(batch.counts)
            self._applied[batch.flusher_id] = batch.seq
        return Applied()

    async def apply_now(self, node: str, counts: Counts) -> Applied:
        self._add(counts)
        return Applied()

    async def apply_once(self, node: str, key: str, fingerprint: str, counts: Counts) -> str:
        seen = self._idempotency.get(key)
        if seen is not None:
            return "replayed" if seen == fingerprint else "reused"
        self._add(counts)
        self._idempotency[key] = fingerprint  # in memory: gone with the process anyway
        return "applied"

    async def claim(self, key: str, fingerprint: str) -> str:
        seen = self._claims.setdefault(key, fingerprint)
        return "claimed" if seen is fingerprint else "same" if seen == fingerprint else "reused"

    async def register_options(
        self, wanted: dict[str, list[str]], cap: int
    ) -> dict[str, set[str] | None]:
        found: dict[str, set[str] | None] = {}
        for poll_id, options in wanted.items():
            known = self._options.setdefault(poll_id, set())
            if len(known | set(options)) > cap:
                found[poll_id] = None
            else:
                known.update(options)
                found[poll_id] = set(known)
        return found

    async def forget_marks(self, node: str, flusher_ids: list[str]) -> None:
        for flusher_id in flusher_ids:
            self._applied.pop(flusher_id, None)

    async def ping(self) -> dict[str, bool]:
        return {MEMORY_NODE: True}

    def describe(self) -> list[tuple[str, str]]:
        return [(MEMORY_NODE, "memory://")]
