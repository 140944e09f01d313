"""Live results: one publisher per poll reads the results once per interval and writes each
new state, encoded once, to every subscriber's transport from one loop (the broadcaster).

No task runs per subscriber per event: a subscriber is a transport (anything with `write`
and `get_write_buffer_size`, see `Sink`) and a future that its stream's task awaits until
the stream ends. One timer per poll (the publisher's own loop) also sends the heartbeat.

Every event is the whole state, so a subscriber whose write buffer is over
`buffer_bound` skips states: it gets the newest one once it has drained. One that stays
over the bound past `stall_seconds` is closed. A poll whose state is empty (an ad-hoc poll
with no votes) is read every `empty_interval` seconds rather than every interval.

Tables are bounded: `recent` and `reads` keep the last `RECENT_POLLS` polls; publishers
leave with their last subscriber."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Protocol

from app.services.event_frames import PING_CHUNK, chunk, sse_frame
from app.services.recent_polls import RECENT_POLLS, BoundedCounter
from app.services.stream_caps import StreamCaps

logger = logging.getLogger("app.live_results")
HEARTBEAT_SECONDS = 15.0  # a `: ping` comment this often keeps proxies from closing a stream
FINAL_RETRY_MS = 24 * 3600 * 1000  # `retry:` of the final event: EventSource waits a day
# How a stream ended (the result of its `done` future):
END = "end"  # the final state was written, or the service is stopping: end the response
STALLED = "stalled"  # over the buffer bound too long: close the connection
LEFT = "left"  # the client went away


@dataclass(frozen=True)
class Snapshot:
    """One read of a poll's results."""

    body: bytes  # exactly what the poll's results endpoint answers
    signature: Hashable  # equal signatures: nothing a subscriber sees has changed
    total: int  # never goes backwards for a subscriber
    final: bool = False  # nothing will change any more; the stream ends after it
    hidden: bool = False  # only the organiser may see it
    empty: bool = False  # no such poll yet (an ad-hoc poll without votes)
    moderated: int = 0  # words entries hidden or shown again so far: only grows
    redefined: int = 0  # definition changes so far (a PATCH, a reopen): only grows
    made_at: int = 0  # a defined poll's created_at: one made again with its id starts over


@dataclass(frozen=True)
class Update:
    version: int  # increases with every new state, across all polls of this process
    snapshot: Snapshot

    def chunk(self) -> bytes:
        """The event as one HTTP/1.1 chunk; the final one tells EventSource not to return."""
        retry = FINAL_RETRY_MS if self.snapshot.final else None
        return chunk(sse_frame(self.version, self.snapshot.body, retry))


class ReadFailed(Exception):
    """A read that could not give results; `reply` is the (status, body, headers) to answer
    a subscriber that has no state yet."""

    def __init__(self, reply: tuple[int, bytes, list[tuple[bytes, bytes]]]) -> None:
        super().__init__(reply[1].decode(errors="replace"))
        self.reply = reply


class Stopped(Exception):
    """The service is stopping: the stream ends."""


class Sink(Protocol):
    """A subscriber's connection: an asyncio transport, or a stand-in for one."""

    def write(self, data: bytes) -> None: ...

    def get_write_buffer_size(self) -> int: ...


Reader = Callable[[], Awaitable[Snapshot]]


class Lag:
    """A subscriber over the buffer bound: since when, and whether it missed a state."""

    __slots__ = ("missed", "since")

    def __init__(self, since: float) -> None:
        self.since = since
        self.missed = False


