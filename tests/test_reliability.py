"""Breaking things on purpose: lost replies, nodes that go away under load."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

from app.core.config import load_settings
from tests.conftest import NodeFactory, running_app, settings_for, stored_counts
from tests.proxies import ReplyCuttingProxy


async def test_batches_whose_replies_are_cut_are_counted_once(start_node: NodeFactory) -> None:
    node = start_node()
    proxy = await ReplyCuttingProxy(node.port).start()
    settings = load_settings(redis_nodes=f"n={proxy.url}", batch_interval_seconds=3600)
    acknowledged: Counter[str] = Counter()
    try:
        async with running_app(settings) as (client, service):
            for round_ in range(4):
                for _ in range(25):
                    option = random.choice("ABC")
                    r = await client.post(f"/api/v1/vote/p{round_ % 2}", json={"option_id": option})
                    assert r.status_code == 200
                    acknowledged[f"p{round_ % 2}:{option}"] += 1
                proxy.cuts_left = 2  # the next two attempts reach the node, their replies do not
                assert await service.flusher.flush() == 0
                poll = f"p{round_ % 2}"
                on_node = sum(stored_counts(node, poll).values())
                assert on_node == sum(n for k, n in acknowledged.items() if k.startswith(poll))
                assert await service.flusher.flush() == 0
                assert await service.flusher.flush() == 25  # third try: confirmed, counted once
            assert proxy.cuts_done == 8
    finally:
        await proxy.stop()
    for poll in ("p0", "p1"):
        expected = {k.split(":")[1]: n for k, n in acknowledged.items() if k.startswith(poll)}
        assert stored_counts(node, poll) == expected


async def test_node_stopped_and_restarted_under_load_loses_nothing(start_node: NodeFactory) -> None:
    nodes = [start_node(persist=True), start_node(persist=True)]
    settings = settings_for(nodes, batch_interval_seconds=0.05, cache_ttl_seconds=0.05)
    polls = [f"poll-{i}" for i in range(30)]
    acknowledged: Counter[tuple[str, str]] = Counter()
    voting = True
    async with running_app(settings) as (client, service):
        down = f"redis_{nodes[1].port}"

        async def voter(seed: int) -> None:
            rng = random.Random(seed)
            while voting:
                poll, option = rng.choice(polls), rng.choice("ABCD")
                r = await client.post(f"/api/v1/vote/{poll}", json={"option_id": option})
                assert r.status_code == 200
                acknowledged[poll, option] += 1
                await asyncio.sleep(0)

        await service.register({poll: list("ABCD") for poll in polls})
        voters = [asyncio.create_task(voter(s)) for s in range(20)]
        flushes = service.flusher.flushes
        while service.flusher.flushes < flushes + 3:
            await asyncio.sleep(0.01)
        nodes[1].stop()
        while down not in service.flusher.down:  # a flush has failed for it
            await asyncio.sleep(0.01)
        health = (await client.get("/api/v1/health")).json()
        assert {n["label"]: n["reachable"] for n in health["nodes"]}[down] is False
        held = service.flusher.in_flight_votes(down)
        while service.flusher.in_flight_votes(down) + service.buffers[down].votes <= held:
            await asyncio.sleep(0.01)  # votes for the down node keep being taken
        nodes[1].start()
        while down in service.flusher.down:  # the backlog lands
            await asyncio.sleep(0.01)
        voting = False
        await asyncio.gather(*voters)
    assert sum(acknowledged.values()) > 0
    for poll in polls:
        stored = [stored_counts(n, poll) for n in nodes]
        found = next((s for s in stored if s), {})
        assert found == {o: n for (p, o), n in acknowledged.items() if p == poll}
