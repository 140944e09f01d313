"""The last state read of each poll, shared by the Pushpin publisher and the results
endpoints, with one read in flight per poll: however many requests arrive, an instance reads
a poll's node at most once per `max_age` for them.

Every state has a version that is the same on every instance for the same stored state
(`version_of`), so it serves as the SSE event id through Pushpin.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from app.services.live_results import Reader, Snapshot

RECENT_POLLS = 10_000


def version_of(snapshot: Snapshot) -> int:
    """4 x (the votes counted + the times a words entry was hidden or shown again + the
    times the definition changed), + 2 once closed, + 1 once visible to everyone. The
    counts only grow (votes are never taken back, hides and changes only counted up) and
    revealed results stay revealed. A closed poll opens again only by a reopen, a change of
    the definition: it adds 4 where the close's 2 goes, and after the close only a hide or
    a change alters the state, each adding 4. So a later state always has a higher version,
    and the same state the same version on every instance (the Pushpin publisher publishes
    only a higher version)."""
    moves = snapshot.total + snapshot.moderated + snapshot.redefined
    return moves * 4 + 2 * snapshot.final + (not snapshot.hidden)


def order(state: ReadState) -> tuple[int, int]:
    """Which of two states of a poll id is the later: a later-made poll, then a higher
    version."""
    return state.snapshot.made_at, state.version


@dataclass(frozen=True)
class ReadState:
    snapshot: Snapshot
    version: int
    read_at: float


class ReadStates:
    def __init__(
        self,
        max_age: float,
        max_polls: int = RECENT_POLLS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_age = max_age
        self.max_polls = max_polls
        self.clock = clock
        self.reads = 0  # reads made, since start
        self._states: OrderedDict[str, ReadState] = OrderedDict()
        # key -> (the read in flight, the generation it started in)
        self._reading: dict[str, tuple[asyncio.Future[ReadState], int]] = {}
        self._generation = 0  # moves on every `forget`: older reads are not stored or joined

    def __len__(self) -> int:
        return len(self._states)

    def fresh(self, key: str) -> ReadState | None:
        state = self._states.get(key)
        if state is not None and self.clock() - state.read_at < self.max_age:
            return state
        return None

    def forget(self, key: str) -> None:
        """The state changed here: the next request reads it afresh (not joining, nor
        remembering, a read that started before)."""
        self._generation += 1
        self._states.pop(key, None)

    def put(self, key: str, snapshot: Snapshot) -> ReadState:
        """Remember a state just read; never one behind the one remembered: of the same
        poll a lower version, or one of a poll deleted since (a poll made again with its id
        starts over at a low version)."""
        state = ReadState(snapshot, version_of(snapshot), self.clock())
        known = self._states.pop(key, None)
        if known is not None and order(known) > order(state):
            state = ReadState(known.snapshot, known.version, state.read_at)
        if len(self._states) >= self.max_polls:
            self._states.popitem(last=False)
        self._states[key] = state
        return state

    async def read(self, key: str, reader: Reader) -> ReadState:
        """A state no older than `max_age`: the one remembered, or a new read."""
        state = self.fresh(key)
        return state if state is not None else await self.refresh(key, reader)

    async def refresh(self, key: str, reader: Reader) -> ReadState:
        """Read now, or join the read of this poll already in flight. Raises what the
        reader raises (ReadFailed for an answer such as 404 or 503)."""
        generation = self._generation
        running = self._reading.get(key)
        if running is not None and running[1] == generation:
            return await asyncio.shield(running[0])
        future: asyncio.Future[ReadState] = asyncio.get_running_loop().create_future()
        self._reading[key] = (future, generation)
        try:
            self.reads += 1
            snapshot = await reader()
            if generation == self._generation:
                state = self.put(key, snapshot)
            else:  # something changed meanwhile: answer it, remember nothing
                state = ReadState(snapshot, version_of(snapshot), self.clock())
            future.set_result(state)
            return state
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning without joiners
            raise
        finally:
            if self._reading.get(key, (None, 0))[0] is future:
                del self._reading[key]