class Publisher:
    """Reads one poll every `interval` seconds while it has subscribers, and writes."""

    def __init__(self, registry: LiveResults, key: str, read: Reader) -> None:
        self.registry = registry
        self.key = key
        self.read = read
        self.waiting: set[asyncio.Future[Update]] = set()  # joined, not attached yet
        self.sinks: dict[Sink, asyncio.Future[str]] = {}  # -> its stream's end (Outcome)
        self.behind: dict[Sink, Lag] = {}
        self.failure: ReadFailed | None = None  # the last read failed and nothing was read yet
        # A publisher that follows an earlier one of the same poll starts from its last
        # state and reads one interval after it did: subscribers who come and go (or
        # reconnect in a loop) never make more than one read per interval.
        self.latest, self._first_due = registry.recent.get(key, (None, 0.0))
        loop = asyncio.get_running_loop()
        stale = loop.time() >= self._first_due
        if self.latest is not None and not self._settled(self.latest) and stale:
            self.latest = None  # older than an interval: read afresh before answering
        self.frame = b""
        if self.latest is not None:
            self.frame = self.latest.chunk()
            registry.note_empty(key, self.latest.snapshot.empty)
        self._next_ping = loop.time() + registry.heartbeat
        self._wake = asyncio.Event()
        self.task = asyncio.create_task(self._run(), name=f"live results {key}")

    @staticmethod
    def _settled(update: Update) -> bool:
        """Final and visible: a closed poll's results never change, nor does their
        visibility once shown (a hidden one may still be revealed)."""
        return update.snapshot.final and not update.snapshot.hidden

    @property
    def subscribers(self) -> int:
        return len(self.waiting) + len(self.sinks)

    def join(self) -> asyncio.Future[Update]:
        """A future for the first state (or the failure that stands for it)."""
        first: asyncio.Future[Update] = asyncio.get_running_loop().create_future()
        if self.latest is not None:
            first.set_result(self.latest)
        elif self.failure is not None:
            first.set_exception(self.failure)
        self.waiting.add(first)
        return first

    def attach(self, joined: asyncio.Future[Update], sink: Sink, done: asyncio.Future[str]) -> None:
        """Write the first state (and anything newer) to `sink`, and from now on every new
        state; `done` is resolved when the stream is over."""
        self.waiting.discard(joined)
        first = joined.result()
        sink.write(first.chunk())
        latest = self.latest
        if latest is not None and latest.version > first.version:
            sink.write(self.frame)
            first = latest
        if first.snapshot.final:
            done.set_result(END)
            return
        self.sinks[sink] = done
        if sink.get_write_buffer_size() > self.registry.buffer_bound:
            self.behind[sink] = Lag(asyncio.get_running_loop().time())

    def leave(self, first: asyncio.Future[Update], sink: Sink | None) -> None:
        self.waiting.discard(first)
        if sink is not None:
            self.sinks.pop(sink, None)
            self.behind.pop(sink, None)
        if not self.subscribers:
            self.registry.forget(self)  # a newcomer from now on starts a new publisher
            self._wake.set()  # stop now rather than at the end of the interval

    def _answer_waiting(self, result: Update | Exception) -> None:
        for first in self.waiting:
            if first.done():
                continue
            if isinstance(result, Exception):
                first.set_exception(result)
            else:
                first.set_result(result)

    def _broadcast(self, data: bytes, now: float) -> None:
        """`data` to every subscriber under the bound; the rest skip it (and are noted)."""
        bound = self.registry.buffer_bound
        behind = self.behind
        for sink in list(self.sinks):
            try:
                if sink.get_write_buffer_size() > bound:
                    lag = behind.get(sink)
                    if lag is None:
                        lag = behind[sink] = Lag(now)
                    lag.missed = lag.missed or data is not PING_CHUNK
                    continue
                sink.write(data)
                if behind:
                    behind.pop(sink, None)
            except (OSError, RuntimeError):  # a transport closed under us
                self._end(sink, abort=True)

    def _catch_up(self, now: float) -> None:
        """Subscribers that drained get the newest state; ones stalled too long are closed."""
        bound = self.registry.buffer_bound
        for sink, lag in list(self.behind.items()):
            if sink.get_write_buffer_size() <= bound:
                del self.behind[sink]
                if lag.missed:
                    sink.write(self.frame)
            elif now - lag.since > self.registry.stall_seconds:
                logger.info("live results: closing a subscriber of %s stalled", self.key)
                self._end(sink, abort=True)

    def _end(self, sink: Sink, abort: bool) -> None:
        done = self.sinks.pop(sink, None)
        self.behind.pop(sink, None)
        if done is not None and not done.done():
            done.set_result(STALLED if abort else END)

    def end_all(self) -> None:
        for sink in list(self.sinks):
            self._end(sink, abort=False)

    def _offer(self, snapshot: Snapshot, now: float) -> None:
        """Publish a state that differs from the last one, never one behind it."""
        latest = self.latest
        self.registry.note_empty(self.key, snapshot.empty)
        if latest is not None:
            if snapshot.total < latest.snapshot.total:
                return  # an older state than one already sent
            if snapshot.signature == latest.snapshot.signature:
                self.latest = Update(latest.version, snapshot)  # same to the eye; keep it new
                self.registry.remember(self.key, self.latest)
                return
        self.latest = Update(next(self.registry.versions), snapshot)
        self.frame = self.latest.chunk()
        self.registry.remember(self.key, self.latest)
        self._answer_waiting(self.latest)
        self._broadcast(self.frame, now)
        if snapshot.final:
            for sink in self.behind:
                sink.write(self.frame)  # the last state reaches everyone, however slow
            self.end_all()

    async def _read_once(self) -> Snapshot | None:
        self.registry.reads.add(self.key)
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
            self._answer_waiting(failure)
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
                now = loop.time()
                if snapshot is not None:
                    self.failure = None
                    self._offer(snapshot, now)
                    if snapshot.final:
                        return
                if self.behind:
                    self._catch_up(now)
                if now >= self._next_ping:
                    self._next_ping = now + self.registry.heartbeat
                    self._broadcast(PING_CHUNK, now)
                # The next read is at least one interval after this one was due.
                empty = self.latest is not None and self.latest.snapshot.empty
                interval = self.registry.empty_interval if empty else self.registry.interval
                due = max(due + interval, now)
                await self._wait_until(due)
        finally:
            self.registry.forget(self)

    async def _wait_until(self, due: float) -> None:
        """Sleep until `due`, or until the last subscriber leaves."""
        loop = asyncio.get_running_loop()
        while self.subscribers and (delay := due - loop.time()) > 0:
            self._wake.clear()
            timer = loop.call_later(delay, self._wake.set)  # no task per wait
            try:
                await self._wake.wait()
            finally:
                timer.cancel()


