"""Nodes that forget: finding that a node lost batches it had confirmed, and saying so.

How it is seen, at no extra round trip: on our ring each new list of batches to a node is
chained to the last batch of ours that node confirmed (`Batch.prev`, see `Flusher._take`).
A node that still has its marks applies it as always; a node whose mark fell below that
(restarted without its append-only file, restored from an old snapshot, a replica promoted
before it had the batch) refuses the list and replies its mark (`MarksBehind`). Then:
- the node is reported as having lost data, in the log and in `/health` (sticky for the
  life of the process), naming how many confirmed batches (and votes) of this process it
  lost: those confirmed with a seq above its mark, from the `LOG_SIZE` last confirmed;
- whatever of those the journal still holds (a sealed file kept on disk: see
  `Journal.held`) is sent again, before the list, and lands once (its mark says so);
- the list is chained to the node's mark instead, so the flusher carries on.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

from app.storage.base import Batch

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


class LossLedger:
    def __init__(self) -> None:
        self._confirmed: dict[str, deque[tuple[str, int, int]]] = {}
        self.losses: dict[str, Loss] = {}

    def confirmed(self, batch: Batch) -> None:
        log = self._confirmed.setdefault(batch.node, deque(maxlen=LOG_SIZE))
        log.append((batch.flusher_id, batch.seq, batch.votes))

    def found_behind(self, node: str, marks: dict[str, int], resent: list[Batch]) -> Loss:
        """The node's marks are below what it confirmed; `resent` are the batches the
        journal still holds and that go again. Logs and records the loss."""
        lost = [
            (f, s, v) for f, s, v in self._confirmed.get(node, ()) if f in marks and s > marks[f]
        ]
        kept = {(f, s) for f, s, _ in lost}
        log = self._confirmed.get(node)
        if log is not None:  # they are gone from the node: not confirmed there any more
            self._confirmed[node] = deque(
                (e for e in log if (e[0], e[1]) not in kept), maxlen=LOG_SIZE
            )
        loss = self.losses.setdefault(node, Loss())
        loss.events += 1
        loss.batches += len(lost)
        loss.votes += sum(v for _, _, v in lost)
        loss.resent_batches += len(resent)
        loss.resent_votes += sum(b.votes for b in resent)
        logger.error(
            "node %s LOST DATA: its marks %s are below what it confirmed to this process; "
            "%d confirmed batches (%d votes) are gone from it, %d of them (%d votes) are "
            "still in the journal and are sent again",
            node,
            marks,
            len(lost),
            sum(v for _, _, v in lost),
            len(resent),
            sum(b.votes for b in resent),
        )
        return loss
