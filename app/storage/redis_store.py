"""Counts in Redis, sharded over nodes by our ring.

Keys of a poll share its hash tag, so they always live on one node (and one cluster slot):
- `poll:{<poll_id>}`: hash, option -> count;
- `poll:{<poll_id>}:aside`: hash, counts set aside because the poll's hash was unusable
  (another type, or a field that is not a count); reads add it to the poll's counts;
- `poll:{<poll_id>}:options`: set, every option the poll has (the per-poll cap).
`flusher:<id>:hwm` holds a flusher's high-water mark: no TTL, so no eviction policy that
spares keys without one can remove it, and nodes must run `maxmemory-policy noeviction`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

from redis.exceptions import RedisError, ResponseError

from app.core.nodes import NodeSpec
from app.core.redis_manager import RedisManager
from app.storage.base import (
    Applied,
    Batch,
    Counts,
    MarksBehind,
    NodeMisconfigured,
    NodeUnavailable,
    Snapshot,
)
from app.storage.idempotency import (
    APPLY_ONCE_BODY,
    IDEMPOTENCY_TTL,
    claim_key,
    once_args,
)
from app.storage.persistence import forgetful_reason

logger = logging.getLogger("app.redis_store")

T = TypeVar("T")
SAFE_EVICTION_POLICIES = ("noeviction",)

# Adding counts, shared by the scripts below. KEYS[2..] (from KEYS[first_key]) are, for each
# poll, its hash and its aside hash; ARGV[3..] (from ARGV[first_arg]) are, for each poll: n,
# option_1, count_1, ..., option_n, count_n.
# Every key and field is checked before the first write, so a script writes all of its
# counts or nothing: Redis does not undo a script's writes when a later command fails.
ADD_COUNTS = """
local LIMIT = 1000000000000000
local function usable(key, a, n)
  local kind = redis.call('TYPE', key)['ok']
  if kind == 'none' then return true end
  if kind ~= 'hash' then return false end
  for i = 0, n - 1 do
    local v = redis.call('HGET', key, ARGV[a + 2 * i])
    if v and (#v > 15 or not string.match(v, '^%d+$')
              or tonumber(v) + tonumber(ARGV[a + 2 * i + 1]) > LIMIT) then
      return false
    end
  end
  return true
end
local function add_counts(reply, first_key, first_arg)
  local targets = {}
  local a = first_arg or 3
  for k = first_key or 2, #KEYS, 2 do
    local n = tonumber(ARGV[a])
    local target = KEYS[k]
    if not usable(KEYS[k], a + 1, n) then
      if not usable(KEYS[k + 1], a + 1, n) then
        return redis.error_reply('UNUSABLE ' .. KEYS[k] .. ' and its aside key hold no counts')
      end
      target = KEYS[k + 1]
      table.insert(reply, KEYS[k])
    end
    table.insert(targets, {target, a + 1, n})
    a = a + 1 + 2 * n
  end
  for _, t in ipairs(targets) do
    for i = 0, t[3] - 1 do
      redis.call('HINCRBY', t[1], ARGV[t[2] + 2 * i], ARGV[t[2] + 2 * i + 1])
    end
  end
  return reply
end
"""

# A batch. KEYS[1] = the flusher's mark (unused when seq is 0: write-through);
# ARGV[1] = seq, ARGV[2] = prev. Replies {1, polls set aside...}, or {0, mark}: not yet
# (prev is above the mark).
APPLY = (
    ADD_COUNTS
    + """
local seq = tonumber(ARGV[1])
if seq > 0 then
  local mark = tonumber(redis.call('GET', KEYS[1]) or '0')
  if seq <= mark then return {1} end
  if tonumber(ARGV[2]) > mark then return {0, mark} end
end
local reply = add_counts({1})
if reply['err'] then return reply end
if seq > 0 then redis.call('SET', KEYS[1], seq) end
return reply
"""
)

# A request with an Idempotency-Key: app/storage/idempotency.py (per-poll markers).
APPLY_ONCE = ADD_COUNTS + APPLY_ONCE_BODY

# KEYS[1] = poll hash, KEYS[2] = its aside hash, KEYS[3..] = marks. One atomic read.
READ = """
local function counts(key)
  if redis.call('TYPE', key)['ok'] ~= 'hash' then return {} end
  return redis.call('HGETALL', key)
end
local reply = {counts(KEYS[1]), counts(KEYS[2])}
for k = 3, #KEYS do table.insert(reply, redis.call('GET', KEYS[k]) or false) end
return reply
"""

# KEYS[1] = the poll's options set, KEYS[2] = its hash; ARGV[1] = cap, ARGV[2..] = options
# (distinct). A poll stored before the set existed starts from its hash's fields.
REGISTER = """
if redis.call('EXISTS', KEYS[1]) == 0 and redis.call('TYPE', KEYS[2])['ok'] == 'hash' then
  for _, f in ipairs(redis.call('HKEYS', KEYS[2])) do redis.call('SADD', KEYS[1], f) end
