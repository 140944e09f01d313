"""DESIGN.md invariants 1-4: exact counts through flushes, failures and reads."""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
from collections import Counter

import pytest

from app.devtools.local_nodes import LocalNode
from app.services.polling_service import PollingService
from app.storage.base import Applied, Batch, NodeUnavailable
from tests.conftest import NodeFactory, running_app, settings_for, stored_counts


def test_vote_is_plain_code_without_await() -> None:
    assert not inspect.iscoroutinefunction(PollingService.vote)


async def test_votes_are_taken_while_the_node_is_down(start_node: NodeFactory) -> None:
    node = start_node()
    settings = settings_for([node], shutdown_flush_seconds=0)
    async with running_app(settings) as (client, service):
        await client.post("/api/v1/vote/7", json={"option_id": "A"})  # the option is known
        node.kill()
        for _ in range(4):
            r = await client.post("/api/v1/vote/7", json={"option_id": "A"})
            assert r.status_code == 200
        assert service.pending_votes() == 5


async def test_flush_sends_one_apply_per_node_and_logs_one_line(
    two_nodes: list[LocalNode], caplog: pytest.LogCaptureFixture
) -> None:
    async with running_app(settings_for(two_nodes)) as (client, service):
        for i in range(30):
            await client.post(f"/api/v1/vote/{i}", json={"option_id": "A"})
        calls: list[str] = []
        real_apply = service.store.apply

        async def counting_apply(batches: list[Batch]) -> Applied:
            calls.append(batches[0].node)
            return await real_apply(batches)

        service.store.apply = counting_apply  # type: ignore[method-assign]
        with caplog.at_level(logging.INFO, logger="app.flusher"):
            assert await service.flusher.flush() == 30
        assert sorted(calls) == sorted(service.store.nodes)
        lines = [r.getMessage() for r in caplog.records if r.name == "app.flusher"]
        assert len(lines) == 1
        assert lines[0].startswith("flush: 30 votes, 30 polls, 2 nodes in ")


async def test_read_counts_a_batch_in_flight_exactly_once(start_node: NodeFactory) -> None:
    node = start_node()
    async with running_app(settings_for([node], cache_ttl_seconds=0)) as (client, service):
        for _ in range(3):
            await client.post("/api/v1/vote/p", json={"option_id": "A"})
        real_apply = service.store.apply
        applied, release = asyncio.Event(), asyncio.Event()

        async def apply_then_wait(batches: list[Batch]) -> Applied:
            done = await real_apply(batches)  # on the node now, not yet confirmed to the flusher
            applied.set()
            await release.wait()
            return done

        service.store.apply = apply_then_wait  # type: ignore[method-assign]
        flush = asyncio.create_task(service.flusher.flush())
        await applied.wait()
        await client.post("/api/v1/vote/p", json={"option_id": "A"})
        assert stored_counts(node, "p") == {"A": 3}
        assert service.flusher.in_flight_votes() == 3
        assert (await client.get("/api/v1/results/p")).json()["results"] == {"A": 4}
        release.set()
        await flush
        assert (await client.get("/api/v1/results/p")).json()["results"] == {"A": 4}


async def test_cached_read_never_goes_backwards_when_a_batch_lands(start_node: NodeFactory) -> None:
    node = start_node()
    async with running_app(settings_for([node], cache_ttl_seconds=60)) as (client, service):
        await client.post("/api/v1/vote/p", json={"option_id": "A"})
        assert (await client.get("/api/v1/results/p")).json()["results"] == {"A": 1}
        await client.post("/api/v1/vote/p", json={"option_id": "B"})
        await service.flusher.flush()
        hit = (await client.get("/api/v1/results/p")).json()
        assert hit == {"poll_id": "p", "results": {"A": 1, "B": 1}, "served_via": "app_cache"}


async def test_failed_flush_keeps_its_batch_and_retries_it_unchanged(
    start_node: NodeFactory,
) -> None:
    node = start_node(persist=True)
    async with running_app(settings_for([node])) as (client, service):
        await service.register({"p": ["A", "B"]})  # options are known before the node stops
        for _ in range(4):
            await client.post("/api/v1/vote/p", json={"option_id": "A"})
        node.stop()
        assert await service.flusher.flush() == 0
        [held] = service.flusher.in_flight[service.store.nodes[0]]
        await client.post("/api/v1/vote/p", json={"option_id": "B"})  # waits in the buffer
        assert await service.flusher.flush() == 0
        assert service.flusher.in_flight[service.store.nodes[0]] == [held]
        assert (await client.get("/api/v1/health")).status_code == 503
        node.start()
        assert await service.flusher.flush() == 4  # the same batch lands first
        assert await service.flusher.flush() == 1  # then what waited in the buffer
        assert stored_counts(node, "p") == {"A": 4, "B": 1}


async def test_batch_retried_after_a_lost_reply_counts_once(start_node: NodeFactory) -> None:
    node = start_node()
    async with running_app(settings_for([node])) as (client, service):
        for _ in range(5):
            await client.post("/api/v1/vote/p", json={"option_id": "A"})
        real_apply = service.store.apply
        replies_lost = [2]

        async def apply_reply_lost(batches: list[Batch]) -> Applied:
            done = await real_apply(batches)
            if replies_lost[0]:
                replies_lost[0] -= 1
                raise NodeUnavailable(batches[0].node, "redis://x", "reply lost")
            return done

        service.store.apply = apply_reply_lost  # type: ignore[method-assign]
        assert await service.flusher.flush() == 0
        assert await service.flusher.flush() == 0
        assert await service.flusher.flush() == 5
        assert stored_counts(node, "p") == {"A": 5}
        assert (await client.get("/api/v1/results/p")).json()["results"] == {"A": 5}


async def test_concurrent_votes_during_frequent_flushes_are_counted_exactly(
    two_nodes: list[LocalNode],
) -> None:
    settings = settings_for(two_nodes, batch_interval_seconds=0.05, cache_ttl_seconds=0.02)
    polls = [f"poll-{i}" for i in range(20)]
    acknowledged: Counter[tuple[str, str]] = Counter()
    async with running_app(settings) as (client, service):

        async def voter(seed: int) -> None:
            rng = random.Random(seed)
            for _ in range(60):
                poll, option = rng.choice(polls), rng.choice("ABCD")
                r = await client.post(f"/api/v1/vote/{poll}", json={"option_id": option})
                if r.status_code == 200:
                    acknowledged[poll, option] += 1

        async def reader() -> None:  # invariant 2: a total seen once never shrinks
            seen = {poll: 0 for poll in polls}
            for i in range(300):
                poll = polls[i % len(polls)]
                total = sum(
                    (await client.get(f"/api/v1/results/{poll}")).json()["results"].values()
                )
                assert total >= seen[poll]
                seen[poll] = total

        await asyncio.gather(*(voter(s) for s in range(50)), reader())
        assert service.flusher.flushes > 0
    assert sum(acknowledged.values()) == 50 * 60
    for poll in polls:
        node = next(n for n in two_nodes if stored_counts(n, poll))
        expected = {o: n for (p, o), n in acknowledged.items() if p == poll}
        assert stored_counts(node, poll) == expected
