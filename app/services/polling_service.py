"""Stages 1-4 behind one object: votes go to a per-node buffer, reads merge store + in-flight
+ pending. Stage by configuration: write-through when the batch interval is 0, no cache when
the cache TTL is 0, the in-memory store when no nodes are set. Long because it is the one
object the API calls; start-up has left it (`startup.py`), and more can."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from app.services.errors import (
    BacklogFull,
    IdempotencyKeyReused,
    JournalUnavailable,
    LargerThanBacklog,
    NodeDown,
    OutcomeUnknown,
    ResultsUnavailable,
    ShuttingDown,
    TooManyOptions,
)
from app.services.flusher import Flusher
from app.services.instruments import Rejections
from app.services.journal import Journal, JournalWriteFailed
from app.services.journal_format import Entry
from app.services.known_options import KnownOptions
from app.services.migration import Migration
from app.services.results_cache import CacheEntry, ResultsCache
from app.services.routing import route
from app.services.startup import Startup
from app.services.vote_buffer import VoteBuffer
from app.storage.base import (
    Counts,
    NodeUnavailable,
    Snapshot,
    Store,
)
from app.storage.mover import Mover
from app.storage.moves import ring_config
from app.storage.ring_lease import RingLease

logger = logging.getLogger("app.polling_service")

READ_ATTEMPTS = 3


@dataclass(frozen=True)
class Results:
    poll_id: str
    results: dict[str, int]
    served_via: str
    stale: bool = False


def _merge(base: dict[str, int], extra: dict[str, int] | None) -> None:
    if extra:
        for option_id, n in extra.items():
            base[option_id] = base.get(option_id, 0) + n


def _entries(counts: Counts) -> list[Entry]:
    return [(p, o, n) for p, options in counts.items() for o, n in options.items()]


class PollingService:
    def __init__(
        self,
        store: Store,
        *,
        batch_interval: float,
        batch_max_votes: int,
        cache: ResultsCache,
        max_options_per_poll: int,
        max_pending_pairs_per_node: int,
        shutdown_flush_seconds: float = 10.0,
        journal: Journal | None = None,
        mover: Mover | None = None,
        ring_lease_seconds: float = 5.0,
    ) -> None:
        self.store = store
        self.mover = mover
        self.migration = Migration(mover) if mover else None
        self.lease: RingLease | None = None
        self.ring_lost: str | None = None  # why this instance stopped taking votes
        if mover is not None:
            config = ring_config(mover.manager)
            self.lease = RingLease(
                mover.manager, mover.call, config, ring_lease_seconds, self._lost_ring
            )
        self.cache = cache
        self.write_through = batch_interval <= 0
        self.batch_max_votes = batch_max_votes
        self.max_options = max_options_per_poll
        self.max_pending_pairs = max_pending_pairs_per_node
        self.shutdown_flush_seconds = shutdown_flush_seconds
        # Retiring nodes take no votes; a buffer lets recovered batches reach them.
        retiring = list(mover.manager.retiring) if mover else []
        self.buffers = {node: VoteBuffer() for node in [*store.nodes, *retiring]}
        self.journal = journal
        self.flusher = Flusher(
            store, self.buffers, batch_interval or 1.0, cache.apply_batch, journal=journal
        )
        self.flusher.max_extended_pairs = max_pending_pairs_per_node // 2
        self.options = KnownOptions(cache.max_polls)
        self.accepting = False
        # Votes acknowledged since start, by path (the metrics read them; health the sum).
        self.accepted_adhoc = 0
        self.accepted_bulk = 0
        self.accepted_keyed = 0
        self.rejected: Rejections = {}  # the API counts refused requests here

    @property
    def accepted_votes(self) -> int:
        return self.accepted_adhoc + self.accepted_bulk + self.accepted_keyed

    def accepted_by_path(self) -> dict[str, int]:
        bulk, keyed = self.accepted_bulk, self.accepted_keyed
        return {"adhoc": self.accepted_adhoc, "bulk": bulk, "keyed": keyed}

    @property
    def waits_for_disk(self) -> bool:
        """Whether an accepted vote must wait for `journal.commit()` before its answer."""
        return self.journal is not None and self.journal.waits_for_disk and not self.write_through

    async def start(self) -> None:
        """Open the store, run start-up (`app/services/startup.py`: node checks, ring
        records, journal replay, the move decision), then take votes."""
        await self.store.open()
        startup = Startup(
            self.store,
            self.flusher,
            self.buffers,
            self.journal,
            self.mover,
            self.migration,
            self.shutdown_flush_seconds,
            self.lease,
        )
        await startup.run()
        self.flusher.start()
        if self.lease is not None:
            self.lease.start()
        self.accepting = True

    def _lost_ring(self, reason: str) -> None:
        """Another ring took a node from this instance (its lease lapsed, say through a
        long stall): two rings must never both take votes, so this one stops."""
        self.ring_lost = reason
        self.accepting = False
        logger.error("ring lease lost (%s): this instance takes no more votes", reason)

    async def whole(self, poll_id: str) -> None:
        """While polls move after a ring change: make this one whole on its owner before
        its stored state is used (nothing otherwise). Raises NodeUnavailable."""
        if self.migration is not None and self.migration.active:
            await self.migration.ensure(poll_id)

    async def _whole_all(self, poll_ids: list[str]) -> None:
        if self.migration is not None and self.migration.active:
            await self.migration.ensure_many(poll_ids)

    async def stop(self) -> bool:
        """Stop taking votes, flush everything held, then close the store. True when
        everything held has landed."""
        self.accepting = False
        if self.migration is not None:
            await self.migration.stop()
        await self.flusher.stop()
        flushed = await self.flusher.drain(self.shutdown_flush_seconds)
        if not flushed:
            logger.error(
                "shutdown: %d votes could not be flushed (nodes down: %s)%s",
                self.pending_votes() + self.flusher.in_flight_votes(),
                sorted({*self.flusher.down, *self.flusher.unsealed}),
                "; they stay in the journal for the next start" if self.journal else "",
            )
        if self.journal is not None:
            await self.journal.stop()
        if flushed and not (self.journal and self.journal.holds_files()):
            await self.flusher.forget_marks()
        if self.lease is not None:
            await self.lease.release()  # after the flush: those votes went by this ring
        await self.store.close()
        return flushed

    # -- votes -----------------------------------------------------------------------------

    def _check_accepting(self) -> None:
        if self.ring_lost is not None:
            raise ShuttingDown(f"this instance no longer serves the ring: {self.ring_lost}")
        if not self.accepting:
            raise ShuttingDown("the service is shutting down and takes no more votes")

    async def confirm_ring(self) -> None:
        """Before a write that goes to a node at once (or a "no such poll"): this instance
        still holds its ring. Raises ShuttingDown when it does not, or when it is stopping
        (then its leases are being let go: a lease round now would take them again)."""
        self._check_accepting()
        if self.lease is not None and not await self.lease.confirm():
            self._check_accepting()  # raises: `_lost_ring` has run

    async def register(self, wanted: dict[str, list[str]]) -> None:
        """Make sure the poll's node lists these options (the per-poll cap holds for every
        instance and across restarts). Only options new to this instance come here."""
        self._check_accepting()
        try:
            await self._whole_all(list(wanted))
            found = await self.store.register_options(wanted, self.max_options)
        except NodeUnavailable as exc:
            raise NodeDown(f"{exc}; retry later") from exc
        full = [poll_id for poll_id, options in found.items() if options is None]
        for poll_id, options in found.items():
            if options is not None:
                self.options.learn(poll_id, options)
        if full:
            raise TooManyOptions(
                f"poll {full[0]} would have more than {self.max_options} options, the most allowed"
            )

    def unknown_options(self, counts: Counts) -> dict[str, list[str]]:
        wanted = {p: self.options.unknown(p, list(options)) for p, options in counts.items()}
        return {p: options for p, options in wanted.items() if options}

    def vote(self, poll_id: str, option_id: str) -> None:
        """Take one vote whose option is registered (batching mode). No await: with the
        journal on it appends a record first (`waits_for_disk` says whether to await a
        commit); a failed append changes nothing."""
        self._check_accepting()
        node = self.store.node_for(poll_id)
        buffer = self.buffers[node]
        if buffer.pairs + self.flusher.held_pairs.get(
            node, 0
        ) >= self.max_pending_pairs and not buffer.has_pair(poll_id, option_id):
            raise BacklogFull(f"node {node} has too many votes waiting; retry later")
        if self.journal is not None:
            try:
                self.journal.append_vote(node, poll_id, option_id)
            except JournalWriteFailed as exc:
                raise JournalUnavailable(str(exc)) from exc
        buffer.add(poll_id, option_id)
        self.accepted_adhoc += 1
        if buffer.votes >= self.batch_max_votes:
            self.flusher.wake()

    async def commit(self) -> None:
        """With `JOURNAL_FSYNC=always`: wait until the votes taken so far are on disk."""
        if self.journal is not None:
            try:
                await self.journal.commit()
            except OSError as exc:
                raise OutcomeUnknown(
                    f"the vote journal could not be synced ({exc}); the vote is held "
                    "in memory and will most likely be counted"
                ) from exc

    def vote_many(self, counts: Counts) -> int:
        """Bulk ingestion, all or nothing, options registered: every node's backlog is
        checked, then the journal takes one record per node (undone if another fails),
        and only then the buffers. Returns the number of votes taken."""
        self._check_accepting()
        routed = route(self.store, counts)
        for node, node_counts in routed.items():
            buffer = self.buffers[node]
            new = buffer.new_pairs(node_counts)
            if new > self.max_pending_pairs:
                raise LargerThanBacklog(
                    f"the request holds {new} (poll, option) pairs for node {node}, more than "
                    f"its backlog cap ({self.max_pending_pairs}); split it"
                )
            if buffer.pairs + self.flusher.held_pairs.get(node, 0) + new > self.max_pending_pairs:
                raise BacklogFull(f"node {node} has too many votes waiting; retry later")
        if self.journal is not None:
            records = {node: _entries(c) for node, c in routed.items()}
            try:
                self.journal.append(records)
            except JournalWriteFailed as exc:
                for node in exc.kept:  # on disk for good: count them, say it is unknown
                    self._buffer(routed[node])
                if exc.kept:
                    raise OutcomeUnknown(f"{exc}; part of the request was kept") from exc
                raise JournalUnavailable(str(exc)) from exc
        total = sum(self._buffer(c) for c in routed.values())
        if any(b.votes >= self.batch_max_votes for b in self.buffers.values()):
            self.flusher.wake()
        return total

    def _buffer(self, counts: Counts) -> int:
        total = 0
        for poll_id, options in counts.items():
            total += self.buffers[self.store.node_for(poll_id)].add_counts(poll_id, options)
        self.accepted_bulk += total
        return total

    async def vote_write_through(self, counts: Counts, bulk: bool = False) -> int:
        """Stages 2 and 3: apply the votes to their nodes before acknowledging them. Each
        node takes its part all or nothing; a failure answers 503, typed
        `outcome_unknown` unless no part can have been applied."""
        self._check_accepting()
        await self.confirm_ring()
        routed = route(self.store, counts)
        outcomes = await asyncio.gather(
            *(self.store.apply_now(node, c) for node, c in routed.items()),
            return_exceptions=True,
        )
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        for node_counts, outcome in zip(routed.values(), outcomes, strict=True):
            if not isinstance(outcome, BaseException):
                self.cache.forget(list(node_counts))
        if failed:
            for exc in failed:
                if not isinstance(exc, NodeUnavailable):
                    raise exc
            landed = len(failed) < len(outcomes)
            if landed or any(getattr(e, "maybe_applied", True) for e in failed):
                raise OutcomeUnknown(f"{failed[0]}; the votes may or may not be counted")
            raise NodeDown(f"{failed[0]}; nothing was counted, retry later")
        total = sum(n for options in counts.values() for n in options.values())
        if bulk:
            self.accepted_bulk += total
        else:
            self.accepted_adhoc += total
        return total

    async def vote_once(self, key: str, fingerprint: str, counts: Counts) -> int:
        """A request with an Idempotency-Key. The key is first claimed for this request in
        one place (the key's own node), so another request with the same key is refused
        before anything is applied; then each node applies its part together with a marker,
        all or nothing, so a repeat counts nothing more, on any instance, after any restart.
        Returns the votes of the request (counted now or by an earlier attempt)."""
        self._check_accepting()
        await self.confirm_ring()
        try:
            if self.migration is not None and self.migration.active:
                await self.migration.ensure_claim(key)
                await self._whole_all(list(counts))
            claim = await self.store.claim(key, fingerprint)
        except NodeUnavailable as exc:
            raise NodeDown(f"{exc}; nothing was counted, retry later") from exc
        if claim == "reused":
            raise IdempotencyKeyReused("this Idempotency-Key was used for another request")
        routed = route(self.store, counts)
        outcomes = await asyncio.gather(
            *(self.store.apply_once(node, key, fingerprint, c) for node, c in routed.items()),
            return_exceptions=True,
        )
        for node_counts, outcome in zip(routed.values(), outcomes, strict=True):
            if outcome == "applied":
                self.cache.forget(list(node_counts))
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, NodeUnavailable):
                raise outcome
        failed = [o for o in outcomes if isinstance(o, NodeUnavailable)]
        if failed:
            raise OutcomeUnknown(
                f"{failed[0]}; retry with the same Idempotency-Key: it counts at most once"
            )
        if "reused" in outcomes:  # a part marker older than the claim: past the 24 h
            raise OutcomeUnknown("this Idempotency-Key was used more than 24 hours ago")
        total = sum(n for options in counts.values() for n in options.values())
        self.accepted_keyed += total if "applied" in outcomes else 0
        return total

    # -- reads -----------------------------------------------------------------------------

    async def _read_store(self, poll_id: str, node: str) -> Snapshot:
        """A snapshot that holds every batch this instance has confirmed for the node."""
        snapshot = Snapshot()
        for _ in range(READ_ATTEMPTS):
            snapshot = await self.store.read(poll_id, self.flusher.flusher_ids(node))
            confirmed = self.flusher.last_confirmed.get(node, {})
            if all(snapshot.applied.get(f, 0) >= seq for f, seq in confirmed.items()):
                break
        return snapshot

    async def results(self, poll_id: str) -> Results:
        """Store snapshot (cached or read) + batches in flight + pending votes.

        An in-flight batch counts only if the snapshot does not already hold it (its seq is
        above the high-water mark read with the counts), so nothing counts twice.
        """
        node = self.store.node_for(poll_id)
        stale = False
        source: CacheEntry | Snapshot | None = self.cache.fresh(poll_id)
        served_via = "app_cache"
        if source is None:
            version = self.cache.version
            try:
                await self.whole(poll_id)
                source = await self._read_store(poll_id, node)
            except NodeUnavailable as exc:
                source = self.cache.any(poll_id)
                if source is None:
                    raise ResultsUnavailable(str(exc)) from exc
                stale = True
            else:
                self.cache.put(poll_id, source, version)
                served_via = source.via or node
        counts = dict(source.counts)
        for batch in self.flusher.in_flight.get(node, []):
            if not source.holds(batch):
                _merge(counts, batch.counts.get(poll_id))
        _merge(counts, self.buffers[node].peek(poll_id))
        return Results(poll_id, counts, served_via, stale)

    def pending_votes(self) -> int:
        return sum(b.votes for b in self.buffers.values())
