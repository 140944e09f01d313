"""Stage 5: one client per Redis node, chosen for a poll by our hash ring."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from app.core.consistent_hash import HashRing
from app.core.nodes import NodeSpec

logger = logging.getLogger("app.redis_manager")


class RedisManager:
    """Owns the node clients and the ring. Connects lazily: nothing happens at construction.

    Retiring nodes get a client but no place on the ring: polls are only moved off them."""

    def __init__(
        self,
        nodes: list[NodeSpec],
        virtual_nodes: int,
        timeout: float,
        tls_ca_file: str = "",
        retiring: list[NodeSpec] | None = None,
    ) -> None:
        if not nodes:
            raise ValueError("RedisManager needs at least one node")
        self.specs = {spec.label: spec for spec in nodes}
        self.retiring = {spec.label: spec for spec in retiring or []}
        self.ring = HashRing([spec.label for spec in nodes], virtual_nodes)
        # Our flusher retries whole batches itself, so the client must not retry on its own.
        self.clients = {
            spec.label: self._client(spec, timeout, tls_ca_file)
            for spec in [*nodes, *self.retiring.values()]
        }

    def spec(self, label: str) -> NodeSpec:
        """A ring node's or a retiring node's spec."""
        return self.specs.get(label) or self.retiring[label]

    @staticmethod
    def _client(spec: NodeSpec, timeout: float, tls_ca_file: str) -> Redis:
        options: dict[str, Any] = {}
        if spec.tls and tls_ca_file:
            options["ssl_ca_certs"] = tls_ca_file
        return Redis.from_url(
            spec.url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
            **options,
        )

    def node_for(self, poll_id: str) -> str:
        return self.ring.get_node(poll_id)

    def served_via(self, poll_id: str) -> str:
        return self.node_for(poll_id)

    def client(self, label: str) -> Redis:
        return self.clients[label]

    async def ping_all(self) -> dict[str, bool]:
        async def ping(label: str) -> bool:
            try:
                return bool(await self.clients[label].ping())
            except (RedisError, OSError):
                return False

        results = await asyncio.gather(*(ping(label) for label in self.specs))
        return dict(zip(self.specs, results, strict=True))

    async def close(self) -> None:
        for client in self.clients.values():
            await client.aclose()