class Subscription:
    """A subscriber's place at one poll's publisher."""

    __slots__ = ("_closed", "_first", "client", "publisher", "sink")

    def __init__(self, publisher: Publisher, client: str) -> None:
        self.publisher = publisher
        self.client = client
        self.sink: Sink | None = None
        self._closed = False
        self._first = publisher.join()

    async def first(self) -> Update:
        """The state to answer with; raises ReadFailed or Stopped."""
        return await self._first

    def attach(self, sink: Sink, done: asyncio.Future[str]) -> None:
        """Start writing to `sink` (once `first` has answered)."""
        self.sink = sink
        self.publisher.attach(self._first, sink, done)

    def close(self) -> None:
        """Leave the publisher (idempotent)."""
        if not self._closed:
            self._closed = True
            self.publisher.leave(self._first, self.sink)
            self.publisher.registry.caps.give(self.client)


class LiveResults:
    """The publishers of this process, one per poll being watched."""

    def __init__(
        self,
        interval: float,
        *,
        heartbeat: float = HEARTBEAT_SECONDS,
        buffer_bound: int = 64 * 1024,
        stall_seconds: float = 30.0,
        empty_interval: float | None = None,
        max_empty_polls: int = 100,
        caps: StreamCaps | None = None,
    ) -> None:
        self.interval = interval
        self.heartbeat = heartbeat
        self.buffer_bound = buffer_bound
        self.stall_seconds = stall_seconds
        self.empty_interval = max(interval, empty_interval or 5.0)
        self.max_empty_polls = max_empty_polls
        self.caps = caps or StreamCaps(total=0, per_client=0)
        self.reads = BoundedCounter()  # reads per poll key (the last RECENT_POLLS keys)
        self.versions = itertools.count(1)
        self.publishers: dict[str, Publisher] = {}
        self.empty: set[str] = set()  # keys of publishers whose poll has no state yet
        # poll key -> (last state, when the next read may be), for the polls read lately
        self.recent: OrderedDict[str, tuple[Update | None, float]] = OrderedDict()

    def read_at(self, key: str, when: float) -> None:
        latest, _ = self.recent.pop(key, (None, 0.0))
        self.recent[key] = (latest, when + self.interval)
        if len(self.recent) > RECENT_POLLS:
            self.recent.popitem(last=False)

    def remember(self, key: str, update: Update) -> None:
        if key in self.recent:
            self.recent[key] = (update, self.recent[key][1])

    def note_empty(self, key: str, empty: bool) -> None:
        if empty:
            self.empty.add(key)
        else:
            self.empty.discard(key)

    def too_many_empty(self, key: str) -> bool:
        """Past `max_empty_polls` watched polls without a state, a new one is refused."""
        return key in self.empty and len(self.empty) > self.max_empty_polls

    def subscribe(self, key: str, read: Reader, client: str = "") -> Subscription:
        """Join the poll's publisher, starting one if none runs; the first state (or the
        failure that stands for it) arrives at once if known, else after the first read.
        Raises `StreamsFull` past a cap."""
        self.caps.take(client)
        publisher = self.publishers.get(key)
        if publisher is None:
            publisher = self.publishers[key] = Publisher(self, key, read)
        return Subscription(publisher, client)

    @property
    def subscribers(self) -> int:
        return self.caps.held

    def forget(self, publisher: Publisher) -> None:
        if self.publishers.get(publisher.key) is publisher:
            del self.publishers[publisher.key]
            self.empty.discard(publisher.key)

    async def close(self) -> None:
        """Stop every publisher and end every stream."""
        publishers = list(self.publishers.values())
        for publisher in publishers:
            publisher.task.cancel()
            publisher._answer_waiting(Stopped())
            publisher.end_all()
        await asyncio.gather(*(p.task for p in publishers), return_exceptions=True)
