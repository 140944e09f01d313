"""Nodes that forget. Start-up refuses a node without an append-only file, replica or not
(or, when told to accept it, says so in /health); a node whose marks fall below what this
process confirmed is reported as having lost data, naming how many confirmed batches, and
what the journal still holds of them is sent again."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from app.core.nodes import NodeSpec
from app.devtools.local_nodes import LocalNode
from app.devtools.uvicorn_process import UvicornProcess
from app.services.errors import VoteRejected
from app.services.health_report import health_report
from app.services.journal import Journal
from app.services.polling_service import PollingService
from app.storage.base import NodeMisconfigured
from app.storage.redis_store import ShardedRedisStore
from tests.conftest import service_for, stored_counts
from tests.faults import abandon


def test_start_refuses_a_node_without_aof_or_replica_in_one_line(
    start_node: Callable[..., LocalNode],
) -> None:
    node = start_node(forgetful=True)
    service = UvicornProcess(env={"REDIS_NODES": f"n={node.url}"})
    try:
        output = service.finish(timeout=30)  # it exits by itself
    finally:
        service.kill()
    assert service.process.returncode != 0
    assert "it has no append-only file (appendonly no)" in output


def test_a_node_with_aof_starts(start_node: Callable[..., LocalNode]) -> None:
    node = start_node()  # the test nodes run with appendonly yes
    service = UvicornProcess(env={"REDIS_NODES": f"n={node.url}"})
    try:
        service.wait_ready()
    finally:
        service.kill()


def service_on(nodes: list[LocalNode], folder: Path) -> PollingService:
    specs = [NodeSpec(f"n{i}", node.url) for i, node in enumerate(nodes)]
    return service_for(
        ShardedRedisStore(specs, 100, 2.0, allow_forgetful=True), journal=Journal(folder, "off")
    )


def poll_on(service: PollingService, node: str) -> str:
    return next(p for p in (f"p{i}" for i in range(1000)) if service.store.node_for(p) == node)


async def vote(service: PollingService, poll: str, n: int) -> None:
    deadline = time.monotonic() + 10
    while True:  # a node just restarted: the first call on an old connection fails
        try:
            await service.register({poll: ["A"]})
            break
        except VoteRejected:
            assert time.monotonic() < deadline
    for _ in range(n):
        service.vote(poll, "A")


async def test_without_the_setting_the_check_refuses(
    start_node: Callable[..., LocalNode],
) -> None:
    store = ShardedRedisStore([NodeSpec("n", start_node(forgetful=True).url)], 100, 2.0)
    try:
        with pytest.raises(NodeMisconfigured, match="appendonly no"):
            await store.check_node("n")
    finally:
        await store.close()


async def test_a_node_that_forgot_is_reported_with_its_lost_batches(
    start_node: Callable[..., LocalNode],
) -> None:
    node = start_node(forgetful=True)
    with tempfile.TemporaryDirectory() as tmp:
        service = service_on([node], Path(tmp))
        await service.start()
        try:
            health = await health_report(service)
            assert health["nodes"][0]["forgets"]  # accepted, and said
            assert health["nodes"][0]["lost_data"] is None
            for n in (3, 4):  # two confirmed batches
                await vote(service, "p", n)
                assert await service.flusher.flush() == n
            node.kill()
            node.start()  # back empty: no AOF
            await vote(service, "p", 2)
            assert await service.flusher.flush() == 2  # the flusher carries on
            health = await health_report(service)
            lost = health["nodes"][0]["lost_data"]
            assert lost is not None and lost["lost_batches"] == 2 and lost["lost_votes"] == 7
            assert lost["resent_batches"] == 0  # nothing of them was left in the journal
            assert health["status"] == "degraded"
            assert stored_counts(node, "p") == {"A": 2}
        finally:
            await service.stop()


async def test_what_the_journal_still_holds_is_sent_again(
    start_node: Callable[..., LocalNode],
) -> None:
    forgetful, other = start_node(forgetful=True), start_node()
    with tempfile.TemporaryDirectory() as tmp:
        first = service_on([forgetful, other], Path(tmp))
        await first.start()
        p, q = poll_on(first, "n0"), poll_on(first, "n1")
        await vote(first, p, 5)
        await vote(first, q, 3)
        await abandon(first)  # kill -9: the votes are loose in the journal
        other.kill()
        second = service_on([forgetful, other], Path(tmp))
        await second.start()  # recovery seals both nodes' votes in one file
        try:
            await second.flusher.flush()  # n0 confirms; the file waits for n1
            assert stored_counts(forgetful, p) == {"A": 5}
            forgetful.kill()
            forgetful.start()  # n0 forgot the confirmed batch
            await vote(second, p, 1)
            await second.flusher.flush()
            assert stored_counts(forgetful, p) == {"A": 6}  # sent again from the journal
            lost = (await health_report(second))["nodes"][0]["lost_data"]
            assert lost["lost_batches"] == 1 and lost["resent_batches"] == 1
            assert lost["resent_votes"] == 5
            other.start()
            await second.flusher.flush()
            assert stored_counts(other, q) == {"A": 3}
        finally:
            await second.stop()


def wait_until(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


async def test_a_replica_alone_does_not_keep_a_nodes_counts_through_its_restart(
    start_node: Callable[..., LocalNode],
) -> None:
    """The ring store has no failover: nobody promotes a ring node's replica. So a node
    without an append-only file that restarts comes back empty, and its replica then copies
    the empty data set. First that, on real nodes; then the check must refuse such a node
    as it refuses one with no replica."""
    master, replica = start_node(forgetful=True), start_node(forgetful=True)
    with redis.Redis(port=replica.port) as client:
        client.replicaof("127.0.0.1", master.port)
    with redis.Redis(port=master.port) as client:
        client.hset("poll:{p}", "A", 5)
        wait_until(lambda: int(client.info("replication")["connected_slaves"]) == 1)
    with redis.Redis(port=replica.port) as client:
        wait_until(lambda: client.hget("poll:{p}", "A") == b"5")  # on both
        master.kill()
        master.start()  # restarted by its supervisor, as a crashed process is: empty
        wait_until(lambda: client.hget("poll:{p}", "A") is None)  # the replica resyncs to it
    store = ShardedRedisStore([NodeSpec("n", master.url)], 100, 2.0)
    try:
        with pytest.raises(NodeMisconfigured, match="appendonly no"):
            await store.check_node("n")
    finally:
        await store.close()
