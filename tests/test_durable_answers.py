"""Review of issue 16 item 3 (review16b): an answer that says "your vote is counted" must
wait for the same durability as the vote itself, whichever instance gives it.

`WAIT` covers only the writes of its own connection. A retry that writes nothing (a
defined voter's `already_voted`, an Idempotency-Key's replay) and is sent on another
connection, here by a second instance behind the same load balancer, has nothing of its
own to wait for: its `WAIT` returns at once, even while no replica holds the first
attempt's vote. The master killed then, that voter is told "counted" and the vote is gone.
Found by this review with the two first tests; fixed in app/storage/cluster_pipeline.py
(each durable round trip writes a short-lived probe key in its slot before its WAIT).

One cluster of 3 masters with 1 replica each; the replica of the tested master is
stopped (SIGSTOP: still listed as connected by `ROLE`, acknowledging nothing) and always
continued again."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from app.devtools.local_cluster import LocalCluster
from app.devtools.local_nodes import LocalNode, free_port
from tests.cluster_helpers import DEADLINE, master, poll_on
from tests.conftest import running_app, settings_for
from tests.failover_helpers import AUTH, TOKEN, create_defined


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    made = LocalCluster(masters=3, replicas=1, node_timeout_ms=1000)
    try:
        made.start()
        yield made
    finally:
        made.stop()


def app_settings(node: LocalNode) -> Any:
    return settings_for(
        None,
        redis_cluster_url=node.url,
        batch_interval_seconds=0.05,
        cache_ttl_seconds=0,
        api_token=TOKEN,
        redis_timeout_seconds=1.0,
        durable_wait_seconds=0.2,
        voter_secret="s3cret",
        shutdown_flush_seconds=0,
    )


@asynccontextmanager
async def stopped(replica: LocalNode) -> AsyncIterator[None]:
    """The replica frozen: its link stays open (ROLE lists it), it acknowledges nothing."""
    assert replica.process is not None
    os.kill(replica.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(replica.process.pid, signal.SIGCONT)


def replica_offset_behind(node: LocalNode) -> bool:
    """The master has written more than its replica acknowledged."""
    with master(node) as client:
        info = client.info("replication")
    return int(info["slave0"]["offset"]) < int(info["master_repl_offset"])


async def test_a_voter_is_told_already_voted_only_once_the_vote_is_durable(
    cluster: LocalCluster,
) -> None:
    node = cluster.nodes[0]
    replica = cluster.replica_of(node)
    poll_id = poll_on(cluster, node, "dv")
    path = f"/api/v1/polls/{poll_id}/vote"
    voter = {"X-Voter-Id": "retrier"}
    async with (
        running_app(app_settings(node)) as (first, _),
        running_app(app_settings(node)) as (second, _),
    ):
        await create_defined(first, poll_id)
        async with stopped(replica):
            tried = await first.post(path, json={"option_id": "A"}, headers=voter)
            retried = await second.post(path, json={"option_id": "A"}, headers=voter)
            behind = replica_offset_behind(node)
        assert (tried.status_code, tried.json()["type"]) == (503, "outcome_unknown"), tried.text
        assert behind, "the replica had acknowledged the vote: the staging failed"
        # The vote is on the master only: telling the voter it counted is not durable.
        assert retried.status_code == 503, retried.text
        assert retried.json()["type"] == "outcome_unknown", retried.text


async def test_a_keyed_retry_answers_200_only_once_the_vote_is_durable(
    cluster: LocalCluster,
) -> None:
    node = cluster.nodes[1]
    replica = cluster.replica_of(node)
    poll_id = poll_on(cluster, node, "kv")
    body = [{"poll_id": poll_id, "option_id": "A", "count": 1}]
    keyed = {**AUTH, "Idempotency-Key": "review16b-key"}
    async with (
        running_app(app_settings(node)) as (first, _),
        running_app(app_settings(node)) as (second, _),
    ):
        async with stopped(replica):
            tried = await first.post("/api/v1/votes", json=body, headers=keyed)
            retried = await second.post("/api/v1/votes", json=body, headers=keyed)
            behind = replica_offset_behind(node)
        assert (tried.status_code, tried.json()["type"]) == (503, "outcome_unknown"), tried.text
        assert behind, "the replica had acknowledged the vote: the staging failed"
        assert retried.status_code == 503, retried.text


async def test_a_retry_on_the_same_instance_waits_for_the_same_vote(
    cluster: LocalCluster,
) -> None:
    """The control: on one instance the retry rides the first attempt's connection, whose
    WAIT covers the vote, so it stays `outcome_unknown` until the replica acknowledges."""
    node = cluster.nodes[2]
    replica = cluster.replica_of(node)
    poll_id = poll_on(cluster, node, "sv")
    path = f"/api/v1/polls/{poll_id}/vote"
    voter = {"X-Voter-Id": "same"}
    async with running_app(app_settings(node)) as (client, _):
        await create_defined(client, poll_id)
        async with stopped(replica):
            tried = await client.post(path, json={"option_id": "A"}, headers=voter)
            retried = await client.post(path, json={"option_id": "A"}, headers=voter)
        after: httpx.Response = await client.post(path, json={"option_id": "A"}, headers=voter)
    assert (tried.status_code, tried.json()["type"]) == (503, "outcome_unknown"), tried.text
    assert (retried.status_code, retried.json()["type"]) == (503, "outcome_unknown")
    assert after.status_code == 409, after.text
    with master(node) as client_:
        assert client_.hget(f"def:{{{poll_id}}}", "total") == "1"


@pytest.fixture
def ring_node_with_replica() -> Iterator[tuple[LocalNode, LocalNode]]:
    """A ring node and its replica (`REPLICAOF`), both stopped at the end."""
    node, replica = LocalNode(free_port()), LocalNode(free_port())
    try:
        node.start()
        replica.start()
        with master(replica) as client:
            client.execute_command("REPLICAOF", "127.0.0.1", str(node.port))
        with master(node) as client:
            deadline = time.monotonic() + DEADLINE
            while client.info("replication").get("slave0", {}).get("state") != "online":
                assert time.monotonic() < deadline, "the replica never came online"
                time.sleep(0.01)  # polling the replica's state with a deadline
        yield node, replica
    finally:
        replica.stop()
        node.stop()


async def test_on_the_ring_already_voted_from_another_instance_waits_until_durable(
    ring_node_with_replica: tuple[LocalNode, LocalNode],
) -> None:
    """The same rule on our own ring (`REDIS_NODES`): the second instance's 409 waits for
    the vote it vouches for."""
    node, replica = ring_node_with_replica
    settings = settings_for(
        [node],
        cache_ttl_seconds=0,
        api_token=TOKEN,
        redis_timeout_seconds=1.0,
        durable_wait_seconds=0.2,
        voter_secret="s3cret",
        shutdown_flush_seconds=0,
    )
    poll_id = "ringdv"
    path = f"/api/v1/polls/{poll_id}/vote"
    voter = {"X-Voter-Id": "retrier"}
    async with running_app(settings) as (first, _), running_app(settings) as (second, _):
        await create_defined(first, poll_id)
        async with stopped(replica):
            tried = await first.post(path, json={"option_id": "A"}, headers=voter)
            retried = await second.post(path, json={"option_id": "A"}, headers=voter)
            behind = replica_offset_behind(node)
    assert (tried.status_code, tried.json()["type"]) == (503, "outcome_unknown"), tried.text
    assert behind, "the replica had acknowledged the vote: the staging failed"
    assert retried.status_code == 503, retried.text


async def test_a_master_that_turns_its_aof_off_keeps_serving_with_the_weaker_promise(
    cluster: LocalCluster,
) -> None:
    """`CONFIG SET appendonly no` on a running master makes `WAITAOF` an error. The
    service relearns what the master promises and serves on with the weaker promise (said
    in /health), instead of holding every write on that master for ever."""
    node = cluster.nodes[0]
    poll_id = poll_on(cluster, node, "ao")
    path = f"/api/v1/polls/{poll_id}/vote"
    answers = []
    async with running_app(app_settings(node)) as (client, _):
        await create_defined(client, poll_id)
        with master(node) as admin:
            admin.config_set("appendonly", "no")
        try:
            for _ in range(3):  # the first may meet the old promise: one retry suffices
                r = await client.post(path, json={"option_id": "A"}, headers={"X-Voter-Id": "a"})
                answers.append(r.status_code)
                if r.status_code in (200, 409):
                    break
            health = (await client.get("/api/v1/health")).json()
        finally:
            with master(node) as admin:
                admin.config_set("appendonly", "yes")
    assert answers[-1] in (200, 409), answers
    weaker = health["durability"]["servers"][f"127.0.0.1:{node.port}"]["weaker"]
    assert any("no AOF" in w for w in weaker), weaker
