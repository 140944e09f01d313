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
    `prev` is the seq of the batch of the same flusher sent just before it in the same
    list (0 if none): the node refuses this one until that one has landed, so a batch that
    failed can never be overtaken (and then ignored) by a later one.
    """

    flusher_id: str
    seq: int
    node: str
    counts: Counts
    prev: int = 0

    @property
    def votes(self) -> int:
        return sum(sum(options.values()) for options in self.counts.values())

    @property
    def pairs(self) -> int:
        return sum(len(options) for options in self.counts.values())

    @property
    def key(self) -> tuple[str, int, str]:
        """What identifies the batch on its node (a batch re-addressed to other nodes after
        a ring change keeps its flusher id and seq on each)."""
        return self.flusher_id, self.seq, self.node


def holds(applied: dict[str, int], batch: Batch) -> bool:
    """Whether counts read with these high-water marks already include `batch`."""
    return batch.seq <= applied.get(batch.flusher_id, 0)


@dataclass(frozen=True)
class Snapshot:
    """A poll's stored counts, and for each flusher asked about, the highest batch seq the
    node had applied when the counts were read (read in the same atomic step). `via` names
    the server that answered when the node label alone does not (a cluster's master)."""

    counts: dict[str, int] = field(default_factory=dict)
    applied: dict[str, int] = field(default_factory=dict)
    via: str = ""

    def holds(self, batch: Batch) -> bool:
        return holds(self.applied, batch)


@dataclass(frozen=True)
class Applied:
    """What a node did with a list of batches: every one of them is now stored (applied by
    this call or an earlier one); `set_aside` names the polls whose stored hash was
    unusable (wrong type, a field that is not a count), whose votes went to the poll's
    aside key instead (reads add it back)."""

    set_aside: tuple[str, ...] = ()


class NodeUnavailable(Exception):
    """A node did not answer or refused; the message names it (never with its password).

    `maybe_applied` is False only when the request certainly never reached the node (the
    connection could not be made), so a write-through caller can tell "not counted" from
    "outcome unknown"."""

    def __init__(
        self, node: str, safe_url: str, reason: str, *, maybe_applied: bool = True
    ) -> None:
        super().__init__(f"node {node} ({safe_url}) is unavailable: {reason}")
        self.node = node
        self.maybe_applied = maybe_applied


# Where a mark is kept: a flusher's on a ring node (its id), or in one slot of a Redis
# Cluster ((its id, the slot)): each is chained and found behind on its own.
MarkPlace = str | tuple[str, int]


class MarksBehind(NodeUnavailable):
    """The node's marks are below what it confirmed before: it lost data
    (`app/services/forgetting.py`). `marks`: flusher id -> the mark the node has now, where
    a flusher has one mark per node (the ring; the flusher chains its next list to it);
    `places`: every mark found behind, by where it is kept (on a cluster: per slot)."""

    def __init__(
        self,
        node: str,
        safe_url: str,
        marks: dict[str, int],
        places: dict[MarkPlace, int] | None = None,
    ) -> None:
        self.places: dict[MarkPlace, int] = {k: v for k, v in (places or marks).items()}
        shown = dict(list(self.places.items())[:5])
        more = f" and {len(self.places) - 5} more" if len(self.places) > 5 else ""
        super().__init__(node, safe_url, f"its marks {shown}{more} fell below what it confirmed")
        self.marks = marks


class NodeMisconfigured(NodeUnavailable):
    """The node answers but is set up so that it could lose counts (an eviction policy)."""


class Store(Protocol):
    @property
    def nodes(self) -> list[str]: ...

    def node_for(self, poll_id: str) -> str: ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def check_node(self, node: str) -> None:
        """Raise NodeMisconfigured if the node may evict keys; NodeUnavailable if down."""
        ...

    async def read(self, poll_id: str, flusher_ids: list[str]) -> Snapshot: ...

    async def apply(self, batches: list[Batch]) -> Applied:
        """Apply batches for one node, in order, in one round trip. Returns only once every
        batch is stored; raises NodeUnavailable otherwise (then some may be stored: a retry
        of the same batches is safe)."""
        ...

    async def apply_now(self, node: str, counts: Counts) -> Applied:
        """Write-through: add counts at once, all or nothing on the node, no mark."""
        ...

    async def apply_once(self, node: str, key: str, fingerprint: str, counts: Counts) -> str:
        """Apply counts on the node together with a marker for `key`'s part there (kept a
        little longer than the claim), all or nothing: "applied"; or nothing when the marker
        exists: "replayed" if it holds the same fingerprint, "reused" if not."""
        ...

    async def claim(self, key: str, fingerprint: str) -> str:
        """Claim an Idempotency-Key for a request, in one place (the key's own node), for
        24 h: "claimed" now, "same" if this request claimed it before, "reused" if another
        request did."""
        ...

    async def register_options(
        self, wanted: dict[str, list[str]], cap: int
    ) -> dict[str, set[str] | None]:
        """For each poll, add the options to its registry on its node unless that would
        pass `cap` (then None for that poll, and nothing added to it); else every option
        the poll now has. One round trip per node."""
        ...

    async def forget_marks(self, node: str, flusher_ids: list[str]) -> None:
        """Delete high-water marks no journal or flusher can send batches for any more."""
        ...

    async def ping(self) -> dict[str, bool]: ...

    def describe(self) -> list[tuple[str, str]]:
        """(label, URL without password) for each node."""
        ...
