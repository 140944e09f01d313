"""Stage 4: the background task that moves buffered votes to the store in batches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable

from app.services.journal import Journal
from app.services.vote_buffer import VoteBuffer
from app.storage.base import Batch, Counts, NodeUnavailable, Store

logger = logging.getLogger("app.flusher")

MAX_POLLS_PER_BATCH = 1_000


class Flusher:
    """Every interval (or sooner when woken): for each node, swap its buffer into batches
    and apply them, all nodes in parallel, one pipeline per node.

    A node holds at most one unconfirmed list of batches. Until the node confirms it, the
    same batches (same ids, same contents) are retried on every flush and the node's new
    votes wait in its buffer; other nodes carry on. Only once the store confirms a list do
    its votes leave "in flight", and `on_landed` runs in that same synchronous step.
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
        self.journal = journal
        # node -> flusher id -> seq of the last batch confirmed (ours, and any recovered)
        self.last_confirmed: dict[str, dict[str, int]] = {}
        self.down: dict[str, str] = {}  # node -> last error, while its flushes fail
        self.flushes = 0
        self.round_trips = 0  # store.apply calls: one pipeline to one node each
        self._seq = 0
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

    def adopt(self, batches: list[Batch]) -> None:
        """Take over batches recovered from the journal; they are retried like our own."""
        for batch in batches:
            self.in_flight.setdefault(batch.node, []).append(batch)

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

    def _make_batches(self, node: str, counts: Counts) -> list[Batch]:
        batches = []
        polls = list(counts.items())
        for start in range(0, len(polls), MAX_POLLS_PER_BATCH):
            self._seq += 1
            chunk = dict(polls[start : start + MAX_POLLS_PER_BATCH])
            batches.append(Batch(self.flusher_id, self._seq, node, chunk))
        return batches

    async def _flush_node(self, node: str) -> tuple[int, int]:
        batches = self.in_flight.get(node)
        if not batches:
            counts = self.buffers[node].swap()
            if not counts:
                return 0, 0
            batches = self._make_batches(node, counts)
            self.in_flight[node] = batches  # first: whatever happens next, they are held
            if self.journal is not None:
                try:
                    self.journal.seal(node, batches)
                except OSError as exc:  # the votes stay in memory and in their segment
                    logger.error("journal: could not seal batches for %s: %s", node, exc)
        self.round_trips += 1
        try:
            await self.store.apply(batches)
        except NodeUnavailable as exc:
            if node not in self.down:
                logger.warning(
                    "%s; holding %d votes, will retry", exc, sum(b.votes for b in batches)
                )
            self.down[node] = str(exc)
            return 0, 0
        # Confirmed: leave "in flight" and update the cache in one step (no await between).
        del self.in_flight[node]
        confirmed = self.last_confirmed.setdefault(node, {})
        for batch in batches:
            confirmed[batch.flusher_id] = batch.seq
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
            results = await asyncio.gather(*(self._flush_node(n) for n in nodes))
            votes = sum(v for v, _ in results)
            polls = sum(p for _, p in results)
            landed_nodes = sum(1 for v, _ in results if v)
            self.flushes += 1
            held = self.in_flight_votes()
            logger.info(
                "flush: %d votes, %d polls, %d nodes in %.1f ms%s",
                votes,
                polls,
                landed_nodes,
                (time.perf_counter() - started) * 1000,
                f"; {held} votes held for {sorted(self.down)}" if held else "",
            )
            return votes

    async def drain(self, timeout: float) -> bool:
        """Flush until nothing is pending or `timeout` passes; True when all landed."""
        deadline = time.monotonic() + timeout
        while self.has_work():
            await self.flush()
            if not self.has_work():
                break
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.2)  # a node is down: retry at a modest pace until the deadline
        return True
