"""The Redis Cluster store on a real cluster of 3 masters (valkey-server --cluster-enabled),
with the sharded store's exactness checks; its settings; a journal kept across a kill -9,
and a journal of ring batches that stops a start on the cluster. Faults are in
tests/test_cluster_faults.py, slots moving in tests/test_cluster_slot_moves.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis

from app.core.config import SettingsError, load_settings
from app.devtools.local_cluster import LocalCluster
from app.devtools.local_nodes import LocalNode
from app.storage.base import Batch, NodeUnavailable
from app.storage.cluster_store import ClusterRedisStore, slot_of
from app.storage.redis_store import aside_key, poll_key
from tests.cluster_helpers import (
    DEADLINE,
    cluster,
    cluster_pool,
    fresh,
    master,
    polls_on_every_master,
    same_slot_polls,
    settings,
    stored,
    wait_until,
)
from tests.conftest import ServiceProcess, running_app

__all__ = ["cluster", "cluster_pool", "fresh"]  # fixtures


async def test_votes_on_every_master_are_counted_exactly_and_name_their_master(
    fresh: LocalCluster,
) -> None:
    polls = polls_on_every_master(fresh)
    async with running_app(settings(fresh, cache_ttl_seconds=0)) as (client, service):
        for i, poll_id in enumerate(polls):
            for _ in range(i + 1):
                r = await client.post(f"/api/v1/vote/{poll_id}", json={"option_id": "A"})
                assert r.status_code == 200
        assert await service.flusher.flush() == sum(range(1, len(polls) + 1))
        for i, poll_id in enumerate(polls):
            assert stored(fresh, poll_id) == {"A": i + 1}
            body = (await client.get(f"/api/v1/results/{poll_id}")).json()
            assert body["results"] == {"A": i + 1}
            owner = fresh.owner(slot_of(poll_id))
            assert body["served_via"] == f"cluster 127.0.0.1:{owner.port}"
        health = (await client.get("/api/v1/health")).json()
        assert health["nodes"][0]["label"] == "cluster"
        assert health["nodes"][0]["reachable"] is True


async def test_a_batch_with_a_refused_slot_lands_elsewhere_once_and_retries_exactly(
    fresh: LocalCluster,
) -> None:
    """One slot's part is refused (both its keys hold no counts); the other slots' parts
    land; the retry, once the keys are fixed, adds only the part that was missing."""
    polls = polls_on_every_master(fresh, per_master=2)
    broken = polls[0]
    with master(fresh.owner(slot_of(broken))) as client:
        client.set(poll_key(broken), "not a hash")
        client.set(aside_key(broken), "not a hash either")
    async with running_app(settings(fresh, cache_ttl_seconds=0)) as (client, service):
        for poll_id in polls:
            for option in "AB":
                await client.post(f"/api/v1/vote/{poll_id}", json={"option_id": option})
        await service.flusher.flush()
        assert service.flusher.in_flight_votes() == 2 * len(polls)  # the batch is kept
        for poll_id in polls[1:]:
            assert stored(fresh, poll_id) == {"A": 1, "B": 1}
            body = (await client.get(f"/api/v1/results/{poll_id}")).json()
            assert body["results"] == {"A": 1, "B": 1}  # landed part not counted twice
        assert (await client.get(f"/api/v1/results/{broken}")).json()["results"] == {
            "A": 1,
            "B": 1,
        }
        with master(fresh.owner(slot_of(broken))) as node:
            node.delete(poll_key(broken), aside_key(broken))
        await service.flusher.flush()
        assert service.flusher.in_flight_votes() == 0
        for poll_id in polls:
            assert stored(fresh, poll_id) == {"A": 1, "B": 1}


async def test_a_batch_applied_twice_counts_once(fresh: LocalCluster) -> None:
    polls = polls_on_every_master(fresh, per_master=3)
    store = ClusterRedisStore(settings(fresh).cluster, 2.0)  # type: ignore[attr-defined]
    await store.open()
    try:
        counts = {p: {"A": 2, "B": 1} for p in polls}
        batches = [Batch("f1", 1, "cluster", counts), Batch("f1", 2, "cluster", counts, prev=1)]
        await store.apply(batches)
        await store.apply(batches)  # a retry after a lost reply
        for poll_id in polls:
            assert stored(fresh, poll_id) == {"A": 4, "B": 2}
            snapshot = await store.read(poll_id, ["f1"])
            assert snapshot.counts == {"A": 4, "B": 2}
            assert snapshot.applied == {"f1": 2}
        await store.forget_marks("cluster", ["f1"])
        for node in fresh.nodes:
            with master(node) as client:
                assert client.keys("flusher:*") == []
    finally:
        await store.close()


async def test_a_refused_slot_part_is_never_overtaken_by_a_later_batch(
    fresh: LocalCluster,
) -> None:
    bad, good = same_slot_polls("bad", 2)
    with master(fresh.owner(slot_of(bad))) as client:
        client.set(poll_key(bad), "x")
        client.set(aside_key(bad), "y")  # nowhere to put its votes: the part is refused
    store = ClusterRedisStore(settings(fresh).cluster, 2.0)  # type: ignore[attr-defined]
    try:
        first = Batch("f", 1, "cluster", {bad: {"A": 1}, good: {"A": 1}})
        second = Batch("f", 2, "cluster", {good: {"B": 1}}, prev=1)
        with pytest.raises(NodeUnavailable):
            await store.apply([first, second])
        assert stored(fresh, good) == {}  # nothing of the first, nor the second
        with master(fresh.owner(slot_of(bad))) as client:
            client.delete(poll_key(bad))
        await store.apply([first, second])  # the retry, once the key is fixed
        await store.apply([first, second])
        assert stored(fresh, good) == {"A": 1, "B": 1}
        assert stored(fresh, bad) == {"A": 1}
    finally:
        await store.close()


async def test_masters_that_forgot_the_scripts_get_them_again_and_nothing_runs_twice(
    fresh: LocalCluster,
) -> None:
    polls = polls_on_every_master(fresh, per_master=2)
    store = ClusterRedisStore(settings(fresh).cluster, 2.0)  # type: ignore[attr-defined]
    try:
        await store.apply_now("cluster", {polls[0]: {"A": 1}})  # loads the scripts
        with master(fresh.owner(slot_of(polls[-1]))) as client:
            client.script_flush()  # as after a restart: this master forgot them
        await store.apply_now("cluster", {p: {"A": 1} for p in polls})  # write-through
        assert [stored(fresh, p) for p in polls] == [{"A": 2}] + [{"A": 1}] * (len(polls) - 1)
    finally:
        await store.close()


async def test_marks_go_at_a_clean_stop_and_the_option_cap_holds(fresh: LocalCluster) -> None:
    polls = polls_on_every_master(fresh, per_master=2)
    async with running_app(settings(fresh, max_options_per_poll=2)) as (client, service):
        for poll_id in polls:
            for option in "AB":
                r = await client.post(f"/api/v1/vote/{poll_id}", json={"option_id": option})
                assert r.status_code == 200
            r = await client.post(f"/api/v1/vote/{poll_id}", json={"option_id": "C"})
            assert r.status_code == 422
        await service.flusher.flush()
    for node in fresh.nodes:
        with master(node) as client:
            assert client.keys("flusher:*") == []
    for poll_id in polls:
        assert stored(fresh, poll_id) == {"A": 1, "B": 1}


async def test_defined_polls_and_idempotent_bulk_on_the_cluster(fresh: LocalCluster) -> None:
    polls = polls_on_every_master(fresh, per_master=2)
    token = "t0ken"
    async with running_app(settings(fresh, api_token=token)) as (client, service):
        created = await client.post(
            "/api/v1/polls",
            json={
                "question": "Which?",
                "options": [{"id": "A", "label": "a"}, {"id": "B", "label": "b"}],
            },
            headers={"Authorization": f"Bearer {token}"},
        )
        assert created.status_code == 201
        poll_id = created.json()["poll_id"]
        for voter in range(6):
            headers = {"X-Voter-Id": f"v{voter}"}
            for _ in range(2):  # the second is refused: one vote per voter
                await client.post(
                    f"/api/v1/polls/{poll_id}/vote",
                    json={"option_id": "AB"[voter % 2]},
                    headers=headers,
                )
        auth = {"Authorization": f"Bearer {token}"}  # the organiser sees hidden results
        body = (await client.get(f"/api/v1/polls/{poll_id}/results", headers=auth)).json()
        assert [o["count"] for o in body["options"]] == [3, 3] and body["total_votes"] == 6
        assert body["served_via"].startswith("cluster 127.0.0.1:")

        bulk = [{"poll_id": p, "option_id": "A", "count": 5} for p in polls]
        headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "k-1"}
        for _ in range(2):  # a retry of the same request counts once
            r = await client.post("/api/v1/votes", json=bulk, headers=headers)
            assert r.status_code == 200, r.text
        await service.flusher.flush()
        for poll_id in polls:
            assert stored(fresh, poll_id) == {"A": 5}


async def test_start_refuses_a_master_that_can_evict(fresh: LocalCluster) -> None:
    with master(fresh.nodes[1]) as client:
        client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        with pytest.raises(Exception, match="maxmemory-policy is allkeys-lru"):
            async with running_app(settings(fresh)):
                pass
    finally:
        with master(fresh.nodes[1]) as client:
            client.config_set("maxmemory-policy", "noeviction")


def test_cluster_url_takes_one_url_and_no_retiring_nodes() -> None:
    with pytest.raises(SettingsError, match="REDIS_CLUSTER_URL"):
        load_settings(redis_cluster_url="redis://a:1,redis://b:2")
    with pytest.raises(SettingsError, match="REDIS_CLUSTER_URL"):
        load_settings(redis_cluster_url="c=redis://a:1")
    assert load_settings(redis_cluster_url="redis://a:1").cluster is not None


def test_a_service_killed_with_journaled_votes_counts_them_once_after_restart(
    fresh: LocalCluster, start_service: Callable[..., ServiceProcess], tmp_path: Path
) -> None:
    polls = polls_on_every_master(fresh, per_master=2)
    env = {
        "REDIS_CLUSTER_URL": fresh.url,
        "BATCH_INTERVAL_SECONDS": "3600",
        "JOURNAL_DIR": str(tmp_path / "journal"),
        "JOURNAL_FSYNC": "always",
    }
    first = start_service(env)
    with httpx.Client(base_url=first.url) as client:
        for poll_id in polls:
            for _ in range(3):
                assert client.post(f"/api/v1/vote/{poll_id}", json={"option_id": "A"}).is_success
    first.kill()  # kill -9: nothing was flushed
    assert all(stored(fresh, p) == {} for p in polls)
    second = start_service(env)
    with httpx.Client(base_url=second.url) as client:
        for poll_id in polls:
            assert client.get(f"/api/v1/results/{poll_id}").json()["results"] == {"A": 3}
    second.terminate()
    for poll_id in polls:
        assert stored(fresh, poll_id) == {"A": 3}
    for node in fresh.nodes:
        with master(node) as client:
            assert client.keys("flusher:*") == []  # the journal is empty: marks are gone


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:7000/2",  # a database: a cluster has only 0
        "redis://:pw@127.0.0.1:7000?x=1",  # an option redis-py does not know
        "redis://127.0.0.1:7000?socket_timeout=abc",
    ],
)
def test_a_cluster_url_redis_py_cannot_use_is_refused_by_the_settings(url: str) -> None:
    """A REDIS_CLUSTER_URL that can never work is a settings error naming the variable (as
    REDIS_NODES problems are), not a RedisClusterException/TypeError/ValueError traceback
    from the lifespan when the store is built. (Settings only: nothing connects to 7000.)"""
    with pytest.raises(SettingsError, match="REDIS_CLUSTER_URL"):
        load_settings(redis_cluster_url=url)


def test_ring_journal_batches_stop_a_start_on_the_cluster(
    fresh: LocalCluster,
    start_node: Callable[..., LocalNode],
    start_service: Callable[..., ServiceProcess],
    tmp_path: Path,
) -> None:
    """Moving from the ring to the cluster after a crash (the README asks for a clean stop,
    but a kill -9 is not one): a batch sealed for a ring node may have landed there, and
    the cluster's per-slot marks cannot tell. The start on the cluster refuses, naming the
    way out; a start on the ring drains the batch, exactly."""
    node = start_node(persist=True)
    journal = str(tmp_path / "journal")
    env = {
        "REDIS_NODES": node.url,
        "BATCH_INTERVAL_SECONDS": "0.05",
        "JOURNAL_DIR": journal,
        "JOURNAL_FSYNC": "always",
    }
    first = start_service(env)
    with httpx.Client(base_url=first.url) as client:  # the option is known: no node needed
        assert client.post("/api/v1/vote/pr", json={"option_id": "A"}).is_success
    node.stop()
    with httpx.Client(base_url=first.url, timeout=DEADLINE) as client:  # no time limit
        for _ in range(5):
            assert client.post("/api/v1/vote/pr", json={"option_id": "A"}).is_success

        def sealed_and_failed() -> bool:
            health = client.get("/api/v1/health").json()
            return health["buffer"]["in_flight_votes"] > 0 and bool(health["nodes"][0]["error"])

        # a batch is sealed for the ring node and its send has failed (the first vote's, or
        # the five's: which one depends on when the flusher ran; both are the case at hand)
        wait_until(sealed_and_failed, "a batch sealed and held")
    first.kill()
    with pytest.raises(RuntimeError, match="switch stores"):
        start_service({"REDIS_CLUSTER_URL": fresh.url, "JOURNAL_DIR": journal})
    assert stored(fresh, "pr") == {}
    node.start()
    start_service(env).terminate()
    with redis.Redis(host="127.0.0.1", port=node.port) as ring:
        assert ring.hgetall("poll:{pr}") == {b"A": b"6"}
