"""One ring at a time: every instance that serves holds a lease for its ring on each node.

Two instances started at once with different rings would both serve and put the same
poll's votes on two owners. So a start takes, on every node of its ring (and the retiring
ones), in one script per node, a lease for its ring's digest, which that script refuses
while another ring's lease is alive there. Nodes are taken in one fixed order (by URL), so
of two starts that race, the first to reach the first node they share wins it, and the
other refuses. A serving instance renews its leases (every third of their length) and lets
them go at a clean stop; a killed one's expire by themselves. Time is the node's (`TIME` in
the script), never the service's, so a stepped or skewed service clock changes nothing.

Each node also keeps `ring:served`, the digests of every ring that has held a lease there
since the last complete move (`Mover.record` resets it). A start that finds there a ring
that is neither its own nor the recorded one (two rings served at once: a lease lapsed in a
long stall) moves every poll to its owner, whatever `ring:config` says; so does a start on
a node that records a ring but no such set (nodes from before leases: a split then went
unrecorded), once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from app.core.redis_manager import RedisManager
from app.storage.base import NodeUnavailable

logger = logging.getLogger("app.ring_lease")

LEASES_KEY = "ring:leases"  # hash: instance id -> "<digest> <expiry, node ms>"
SERVED_KEY = "ring:served"  # set: digests of rings that held a lease since the last move

# KEYS[1] = LEASES_KEY, KEYS[2] = SERVED_KEY; ARGV[1] = instance id, ARGV[2] = digest,
# ARGV[3] = lease length in ms, ARGV[4] = '1' on a ring node (a retiring one, being emptied,
# keeps no SERVED_KEY). Replies {1, served digests..., "?" when the set was absent} when the
# lease is taken (or renewed; just {1} on a retiring node), {0, other digest, ms it has
# left} when another ring's lease is alive.
ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local holder, value = all[i], all[i + 1]
  local space = string.find(value, ' ', 1, true)
  local digest = space and string.sub(value, 1, space - 1) or ''
  local expiry = space and tonumber(string.sub(value, space + 1)) or 0
  if expiry <= now then
    redis.call('HDEL', KEYS[1], holder)
  elseif digest ~= ARGV[2] and holder ~= ARGV[1] then
    return {0, digest, expiry - now}
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. (now + tonumber(ARGV[3])))
if ARGV[4] ~= '1' then return {1} end
local absent = redis.call('EXISTS', KEYS[2]) == 0
redis.call('SADD', KEYS[2], ARGV[2])
local reply = redis.call('SMEMBERS', KEYS[2])
table.insert(reply, 1, 1)
if absent then table.insert(reply, '?') end
return reply
"""

# KEYS[1] = SERVED_KEY; ARGV[1] = digest: after a complete move, only this ring has served.
SETTLE = """
redis.call('DEL', KEYS[1])
redis.call('SADD', KEYS[1], ARGV[1])
return 1
"""


class RingClaimed(Exception):
    """Another ring's lease is alive on a node of this one: another instance serves (or
    just served) a different ring."""


def digest(config: str) -> str:
    """A short name for a `ring_config` value."""
    return hashlib.sha256(config.encode()).hexdigest()[:16]


