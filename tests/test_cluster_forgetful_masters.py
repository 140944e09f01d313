"""Redis Cluster masters that forget, on real clusters of 3 masters whose first master runs
without an append-only file. Start-up refuses such a master when it has no replica either
(in one line naming it), accepts it with ALLOW_NODES_WITHOUT_PERSISTENCE (warned once, in
/health) or once a replica is connected (with the weaker promise in /health). A master
killed and restarted empty is reported as having lost data, with the confirmed batches and
votes of its slots only, and the votes the journal still held are counted once. A part
refused behind a failed part of its own list is no loss."""

from __future__ import annotations

import logging
import re
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from app.core.nodes import NodeSpec
from app.devtools.local_cluster import LocalCluster
from app.devtools.local_nodes import LocalNode
from app.devtools.uvicorn_process import UvicornProcess
from app.services.health_report import health_report
from app.services.journal import Journal
from app.services.polling_service import PollingService
from app.storage.base import Batch, MarksBehind, NodeMisconfigured, NodeUnavailable
from app.storage.cluster_store import ClusterRedisStore, slot_of
from app.storage.redis_store import aside_key, poll_key
from tests.cluster_helpers import DEADLINE, master, poll_on, same_slot_polls, stored, wait_until
from tests.conftest import running_app, service_for, settings_for

REFUSED = "it has no append-only file (appendonly no) and no replica connected"


@pytest.fixture(scope="module")
def clusters() -> Iterator[dict[str, LocalCluster]]:
    """ "checks": for the start-up checks (a replica joins its forgetful master at the end
    of that test). "restarts": its masters are killed and restarted; a node timeout of a
    minute keeps a master that is down for a while from being marked failed (no replica
    could take over; the cluster would refuse every slot)."""
    wanted = {
        "checks": LocalCluster(masters=3, forgetful=(0,)),
        "restarts": LocalCluster(masters=3, forgetful=(0,), node_timeout_ms=60_000),
    }
    try:
        with ThreadPoolExecutor(len(wanted)) as pool:
            for future in [pool.submit(c.start) for c in wanted.values()]:
                future.result()
        yield wanted
    finally:
        for started in wanted.values():
            started.stop()


def store_on(cluster: LocalCluster, allow: bool = False) -> ClusterRedisStore:
    return ClusterRedisStore(NodeSpec("cluster", cluster.url), 2.0, allow_forgetful=allow)


def name(node: LocalNode) -> str:
    return f"127.0.0.1:{node.port}"


def replicate(cluster: LocalCluster, of: LocalNode) -> LocalNode:
    """A new node joins the cluster as a replica of `of`; returns once `of` reports it
    connected. Stopped with the cluster."""
    replica = cluster._start_node(len(cluster.nodes) + len(cluster.replica_nodes))
    cluster.replica_nodes.append(replica)
    bus = replica.extra_args[replica.extra_args.index("--cluster-port") + 1]
    with master(of) as client:
        client.execute_command("CLUSTER", "MEET", "127.0.0.1", replica.port, bus)
    master_id = cluster.node_id(of)
    deadline = time.monotonic() + DEADLINE
    with master(replica) as client:
        while True:  # until the replica has met `of` (the handshake takes a moment)
            try:
                client.execute_command("CLUSTER", "REPLICATE", master_id)
                break
            except redis.ResponseError:
                assert time.monotonic() < deadline, "the replica never met its master"
                time.sleep(0.05)
    with master(of) as client:
        wait_until(
            lambda: int(client.info("replication")["connected_slaves"]) == 1,
            "the replica connected",
        )
    return replica


async def test_a_master_without_aof_is_refused_unless_allowed_or_given_a_replica(
    clusters: dict[str, LocalCluster], caplog: pytest.LogCaptureFixture
) -> None:
    cluster = clusters["checks"]
    forgetful = cluster.nodes[0]
    service = UvicornProcess(env={"REDIS_CLUSTER_URL": cluster.url})
    try:
        output = service.finish(timeout=60)  # it exits by itself
    finally:
        service.kill()
    assert service.process.returncode != 0
    said = [line for line in output.splitlines() if REFUSED in line]
    assert len(said) == 1 and f"master {name(forgetful)}" in said[0], output
    assert "Traceback" not in output, output

    store = store_on(cluster)
    try:
        with pytest.raises(
            NodeMisconfigured, match=re.escape(f"master {name(forgetful)}: {REFUSED}")
        ):
            await store.check_node("cluster")
    finally:
        await store.close()

    allowed = settings_for(
        None, redis_cluster_url=cluster.url, allow_nodes_without_persistence=True
    )
    with caplog.at_level(logging.WARNING, logger="app.cluster_store"):
        async with running_app(allowed) as (client, service_):
            await service_.store.check_node("cluster")  # checked again: said once only
            health = (await client.get("/api/v1/health")).json()
    warned = [r for r in caplog.records if REFUSED in r.getMessage()]
    assert len(warned) == 1, [r.getMessage() for r in caplog.records]
    [node] = health["nodes"]
    assert node["forgets"] is not None and f"master {name(forgetful)}" in node["forgets"]
    others = [m for m in cluster.nodes if m is not forgetful]
    assert not any(name(m) in node["forgets"] for m in others)  # they keep an AOF
    assert any(
        "no AOF" in why for why in health["durability"]["servers"][name(forgetful)]["weaker"]
    )

    replicate(cluster, forgetful)  # a replica can take over: accepted, the weaker promise said
    store = store_on(cluster)
    try:
        await store.check_node("cluster")
        assert store.forgetful == {}
        weaker = store.durability()["servers"][name(forgetful)]["weaker"]  # type: ignore[index]
        assert any("copies the master restarted empty" in why for why in weaker), weaker
    finally:
        await store.close()


