"""Stages 1-4 behind one object: votes go to a per-node buffer, reads merge store + in-flight
+ pending. Stage by configuration: write-through when the batch interval is 0, no cache when
the cache TTL is 0, the in-memory store when no nodes are set."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass

from app.services.errors import (
    BacklogFull,
    IdempotencyKeyReused,
    JournalUnavailable,
    LargerThanBacklog,
    NodeDown,
    OutcomeUnknown,
    RebalanceBlocked,
    ResultsUnavailable,
    ShuttingDown,
    StoreChanged,
    TooManyOptions,
)
from app.services.flusher import Flusher
from app.services.journal import Journal, JournalWriteFailed, SealUnit
from app.services.journal_format import Entry
from app.services.known_options import KnownOptions
from app.services.metrics import Rejections
from app.services.migration import Migration
from app.services.results_cache import CacheEntry, ResultsCache
from app.services.vote_buffer import VoteBuffer
from app.storage.base import (
    Batch,
    Counts,
    NodeMisconfigured,
    NodeUnavailable,
    Snapshot,
    Store,
)
from app.storage.cluster_store import LABEL as CLUSTER
from app.storage.mover import Mover
from app.storage.moves import ring_config

logger = logging.getLogger("app.polling_service")

READ_ATTEMPTS = 3
# What one held (poll, option) pair costs at most, in the buffer and then in its batch, with
# 64-character ids and one option per poll (measured: tests/test_memory_caps.py).
BYTES_PER_PAIR = 550


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
    ) -> None:
        self.store = store
        self.mover = mover
        self.migration = Migration(mover) if mover else None
        self.renamed: dict[str, str] = {}  # recorded label -> this ring's, same server
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
        await self.store.open()
        await self._check_nodes()
        misplaced: dict[str, set[str]] = {}
        if self.mover is not None:
            await self._ring_records(self.mover)  # before the journal: it may need those nodes
        if self.journal is not None:
            misplaced = await self._recover(self.journal)
        if self.mover is not None:
            await self._rebalance(self.mover, misplaced)
        self.flusher.start()
        self.accepting = True

    async def _check_nodes(self) -> None:
        """Refuse to start on a node whose eviction policy could remove counts or marks.
        A node that is down now is checked by the flusher before its first batch."""
        for node in self.store.nodes:
            try:
                await self.store.check_node(node)
                self.flusher.checked.add(node)
            except NodeMisconfigured:
                raise
            except NodeUnavailable:
                continue

    async def _ring_records(
        self, mover: Mover
    ) -> tuple[dict[str, str | NodeUnavailable | None], dict[str, str | NodeUnavailable]]:
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

    async def _rebalance(self, mover: Mover, misplaced: dict[str, set[str]]) -> None:
        """Decide whether polls must move (all of them when the ring differs from the one
        recorded on the nodes; else those of recovered batches that went to their old
        node); once the journal's batches have all landed, start moving them in the
        background (`Migration`): votes and reads are served meanwhile."""
        config = ring_config(mover.manager)
        recorded, markers = await self._ring_records(mover)
        down = {n: r for n, r in recorded.items() if isinstance(r, NodeUnavailable)}
        down |= {n: r for n, r in markers.items() if isinstance(r, NodeUnavailable)}
        cut_off = {n: r for n, r in markers.items() if isinstance(r, str)}
        full = bool(mover.manager.retiring or cut_off) or any(
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
        if not await self.flusher.drain(self.shutdown_flush_seconds):
            raise RebalanceBlocked("the ring changed, and the journal's batches cannot land")
        if full:
            first = not any(isinstance(r, str) for r in recorded.values())
            logger.info(
                "rebalance: %s; moving polls to their new owners in the background, serving "
                "meanwhile (a poll is moved first when it is touched)",
                "a ring change was cut off on " + ", ".join(sorted(cut_off))
                if cut_off
                else "no ring recorded on the nodes yet"
                if first
                else "the ring changed",
            )
        rings = {r for r in recorded.values() if isinstance(r, str)}
        if full and not cut_off and not misplaced and len(rings) == 1 and config not in rings:
            mover.narrow(rings.pop())  # every poll is on its owner under that ring
        assert self.migration is not None
        self.migration.begin(misplaced, full)

    async def whole(self, poll_id: str) -> None:
        """While polls move after a ring change: make this one whole on its owner before
        its stored state is used (nothing otherwise). Raises NodeUnavailable."""
        if self.migration is not None and self.migration.active:
            await self.migration.ensure(poll_id)

    async def _whole_all(self, poll_ids: list[str]) -> None:
        if self.migration is not None and self.migration.active:
            await self.migration.ensure_many(poll_ids)

    async def _recover(self, journal: Journal) -> dict[str, set[str]]:
        """Replay what earlier processes left: sealed batches keep their ids (a node that
        already applied one ignores it); loose votes become new batches, sealed (absorbing
        their segments) before they are sent, like any other. Returns, by node, the polls of
        sealed batches that went to a node (ring or retiring) no longer their owner."""
        found = journal.recover()
        self._refuse_other_store(found.batches)
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
                for node, counts in self._route(batch.counts).items()
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

    def _refuse_other_store(self, batches: list[Batch]) -> None:
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
        await self.store.close()
        return flushed

    # -- votes -----------------------------------------------------------------------------

    def _check_accepting(self) -> None:
        if not self.accepting:
            raise ShuttingDown("the service is shutting down and takes no more votes")

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

    def _route(self, counts: Counts) -> dict[str, Counts]:
        routed: dict[str, Counts] = {}
        for poll_id, options in counts.items():
            routed.setdefault(self.store.node_for(poll_id), {})[poll_id] = options
        return routed

    def vote_many(self, counts: Counts) -> int:
        """Bulk ingestion, all or nothing, options registered: every node's backlog is
        checked, then the journal takes one record per node (undone if another fails),
        and only then the buffers. Returns the number of votes taken."""
        self._check_accepting()
        routed = self._route(counts)
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
        routed = self._route(counts)
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
        try:
            if self.migration is not None and self.migration.active:
                await self.migration.ensure_claim(key)
                await self._whole_all(list(counts))
            claim = await self.store.claim(key, fingerprint)
        except NodeUnavailable as exc:
            raise NodeDown(f"{exc}; nothing was counted, retry later") from exc
        if claim == "reused":
            raise IdempotencyKeyReused("this Idempotency-Key was used for another request")
        routed = self._route(counts)
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

    # -- health ----------------------------------------------------------------------------

    def pending_votes(self) -> int:
        return sum(b.votes for b in self.buffers.values())

    def _node_health(self, label: str, url: str, reachable: bool) -> dict[str, object]:
        held = self.buffers[label].pairs + self.flusher.held_pairs.get(label, 0)
        return {
            "label": label,
            "url": url,
            "reachable": reachable,
            "pending_votes": self.buffers[label].votes,
            "in_flight_votes": self.flusher.in_flight_votes(label),
            "held_pairs": held,
            "held_bytes_estimate": held * BYTES_PER_PAIR,
            "backlog_cap_pairs": self.max_pending_pairs,
            "error": self.flusher.down.get(label) or self.flusher.unsealed.get(label),
            "set_aside_polls": sorted(self.flusher.set_aside.get(label, ())),
        }

    async def health(self, extra_counters: dict[str, int] | None = None) -> dict[str, object]:
        """The report `/health` gives; `extra_counters` join `counters` (defined polls')."""
        reachable = await self.store.ping()
        nodes = [
            self._node_health(label, url, reachable.get(label, False))
            for label, url in self.store.describe()
        ]
        healthy = all(n["reachable"] and not n["error"] for n in nodes)
        report: dict[str, object] = {
            "status": "ok" if healthy and not self.flusher.set_aside else "degraded",
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
                **(extra_counters or {}),
            },
        }
        durability = getattr(self.store, "durability", None)  # what the nodes promise
        if durability is not None:
            report["durability"] = durability()
        if self.migration is not None:
            report["rebalance"] = self.migration.describe()
        if self.journal is not None:
            quarantine = self.journal.quarantine
            report["journal"] = {
                "fsync": self.journal.fsync,
                "quarantine_folder": quarantine.folder,
                "quarantined_files": quarantine.files,
                "quarantined_lines": quarantine.lines,
            }
        return report
