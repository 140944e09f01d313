"""A Redis Cluster master killed -9 under load, on real clusters of 3 masters and 3
replicas (`cluster-node-timeout` 1000 ms) that the tests start: its replica is promoted by
the cluster, and the service, which never calls /health here, serves the failed-over
slots again by itself. After each: no acknowledged vote lost or doubled, ad-hoc or
defined, and no voter counted twice. Also: one pipeline over a dead and a live master
answers for each part what that part did.

The time from the promotion to the first answer from the promoted master is printed
(`back after promotion`), never asserted (timings belong in bench/)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from app.devtools.local_cluster import LocalCluster
from app.devtools.local_nodes import LocalNode
from app.services.polling_service import PollingService
from app.storage.cluster_store import slot_of
from tests.cluster_helpers import await_until, master, poll_on, polls_per_master, wait_until
from tests.conftest import running_app, settings_for
from tests.failover_helpers import (
    AUTH,
    TOKEN,
    LaggingReplicationProxy,
    Load,
    assert_exact,
    create_defined,
    exactness,
    promoted,
    revote_all,
    slot_owner_port,
)

WANTED = {"seed": 1, "lag": 1, "partial": 0}  # name -> replicas per master
LAG_SECONDS = 0.3


@pytest.fixture(scope="module")
def clusters() -> Iterator[dict[str, LocalCluster]]:
    """The module's clusters, started side by side; all stopped at the end."""
    made = {
        name: LocalCluster(masters=3, replicas=replicas, node_timeout_ms=1000)
        for name, replicas in WANTED.items()
    }
    try:
        with ThreadPoolExecutor(len(made)) as pool:
            for future in [pool.submit(c.start) for c in made.values()]:
                future.result()
        for found in made.values():
            for node in [*found.nodes, *found.replica_nodes]:
                with master(node) as client:  # a failed master's slots only are refused
                    client.config_set("cluster-require-full-coverage", "no")
        yield made
    finally:
        for found in made.values():
            found.stop()


def app_settings(seeds: list[LocalNode], **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "redis_cluster_url": ",".join(n.url for n in seeds),
        "batch_interval_seconds": 0.05,
        "cache_ttl_seconds": 0,
        "api_token": TOKEN,
        "redis_timeout_seconds": 1.0,
        "voter_secret": "s3cret",
    }
    return settings_for(None, **{**values, **overrides})


async def under_load(
    cluster: LocalCluster,
    victim: LocalNode,
    replica: LocalNode,
    on_victim: list[str],
    load: Load,
    service: PollingService,
    after_kill: Any,
) -> None:
    """The kill, the promotion, the victim's polls answering again, more load."""
    await await_until(lambda: sum(load.acked.values()) > 100, "the load under way")
    flushes = service.flusher.flushes
    await await_until(
        lambda: service.flusher.flushes > flushes and not service.flusher.in_flight,
        "a flush that just landed",
    )
    victim.kill()
    if after_kill is not None:
        await after_kill()
    await asyncio.to_thread(wait_until, lambda: promoted(cluster, replica), "a promotion")
    load.mark = time.monotonic()
    await await_until(
        lambda: all(p in load.first_ok_after for p in on_victim),
        "the failed-over slot answers 200 again",
    )
    acked = sum(load.acked.values())
    await await_until(lambda: sum(load.acked.values()) > acked + 100, "more load after it")


