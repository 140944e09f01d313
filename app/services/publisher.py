"""One publisher per poll across all instances, for streams held by Pushpin.

Every instance that gets a Pushpin stream request for a poll runs a candidate for it. Once
per interval each candidate renews (or tries to take) the poll's lease on the poll's node
(`PollLeases.hold`); the holder reads the state and, if its version is new, claims that
version on the node and publishes it to every Pushpin. A candidate stops when nobody watches
(the watched lease, renewed by stream requests, has expired) and after the final state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets

from app.services.grip import Event, PushpinClient
from app.services.live_results import Reader
from app.services.poll_leases import LEADER, NOBODY, PollLeases
from app.services.read_states import ReadState, ReadStates

logger = logging.getLogger("app.publisher")
FINAL_RETRY_MS = 24 * 3600 * 1000  # `retry:` of the final event: EventSource waits a day


def event_frame(state: ReadState) -> bytes:
    """`id: <version>` and `data: <the results JSON>`; a day's `retry:` before the final one."""
    head = b"retry: %d\n" % FINAL_RETRY_MS if state.snapshot.final else b""
    return head + b"id: %d\ndata: %s\n\n" % (state.version, state.snapshot.body)


def split_key(key: str) -> tuple[str, str]:
    """`def:<id>` -> ("def", id)."""
    kind, _, poll_id = key.partition(":")
    return kind, poll_id


class GripPublishers:
    def __init__(
        self,
        leases: PollLeases,
        pushpin: PushpinClient,
        states: ReadStates,
        interval: float,
        watch_seconds: float,
    ) -> None:
        self.leases = leases
        self.pushpin = pushpin
        self.states = states
        self.interval = interval
        self.watch_seconds = watch_seconds
        self.lease_ms = int(max(5 * interval, 2.0) * 1000)
        self.owner = secrets.token_hex(8)  # this instance, in the lease
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._renewed: dict[str, float] = {}  # key -> when this instance last renewed "watched"

    @property
    def renew_seconds(self) -> int:
        """How often Pushpin re-requests each held stream (its next link)."""
        return max(1, int(self.watch_seconds / 2))

    async def watched(self, key: str, read: Reader) -> None:
        """A stream request for the poll came through Pushpin: renew its watched lease (at
        most a few times per lease per instance) and make sure a candidate runs here."""
        loop = asyncio.get_running_loop()
        kind, poll_id = split_key(key)
        if loop.time() - self._renewed.get(key, -1e9) >= self.watch_seconds / 6:
            self._renewed[key] = loop.time()
            try:
                await self.leases.watch(poll_id, kind, int(self.watch_seconds * 1000))
            except Exception as exc:
                self._renewed.pop(key, None)  # try again with the next request
                logger.warning("marking %s watched failed: %s", key, exc)
        if key not in self.tasks:
            self.tasks[key] = asyncio.create_task(self._run(key, read), name=f"publish {key}")

    async def _run(self, key: str, read: Reader) -> None:
        kind, poll_id = split_key(key)
        published = -1  # the highest version this candidate saw published
        try:
            while True:
                try:
                    role = await self.leases.hold(poll_id, kind, self.owner, self.lease_ms)
                    if role == NOBODY:
                        return
                    if role == LEADER:
                        state = await self.states.refresh(key, read)
                        if state.version > published:
                            published = state.version
                            made = state.snapshot.made_at
                            if await self.leases.claim(
                                poll_id, kind, self.owner, state.version, made
                            ):
                                await self.pushpin.publish(
                                    Event(
                                        key, state.version, event_frame(state), state.snapshot.final
                                    )
                                )
                        if state.snapshot.final:
                            return  # the final state and the close are out
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a node down, a failed read: try next interval
                    logger.debug("publisher of %s: %s", key, exc)
                await asyncio.sleep(self.interval)
        finally:
            self.tasks.pop(key, None)
            self._renewed.pop(key, None)

    async def close(self) -> None:
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.pushpin.close()
