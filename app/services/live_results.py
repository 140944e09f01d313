"""Live results: one publisher per poll reads the results once per interval and hands the
newest state to every subscriber (the broadcaster pattern).

Each subscriber holds only the latest state it has not taken yet (a one-slot mailbox), so a
slow subscriber skips states rather than queueing them: its memory is bounded whatever the
vote rate. The publisher starts with its first subscriber and stops when its last one
leaves, or after it has read a final state. `LiveResults.reads` counts the reads per poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

logger = logging.getLogger("app.live_results")
RECENT_POLLS = 10_000  # polls whose last state and read time are remembered


@dataclass(frozen=True)
class Snapshot:
    """One read of a poll's results."""

    body: bytes  # exactly what the poll's results endpoint answers
    signature: Hashable  # equal signatures: nothing a subscriber sees has changed
    total: int  # never goes backwards for a subscriber
    final: bool = False  # nothing will change any more; the stream ends after it
    hidden: bool = False  # only the organiser may see it


@dataclass(frozen=True)
class Update:
    version: int  # increases with every new state, across all polls of this process
    snapshot: Snapshot


class ReadFailed(Exception):
    """A read that could not give results; `reply` is the (status, body, headers) to answer
    a subscriber that has no state yet."""

    def __init__(self, reply: tuple[int, bytes, list[tuple[bytes, bytes]]]) -> None:
        super().__init__(reply[1].decode(errors="replace"))
        self.reply = reply


class Stopped(Exception):
    """The service is stopping: the stream ends."""


Reader = Callable[[], Awaitable[Snapshot]]
Item = Update | ReadFailed | Stopped


class Mailbox:
    """One slot: a new item replaces one not taken yet."""

    __slots__ = ("_item", "_ready", "_taken")

    def __init__(self) -> None:
        self._item: Item | None = None
        self._ready = asyncio.Event()
        self._taken = 0  # the version last taken

    def put(self, item: Item) -> None:
        self._item = item
        self._ready.set()

    async def take(self) -> Update:
        """The newest state not taken yet (never an older one); raises ReadFailed or Stopped."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            item, self._item = self._item, None
            if isinstance(item, Exception):
                raise item
            if item is not None and item.version > self._taken:
                self._taken = item.version
                return item


class Publisher:
    """Reads one poll every `interval` seconds while it has subscribers."""

    def __init__(self, registry: LiveResults, key: str, read: Reader) -> None:
        self.registry = registry
        self.key = key
        self.read = read
        self.subscribers: set[Mailbox] = set()
        self.failure: ReadFailed | None = None  # the last read failed and nothing was read yet
        # A publisher that follows an earlier one of the same poll starts from its last
        # state and reads one interval after it did: subscribers who come and go (or
        # reconnect in a loop) never make more than one read per interval.
        self.latest, self._first_due = registry.recent.get(key, (None, 0.0))
        stale = asyncio.get_running_loop().time() >= self._first_due
        if self.latest is not None and not self._settled(self.latest) and stale:
            self.latest = None  # older than an interval: read afresh before answering
        self._wake = asyncio.Event()
        self.task = asyncio.create_task(self._run(), name=f"live results {key}")

    @staticmethod
    def _settled(update: Update) -> bool:
        """Final and visible: a closed poll's results never change, nor does their
        visibility once shown (a hidden one may still be revealed)."""
        return update.snapshot.final and not update.snapshot.hidden

    def join(self, box: Mailbox) -> None:
        self.subscribers.add(box)
        if self.latest is not None:
            box.put(self.latest)
        elif self.failure is not None:
            box.put(self.failure)

    def leave(self, box: Mailbox) -> None:
        self.subscribers.discard(box)
        if not self.subscribers:
            self.registry.forget(self)  # a newcomer from now on starts a new publisher
            self._wake.set()  # stop now rather than at the end of the interval

    def _deliver(self, item: Item) -> None:
        for box in self.subscribers:
            box.put(item)

    def _offer(self, snapshot: Snapshot) -> None:
        """Publish a state that differs from the last one, never one behind it."""
        latest = self.latest
        if latest is not None:
            if snapshot.total < latest.snapshot.total:
                return  # an older state than one already sent
            if snapshot.signature == latest.snapshot.signature:
                self.latest = Update(latest.version, snapshot)  # same to the eye; keep it new
                self.registry.remember(self.key, self.latest)
                return
        self.latest = Update(next(self.registry.versions), snapshot)
        self._deliver(self.latest)
        self.registry.remember(self.key, self.latest)

    async def _read_once(self) -> Snapshot | None:
        self.registry.reads[self.key] += 1
        self.registry.read_at(self.key, asyncio.get_running_loop().time())
        try:
            return await self.read()
        except ReadFailed as exc:
            failure = exc
        except Exception:
            logger.exception("live results: reading %s failed", self.key)
            failure = ReadFailed((503, b'{"detail":"results unavailable"}', []))
        if self.latest is None:
            self.failure = failure
            self._deliver(failure)
        return None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        try:
            if self.latest is not None and self._settled(self.latest):
                return  # nothing about it can change any more: no read needed
            await self._wait_until(self._first_due)
            while self.subscribers:
                snapshot = await self._read_once()
                if snapshot is not None:
                    self.failure = None
                    self._offer(snapshot)
                    if snapshot.final:
                        return
                # The next read is at least one interval after this one was due.
                due = max(due + self.registry.interval, loop.time())
                await self._wait_until(due)
        finally:
            self.registry.forget(self)

    async def _wait_until(self, due: float) -> None:
        """Sleep until `due`, or until the last subscriber leaves."""
        loop = asyncio.get_running_loop()
        while self.subscribers and (delay := due - loop.time()) > 0:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)


class Subscription:
    """A subscriber's place at one poll's publisher."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher
        self.box = Mailbox()
        publisher.join(self.box)

    async def next(self) -> Update:
        return await self.box.take()

    def close(self) -> None:
        """Leave the publisher (idempotent)."""
        self.publisher.leave(self.box)


class LiveResults:
    """The publishers of this process, one per poll being watched."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.reads: Counter[str] = Counter()  # reads per poll key, since start
        self.versions = itertools.count(1)
        self.publishers: dict[str, Publisher] = {}
        # poll key -> (last state, when the next read may be), for the polls read lately
        self.recent: OrderedDict[str, tuple[Update | None, float]] = OrderedDict()

    def read_at(self, key: str, when: float) -> None:
        latest, _ = self.recent.pop(key, (None, 0.0))
        self.recent[key] = (latest, when + self.interval)
        if len(self.recent) > RECENT_POLLS:
            self.recent.popitem(last=False)

    def remember(self, key: str, update: Update) -> None:
        _, due = self.recent.get(key, (None, 0.0))
        self.recent[key] = (update, due)

    def subscribe(self, key: str, read: Reader) -> Subscription:
        """Join the poll's publisher, starting one if none runs; the first state (or the
        failure that stands for it) arrives at once if known, else after the first read."""
        publisher = self.publishers.get(key)
        if publisher is None:
            publisher = self.publishers[key] = Publisher(self, key, read)
        return Subscription(publisher)

    @property
    def subscribers(self) -> int:
        return sum(len(p.subscribers) for p in self.publishers.values())

    def forget(self, publisher: Publisher) -> None:
        if self.publishers.get(publisher.key) is publisher:
            del self.publishers[publisher.key]

    async def close(self) -> None:
        """Stop every publisher and end every stream."""
        publishers = list(self.publishers.values())
        for publisher in publishers:
            publisher.task.cancel()
            publisher._deliver(Stopped())
        await asyncio.gather(*(p.task for p in publishers), return_exceptions=True)