async def test_a_part_refused_behind_a_failed_part_of_its_own_list_is_no_loss(
    clusters: dict[str, LocalCluster],
) -> None:
    """Within one list, a slot's second part waits for its first: refused while the first
    fails (here its poll's keys hold no counts), which is not a loss of data. Once the
    first lands, both do."""
    cluster = clusters["checks"]
    x, y = same_slot_polls(f"x{uuid.uuid4().hex[:6]}", 2)
    store = store_on(cluster, allow=True)
    flusher = uuid.uuid4().hex
    try:
        await store.open()
        await store.apply([Batch(flusher, 1, "cluster", {x: {"A": 1}})])  # the slot confirms 1
        with master(cluster.owner(slot_of(y))) as c:
            c.set(poll_key(y), "no counts")
            c.set(aside_key(y), "none either")
            listed = [
                Batch(flusher, 2, "cluster", {y: {"A": 1}}),
                Batch(flusher, 3, "cluster", {x: {"A": 1}}),
            ]
            with pytest.raises(NodeUnavailable) as failed:
                await store.apply(listed)
            assert not isinstance(failed.value, MarksBehind)
            c.delete(poll_key(y), aside_key(y))
            await store.apply(listed)
        assert (stored(cluster, x), stored(cluster, y)) == ({"A": 2}, {"A": 1})
    finally:
        await store.close()


def service_on(cluster: LocalCluster, folder: Path) -> PollingService:
    return service_for(store_on(cluster, allow=True), journal=Journal(folder, "off"))


def cluster_ok(node: LocalNode) -> bool:
    with master(node) as client:
        return "cluster_state:ok" in str(client.execute_command("CLUSTER", "INFO"))


@contextmanager
def logged(logger: str) -> Iterator[list[str]]:
    """What `logger` logs in the block, at any level."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    target = logging.getLogger(logger)
    target.addHandler(handler)
    try:
        yield lines
    finally:
        target.removeHandler(handler)


async def flush_until_landed(service: PollingService) -> None:
    """Flush until nothing is held (a master just restarted: a send may meet a dead link)."""
    deadline = time.monotonic() + DEADLINE
    while service.flusher.has_work():
        await service.flusher.flush()
        assert time.monotonic() < deadline, service.flusher.down


def vote(service: PollingService, poll_id: str, n: int) -> None:
    for _ in range(n):  # the option is known: the vote goes to the buffer (and journal)
        service.vote(poll_id, "A")


async def test_a_master_restarted_empty_is_reported_and_held_votes_count_once(
    clusters: dict[str, LocalCluster],
) -> None:
    """Three confirmed batches: p 3 + q 2, p 4, q 1 (p on the forgetful master, q on
    another). Then that other master is down while a fourth batch (p 5, q 6) lands its p
    part only; the forgetful master is killed -9 and restarted, empty. It lost 2 confirmed
    batches, 7 votes (its slot's parts; q's are kept), and the fourth batch, still in the
    journal, is counted once when it lands."""
    cluster = clusters["restarts"]
    forgetful, kept, _ = cluster.nodes
    p, q = poll_on(cluster, forgetful), poll_on(cluster, kept)
    with tempfile.TemporaryDirectory() as tmp:
        service = service_on(cluster, Path(tmp))
        await service.start()
        try:
            await service.register({p: ["A"], q: ["A"]})
            for votes in ({p: 3, q: 2}, {p: 4}, {q: 1}):
                for poll_id, n in votes.items():
                    vote(service, poll_id, n)
                assert await service.flusher.flush() == sum(votes.values())
            kept.kill()  # its AOF keeps q's counts
            vote(service, p, 5)
            vote(service, q, 6)
            assert await service.flusher.flush() == 0  # held: q's part cannot be sent
            assert stored(cluster, p) == {"A": 12}  # p's part landed
            forgetful.kill()
            forgetful.start()  # back empty, still the master of its slots
            wait_until(lambda: cluster_ok(forgetful), "the restarted master serves")
            with logged("app.flusher") as lines:
                deadline = time.monotonic() + DEADLINE
                while "cluster" not in service.flusher.losses.losses:  # the first send after
                    assert await service.flusher.flush() == 0  # the restart may meet a dead
                    assert time.monotonic() < deadline, lines  # link; q's master is down
            assert [line for line in lines if "LOST DATA" in line] != [], lines
            assert stored(cluster, p) == {"A": 5}  # the held batch's part went again
            health = await health_report(service)
            assert health["status"] == "degraded"
            assert health["nodes"][0]["lost_data"] == {
                "lost_batches": 2,
                "lost_votes": 7,
                "resent_batches": 0,  # nothing confirmed was left in the journal
                "resent_votes": 0,
                "times_found": 1,
            }
            kept.start()
            wait_until(lambda: cluster_ok(kept), "the stopped master serves again")
            await flush_until_landed(service)
            vote(service, p, 1)
            await flush_until_landed(service)  # chained to the slot's new mark: it lands
            assert (stored(cluster, p), stored(cluster, q)) == ({"A": 6}, {"A": 9})
            lost = (await health_report(service))["nodes"][0]["lost_data"]
            assert lost["times_found"] == 1 and lost["lost_votes"] == 7
        finally:
            await service.stop()
