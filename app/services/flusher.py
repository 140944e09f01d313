"""Stage 4: the background task that moves buffered votes to the store in batches."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from app.services.forgetting import LossLedger
from app.services.instruments import flush_histogram
from app.services.journal import Journal, SealUnit
from app.services.vote_buffer import VoteBuffer
from app.storage.base import Batch, Counts, MarksBehind, NodeUnavailable, Store

logger = logging.getLogger("app.flusher")

MAX_POLLS_PER_BATCH = 1_000
MAX_SET_ASIDE_SHOWN = 100  # polls named per node in /health


def chain(batches: list[Batch], start: dict[str, int] | None = None) -> list[Batch]:
    """Give each batch the seq of the batch of the same flusher before it in the list, so
    the node applies them in order (see `Batch.prev`); the first of each flusher gets its
    seq in `start` (the last the node confirmed: app/services/forgetting.py), or 0."""
    last: dict[str, int] = dict(start or {})
    chained = []
    for batch in batches:
        chained.append(dataclasses.replace(batch, prev=last.get(batch.flusher_id, 0)))
        last[batch.flusher_id] = batch.seq
    return chained


class Flusher:
    """Every interval (or sooner when woken): for each node, swap its buffer into batches
    and apply them, all nodes in parallel, one pipeline per node.

    A node holds at most one unconfirmed list of batches. With the journal on, the list is
    sent only once sealed (on disk with its ids): a seal that fails is retried first on the
    next flush. Until the node confirms the list, the same batches (same ids, same
    contents) are retried on every flush and the node's new votes wait in its buffer; other
    nodes carry on. On a store with `extends_held` (the cluster: one logical node over
    several masters) the new votes join the held list as new batches instead, while it stays
    within `max_extended_pairs`. Only once
    the store confirms a list do its votes leave "in flight", and `on_landed` runs in that
    same synchronous step.
    """

    def __init__(
        self,
        store: Store,
        buffers: dict[str, VoteBuffer],
        interval: float,
        on_landed: Callable[[Batch], None],
        flusher_id: str | None = None,
        journal: Journal | None = None,
    ) -> None:
        self.store = store
        self.buffers = buffers
        self.interval = interval
        self.on_landed = on_landed
        self.flusher_id = flusher_id or uuid.uuid4().hex
        self.in_flight: dict[str, list[Batch]] = {}
        self.held_pairs: dict[str, int] = {}  # node -> (poll, option) pairs in flight
        # A held list takes new batches (`extends_held`) only while it stays within this:
        # past it the new votes merge in the buffer, so the backlog cap is not filled by
        # the same pairs again and again while a master stays dead (the service: half
        # its cap).
        self.max_extended_pairs: int | None = None
        self.journal = journal
        # node -> flusher id -> seq of the last batch confirmed (ours, and any recovered)
        self.last_confirmed: dict[str, dict[str, int]] = {}
        self.down: dict[str, str] = {}  # node -> last error, while its flushes fail
        self.unsealed: dict[str, str] = {}  # node -> why its batches could not be sealed
        self.set_aside: dict[str, set[str]] = {}  # node -> polls stored in their aside key
        self.flushes = 0
        self.flush_seconds = flush_histogram()
        self.retries: dict[str, int] = {}  # node -> flushes that retried a failed attempt
        self.round_trips = 0  # store.apply calls: one pipeline to one node each
        self._units: dict[str, list[SealUnit]] = {}  # node -> units to seal before sending
        self.checked: set[str] = set()  # nodes whose eviction policy was checked
        # Nodes found to have lost confirmed batches (a cluster store says which slot marks
        # vouch for which part of a batch).
        self.losses = LossLedger(getattr(store, "mark_places", None))
        self._resent: set[tuple[str, int, str]] = set()  # sent again: the cache has them
        self._again: set[str] = set()  # nodes whose list was just chained to their marks
        self._seq = 0
        # Asked before each flush: False when this instance may no longer write by its ring
        # (`RingLease.confirm`); its held votes then stay in the journal for the next start.
        self.fence: Callable[[], Awaitable[bool]] | None = None
        self.fenced = False
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="flusher")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            try:
                await self.flush()
            except Exception:  # a bug must not stop the flusher for good; the batch is kept
                logger.exception("flush failed")

    def next_batches(self, node: str, counts: Counts) -> list[Batch]:
        """New batches of ours for `counts`, at most MAX_POLLS_PER_BATCH polls each."""
        batches = []
        polls = list(counts.items())
        for start in range(0, len(polls), MAX_POLLS_PER_BATCH):
            self._seq += 1
            chunk = dict(polls[start : start + MAX_POLLS_PER_BATCH])
            batches.append(Batch(self.flusher_id, self._seq, node, chunk))
        return batches

    def adopt(self, batches: list[Batch], unit: SealUnit | None = None) -> None:
        """Take over batches (recovered from the journal): they are retried like our own,
        and when `unit` is given, only once it is sealed."""
        for batch in batches:
            self.in_flight.setdefault(batch.node, []).append(batch)
        for node in {b.node for b in batches}:
            self.in_flight[node] = chain(self.in_flight[node])
            self.held_pairs[node] = sum(b.pairs for b in self.in_flight[node])
            if unit is not None:
                self._units.setdefault(node, []).append(unit)

    def flusher_ids(self, node: str) -> list[str]:
        """Whose high-water marks a read of this node must fetch."""
        ids = {self.flusher_id, *self.last_confirmed.get(node, {})}
        ids.update(b.flusher_id for b in self.in_flight.get(node, []))
        return sorted(ids)

    def in_flight_votes(self, node: str | None = None) -> int:
        nodes = [node] if node else list(self.in_flight)
        return sum(b.votes for n in nodes for b in self.in_flight.get(n, []))

    def has_work(self) -> bool:
        return bool(self.in_flight) or any(b.votes for b in self.buffers.values())

    def _take(self, node: str) -> list[Batch]:
        """Swap the node's buffer into batches and, in the same step, detach the journal
        segments that hold exactly those votes."""
        counts = self.buffers[node].swap()
        if not counts:
            return []
        batches = chain(self.next_batches(node, counts), self._carried(node))
        self.in_flight[node] = batches  # first: whatever happens next, they are held
        self.held_pairs[node] = sum(b.pairs for b in batches)
        if self.journal is not None:
            self._units[node] = [SealUnit(batches, self.journal.detach(node))]
        return batches

    def _take_more(self, node: str) -> list[Batch]:
        """The held list with the buffer's new votes added as new batches. Only for a store
        that takes a list part by part (`extends_held`: the cluster, whose masters each run
        their own parts, skipping by their per-slot marks what already landed): so a dead
        master holds only its own slots' votes, and new votes for the live masters land
        with the next flush instead of waiting for the held list."""
        counts = self.buffers[node].swap()
        more = self.next_batches(node, counts)
        batches = chain([*self.in_flight[node], *more])
        self.in_flight[node] = batches
        self.held_pairs[node] = sum(b.pairs for b in batches)
        if self.journal is not None:
            self._units.setdefault(node, []).append(SealUnit(more, self.journal.detach(node)))
        return batches

    def _may_extend(self, node: str) -> bool:
        if not getattr(self.store, "extends_held", False):
            return False
        held = self.held_pairs.get(node, 0) + self.buffers[node].pairs
        return self.max_extended_pairs is None or held <= self.max_extended_pairs

    def _carried(self, node: str) -> dict[str, int]:
        """Where a new list's chain starts: on a store whose marks are per node, at the last
        batch the node confirmed, so a node that lost it refuses and says so."""
        if not getattr(self.store, "marks_per_node", False):
            return {}
        return {self.flusher_id: self.last_confirmed.get(node, {}).get(self.flusher_id, 0)}

    def _found_behind(self, node: str, exc: MarksBehind, batches: list[Batch]) -> None:
        """The node lost batches it confirmed: report it, send again what the journal still
        holds of them (first), and chain the list to the node's marks from now on (on a
        cluster the store chains each slot to its mark itself)."""
        held = []
        if self.journal is not None:
            held = self.journal.held(node, lambda b: self.losses.lost_votes(b, exc.places) > 0)
        self.losses.found_behind(node, exc.places, held)
        self._resent.update(b.key for b in held)
        confirmed = self.last_confirmed.setdefault(node, {})
        for flusher_id, mark in exc.marks.items():
            confirmed[flusher_id] = mark
        self.in_flight[node] = chain([*held, *batches], exc.marks)
        self.held_pairs[node] = sum(b.pairs for b in self.in_flight[node])
        self._again.add(node)

    def _sealed(self, node: str) -> bool:
        """Seal what must be sealed before the node's batches may be sent."""
        assert self.journal is not None or not self._units.get(node)
        for unit in list(self._units.get(node, [])):
            if not unit.sealed:
                try:
                    self.journal.seal(unit)  # type: ignore[union-attr]
                except OSError as exc:
                    if node not in self.unsealed:
                        logger.error("journal: cannot seal batches for %s (%s); held", node, exc)
                    self.unsealed[node] = str(exc)
                    return False
            for other in {b.node for b in unit.batches}:
                with contextlib.suppress(ValueError):
                    self._units.get(other, []).remove(unit)
        self.unsealed.pop(node, None)
        return True

    def _failed(self, node: str, exc: NodeUnavailable, batches: list[Batch]) -> None:
        if self.down.get(node) != str(exc):
            votes = sum(b.votes for b in batches)
            logger.warning("%s; holding %d votes, will retry", exc, votes)
        self.down[node] = str(exc)

    async def _send(self, node: str, batches: list[Batch]) -> bool:
        try:
            if node not in self.checked:
                await self.store.check_node(node)
                self.checked.add(node)
            self.round_trips += 1
            applied = await self.store.apply(batches)
        except MarksBehind as exc:
            self._found_behind(node, exc, batches)
            return False
        except NodeUnavailable as exc:
            self._failed(node, exc, batches)
            return False
        if applied.set_aside:
            aside = self.set_aside.setdefault(node, set())
            new = [p for p in applied.set_aside if p not in aside]
            if new:
                logger.error(
                    "node %s: the stored counts of polls %s are unusable (wrong type or not "
                    "a number); their votes are kept in poll:{id}:aside keys",
                    node,
                    new[:10],
                )
            if len(aside) < MAX_SET_ASIDE_SHOWN:
                aside.update(new[: MAX_SET_ASIDE_SHOWN - len(aside)])
        return True

    def node_up(self, node: str) -> bool:
        """As far as the last flush knows: checked at start or since, and not failing."""
        return node in self.checked and node not in self.down and node not in self.unsealed

    async def _flush_node(self, node: str) -> tuple[int, int]:
        if node in self.down or node in self.unsealed:
            self.retries[node] = self.retries.get(node, 0) + 1
        batches = self.in_flight.get(node)
        if batches and self.buffers[node].votes and self._may_extend(node):
            batches = self._take_more(node)
        elif not batches:
            batches = self._take(node)
        if not batches or not self._sealed(node):
            return 0, 0
        sent = await self._send(node, batches)
        if not sent and node in self._again:  # chained to the node's marks now: once more
            self._again.discard(node)
            batches = self.in_flight[node]
            sent = await self._send(node, batches)
        if not sent:
            return 0, 0
        # Confirmed: leave "in flight" and update the cache in one step (no await between).
        del self.in_flight[node]
        self.held_pairs.pop(node, None)
        confirmed = self.last_confirmed.setdefault(node, {})
        for batch in batches:
            confirmed[batch.flusher_id] = batch.seq
            self.losses.confirmed(batch)
            if batch.key in self._resent:  # counted in the cache when it first landed
                self._resent.discard(batch.key)
            else:
                self.on_landed(batch)
        if self.journal is not None:
            self.journal.release(batches)
        if self.down.pop(node, None) is not None:
            logger.info("node %s is back; its held votes landed", node)
        return sum(b.votes for b in batches), sum(len(b.counts) for b in batches)

    async def flush(self) -> int:
        """Flush every node once; returns the number of votes that landed."""
        async with self._lock:
            started = time.perf_counter()
            nodes = [n for n in self.buffers if self.in_flight.get(n) or self.buffers[n].votes]
            if not nodes:
                return 0
            if self.fence is not None and not await self.fence():
                self.fenced = True
                return 0
            results = await asyncio.gather(*(self._flush_node(n) for n in nodes))
            votes = sum(v for v, _ in results)
            polls = sum(p for _, p in results)
            landed_nodes = sum(1 for v, _ in results if v)
            self.flushes += 1
            self.flush_seconds.observe(time.perf_counter() - started)
            held = self.in_flight_votes()
            logger.info(
                "flush: %d votes, %d polls, %d nodes in %.1f ms%s",
                votes,
                polls,
                landed_nodes,
                (time.perf_counter() - started) * 1000,
                f"; {held} votes held for {sorted({*self.down, *self.unsealed})}" if held else "",
            )
            return votes

    async def drain(self, timeout: float) -> bool:
        """Flush until nothing is pending or `timeout` passes; True when all landed."""
        deadline = time.monotonic() + timeout
        while self.has_work():
            await self.flush()
            if self.fenced:
                return False
            if not self.has_work():
                break
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.2)  # a node is down: retry at a modest pace until the deadline
        return True

    async def forget_marks(self) -> None:
        """After a full drain with nothing left on disk: no journal or flusher can send
        batches under these ids any more, so their marks can go from the nodes."""
        for node, confirmed in self.last_confirmed.items():
            try:
                await self.store.forget_marks(node, sorted(confirmed))
            except NodeUnavailable as exc:
                logger.warning("could not delete marks on %s: %s", node, exc)
