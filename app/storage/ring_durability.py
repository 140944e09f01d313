"""Durable writes on our ring's nodes: each pipeline of writes ends with `WAIT` (the node's
connected replicas), `WAITAOF` (its own fsync, where it keeps an AOF and knows the command)
and `ROLE`, as app/storage/durability.py says. What a node promises is asked once (`INFO`)
and its connected replicas are relearnt from every round trip's `ROLE`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.storage.durability import (
    DurabilityPolicy,
    ServerPromise,
    asks,
    judge,
    promise_from_info,
    weaker,
)

logger = logging.getLogger("app.redis_store")
PROBE = ("SET", "durable:probe", "1", "PX", 1000)  # a write of our own before each WAIT


class NotDurable(RedisError):
    """The writes ran on the node, which did not confirm them durable in time."""


class RingDurability:
    def __init__(self, policy: DurabilityPolicy | None = None) -> None:
        self.policy = policy or DurabilityPolicy()
        self.promises: dict[str, ServerPromise] = {}  # node label -> what it promises

    async def promise(self, node: str, client: Redis) -> ServerPromise:
        known = self.promises.get(node)
        if known is None or not known.probed:  # new, or its last reply was an error
            known = promise_from_info(await client.info())
            self.promises[node] = known
            for why in weaker(known, self.policy):
                logger.warning("node %s: weaker durability: %s", node, why)
        return known

    async def run(
        self,
        node: str,
        client: Redis,
        commands: Sequence[tuple[Any, ...]],
        raise_on_error: bool = True,
    ) -> list[Any]:
        """The commands' replies, once the node confirmed them durable; else NotDurable
        (raised, or in place of each reply that was not an error)."""
        promise = await self.promise(node, client)
        pipe = client.pipeline(transaction=False)
        waits = asks(promise, self.policy)
        # WAIT covers this connection's writes only; a reply that wrote nothing (a voter
        # found, a key replayed) vouches for another connection's write. Our own small
        # write puts the WAIT behind everything the node ran before it.
        probe = [PROBE] if waits else []
        for args in [*commands, *probe, *waits]:
            pipe.execute_command(*args)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        mine = replies[: len(commands)]
        probed, tail = (
            replies[len(commands) : len(commands) + len(probe)],
            replies[len(mine) + len(probe) :],
        )
        if raise_on_error:
            for reply in [*mine, *probed]:
                if isinstance(reply, Exception):
                    raise reply
        reason = judge(tail, promise, self.policy)
        if reason is None and probed and isinstance(probed[0], Exception):
            reason = f"durability not confirmed: the probe failed: {probed[0]}"
        if reason is None:
            return mine
        if raise_on_error:
            raise NotDurable(f"node {node}: {reason}")
        return [
            r if isinstance(r, Exception) else NotDurable(f"node {node}: {reason}") for r in mine
        ]

    def describe(self) -> dict[str, object]:
        return {
            "wait_ms": self.policy.wait_ms,
            "min_replicas_acked": self.policy.min_replicas,
            "servers": {
                node: {
                    "replicas_connected": p.replicas,
                    "aof": p.aof,
                    "waitaof": p.waitaof,
                    "weaker": weaker(p, self.policy),
                }
                for node, p in sorted(self.promises.items())
            },
        }