async def kill_under_load(
    cluster: LocalCluster,
    victim: LocalNode,
    seeds: list[LocalNode],
    after_kill: Any = None,
) -> tuple[Load, float, dict[str, list[int]]]:
    """Votes on every master; the victim killed -9 right after a flush landed; waits for
    the promotion, then for the victim's polls to answer 200 again (no /health, no read);
    a little more load; drains. Returns the load, the time from promotion to
    the first 200 from the promoted master, and the voters that could vote twice."""
    replica = cluster.replica_of(victim)
    adhoc = [p for polls in polls_per_master(cluster, 2, "a").values() for p in polls]
    defined = [poll_on(cluster, node, "d") for node in cluster.nodes]
    on_victim = [p for p in defined if slot_owner_port(cluster, slot_of(p), replica) == victim.port]
    async with running_app(app_settings(seeds)) as (client, service):
        for poll_id in defined:
            await create_defined(client, poll_id)
        load = Load(client, adhoc, defined)
        tasks = load.tasks()
        try:
            await under_load(cluster, victim, replica, on_victim, load, service, after_kill)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        load.stop.set()
        await asyncio.gather(*tasks)  # a voter's unexpected answer fails the test here
        back = max(load.first_ok_after[p] for p in on_victim) - load.mark
        await await_until(lambda: not service.flusher.in_flight, "the held batches landed")
        await service.flusher.drain(10)
        wrong = await revote_all(load)
        # only now the first /health: the promoted master, left without a replica, serves
        # with the weaker promise and says so
        health = (await client.get("/api/v1/health")).json()
        promoted_entry = health["durability"]["servers"][f"127.0.0.1:{replica.port}"]
        assert any("no replica" in why for why in promoted_entry["weaker"]), promoted_entry
        # a new instance starts with the same seeds, the dead one first, and serves
        async with running_app(app_settings(seeds)) as (second, _):
            r = await second.post(
                f"/api/v1/polls/{on_victim[0]}/vote",
                json={"option_id": "B"},
                headers={"X-Voter-Id": "late"},
            )
            assert r.status_code == 200, r.text
            load.voters[on_victim[0]]["late"] = "ok"
    return load, back, wrong


async def test_a_seed_master_killed_under_load_fails_over_with_nothing_lost_or_doubled(
    clusters: dict[str, LocalCluster],
) -> None:
    """The killed master is the first seed of REDIS_CLUSTER_URL: the running service
    follows the promotion, and a fresh start with the same seeds starts and serves."""
    cluster = clusters["seed"]
    victim = cluster.nodes[0]
    load, back, wrong = await kill_under_load(cluster, victim, cluster.nodes)
    found = await asyncio.to_thread(exactness, cluster, load, cluster.nodes[1])
    print(f"seed killed: back after promotion {back * 1000:.0f} ms; answers {load.answers}")
    assert_exact(found)
    assert not wrong, f"voters counted twice: {wrong}"


async def test_a_master_whose_replica_lags_killed_under_load_loses_nothing_acknowledged(
    clusters: dict[str, LocalCluster],
) -> None:
    """The replication link runs 300 ms behind (a proxy the replica replicates through,
    announced by the master as its address), and the master is killed right after a flush
    landed, with the stream still on its way: what was acknowledged had been WAITed for,
    so the promoted replica holds it; what was not is re-sent and lands once."""
    cluster = clusters["lag"]
    victim = cluster.nodes[1]
    replica = cluster.replica_of(victim)
    proxy = LaggingReplicationProxy(victim.port, LAG_SECONDS)
    await proxy.start()
    try:
        with master(victim) as client:
            client.config_set("cluster-announce-port", proxy.port)

        def through_proxy() -> bool:
            with master(replica) as client:
                info = client.info("replication")
            return int(info["master_port"]) == proxy.port and info["master_link_status"] == "up"

        await asyncio.to_thread(wait_until, through_proxy, "the replica replicates via the proxy")
        assert proxy.replication_links >= 1
        load, back, wrong = await kill_under_load(
            cluster, victim, [cluster.nodes[0], cluster.nodes[2]], after_kill=proxy.stop
        )
    finally:
        await proxy.stop()
    found = await asyncio.to_thread(exactness, cluster, load, cluster.nodes[0])
    print(f"lagging replica: back after promotion {back * 1000:.0f} ms; answers {load.answers}")
    assert_exact(found)
    assert not wrong, f"voters counted twice: {wrong}"


