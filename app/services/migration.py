"""Moving polls to their new owners while the service serves.

After a ring change the service takes votes and answers reads at once. A background task
scans every node and moves what the ring now puts elsewhere (`Mover.scan`), a group of polls
at a time; until it has finished, anything that touches a poll's stored state first makes
that poll whole on its owner (`ensure`): a read, a new option, a defined poll's vote or
state, a keyed vote (and its claim, `ensure_claim`). Both go through one lock per poll in
this process, so a read never sees a poll half moved; a poll made whole stays whole (no
instance writes it anywhere but its owner), so it is remembered and never checked again
until the move is over. Votes without a key need none of this: they are buffered for the
new owner, and COPY adds the old counts to what they flush there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from app.storage.base import NodeUnavailable
from app.storage.mover import Mover, Report

logger = logging.getLogger("app.rebalance")

RETRY_SECONDS = 2.0  # between attempts of a scan that met a node down
MAX_SETTLED = 1_000_000  # polls remembered as whole; past that they are checked again


class KeyedLocks:
    """One asyncio lock per name, alive while someone holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def _enter(self, name: str) -> asyncio.Lock:
        lock, users = self._locks.get(name, (asyncio.Lock(), 0))
        self._locks[name] = (lock, users + 1)
        return lock

    def _leave(self, name: str) -> None:
        lock, users = self._locks[name]
        if users == 1:
            del self._locks[name]
        else:
            self._locks[name] = (lock, users - 1)

    @asynccontextmanager
    async def hold(self, names: list[str]) -> AsyncIterator[None]:
        """All of `names`, taken in sorted order (so two holders never wait on each other)."""
        taken: list[str] = []
        entered: list[str] = []
        try:
            for name in sorted(set(names)):
                lock = self._enter(name)
                entered.append(name)
                await lock.acquire()
                taken.append(name)
            yield
        finally:
            for name in taken:
                self._locks[name][0].release()
            for name in entered:
                self._leave(name)

    def __len__(self) -> int:
        return len(self._locks)


class Migration:
    """The background move after a ring change, and the per-poll move on first touch."""

    def __init__(self, mover: Mover, retry_seconds: float = RETRY_SECONDS) -> None:
        self.mover = mover
        self.retry_seconds = retry_seconds
        self.active = False
        self.locks = KeyedLocks()
        self.settled: set[str] = set()  # names made whole on their owner by `ensure`
        self.on_demand = 0  # polls and claims moved (or checked) on first touch
        self.attempts = 0
        self.error: str | None = None
        self.started_at: float | None = None
        self.seconds: float | None = None  # how long the last move took
        self.last: Report | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def report(self) -> Report:
        return self.mover.report

    def begin(self, misplaced: dict[str, set[str]], full: bool) -> None:
        """Start moving in the background: the polls of recovered batches that went to
        their old node, then (if the ring changed) everything, then record the ring."""
        self.active = True
        self.started_at = time.monotonic()
        self._task = asyncio.create_task(self._run(misplaced, full), name="rebalance")

    async def wait(self) -> None:
        """Until the background move is over (tests, the command)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def stop(self) -> None:
        """Cut the move off (shutdown): what was staged is resumed by the next start."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self, misplaced: dict[str, set[str]], full: bool) -> None:
        while True:
            self.attempts += 1
            try:
                for node, polls in misplaced.items():
                    for poll_id in sorted(polls):
                        async with self._guard([poll_id]) as todo:
                            if todo:
                                await self.mover.move_poll(node, poll_id)
                if full:
                    report = await self.mover.scan(guard=self._guard)
                    await self.mover.record()
                    self.last = report
                    logger.info(
                        "rebalance: done in %.1f s: %d of %d polls moved (%d votes), %d keys"
                        " scanned, %d staged moves finished, %d claims; %d polls made whole on"
                        " first touch: %s",
                        time.monotonic() - (self.started_at or 0),
                        report.moved,
                        report.polls,
                        report.votes,
                        report.scanned,
                        report.staged,
                        report.claims,
                        self.on_demand,
                        {f"{s}->{t}": n for (s, t), n in report.moves.items()},
                    )
                break
            except NodeUnavailable as exc:
                self.error = str(exc)
                logger.warning(
                    "rebalance: %s; polls not moved yet are moved on first touch, which "
                    "fails while that node is down; retrying in %.0f s",
                    exc,
                    self.retry_seconds,
                )
                await asyncio.sleep(self.retry_seconds)
            except Exception as exc:  # a bug or a conflict must not end the move for good
                self.error = f"{type(exc).__name__}: {exc}"
                logger.exception(
                    "rebalance: the move failed; retrying in %.0f s", self.retry_seconds
                )
                await asyncio.sleep(self.retry_seconds)
        self.error = None
        self.seconds = time.monotonic() - (self.started_at or 0)
        self.active = False
        self.settled.clear()

    @asynccontextmanager
    async def _guard(self, polls: list[str]) -> AsyncIterator[list[str]]:
        """The background mover's group: locked, without the polls already made whole."""
        async with self.locks.hold(polls):
            yield [p for p in polls if p not in self.settled]

    async def ensure(self, poll_id: str) -> None:
        """Before the poll's stored state is read or written: make it whole on its owner
        (once per poll while a move runs; nothing when none runs). Raises NodeUnavailable
        when a node it must look at is down."""
        if self.active and poll_id not in self.settled:
            await self.ensure_many([poll_id])

    async def ensure_many(self, polls: list[str]) -> None:
        """`ensure` for many polls, the mover's group size per round trip."""
        todo = sorted({p for p in polls if p not in self.settled}) if self.active else []
        for start in range(0, len(todo), self.mover.group):
            chunk = todo[start : start + self.mover.group]
            async with self.locks.hold(chunk):
                chunk = [p for p in chunk if p not in self.settled]
                if not chunk or not self.active:
                    continue
                await self.mover.move_everywhere(chunk)
                self._settled(chunk)

    async def ensure_claim(self, key: str) -> None:
        """Before an Idempotency-Key is claimed: bring its claim to the key's owner."""
        name = f"idem:{key}"
        if not self.active or name in self.settled:
            return
        async with self.locks.hold([name]):
            if name not in self.settled and self.active:
                await self.mover.move_claim_everywhere(key)
                self._settled([name])

    def _settled(self, names: list[str]) -> None:
        self.on_demand += len(names)
        if len(self.settled) < MAX_SETTLED:
            self.settled.update(names)

    def describe(self) -> dict[str, object]:
        """For /health: what the move is doing."""
        report = self.report
        return {
            "state": "moving" if self.active else "done" if self.started_at else "none",
            "polls_seen": report.polls,
            "polls_moved": report.moved,
            "votes_moved": report.votes,
            "claims_moved": report.claims,
            "keys_scanned": report.scanned,
            "made_whole_on_first_touch": self.on_demand,
            "attempts": self.attempts,
            "seconds": round(self.seconds, 3) if self.seconds is not None else None,
            "error": self.error,
        }
