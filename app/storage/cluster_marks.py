"""A Redis Cluster's batches, split by slot and chained slot by slot, so a slot that forgot
what it had confirmed is seen (the cluster side of app/services/forgetting.py).

Each slot's part of a batch is applied with that flusher's mark in that slot, and carries
`prev`: the seq of the same flusher's part for that slot just before it in the same list
or, for its first part in the list, the last seq this process had confirmed in that slot
(`SlotChains.confirmed`: at most one entry per slot and flusher, 16384 slots). The APPLY
script refuses a part whose `prev` is above the slot's mark and replies the mark
(`{0, mark}`):
- a refused *later* part only follows an earlier part of the same list that did not land
  (it failed, or was refused): the list is simply held and sent again;
- a refused *first* part means the slot's mark fell below a part it had confirmed: its
  master lost data (restarted without an append-only file, or a replica promoted without
  the part, as with `DURABLE_WAIT_SECONDS=0`). `behind()` names those slots; the store
  raises `MarksBehind` and chains them from the marks they hold now.
A slot moved by an operator keeps its marks (MIGRATE moves them with the counts), so a
move is not a loss (tests/test_cluster_slot_moves.py).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from redis.crc import key_slot

from app.storage.base import Batch, Counts, MarkPlace
from app.storage.redis_store import poll_key


def slot_of(poll_id: str) -> int:
    return key_slot(poll_key(poll_id).encode())


def by_slot(counts: Counts) -> dict[int, Counts]:
    parts: dict[int, Counts] = {}
    for poll_id, options in counts.items():
        parts.setdefault(slot_of(poll_id), {})[poll_id] = options
    return parts


def mark_places(batch: Batch) -> list[tuple[MarkPlace, int]]:
    """Where a batch's votes are kept on a cluster: each slot's part under that slot's mark
    (for the loss ledger: app/services/forgetting.py)."""
    return [
        ((batch.flusher_id, slot), sum(n for options in part.values() for n in options.values()))
        for slot, part in by_slot(batch.counts).items()
    ]


class Part(NamedTuple):
    flusher_id: str
    seq: int
    slot: int
    counts: Counts
    prev: int
    first: bool  # the list's first part for this (flusher, slot), chained to a confirmed seq


class SlotChains:
    def __init__(self) -> None:
        self.confirmed: dict[tuple[str, int], int] = {}  # (flusher, slot) -> last seq

    def parts(self, batches: list[Batch]) -> list[Part]:
        found = []
        last: dict[tuple[str, int], int] = {}  # (flusher, slot) -> seq of its last part
        for batch in batches:
            for slot, counts in by_slot(batch.counts).items():
                place = (batch.flusher_id, slot)
                first = place not in last
                prev = self.confirmed.get(place, 0) if first else last[place]
                last[place] = batch.seq
                found.append(Part(batch.flusher_id, batch.seq, slot, counts, prev, first))
        return found

    def behind(self, parts: list[Part], replies: list[Any]) -> dict[MarkPlace, int]:
        """The slots whose mark fell below what they confirmed: each refused first part's
        (flusher, slot) -> the mark it holds now. Chains them from there from now on."""
        found: dict[MarkPlace, int] = {}
        for part, reply in zip(parts, replies, strict=True):
            refused = not isinstance(reply, BaseException) and reply[0] == 0
            if refused and part.first and part.prev > 0:
                found[part.flusher_id, part.slot] = int(reply[1])
                self.confirmed[part.flusher_id, part.slot] = int(reply[1])
        return found

    def confirm(self, parts: list[Part]) -> None:
        """Every part landed and is durable."""
        for part in parts:
            place = (part.flusher_id, part.slot)
            self.confirmed[place] = max(self.confirmed.get(place, 0), part.seq)