@dataclass
class RingLease:
    """This instance's leases on the nodes of its ring."""

    manager: RedisManager
    call: Callable[[str, Awaitable[Any]], Awaitable[Any]]
    config: str  # `ring_config` of the ring this instance serves
    seconds: float = 5.0
    on_lost: Callable[[str], None] = lambda reason: None
    instance: str = field(default_factory=lambda: uuid.uuid4().hex)
    # What each node answered at the last acquire: the rings served there since the last
    # complete move, or None where it kept no such record.
    served: dict[str, set[str] | None] = field(default_factory=dict)
    # Monotonic time until which this instance's leases are surely alive: the start of the
    # last round that took every answering node, plus one lease (the monotonic clock runs
    # on through a SIGSTOP, so a stalled process sees at once that it may have lost them).
    valid_until: float = 0.0
    lost: str | None = None  # why another ring holds a node of this one now
    _task: asyncio.Task[None] | None = None
    _round: asyncio.Task[tuple[str, str, int] | None] | None = None  # one `confirm` at a time

    @property
    def digest(self) -> str:
        return digest(self.config)

    @property
    def nodes(self) -> list[str]:
        """Ring and retiring nodes, in the one order every instance takes them in."""
        specs = {**self.manager.specs, **self.manager.retiring}
        return sorted(specs, key=lambda label: (specs[label].safe_url, label))

    async def _acquire(self, node: str) -> list[Any]:
        client = self.manager.client(node)
        ms = str(int(self.seconds * 1000))
        on_ring = "1" if node in self.manager.specs else "0"
        keys_and_args = (LEASES_KEY, SERVED_KEY, self.instance, self.digest, ms, on_ring)
        operation = client.eval(ACQUIRE, 2, *keys_and_args)
        reply: list[Any] = await self.call(node, operation)
        return [r.decode() if isinstance(r, bytes) else r for r in reply]

    async def acquire(self, wait: float | None = None) -> None:
        """Take the lease on every node that answers (a node that is down is skipped: it
        holds no votes of this ring until it answers, and a renewal takes it then). Waits
        up to `wait` (default: one lease length) for another ring's lease to run out, as a
        killed instance's does; then raises RingClaimed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.seconds if wait is None else wait)
        while True:
            refused = await self._acquire_all()
            if refused is None:
                return
            await self.release()
            node, other, left_ms = refused
            if loop.time() + left_ms / 1000 > deadline:
                raise RingClaimed(
                    f"node {node} is held by an instance serving another ring ({other}, this "
                    f"one is {self.digest}; its lease ends in {left_ms / 1000:.1f} s unless "
                    "renewed): start every instance with the same REDIS_NODES, VIRTUAL_NODES "
                    "and REDIS_RETIRING_NODES, and stop the old ones before a ring change"
                )
            await asyncio.sleep(min(left_ms / 1000, self.seconds) + 0.05)  # the lease's end

    async def _acquire_all(self) -> tuple[str, str, int] | None:
        started = time.monotonic()
        for node in self.nodes:
            try:
                reply = await self._acquire(node)
            except NodeUnavailable:
                continue
            if reply[0] == 0:
                return node, str(reply[1]), int(reply[2])
            if node in self.manager.specs:
                digests = {str(d) for d in reply[1:]}
                self.served[node] = None if "?" in digests else digests
        self.valid_until = started + self.seconds
        return None

    async def confirm(self) -> bool:
        """Whether this instance may still write under its ring (the flusher asks before
        each flush). A lease younger than two thirds of its length counts as held (renewals
        run every third); an older one (the event loop stalled, a SIGSTOP, renewals that
        fail) is renewed first, so an instance that wakes after another ring took its
        nodes writes nothing more by its old ring. What remains: a stall of more than a
        third of a lease between this check and the write reaching the node."""
        if self.lost is not None:
            return False
        if time.monotonic() < self.valid_until - self.seconds / 3:
            return True
        if self._round is None or self._round.done():  # callers waiting together share it
            self._round = asyncio.create_task(self._acquire_all(), name="ring-lease-confirm")
        refused = await asyncio.shield(self._round)
        if refused is not None:
            self._lose(refused)
        return self.lost is None

    def _lose(self, refused: tuple[str, str, int]) -> None:
        if self.lost is None:
            node, other, _ = refused
            self.lost = f"node {node} is now held by an instance serving another ring ({other})"
            self.on_lost(self.lost)

    def split(self, recorded: dict[str, str | None]) -> bool:
        """Whether polls may sit on a non-owner that `ring:config` does not explain: a node
        served a ring that is neither this one nor a recorded one since the last move, or
        records a ring but kept no list of the rings that served (from before leases).
        `recorded` is each node's `ring:config` (None where there is none)."""
        known = {self.digest} | {digest(r) for r in recorded.values() if r is not None}
        for node, served in self.served.items():
            if served is None and recorded.get(node) is not None:
                return True
            if served is not None and served - known:
                return True
        return False

    def start(self) -> None:
        """Renew the leases every third of their length while serving."""
        self._task = asyncio.create_task(self._renew(), name="ring-lease")

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.seconds / 3)
            refused = await self._acquire_all()
            if refused is not None:
                self._lose(refused)
                return

    async def release(self) -> None:
        """Let the leases go (a clean stop, or a start that lost the race)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._round is not None and not self._round.done():  # else it takes them again
            with contextlib.suppress(Exception):
                await self._round
        for node in self.nodes:
            with contextlib.suppress(NodeUnavailable):
                await self.call(node, self.manager.client(node).hdel(LEASES_KEY, self.instance))
