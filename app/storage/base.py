"""What every store offers: exact, idempotent batch application and consistent reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

Counts = dict[str, dict[str, int]]  # poll_id -> option_id -> votes


@dataclass(frozen=True)
class Batch:
    """Votes for one node, identified by (flusher_id, seq).

    A node applies a batch at most once: it records the highest `seq` it applied for each
    flusher in the same atomic step as the increments, and ignores a batch at or below it.
    """

    flusher_id: str
    seq: int
    node: str
    counts: Counts

    @property
    def votes(self) -> int:
        return sum(sum(options.values()) for options in self.counts.values())


def holds(applied: dict[str, int], batch: Batch) -> bool:
    """Whether counts read with these high-water marks already include `batch`."""
    return batch.seq <= applied.get(batch.flusher_id, 0)


@dataclass(frozen=True)
class Snapshot:
    """A poll's stored counts, and for each flusher asked about, the highest batch seq the
    node had applied when the counts were read (read in the same atomic step)."""

    counts: dict[str, int] = field(default_factory=dict)
    applied: dict[str, int] = field(default_factory=dict)

    def holds(self, batch: Batch) -> bool:
        return holds(self.applied, batch)


class NodeUnavailable(Exception):
    """A node did not answer; the message names it (never with its password)."""

    def __init__(self, node: str, safe_url: str, reason: str) -> None:
        super().__init__(f"node {node} ({safe_url}) is unavailable: {reason}")
        self.node = node


class Store(Protocol):
    @property
    def nodes(self) -> list[str]: ...

    def node_for(self, poll_id: str) -> str: ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def read(self, poll_id: str, flusher_ids: list[str]) -> Snapshot: ...

    async def apply(self, batches: list[Batch]) -> None:
        """Apply batches for one node, in order, in one round trip. Raises NodeUnavailable."""
        ...

    async def increment(self, poll_id: str, option_id: str) -> None:
        """Write-through: add one vote at once. Raises NodeUnavailable."""
        ...

    async def ping(self) -> dict[str, bool]: ...

    def describe(self) -> list[tuple[str, str]]:
        """(label, URL without password) for each node."""
        ...
