"""Counts in Redis, sharded over nodes by our ring. One hash per poll: `poll:{<poll_id>}`."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

from redis.exceptions import RedisError

from app.core.nodes import NodeSpec
from app.core.redis_manager import RedisManager
from app.storage.base import Batch, NodeUnavailable, Snapshot

T = TypeVar("T")
HWM_TTL_SECONDS = 30 * 24 * 3600

# KEYS[1] = the flusher's high-water-mark key, KEYS[2..] = poll hashes.
# ARGV = seq, ttl, then per poll: n, option_1, count_1, ..., option_n, count_n.
# The seq check and the increments run as one atomic script: a retried batch is a no-op.
APPLY_BATCH = """
local hwm = tonumber(redis.call('GET', KEYS[1]) or '0')
local seq = tonumber(ARGV[1])
if seq <= hwm then return 0 end
local a = 3
for k = 2, #KEYS do
  local n = tonumber(ARGV[a])
  a = a + 1
  for _ = 1, n do
    redis.call('HINCRBY', KEYS[k], ARGV[a], ARGV[a + 1])
    a = a + 2
  end
end
redis.call('SET', KEYS[1], seq, 'EX', ARGV[2])
return 1
"""


def poll_key(poll_id: str) -> str:
    return f"poll:{{{poll_id}}}"


def hwm_key(flusher_id: str) -> str:
    return f"flusher:{flusher_id}:hwm"


class ShardedRedisStore:
    def __init__(
        self, nodes: list[NodeSpec], virtual_nodes: int, timeout: float, tls_ca_file: str = ""
    ) -> None:
        self.manager = RedisManager(nodes, virtual_nodes, timeout, tls_ca_file)

    @property
    def nodes(self) -> list[str]:
        return list(self.manager.specs)

    def node_for(self, poll_id: str) -> str:
        return self.manager.node_for(poll_id)

    async def open(self) -> None:
        return None  # connections open on first use, so start-up survives a node that is down

    async def close(self) -> None:
        await self.manager.close()

    async def _call(self, node: str, operation: Awaitable[T]) -> T:
        try:
            return await operation
        except (TimeoutError, RedisError, OSError) as exc:
            spec = self.manager.specs[node]
            raise NodeUnavailable(node, spec.safe_url, type(exc).__name__) from exc

    async def read(self, poll_id: str, flusher_ids: list[str]) -> Snapshot:
        node = self.node_for(poll_id)
        pipe = self.manager.client(node).pipeline(transaction=True)
        pipe.hgetall(poll_key(poll_id))
        for flusher_id in flusher_ids:
            pipe.get(hwm_key(flusher_id))
        counts, *marks = await self._call(node, pipe.execute())
        applied = {f: int(m or 0) for f, m in zip(flusher_ids, marks, strict=True)}
        return Snapshot({k: int(v) for k, v in counts.items()}, applied)

    async def apply(self, batches: list[Batch]) -> None:
        if not batches:
            return
        node = batches[0].node
        pipe = self.manager.client(node).pipeline(transaction=False)
        for batch in batches:
            keys = [hwm_key(batch.flusher_id)]
            args: list[str | int] = [batch.seq, HWM_TTL_SECONDS]
            for poll_id, options in batch.counts.items():
                keys.append(poll_key(poll_id))
                args.append(len(options))
                for option_id, n in options.items():
                    args += [option_id, n]
            pipe.eval(APPLY_BATCH, len(keys), *keys, *args)
        await self._call(node, pipe.execute())

    async def increment(self, poll_id: str, option_id: str) -> None:
        node = self.node_for(poll_id)
        await self._call(node, self.manager.client(node).hincrby(poll_key(poll_id), option_id, 1))

    async def ping(self) -> dict[str, bool]:
        return await self.manager.ping_all()

    def describe(self) -> list[tuple[str, str]]:
        return [(label, spec.safe_url) for label, spec in self.manager.specs.items()]