end
local new = 0
for i = 2, #ARGV do
  if redis.call('SISMEMBER', KEYS[1], ARGV[i]) == 0 then new = new + 1 end
end
if new > 0 and redis.call('SCARD', KEYS[1]) + new > tonumber(ARGV[1]) then return {0} end
for i = 2, #ARGV do redis.call('SADD', KEYS[1], ARGV[i]) end
return {1, redis.call('SMEMBERS', KEYS[1])}
"""


def poll_key(poll_id: str) -> str:
    return f"poll:{{{poll_id}}}"


def aside_key(poll_id: str) -> str:
    return f"poll:{{{poll_id}}}:aside"


def options_key(poll_id: str) -> str:
    return f"poll:{{{poll_id}}}:options"


def hwm_key(flusher_id: str) -> str:
    return f"flusher:{flusher_id}:hwm"


def _poll_of(key: str) -> str:
    return key[key.index("{") + 1 : key.rindex("}")]


def to_counts(flat: list[Any]) -> dict[str, int]:
    """HGETALL's flat reply; a field that is not a whole number is no count and is skipped."""
    counts: dict[str, int] = {}
    for field, value in zip(flat[::2], flat[1::2], strict=True):
        if isinstance(value, str) and value.isdigit():
            counts[field] = int(value)
    return counts


def reached_node(exc: BaseException) -> bool:
    """False only when the request certainly never left: the connection was never made."""
    if isinstance(exc, ConnectionRefusedError):
        return False
    return not (isinstance(exc, RedisError) and "connecting" in str(exc))


def script_args(batch_counts: Counts) -> tuple[list[str], list[str | int]]:
    keys: list[str] = []
    args: list[str | int] = []
    for poll_id, options in batch_counts.items():
        keys += [poll_key(poll_id), aside_key(poll_id)]
        args.append(len(options))
        for option_id, n in options.items():
            args += [option_id, n]
    return keys, args


def first_refused(batches: list[Batch], replies: list[Any]) -> dict[str, int]:
    """The marks of the flushers whose first batch in the list was refused: its prev (the
    last batch the node confirmed) is above the node's mark, so the node lost data."""
    seen: set[str] = set()
    behind: dict[str, int] = {}
    for batch, reply in zip(batches, replies, strict=True):
        if batch.flusher_id in seen:
            continue
        seen.add(batch.flusher_id)
        if reply[0] == 0 and batch.prev > 0:
            behind[batch.flusher_id] = int(reply[1])
    return behind


def set_aside(replies: list[Any]) -> tuple[str, ...]:
    return tuple(_poll_of(key) for reply in replies for key in reply[1:])


