"""Nodes that forget: finding that a node lost batches it had confirmed, and saying so.

How it is seen, at no extra round trip: on our ring each new list of batches to a node is
chained to the last batch of ours that node confirmed (`Batch.prev`, see `Flusher._take`);
on a Redis Cluster each slot's first part of a list is chained to the last part of ours
that slot confirmed (app/storage/cluster_marks.py). A node that still has its marks applies
it as always; a node whose mark fell below that (restarted without its append-only file,
restored from an old snapshot, a replica promoted before it had the batch) refuses the list
and replies its mark (`MarksBehind`). Then:
- the node is reported as having lost data, in the log and in `/health` (sticky for the
  life of the process), naming how many confirmed batches (and votes) of this process it
  lost: those confirmed with a seq above the mark where they were kept, from the
  `LOG_SIZE` last confirmed (on a cluster: the last `LOG_SIZE` slot parts);
- whatever of those the journal still holds (a sealed file kept on disk: see
  `Journal.held`) is sent again, before the list, and lands once (its mark says so);
- the list is chained to the node's marks instead, so the flusher carries on.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from app.storage.base import Batch, MarkPlace

# Where a batch's votes are kept and how many there: the marks that vouch for them.
Places = Callable[[Batch], list[tuple[MarkPlace, int]]]

logger = logging.getLogger("app.flusher")

LOG_SIZE = 100_000  # confirmed batches remembered per node (about 10 MB at most)


@dataclass
class Loss:
    batches: int = 0  # confirmed batches of this process the node no longer has
    votes: int = 0
    resent_batches: int = 0  # of those, sent again from the journal
    resent_votes: int = 0
    events: int = 0  # times the node was found behind

    def describe(self) -> dict[str, int]:
        return {
            "lost_batches": self.batches,
            "lost_votes": self.votes,
            "resent_batches": self.resent_batches,
            "resent_votes": self.resent_votes,
            "times_found": self.events,
        }


def whole_batch(batch: Batch) -> list[tuple[MarkPlace, int]]:
    """On a ring node a batch is kept whole, vouched for by its flusher's one mark."""
    return [(batch.flusher_id, batch.votes)]


def flusher_of(place: MarkPlace) -> str:
    return place if isinstance(place, str) else place[0]


def shown(marks: dict[MarkPlace, int], most: int = 10) -> str:
    """Marks for a log line: a cluster master that restarted may have behind thousands."""
    text = str(dict(list(marks.items())[:most]))
    return text if len(marks) <= most else f"{text} and {len(marks) - most} more"


class LossLedger:
    """`places` says where a batch's votes are kept (the store's `mark_places`; default:
    whole, under its flusher's mark)."""

    def __init__(self, places: Places | None = None) -> None:
        self.places = places or whole_batch
        self._confirmed: dict[str, deque[tuple[MarkPlace, int, int]]] = {}
        self.losses: dict[str, Loss] = {}

    def confirmed(self, batch: Batch) -> None:
        log = self._confirmed.setdefault(batch.node, deque(maxlen=LOG_SIZE))
        for place, votes in self.places(batch):
            log.append((place, batch.seq, votes))

    def lost_votes(self, batch: Batch, marks: dict[MarkPlace, int]) -> int:
        """The votes of `batch` kept where a mark has fallen below it (0: none lost)."""
        return sum(v for p, v in self.places(batch) if batch.seq > marks.get(p, batch.seq))

    def found_behind(self, node: str, marks: dict[MarkPlace, int], resent: list[Batch]) -> Loss:
        """The node's marks are below what it confirmed; `resent` are the batches the
        journal still holds and that go again. Logs and records the loss."""
        lost = [
            (p, s, v) for p, s, v in self._confirmed.get(node, ()) if p in marks and s > marks[p]
        ]
        kept = {(p, s) for p, s, _ in lost}
        log = self._confirmed.get(node)
        if log is not None:  # they are gone from the node: not confirmed there any more
            self._confirmed[node] = deque(
                (e for e in log if (e[0], e[1]) not in kept), maxlen=LOG_SIZE
            )
        batches = len({(flusher_of(p), s) for p, s, _ in lost})
        votes = sum(v for _, _, v in lost)
        resent_votes = sum(self.lost_votes(b, marks) for b in resent)
        loss = self.losses.setdefault(node, Loss())
        loss.events += 1
        loss.batches += batches
        loss.votes += votes
        loss.resent_batches += len(resent)
        loss.resent_votes += resent_votes
        logger.error(
            "node %s LOST DATA: its marks %s are below what it confirmed to this process; "
            "%d confirmed batches (%d votes) are gone from it, %d of them (%d votes) are "
            "still in the journal and are sent again",
            node,
            shown(marks),
            batches,
            votes,
            len(resent),
            resent_votes,
        )
        return loss
