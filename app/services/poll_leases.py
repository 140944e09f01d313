"""Leases on a poll's node that elect one publisher per poll across all instances.

Keys, under the poll's hash tag (so a cluster keeps them in the poll's slot):
- `grip:{<id>}:<kind>:lease`: the instance that publishes the poll (`SET NX PX`, renewed);
- `grip:{<id>}:<kind>:watched`: set by every stream request that comes through Pushpin,
  with a TTL; when it has expired nobody is watching and the publisher stops;
- `grip:{<id>}:<kind>:published`: the highest state version published. A version is
  published only by the lease's holder and only once (`claim`), so two instances never
  publish the same state even while a lease changes hands.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from app.storage.defined import NodeClients

NOBODY, FOLLOWER, LEADER = 0, 1, 2
PUBLISHED_TTL_MS = 24 * 3600 * 1000
MEMORY_KEYS = 30_000  # MemoryPollLeases prunes expired keys past this many


def lease_keys(poll_id: str, kind: str) -> list[str]:
    base = f"grip:{{{poll_id}}}:{kind}"
    return [f"{base}:lease", f"{base}:watched", f"{base}:published"]


# KEYS = lease, watched; ARGV = owner, ttl ms. NOBODY (and the lease let go), FOLLOWER, LEADER.
HOLD = """
if redis.call('EXISTS', KEYS[2]) == 0 then
  if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
  return 0
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 2
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 2 end
return 1
"""

# KEYS = lease, published; ARGV = owner, version, ttl ms, made (the poll's created_at). 1:
# this owner publishes `version`. `published` holds "<made>:<version>" (or a bare version:
# made 0); a poll made again with a deleted one's id (made later) starts over at low versions.
CLAIM = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local made, version = tonumber(ARGV[4]), tonumber(ARGV[2])
local last = redis.call('GET', KEYS[2])
if last then
  local m, v = string.match(last, '^(%d+):(%d+)$')
  if not m then m, v = '0', last end
  m, v = tonumber(m), tonumber(v)
  if m > made or (m == made and v >= version) then return 0 end
end
redis.call('SET', KEYS[2], ARGV[4] .. ':' .. ARGV[2], 'PX', ARGV[3])
return 1
"""


class PollLeases(Protocol):
    async def hold(self, poll_id: str, kind: str, owner: str, ttl_ms: int) -> int:
        """Take or renew the lease while someone watches: NOBODY, FOLLOWER or LEADER."""
        ...

    async def claim(self, poll_id: str, kind: str, owner: str, version: int, made: int = 0) -> bool:
        """True once per version, for the lease's holder, if no higher one was published
        for a poll made at `made` (a defined poll's created_at) or later."""
        ...

    async def watch(self, poll_id: str, kind: str, ttl_ms: int) -> None:
        """Somebody streams the poll through Pushpin: watched for `ttl_ms` more."""
        ...


class RedisPollLeases:
    """The leases on the poll's node: our ring's node or the cluster's master for its slot."""

    def __init__(
        self, clients: NodeClients, call: Callable[[str, Awaitable[Any]], Awaitable[Any]]
    ) -> None:
        self.clients = clients
        self.call = call

    async def _eval(self, poll_id: str, script: str, keys: list[str], *args: str) -> Any:
        node = self.clients.node_for(poll_id)
        client = self.clients.client(node)
        return await self.call(node, client.eval(script, len(keys), *keys, *args))

    async def hold(self, poll_id: str, kind: str, owner: str, ttl_ms: int) -> int:
        lease, watched, _ = lease_keys(poll_id, kind)
        return int(await self._eval(poll_id, HOLD, [lease, watched], owner, str(ttl_ms)))

    async def claim(self, poll_id: str, kind: str, owner: str, version: int, made: int = 0) -> bool:
        lease, _, published = lease_keys(poll_id, kind)
        args = (owner, str(version), str(PUBLISHED_TTL_MS), str(made))
        return bool(await self._eval(poll_id, CLAIM, [lease, published], *args))

    async def watch(self, poll_id: str, kind: str, ttl_ms: int) -> None:
        _, watched, _ = lease_keys(poll_id, kind)
        node = self.clients.node_for(poll_id)
        await self.call(node, self.clients.client(node).set(watched, "1", px=ttl_ms))


class MemoryPollLeases:
    """The same rules in this process, for the in-memory store (one instance)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._values: dict[str, tuple[str, float]] = {}  # key -> (value, expires at)

    def _get(self, key: str) -> str | None:
        found = self._values.get(key)
        if found is None or found[1] <= self.clock():
            self._values.pop(key, None)
            return None
        return found[0]

    def _set(self, key: str, value: str, ttl_ms: int) -> None:
        if len(self._values) >= MEMORY_KEYS:  # drop what has expired: memory stays bounded
            now = self.clock()
            self._values = {k: v for k, v in self._values.items() if v[1] > now}
        self._values[key] = (value, self.clock() + ttl_ms / 1000)

    async def hold(self, poll_id: str, kind: str, owner: str, ttl_ms: int) -> int:
        lease, watched, _ = lease_keys(poll_id, kind)
        holder = self._get(lease)
        if self._get(watched) is None:
            if holder == owner:
                del self._values[lease]
            return NOBODY
        if holder in (None, owner):
            self._set(lease, owner, ttl_ms)
            return LEADER
        return FOLLOWER

    async def claim(self, poll_id: str, kind: str, owner: str, version: int, made: int = 0) -> bool:
        lease, _, published = lease_keys(poll_id, kind)
        last = self._get(published)
        if self._get(lease) != owner:
            return False
        if last is not None and tuple(map(int, last.split(":"))) >= (made, version):
            return False
        self._set(published, f"{made}:{version}", PUBLISHED_TTL_MS)
        return True

    async def watch(self, poll_id: str, kind: str, ttl_ms: int) -> None:
        _, watched, _ = lease_keys(poll_id, kind)
        self._set(watched, "1", ttl_ms)