class ShardedRedisStore:
    def __init__(
        self,
        nodes: list[NodeSpec],
        virtual_nodes: int,
        timeout: float,
        tls_ca_file: str = "",
        retiring: list[NodeSpec] | None = None,
        allow_forgetful: bool = False,
    ) -> None:
        self.manager = RedisManager(nodes, virtual_nodes, timeout, tls_ca_file, retiring)
        self.allow_forgetful = allow_forgetful  # a node with no AOF and no replica: warn only
        self.forgetful: dict[str, str] = {}  # node -> why it forgets (accepted, in /health)
        self.marks_per_node = True  # a flusher's mark here is its last batch to this node

    @property
    def nodes(self) -> list[str]:
        return list(self.manager.specs)

    def node_for(self, poll_id: str) -> str:
        return self.manager.node_for(poll_id)

    async def open(self) -> None:
        return None  # connections open on first use, so start-up survives a node that is down

    async def close(self) -> None:
        await self.manager.close()

    async def call(self, node: str, operation: Awaitable[T]) -> T:
        """Run one node call; any failure becomes NodeUnavailable (password-free)."""
        try:
            return await operation
        except (TimeoutError, RedisError, OSError) as exc:
            spec = self.manager.spec(node)
            reason = f"{type(exc).__name__}: {exc}" if isinstance(exc, ResponseError) else ""
            raise NodeUnavailable(
                node,
                spec.safe_url,
                reason or type(exc).__name__,
                maybe_applied=reached_node(exc),
            ) from exc

    async def check_node(self, node: str) -> None:
        client = self.manager.client(node)
        try:
            reply = await self.call(node, client.config_get("maxmemory-policy"))
        except NodeUnavailable as exc:
            if isinstance(exc.__cause__, ResponseError):  # CONFIG renamed or not allowed
                logger.warning("node %s: cannot read its eviction policy (%s)", node, exc)
                return
            raise
        policy = reply.get("maxmemory-policy", "noeviction")
        if policy not in SAFE_EVICTION_POLICIES:
            spec = self.manager.spec(node)
            raise NodeMisconfigured(
                node,
                spec.safe_url,
                f"maxmemory-policy is {policy}, which can evict counts; "
                "set maxmemory-policy noeviction",
            )
        reason = await self.call(node, forgetful_reason(client))
        if reason is None:
            self.forgetful.pop(node, None)
        elif not self.allow_forgetful:
            raise NodeMisconfigured(node, self.manager.spec(node).safe_url, reason)
        elif node not in self.forgetful:
            logger.warning("node %s: %s", node, reason)
            self.forgetful[node] = reason

    async def read(self, poll_id: str, flusher_ids: list[str]) -> Snapshot:
        node = self.node_for(poll_id)
        keys = [poll_key(poll_id), aside_key(poll_id), *map(hwm_key, flusher_ids)]
        client = self.manager.client(node)
        stored, aside, *marks = await self.call(node, client.eval(READ, len(keys), *keys))
        counts = to_counts(stored)
        for option_id, n in to_counts(aside).items():
            counts[option_id] = counts.get(option_id, 0) + n
        applied = {f: int(m or 0) for f, m in zip(flusher_ids, marks, strict=True)}
        return Snapshot(counts, applied)

    async def apply(self, batches: list[Batch]) -> Applied:
        if not batches:
            return Applied()
        node = batches[0].node
        pipe = self.manager.client(node).pipeline(transaction=False)
        for batch in batches:
            keys, args = script_args(batch.counts)
            mark = hwm_key(batch.flusher_id)
            pipe.eval(APPLY, len(keys) + 1, mark, *keys, batch.seq, batch.prev, *args)
        replies = await self.call(node, pipe.execute())
        behind = first_refused(batches, replies)
        if behind:  # the node lost batches it had confirmed (app/services/forgetting.py)
            raise MarksBehind(node, self.manager.spec(node).safe_url, behind)
        if any(reply[0] != 1 for reply in replies):  # only after a failed earlier batch
            spec = self.manager.spec(node)
            raise NodeUnavailable(node, spec.safe_url, "an earlier batch has not landed")
        return Applied(set_aside(replies))

    async def apply_now(self, node: str, counts: Counts) -> Applied:
        keys, args = script_args(counts)
        client = self.manager.client(node)
        script = client.eval(APPLY, len(keys) + 1, keys[0], *keys, 0, 0, *args)
        reply = await self.call(node, script)
        return Applied(set_aside([reply]))

    async def apply_once(self, node: str, key: str, fingerprint: str, counts: Counts) -> str:
        """Apply the polls of `counts` that have no marker of this request yet, with their
        markers, all or nothing (a poll's marker may have come with it from another node
        after a ring change: then only the others are applied)."""
        client = self.manager.client(node)
        pending = dict(counts)
        while pending:
            keys, args = once_args(key, fingerprint, pending)
            reply = await self.call(node, client.eval(APPLY_ONCE, len(keys), *keys, *args))
            if reply[0] != 4:
                return {1: "applied", 2: "replayed", 3: "reused"}[reply[0]]
            marked = {list(pending)[int(i)] for i in reply[1:]}
            pending = {p: c for p, c in pending.items() if p not in marked}
        return "replayed"

    async def claim(self, key: str, fingerprint: str) -> str:
        node = self.node_for(key)
        client = self.manager.client(node)
        claimed = await self.call(
            node, client.set(claim_key(key), fingerprint, nx=True, ex=IDEMPOTENCY_TTL)
        )
        if claimed:
            return "claimed"
        found = await self.call(node, client.get(claim_key(key)))
        return "same" if found == fingerprint else "reused"

    async def register_options(
        self, wanted: dict[str, list[str]], cap: int
    ) -> dict[str, set[str] | None]:
        by_node: dict[str, list[str]] = {}
        for poll_id in wanted:
            by_node.setdefault(self.node_for(poll_id), []).append(poll_id)

        async def register(node: str, polls: list[str]) -> dict[str, set[str] | None]:
            pipe = self.manager.client(node).pipeline(transaction=False)
            for poll_id in polls:
                keys = [options_key(poll_id), poll_key(poll_id)]
                pipe.eval(REGISTER, 2, *keys, cap, *wanted[poll_id])
            replies = await self.call(node, pipe.execute())
            return {
                poll_id: set(reply[1]) if reply[0] == 1 else None
                for poll_id, reply in zip(polls, replies, strict=True)
            }

        found: dict[str, set[str] | None] = {}
        for part in await asyncio.gather(*(register(n, p) for n, p in by_node.items())):
            found.update(part)
        return found

    async def forget_marks(self, node: str, flusher_ids: list[str]) -> None:
        if flusher_ids:
            client = self.manager.client(node)
            await self.call(node, client.delete(*map(hwm_key, flusher_ids)))

    async def ping(self) -> dict[str, bool]:
        return await self.manager.ping_all()

    def describe(self) -> list[tuple[str, str]]:
        return [(label, spec.safe_url) for label, spec in self.manager.specs.items()]
