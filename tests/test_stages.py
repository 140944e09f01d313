"""Each stage of the exercise (SPEC.md), reached by configuration alone."""

from __future__ import annotations

import asyncio

import httpx

from app.devtools.local_nodes import LocalNode
from tests.conftest import running_app, settings_for, stored_counts


async def vote(client: httpx.AsyncClient, poll: str, option: str) -> None:
    response = await client.post(f"/api/v1/vote/{poll}", json={"option_id": option})
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "success", "message": "Vote accepted"}


async def results(client: httpx.AsyncClient, poll: str) -> dict[str, object]:
    response = await client.get(f"/api/v1/results/{poll}")
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


async def test_health_root_answers_healthy() -> None:
    async with running_app(settings_for(None)) as (client, _):
        assert (await client.get("/")).json() == {"status": "healthy"}


async def test_stage1_in_memory_counts_and_restart_loses_them() -> None:
    settings = settings_for(None, batch_interval_seconds=0, cache_ttl_seconds=0)
    async with running_app(settings) as (client, _):
        for option in ["A", "A", "B", "A", "C"]:
            await vote(client, "100", option)
        assert await results(client, "100") == {
            "poll_id": "100",
            "results": {"A": 3, "B": 1, "C": 1},
            "served_via": "in_memory",
        }
        assert (await results(client, "nobody-voted"))["results"] == {}
    async with running_app(settings) as (client, _):
        assert (await results(client, "100"))["results"] == {}


async def test_stage2_write_through_to_redis_survives_app_restart(
    start_node: object,
) -> None:
    node: LocalNode = start_node()  # type: ignore[operator]
    settings = settings_for([node], batch_interval_seconds=0, cache_ttl_seconds=0)
    async with running_app(settings) as (client, _):
        await vote(client, "100", "A")
        await vote(client, "100", "B")
        assert stored_counts(node, "100") == {"A": 1, "B": 1}  # written before the ack
        assert await results(client, "100") == {
            "poll_id": "100",
            "results": {"A": 1, "B": 1},
            "served_via": "redis",
        }
    async with running_app(settings) as (client, _):
        assert (await results(client, "100"))["results"] == {"A": 1, "B": 1}


async def test_stage3_cache_hits_within_ttl_and_misses_after(start_node: object) -> None:
    node: LocalNode = start_node()  # type: ignore[operator]
    settings = settings_for([node], batch_interval_seconds=0, cache_ttl_seconds=5)
    async with running_app(settings) as (client, service):
        now = [1000.0]
        service.cache.clock = lambda: now[0]
        await vote(client, "100", "A")
        assert (await results(client, "100"))["served_via"] == "redis"
        assert (await results(client, "100"))["served_via"] == "app_cache"
        now[0] += 4.9
        hit = await results(client, "100")
        assert hit["served_via"] == "app_cache" and hit["results"] == {"A": 1}
        now[0] += 0.2
        assert (await results(client, "100"))["served_via"] == "redis"


async def test_stage3_own_write_through_votes_show_at_once_then_cached(start_node: object) -> None:
    node: LocalNode = start_node()  # type: ignore[operator]
    settings = settings_for([node], batch_interval_seconds=0, cache_ttl_seconds=5)
    async with running_app(settings) as (client, _):
        await vote(client, "100", "A")
        await results(client, "100")
        await vote(client, "100", "A")  # drops the poll's snapshot: the next read refills it
        assert await results(client, "100") == {
            "poll_id": "100",
            "results": {"A": 2},
            "served_via": "redis",
        }
        hit = await results(client, "100")
        assert hit == {"poll_id": "100", "results": {"A": 2}, "served_via": "app_cache"}


async def test_stage4_vote_reaches_redis_only_with_the_flush(start_node: object) -> None:
    node: LocalNode = start_node()  # type: ignore[operator]
    settings = settings_for([node], batch_interval_seconds=0.2)
    async with running_app(settings) as (client, service):
        flushed = service.flusher.flushes
        await vote(client, "100", "A")
        assert stored_counts(node, "100") == {}  # nothing written yet
        assert (await results(client, "100"))["results"] == {"A": 1}  # the API shows it at once
        while service.flusher.flushes == flushed:  # the background flusher's next turn
            await asyncio.sleep(0.01)
        assert stored_counts(node, "100") == {"A": 1}
        assert (await results(client, "100"))["results"] == {"A": 1}


def test_stage4_default_interval_is_ten_seconds() -> None:
    from app.core.config import Settings

    assert Settings.model_fields["batch_interval_seconds"].default == 10.0
    assert Settings.model_fields["cache_ttl_seconds"].default == 5.0


async def test_stage5_polls_spread_over_two_nodes_and_stay_put(two_nodes: list[LocalNode]) -> None:
    settings = settings_for(two_nodes, cache_ttl_seconds=0)
    labels = {f"redis_{n.port}": n for n in two_nodes}
    polls = [f"poll-{i}" for i in range(40)]
    async with running_app(settings) as (client, service):
        for poll in polls:
            await vote(client, poll, "A")
        await service.flusher.flush()
        served = {poll: (await results(client, poll))["served_via"] for poll in polls}
        assert set(served.values()) == set(labels)  # both nodes hold polls
        for poll, label in served.items():
            owner = labels[str(label)]
            other = next(n for n in two_nodes if n is not owner)
            assert stored_counts(owner, poll) == {"A": 1}
            assert stored_counts(other, poll) == {}
    async with running_app(settings) as (client, _):  # a new process routes the same way
        for poll in polls:
            assert (await results(client, poll))["served_via"] == served[poll]
