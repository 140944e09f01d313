"""Group commit for checks that must reach a node before the answer.

Every check waiting for a node goes in the next round trip to it; while one round trip is
out, new checks gather for the next. Under load a round trip carries many checks (the same
idea as the journal's group fsync), so the node sees few round trips however many votes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class NodeBatcher(Generic[Item, Result]):
    def __init__(
        self, send: Callable[[str, list[Item]], Awaitable[list[Result | Exception]]]
    ) -> None:
        # One round trip to a node with these items; results in order, and an item whose
        # own part failed gets its exception (raised to its submitter alone).
        self.send = send
        self.round_trips = 0
        self.items_sent = 0
        self._waiting: dict[str, list[tuple[Item, asyncio.Future[Result]]]] = {}
        self._sending: set[str] = set()

    async def submit(self, node: str, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(node, []).append((item, future))
        if node not in self._sending:
            self._sending.add(node)
            asyncio.get_running_loop().create_task(self._drain(node))
        return await future

    async def _drain(self, node: str) -> None:
        try:
            while self._waiting.get(node):
                batch = self._waiting.pop(node)
                self.round_trips += 1
                self.items_sent += len(batch)
                try:
                    results = await self.send(node, [item for item, _ in batch])
                except BaseException as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._sending.discard(node)
