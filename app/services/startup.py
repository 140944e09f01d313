"""Bringing a service up: the node checks, the ring records, the journal's replay and the
decision to move polls after a ring change.

Order matters, and is the reason this is one module: the ring records are read before the
journal is replayed (a batch sealed for a server this start does not name must not be
re-addressed), the journal's batches land before any poll moves (a move must carry them),
and only then does the background move begin (`Migration`), while votes are served.
"""

from __future__ import annotations

import dataclasses
import logging

from app.services.errors import RebalanceBlocked, StoreChanged
from app.services.flusher import Flusher
from app.services.journal import Journal, SealUnit
from app.services.migration import Migration
from app.services.routing import route
from app.services.vote_buffer import VoteBuffer
from app.storage.base import Batch, Counts, NodeMisconfigured, NodeUnavailable, Store
from app.storage.cluster_store import LABEL as CLUSTER
from app.storage.mover import Mover
from app.storage.moves import ring_config
from app.storage.ring_lease import RingClaimed, RingLease

logger = logging.getLogger("app.startup")

Records = tuple[dict[str, str | NodeUnavailable | None], dict[str, str | NodeUnavailable]]


@dataclasses.dataclass
class Startup:
    """The pieces of a `PollingService` that start-up works on (it owns none of them)."""

    store: Store
    flusher: Flusher
    buffers: dict[str, VoteBuffer]
    journal: Journal | None
    mover: Mover | None
    migration: Migration | None
    drain_seconds: float
    lease: RingLease | None = None
    renamed: dict[str, str] = dataclasses.field(default_factory=dict)  # old label -> new

    async def run(self) -> None:
        """Everything before the first vote: refuses (RebalanceBlocked, StoreChanged,
        NodeMisconfigured) rather than start on a state that could lose or double votes."""
        await self.check_nodes()
        if self.lease is not None:
            try:
                await self.lease.acquire()  # one ring at a time, before any vote moves
            except RingClaimed as exc:
                raise RebalanceBlocked(str(exc)) from exc
            self.flusher.fence = self.lease.confirm  # a stalled instance writes nothing stale
        try:
            misplaced: dict[str, set[str]] = {}
            if self.mover is not None:
                await self.ring_records(self.mover)  # before the journal: it may need them
            if self.journal is not None:
                misplaced = await self.recover(self.journal)
            if self.mover is not None:
                await self.rebalance(self.mover, misplaced)
        except BaseException:
            if self.lease is not None:
                await self.lease.release()
            raise

    async def check_nodes(self) -> None:
        """Refuse to start on a node whose eviction policy could remove counts or marks.
        A node that is down now is checked by the flusher before its first batch."""
        for node in self.store.nodes:
            try:
                await self.store.check_node(node)
                self.flusher.checked.add(node)
            except NodeMisconfigured:
                raise
            except NodeUnavailable:
                continue  # app/main.py names it in a WARNING once started

    async def ring_records(self, mover: Mover) -> Records:
        """Each node's recorded ring and `ring:moving` marker (or why it could not be read).
        Refuses (RebalanceBlocked) when they name a server (URL) this start has under no
        label: polls may be left there, and a journal batch sealed for it must go to it
        (so this runs before the journal is replayed too)."""
        recorded = await mover.recorded()
        markers = await mover.cut_off()  # a move staged and maybe unfinished
        found = [r for r in [*recorded.values(), *markers.values()] if isinstance(r, str)]
        self.renamed = mover.renamed(found)
        unnamed = mover.unnamed(found)
        if unnamed:
            raise RebalanceBlocked(
                f"the nodes record a ring or a cut-off move that names {unnamed}, a server "
                "this start does not have: polls may be left there. Name each in "
                "REDIS_NODES or REDIS_RETIRING_NODES (label=url, with its password if any)"
            )
        return recorded, markers

    async def rebalance(self, mover: Mover, misplaced: dict[str, set[str]]) -> None:
        """Decide whether polls must move (all of them when the ring differs from the one
        recorded on the nodes; else those of recovered batches that went to their old
        node); once the journal's batches have all landed, start moving them in the
        background (`Migration`): votes and reads are served meanwhile."""
        config = ring_config(mover.manager)
        recorded, markers = await self.ring_records(mover)
        down = {n: r for n, r in recorded.items() if isinstance(r, NodeUnavailable)}
        down |= {n: r for n, r in markers.items() if isinstance(r, NodeUnavailable)}
        cut_off = {n: r for n, r in markers.items() if isinstance(r, str)}
        readable = {n: r for n, r in recorded.items() if not isinstance(r, NodeUnavailable)}
        split = self.lease is not None and self.lease.split(readable)  # two rings served
        full = bool(mover.manager.retiring or cut_off or split) or any(
            recorded[n] != config for n in mover.manager.specs if n not in down
        )
        if not full and not misplaced:
            return
        if down:
            if full and not misplaced and not any(isinstance(r, str) for r in recorded.values()):
                logger.warning(
                    "rebalance: no ring recorded yet and %s down: polls not checked; "
                    "restart once every node is up",
                    sorted(down),
                )
                return
            raise RebalanceBlocked(f"the ring changed, and {next(iter(down.values()))}")
        if not await self.flusher.drain(self.drain_seconds):
            raise RebalanceBlocked("the ring changed, and the journal's batches cannot land")
        if full:
            first = not any(isinstance(r, str) for r in recorded.values())
            logger.info(
                "rebalance: %s; moving polls to their new owners in the background, serving "
                "meanwhile (a poll is moved first when it is touched)",
                "a ring change was cut off on " + ", ".join(sorted(cut_off))
                if cut_off
                else "another ring has served on these nodes since the last move"
                if split
                else "no ring recorded on the nodes yet"
                if first
                else "the ring changed",
            )
        rings = {r for r in recorded.values() if isinstance(r, str)}
        narrow = full and not (cut_off or misplaced or split)
        if narrow and len(rings) == 1 and config not in rings:
            mover.narrow(rings.pop())  # every poll is on its owner under that ring
        assert self.migration is not None
        self.migration.begin(misplaced, full)

    async def recover(self, journal: Journal) -> dict[str, set[str]]:
        """Replay what earlier processes left: sealed batches keep their ids (a node that
        already applied one ignores it); loose votes become new batches, sealed (absorbing
        their segments) before they are sent, like any other. Returns, by node, the polls of
        sealed batches that went to a node (ring or retiring) no longer their owner."""
        found = journal.recover()
        self.refuse_other_store(found.batches)
        journal.start()
        batches = []
        misplaced: dict[str, set[str]] = {}
        for batch in found.batches:
            if batch.node in self.renamed:  # the same server under a new label: its mark
                moved = dataclasses.replace(batch, node=self.renamed[batch.node])
                journal.readdress(batch, [moved])
                batch = moved
            if batch.node in self.buffers:
                batches.append(batch)
                polls = {p for p in batch.counts if self.store.node_for(p) != batch.node}
                if polls:
                    misplaced.setdefault(batch.node, set()).update(polls)
                continue
            parts = [
                dataclasses.replace(batch, node=node, counts=counts)
                for node, counts in route(self.store, batch.counts).items()
            ]
            logger.warning(
                "journal: %d votes were for node %s, which is no longer configured; they go "
                "to %s (a node that already applied them ignores them)",
                batch.votes,
                batch.node,
                sorted(p.node for p in parts),
            )
            journal.readdress(batch, parts)
            batches += parts
        self.flusher.adopt(sorted(batches, key=lambda b: b.key))
        by_node: dict[str, Counts] = {}
        for poll_id, option_id, n in found.loose:
            options = by_node.setdefault(self.store.node_for(poll_id), {}).setdefault(poll_id, {})
            options[option_id] = options.get(option_id, 0) + n
        loose = [b for node, c in by_node.items() for b in self.flusher.next_batches(node, c)]
        if loose:
            self.flusher.adopt(loose, SealUnit(loose, found.loose_files))
        else:  # nothing to replay in them (empty, or every line damaged and kept aside)
            journal.delete(found.loose_files)
        if batches or loose:
            votes = sum(b.votes for b in batches) + sum(b.votes for b in loose)
            logger.info("journal: recovered %d votes from an earlier run", votes)
            await self.flusher.flush()
        return misplaced

    def refuse_other_store(self, batches: list[Batch]) -> None:
        """Batches sealed for the ring cannot be checked against a cluster's per-slot marks,
        nor the reverse: refuse, naming the way out."""
        on_cluster = self.store.nodes == [CLUSTER]
        other = sorted(
            {
                b.node
                for b in batches
                if b.node not in self.buffers and (on_cluster or b.node == CLUSTER)
            }
        )
        if other:
            votes = sum(b.votes for b in batches if b.node in other)
            raise StoreChanged(
                f"the journal holds {votes} votes in batches sealed for {other}, which may have "
                "landed there already; start once more with the store they were sealed for, "
                "stop cleanly (the journal empties), then switch stores"
            )