async def test_min_replicas_holds_batches_a_master_cannot_replicate_and_health_says_why(
    clusters: dict[str, LocalCluster],
) -> None:
    """MIN_REPLICAS_ACKED=1 on masters without replicas: an ad-hoc vote is acknowledged
    (buffered) but its batch stays held, never released as landed; a defined vote answers
    503 `outcome_unknown` (it ran; it is not durable), and so does its voter's retry (the
    node found the voter: counted once, but that answer is not durable either); /health
    shows each master's replicas and AOF, and the flusher's hold names the reason."""
    cluster = clusters["partial"]
    node = cluster.nodes[0]
    poll_id, defined_id = poll_on(cluster, node, "mr"), poll_on(cluster, node, "md")
    strict = app_settings(
        [node], min_replicas_acked=1, durable_wait_seconds=0.05, shutdown_flush_seconds=0
    )
    async with running_app(app_settings([node])) as (client, _):
        await create_defined(client, defined_id)
    async with running_app(strict) as (client, service):
        r = await client.post(f"/api/v1/vote/{poll_id}", json={"option_id": "A"})
        assert r.status_code == 200, r.text
        await service.flusher.flush()
        held = service.flusher.in_flight_votes()
        why = service.flusher.down.get("cluster", "")
        voter = {"X-Voter-Id": "strict"}
        path = f"/api/v1/polls/{defined_id}/vote"
        first = await client.post(path, json={"option_id": "A"}, headers=voter)
        again = await client.post(path, json={"option_id": "A"}, headers=voter)
        health = (await client.get("/api/v1/health")).json()
    assert held == 1 and "0 of 1 replicas" in why, (held, why)
    assert (first.status_code, first.json()["type"]) == (503, "outcome_unknown"), first.text
    assert (again.status_code, again.json()["type"]) == (503, "outcome_unknown"), again.text
    with master(node) as client_:  # stored once: the retry found the voter and added nothing
        assert client_.hget(f"def:{{{defined_id}}}", "total") == "1"
    servers = health["durability"]["servers"]
    assert health["durability"]["min_replicas_acked"] == 1
    # The masters keep an AOF (the test nodes do) and have no replica: with the minimum
    # strict, that is a hold (the flusher's reason above), not a weaker promise.
    assert all(s["aof"] and s["replicas_connected"] == 0 for s in servers.values()), servers
    assert not any("no replica" in w for s in servers.values() for w in s["weaker"]), servers


async def test_one_pipeline_over_a_dead_and_a_live_master_answers_what_each_part_did(
    clusters: dict[str, LocalCluster],
) -> None:
    """One master killed (no replica): defined votes on the live masters' polls answer 200
    while votes on the dead one's answer 503 `node_unavailable` in the same round trips;
    a write-through bulk over both answers `outcome_unknown` (its live part is stored,
    once), a bulk on the dead master alone `node_unavailable` (nothing stored)."""
    cluster = clusters["partial"]
    dead, live = cluster.nodes[2], cluster.nodes[0]
    on_dead, on_live = poll_on(cluster, dead, "pd"), poll_on(cluster, live, "pl")
    bulk_dead, bulk_live = poll_on(cluster, dead, "bd"), poll_on(cluster, live, "bl")
    settings = app_settings([live], batch_interval_seconds=0)
    async with running_app(settings) as (client, _):
        for poll_id in (on_dead, on_live):
            await create_defined(client, poll_id)
        body = [{"poll_id": p, "option_id": "A", "count": 1} for p in (bulk_dead, bulk_live)]
        assert (await client.post("/api/v1/votes", json=body, headers=AUTH)).status_code == 200
        dead.kill()

        async def vote(poll_id: str, voter: str) -> tuple[int, str]:
            r = await client.post(
                f"/api/v1/polls/{poll_id}/vote",
                json={"option_id": "A"},
                headers={"X-Voter-Id": voter},
            )
            return r.status_code, r.json().get("type", "")

        answers = []
        for round_ in range(2):  # the second finds the dead master's connection refused
            voters = [f"v{round_}-{i}" for i in range(10)]
            answers += await asyncio.gather(
                *(vote(p, v) for v in voters for p in (on_live, on_dead))
            )
        both = await client.post("/api/v1/votes", json=body, headers=AUTH)
        alone = await client.post("/api/v1/votes", json=body[:1], headers=AUTH)
    live_answers = set(answers[0::2])
    dead_answers = set(answers[1::2])
    with master(live) as client_:
        stored_live = int(client_.hget(f"poll:{{{bulk_live}}}", "A") or 0)
        defined_live = int(client_.hget(f"def:{{{on_live}}}", "total") or 0)
    assert live_answers == {(200, "")}, live_answers
    assert dead_answers == {(503, "node_unavailable")}, dead_answers
    assert (both.status_code, both.json()["type"]) == (503, "outcome_unknown"), both.text
    assert (alone.status_code, alone.json()["type"]) == (503, "node_unavailable"), alone.text
    assert (stored_live, defined_live) == (2, 20)
