"""The lease rules that elect one publisher per poll, on a real node and in memory."""

from __future__ import annotations

import asyncio

import pytest

from app.core.nodes import parse_nodes
from app.core.redis_manager import RedisManager
from app.devtools.local_nodes import LocalNode
from app.services.live_results import ReadFailed, Snapshot
from app.services.poll_leases import (
    FOLLOWER,
    LEADER,
    NOBODY,
    MemoryPollLeases,
    PollLeases,
    RedisPollLeases,
    lease_keys,
)
from app.services.read_states import ReadStates, version_of
from app.storage.redis_store import ShardedRedisStore
from tests.conftest import NodeFactory


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


async def check_rules(leases: PollLeases, expire: object) -> None:
    assert await leases.hold("p", "def", "a", 10_000) == NOBODY  # nobody watches
    await leases.watch("p", "def", 60_000)
    assert await leases.hold("p", "def", "a", 10_000) == LEADER
    assert await leases.hold("p", "def", "b", 10_000) == FOLLOWER
    assert await leases.hold("p", "def", "a", 10_000) == LEADER  # renewed
    assert await leases.claim("p", "def", "a", 5)
    assert not await leases.claim("p", "def", "a", 5)  # once per version
    assert not await leases.claim("p", "def", "a", 3)  # never one behind
    assert not await leases.claim("p", "def", "b", 9)  # only the holder
    await expire("lease")  # type: ignore[operator]  # a holder that stalled past its TTL
    assert await leases.hold("p", "def", "b", 10_000) == LEADER
    assert not await leases.claim("p", "def", "a", 9)  # the old holder is fenced off
    assert not await leases.claim("p", "def", "b", 5)  # published already, by a
    assert await leases.claim("p", "def", "b", 9)
    await expire("watched")  # type: ignore[operator]
    assert await leases.hold("p", "def", "b", 10_000) == NOBODY
    await leases.watch("p", "def", 60_000)
    assert await leases.hold("p", "def", "a", 10_000) == LEADER  # b let it go
    # a poll made again with the id of a deleted one (made later) starts over at low
    # versions; a state of the deleted poll is never published after it
    assert await leases.claim("p", "def", "a", 1, made=2)
    assert not await leases.claim("p", "def", "a", 1, made=2)
    assert not await leases.claim("p", "def", "a", 10, made=1)
    assert await leases.claim("p", "def", "a", 2, made=2)


async def test_lease_rules_on_a_node(start_node: NodeFactory) -> None:
    node: LocalNode = start_node()
    store = ShardedRedisStore(parse_nodes(node.url), 10, 2.0, "")
    manager: RedisManager = store.manager
    leases = RedisPollLeases(manager, store.call)
    names = dict(zip(["lease", "watched", "published"], lease_keys("p", "def"), strict=True))

    async def expire(which: str) -> None:
        await manager.client(manager.node_for("p")).delete(names[which])

    try:
        await check_rules(leases, expire)
    finally:
        await store.close()


async def test_lease_rules_in_memory() -> None:
    clock = Clock()
    leases = MemoryPollLeases(clock)
    ttl = {"lease": 10.0, "watched": 60.0}

    async def expire(which: str) -> None:
        clock.now += ttl[which] + 1

    await check_rules(leases, expire)


def snapshot(
    total: int, final: bool = False, hidden: bool = False, moderated: int = 0, redefined: int = 0
) -> Snapshot:
    return Snapshot(
        b"{}", total, total, final=final, hidden=hidden, moderated=moderated, redefined=redefined
    )


def test_versions_only_grow_along_a_polls_life() -> None:
    life = [
        snapshot(0, hidden=True),
        snapshot(0, final=True, hidden=True),  # closed by mistake
        snapshot(0, hidden=True, redefined=1),  # reopened
        snapshot(3, hidden=True, redefined=1),
        snapshot(3, redefined=1),  # revealed
        snapshot(7, redefined=1),
        snapshot(7, moderated=1, redefined=1),  # a words entry hidden
        snapshot(7, moderated=2, redefined=1),  # and shown again
        snapshot(7, final=True, moderated=2, redefined=1),  # closed
        snapshot(7, final=True, moderated=3, redefined=1),  # hidden after the close
    ]
    versions = [version_of(s) for s in life]
    assert versions == sorted(set(versions))
    assert version_of(snapshot(3, final=True, hidden=True)) < version_of(snapshot(4))


async def test_read_states_share_one_read_and_read_afresh_after_a_local_change() -> None:
    states = ReadStates(max_age=60)
    reads = 0
    gate = asyncio.Event()

    async def read() -> Snapshot:
        nonlocal reads
        reads += 1
        mine = reads
        await gate.wait()
        return snapshot(mine)

    waiting = [asyncio.create_task(states.read("def:p", read)) for _ in range(50)]
    await asyncio.sleep(0)
    states.forget("def:p")  # a vote landed here while the read was in flight
    late = asyncio.create_task(states.read("def:p", read))  # does not join the older read
    await asyncio.sleep(0)
    gate.set()
    first = await asyncio.gather(*waiting)
    assert reads == 2 and {s.snapshot.total for s in first} == {1}
    assert (await late).snapshot.total == 2
    assert (await states.read("def:p", read)).snapshot.total == 2  # the fresh one is kept

    async def fail() -> Snapshot:
        raise ReadFailed((404, b"{}", []))

    with pytest.raises(ReadFailed):
        await states.read("def:q", fail)
    assert len(states) == 1
