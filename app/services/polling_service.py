"""Stages 1-4 behind one object: votes go to a per-node buffer, reads merge store + in-flight
+ pending. Stage by configuration: write-through when the batch interval is 0, no cache when
the cache TTL is 0, the in-memory store when no nodes are set."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from app.services.errors import (
    BacklogFull,
    JournalUnavailable,
    ResultsUnavailable,
    ShuttingDown,
    TooManyOptions,
)
from app.services.flusher import Flusher
from app.services.journal import Journal
from app.services.results_cache import CacheEntry, ResultsCache
from app.services.vote_buffer import VoteBuffer
from app.storage.base import Counts, NodeUnavailable, Snapshot, Store

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


class PollingService:
    def __init__(
        self,
        store: Store,
        *,
        batch_interval: float,
        batch_max_votes: int,
        cache: ResultsCache,
        max_options_per_poll: int,
        max_pending_polls_per_node: int,
        shutdown_flush_seconds: float = 10.0,
        journal: Journal | None = None,
    ) -> None:
        self.store = store
        self.cache = cache
        self.write_through = batch_interval <= 0
        self.batch_max_votes = batch_max_votes
        self.max_options = max_options_per_poll
        self.max_pending_polls = max_pending_polls_per_node
        self.shutdown_flush_seconds = shutdown_flush_seconds
        self.buffers = {node: VoteBuffer() for node in store.nodes}
        self.journal = journal
        self.flusher = Flusher(
            store, self.buffers, batch_interval, cache.apply_batch, journal=journal
        )
        self.accepting = False
        self.accepted_votes = 0  # acknowledged since start, for health and the benchmark
        # Options seen per poll (from votes and reads), to enforce the per-poll cap without I/O.
        self._options: dict[str, set[str]] = {}
        self._options_limit = cache.max_polls

    @property
    def waits_for_disk(self) -> bool:
        """Whether an accepted vote must wait for `journal.commit()` before its answer."""
        return self.journal is not None and self.journal.waits_for_disk

    async def start(self) -> None:
        await self.store.open()
        if self.journal is not None:
            await self._recover(self.journal)
        if not self.write_through:
            self.flusher.start()
        self.accepting = True

    async def _recover(self, journal: Journal) -> None:
        """Replay what a crashed process left: sealed batches keep their ids (a node that
        already applied one ignores it); loose votes go into the buffers and a new segment."""
        found = journal.recover()
        journal.start()
        orphans = [b for b in found.batches if b.node not in self.buffers]
        if orphans:
            logger.error(
                "journal: %d votes are for nodes no longer configured (%s); they stay on disk",
                sum(b.votes for b in orphans),
                sorted({b.node for b in orphans}),
            )
        found.batches = [b for b in found.batches if b.node in self.buffers]
        self.flusher.adopt(found.batches)
        for poll_id, options in found.loose.items():
            node = self.store.node_for(poll_id)
            self.buffers[node].add_counts(poll_id, options)
            self._learn_options(poll_id, options)
            for option_id, n in options.items():
                journal.append(node, poll_id, option_id, n)
        if found.loose:
            await asyncio.to_thread(journal.sync_open)
        for path in found.loose_files:
            path.unlink()
        if found.batches or found.loose:
            votes = sum(b.votes for b in found.batches) + sum(
                sum(o.values()) for o in found.loose.values()
            )
            logger.info("journal: recovered %d votes from an earlier run", votes)
            await self.flusher.flush()

    async def stop(self) -> None:
        """Stop taking votes, flush everything held, then close the store."""
        self.accepting = False
        await self.flusher.stop()
        if not await self.flusher.drain(self.shutdown_flush_seconds):
            logger.error(
                "shutdown: %d votes could not be flushed (nodes down: %s)%s",
                self.pending_votes() + self.flusher.in_flight_votes(),
                sorted(self.flusher.down),
                "; they stay in the journal for the next start" if self.journal else "",
            )
        if self.journal is not None:
            await self.journal.stop()
        await self.store.close()

    # -- votes -----------------------------------------------------------------------------

    def _check_option(self, poll_id: str, option_id: str) -> None:
        known = self._options.get(poll_id)
        if known is None:
            self._learn_options(poll_id, {option_id: 1})
        elif option_id not in known:
            if len(known) >= self.max_options:
                raise TooManyOptions(
                    f"poll {poll_id} already has {self.max_options} options, the most allowed"
                )
            known.add(option_id)

    def _check_accepting(self) -> None:
        if not self.accepting:
            raise ShuttingDown("the service is shutting down and takes no more votes")

    def _admit(self, poll_id: str, option_id: str) -> tuple[str, VoteBuffer]:
        """Checks a vote may be taken; returns its node and the buffer it goes into."""
        self._check_accepting()
        node = self.store.node_for(poll_id)
        buffer = self.buffers[node]
        if buffer.polls >= self.max_pending_polls and not buffer.has_poll(poll_id):
            raise BacklogFull(f"node {node} has too many votes waiting; retry later")
        self._check_option(poll_id, option_id)
        return node, buffer

    def vote(self, poll_id: str, option_id: str) -> None:
        """Take one vote (batching mode). No await: it increments a counter and, with the
        journal on, appends a line to it (`waits_for_disk` says whether to await a commit)."""
        node, buffer = self._admit(poll_id, option_id)
        buffer.add(poll_id, option_id)
        if self.journal is not None:
            self.journal.append(node, poll_id, option_id)
        self.accepted_votes += 1
        if buffer.votes >= self.batch_max_votes:
            self.flusher.wake()

    async def commit(self) -> None:
        """With `JOURNAL_FSYNC=always`: wait until the votes taken so far are on disk."""
        if self.journal is not None:
            try:
                await self.journal.commit()
            except OSError as exc:
                raise JournalUnavailable(f"the vote journal could not be written: {exc}") from exc

    async def vote_write_through(self, poll_id: str, option_id: str) -> None:
        """Stage 2: apply the vote to the store before acknowledging it."""
        self._admit(poll_id, option_id)
        try:
            await self.store.increment(poll_id, option_id)
        except NodeUnavailable as exc:
            raise ResultsUnavailable(str(exc)) from exc
        self.cache.add_vote(poll_id, option_id)
        self.accepted_votes += 1

    def vote_many(self, counts: Counts) -> int:
        """Bulk ingestion, all or nothing: every poll is checked before any vote is counted.
        Returns the number of votes taken."""
        self._check_accepting()
        routed = [
            (poll_id, options, self.store.node_for(poll_id)) for poll_id, options in counts.items()
        ]
        new_polls: dict[str, int] = {}
        for poll_id, options, node in routed:
            if not self.buffers[node].has_poll(poll_id):
                new_polls[node] = new_polls.get(node, 0) + 1
            known = self._options.get(poll_id, set())
            if (
                len(known) + len(options) > self.max_options
                and len(known | options.keys()) > self.max_options
            ):
                raise TooManyOptions(
                    f"poll {poll_id} would have more than {self.max_options} options"
                )
        for node, extra in new_polls.items():
            if self.buffers[node].polls + extra > self.max_pending_polls:
                raise BacklogFull(f"node {node} has too many votes waiting; retry later")
        total = 0
        for poll_id, options, node in routed:
            self._learn_options(poll_id, options)
            total += self.buffers[node].add_counts(poll_id, options)
            if self.journal is not None:
                for option_id, n in options.items():
                    self.journal.append(node, poll_id, option_id, n)
        self.accepted_votes += total
        if any(b.votes >= self.batch_max_votes for b in self.buffers.values()):
            self.flusher.wake()
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
                source = await self._read_store(poll_id, node)
            except NodeUnavailable as exc:
                source = self.cache.any(poll_id)
                if source is None:
                    raise ResultsUnavailable(str(exc)) from exc
                stale = True
            else:
                self.cache.put(poll_id, source, version)
                self._learn_options(poll_id, source.counts)
                served_via = node
        counts = dict(source.counts)
        for batch in self.flusher.in_flight.get(node, []):
            if not source.holds(batch):
                _merge(counts, batch.counts.get(poll_id))
        _merge(counts, self.buffers[node].peek(poll_id))
        return Results(poll_id, counts, served_via, stale)

    def _learn_options(self, poll_id: str, counts: dict[str, int]) -> None:
        if counts:
            known = self._options.get(poll_id)
            if known is None:
                if len(self._options) >= self._options_limit:
                    del self._options[next(iter(self._options))]
                self._options[poll_id] = set(counts)
            else:
                known.update(counts)

    # -- health ----------------------------------------------------------------------------

    def pending_votes(self) -> int:
        return sum(b.votes for b in self.buffers.values())

    async def health(self) -> dict[str, object]:
        reachable = await self.store.ping()
        nodes = [
            {
                "label": label,
                "url": url,
                "reachable": reachable.get(label, False),
                "pending_votes": self.buffers[label].votes,
                "in_flight_votes": self.flusher.in_flight_votes(label),
            }
            for label, url in self.store.describe()
        ]
        return {
            "status": "ok" if all(n["reachable"] for n in nodes) else "degraded",
            "nodes": nodes,
            "buffer": {
                "pending_votes": self.pending_votes(),
                "pending_polls": sum(b.polls for b in self.buffers.values()),
                "in_flight_votes": self.flusher.in_flight_votes(),
            },
            "cache": {"polls": len(self.cache), "ttl_seconds": self.cache.ttl},
            "counters": {
                "accepted_votes": self.accepted_votes,
                "flushes": self.flusher.flushes,
                "round_trips": self.flusher.round_trips,
            },
        }
