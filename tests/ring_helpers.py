"""What the ring-change tests share: a mover the test can hold at any node call (`Gate`,
`GatedMover`), a service on chosen nodes with that mover (`make_service`), poll ids placed
on chosen owners under several rings (`find_poll`), and the counts a node holds."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import redis

from app.core.consistent_hash import HashRing
from app.core.nodes import NodeSpec
from app.devtools.local_nodes import LocalNode
from app.services.defined_polls import DefinedPolls
from app.services.polling_service import PollingService
from app.storage.defined import PollDefinition
from app.storage.mover import Mover
from app.storage.redis_store import ShardedRedisStore
from tests.conftest import moving_service

T = TypeVar("T")


class Gate:
    """A point in a node call where the test holds the mover: `reached` is set when it
    gets there, and it waits for `go`."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self.go = asyncio.Event()

    async def hold(self) -> None:
        self.reached.set()
        await self.go.wait()


class GatedMover(Mover):
    """The real mover; `before[(node, step, n)]` holds the n-th call (1-based) of that step
    on that node before it runs, `after[...]` once its reply is in; `before[(None, step, 0)]`
    holds every call of that step."""

    def __init__(self, mover: Mover) -> None:
        super().__init__(mover.manager, mover.call, mover.group)
        self.before: dict[tuple[str | None, str, int], Gate] = {}
        self.after: dict[tuple[str | None, str, int], Gate] = {}
        self.calls: dict[tuple[str, str], int] = {}

    async def run(self, node: str, step: str, operation: Awaitable[T]) -> T:
        n = self.calls[(node, step)] = self.calls.get((node, step), 0) + 1
        for key in ((node, step, n), (None, step, 0)):
            if key in self.before:
                try:
                    await self.before[key].hold()
                except asyncio.CancelledError:
                    if asyncio.iscoroutine(operation):
                        operation.close()
                    raise
        result = await super().run(node, step, operation)
        if (node, step, n) in self.after:
            await self.after[(node, step, n)].hold()
        return result


def make_service(
    nodes: dict[str, LocalNode],
    labels: list[str],
    retiring: list[str] = (),  # type: ignore[assignment]
) -> tuple[PollingService, DefinedPolls, GatedMover]:
    specs = [NodeSpec(label, nodes[label].url) for label in labels]
    old = [NodeSpec(label, nodes[label].url) for label in retiring]
    store = ShardedRedisStore(specs, 100, 2.0, retiring=old)
    mover = GatedMover(Mover(store.manager, store.call))
    service, defined = moving_service(store, mover)
    return service, defined, mover


async def serving_with_votes(
    nodes: dict[str, LocalNode], labels: list[str], poll_id: str, votes: int
) -> PollingService:
    """A started service on the ring of `labels`, that ring recorded, and `votes` votes for
    option A of the ad-hoc poll flushed to its owner; the caller stops (or kills) it."""
    service, _, _ = make_service(nodes, labels)
    await service.start()
    assert service.migration is not None
    await service.migration.wait()
    await service.register({poll_id: ["A"]})
    for _ in range(votes):
        service.vote(poll_id, "A")
    assert await service.flusher.flush()
    return service


def find_poll(prefix: str, owners: list[tuple[list[str], str]]) -> str:
    """A poll id whose owner under each ring (labels) is the one given."""
    rings = [(HashRing(labels, 100), owner) for labels, owner in owners]
    for i in range(100_000):
        poll_id = f"{prefix}{i}"
        if all(ring.get_node(poll_id) == owner for ring, owner in rings):
            return poll_id
    raise AssertionError("no such poll")


def counts_on(node: LocalNode, poll_id: str) -> dict[str, int]:
    with redis.Redis(port=node.port, decode_responses=True) as client:
        return {k: int(v) for k, v in client.hgetall(f"poll:{{{poll_id}}}").items()}


def definition(poll_id: str) -> PollDefinition:
    return PollDefinition(poll_id, "Q?", (("A", "a"), ("B", "b")), 1, "live", None, 0)
