"""Records each defined poll's history whether or not anyone watches its stream: a poll
that counted a vote (or closed) on this instance is marked, and once a second the marked
polls' totals are offered to the node as a history point (`DefinedPolls.record_point`;
the node keeps points a second apart and always the final one). A point the node did not
take is offered once more in the next round (it may have come too soon after the last
one; a round is longer than the node's gap, so a second refusal means the node already
holds that total); a node that cannot be reached keeps the poll marked."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from app.services.defined_polls import DefinedPolls
from app.services.errors import PollNotFound, VoteRejected

logger = logging.getLogger("app.history")
ROUND_SECONDS = 1.2  # longer than the node's gap between points (HISTORY_GAP_MS)
MAX_MARKED = 10_000  # polls waiting for a point; past it the oldest mark is dropped


class HistoryRecorder:
    def __init__(self, polls: DefinedPolls, interval: float = ROUND_SECONDS) -> None:
        self.polls = polls
        self.interval = interval
        self.marked: dict[str, int] = {}  # poll -> refusals so far, in marking order
        self._task: asyncio.Task[None] | None = None
        polls.on_change = self.mark

    def mark(self, poll_id: str, refusals: int = 0) -> None:
        self.marked.pop(poll_id, None)
        if len(self.marked) >= MAX_MARKED:
            self.marked.pop(next(iter(self.marked)))
        self.marked[poll_id] = refusals

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="history recorder")

    async def stop(self) -> None:
        """Record what is marked one last time, then stop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.record_marked()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.record_marked()

    async def record_marked(self) -> None:
        polls = dict(self.marked)
        self.marked.clear()
        for poll_id, refusals in polls.items():
            try:
                record = await self.polls.load(poll_id)
                if not await self.polls.record_point(record) and refusals == 0:
                    self.mark(poll_id, 1)
            except PollNotFound:
                continue
            except VoteRejected:  # the node is down: next round
                self.mark(poll_id, refusals)
            except Exception:  # never let one poll stop the recorder
                logger.exception("history: recording %s failed", poll_id)
