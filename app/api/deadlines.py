"""A deadline for reading a request body (`BODY_TIMEOUT_SECONDS`), without a timer per request.

A timer per request (`asyncio.timeout`) costs about a third of what answering a vote does.
Instead, reads join the current *generation*; a timer that runs only while reads are in
progress starts a new generation every eighth of the timeout, and cancels the reads still
in the generation it retires, 9 ticks after that generation began. So a read gets from 1 to
1.125 times the timeout. Almost every body is complete before its read starts.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
Task = asyncio.Task[Any]
TICKS = 8


class BodyTimeout(Exception):
    """The request body did not arrive within the deadline."""


class BodyDeadlines:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.generations: deque[set[Task]] = deque([set()])
        self.expired: set[Task] = set()
        self.ticking = False

    async def run(self, read: Coroutine[Any, Any, T]) -> T:
        """`await read`, or BodyTimeout once the deadline has passed."""
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - always called from a task
            return await read
        generation = self.generations[-1]
        generation.add(task)
        if not self.ticking:
            self.ticking = True
            asyncio.get_running_loop().call_later(self.timeout / TICKS, self._tick)
        try:
            return await read
        except asyncio.CancelledError:
            if task not in self.expired:
                raise
            self.expired.discard(task)
            if task.uncancel() > 0:
                raise  # cancelled for another reason as well
            message = f"request body did not arrive within {self.timeout:g} seconds"
            raise BodyTimeout(message) from None
        finally:
            generation.discard(task)

    def _tick(self) -> None:
        self.generations.append(set())
        if len(self.generations) > TICKS + 1:
            for task in self.generations.popleft():
                if task.cancel():
                    self.expired.add(task)
        if any(self.generations):
            asyncio.get_running_loop().call_later(self.timeout / TICKS, self._tick)
        else:  # nothing is being read: stop until the next read
            self.generations = deque([set()])
            self.ticking = False
