"""What the tests on a real Redis Cluster share: the module's cluster and a clean state per
test, direct clients to one master, the counts a master holds, poll ids placed on masters,
deadline-bounded waits for observable states, and a proxy that makes one script's reply
go missing (the script ran; its client never hears so)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from app.api.fast_path import FastPath
from app.core.config import Settings
from app.devtools.local_cluster import LocalCluster
from app.devtools.local_nodes import LocalNode
from app.main import create_app
from app.services.polling_service import PollingService
from app.storage.cluster_store import slot_of
from app.storage.defined import def_key
from app.storage.redis_store import aside_key, poll_key
from tests.conftest import settings_for
from tests.proxies import Proxy

# Only turns a hang into a failure; nothing waits for it to pass.
DEADLINE = 30.0
SHARED = "shared"


@pytest.fixture
def fresh(cluster: LocalCluster) -> LocalCluster:
    for node in cluster.nodes:
        with master(node) as client:
            client.flushall()
    return cluster


@dataclass
class ClusterPool:
    """Clusters a module's tests may break (kill, stop, reshape), started all at once: a
    cluster takes about two seconds to accept writes, however small, and the clusters
    start side by side. Each is named by the test that takes it; every one is stopped at
    the end of the module, taken or not."""

    wanted: dict[str, tuple[int, bool, int]]  # name -> (masters, keeps data, spare nodes)
    root: Path
    started: dict[str, LocalCluster] = field(default_factory=dict)
    spares: dict[str, list[LocalNode]] = field(default_factory=dict)

    def start(self) -> ClusterPool:
        def one(name: str) -> tuple[str, LocalCluster]:
            masters, persist, spares = self.wanted[name]
            data_dir = self.root / name if persist else None
            started = LocalCluster(masters=masters, data_dir=data_dir, appendfsync="always")
            self.started[name] = started  # stopped by stop() even if it fails to start
            started.start()
            for i in range(spares):  # cluster-enabled, not met: an operator's next master
                self.spares.setdefault(name, []).append(started._start_node(masters + i))
            return name, started

        with ThreadPoolExecutor(len(self.wanted) or 1) as pool:
            futures = [pool.submit(one, name) for name in self.wanted]
            errors = [exc for f in futures if (exc := f.exception()) is not None]
        if errors:
            self.stop()
            raise errors[0]
        return self

    def take(self, name: str) -> LocalCluster:
        return self.started[name]

    def spare(self, name: str) -> LocalNode:
        return self.spares[name].pop()

    def stop(self) -> None:
        for started in self.started.values():
            started.stop()
        for nodes in self.spares.values():
            for node in nodes:
                node.kill()


@pytest.fixture(scope="module")
def cluster_pool(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ClusterPool]:
    """The module's shared cluster and the clusters named in its `OWN_CLUSTERS`."""
    wanted = {SHARED: (3, False, 0), **getattr(request.module, "OWN_CLUSTERS", {})}
    pool = ClusterPool(wanted, tmp_path_factory.mktemp("clusters"))
    try:
        yield pool.start()
    finally:
        pool.stop()


@pytest.fixture(scope="module")
def cluster(cluster_pool: ClusterPool) -> LocalCluster:
    """The module's shared cluster of 3 masters (tests start from `fresh`)."""
    return cluster_pool.take(SHARED)


@pytest.fixture
def own_cluster(cluster_pool: ClusterPool) -> Iterator[Callable[[str], LocalCluster]]:
    """`own_cluster(name)`: a cluster of the pool for this test alone, stopped when the
    test ends (passed or failed)."""
    taken: list[LocalCluster] = []

    def take(name: str) -> LocalCluster:
        taken.append(cluster_pool.take(name))
        return taken[-1]

    yield take
    for started in taken:
        started.stop()


def master(node: LocalNode) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=node.port, decode_responses=True)


def settings(cluster: LocalCluster, **overrides: Any) -> Settings:
    return settings_for(None, redis_cluster_url=cluster.url, **overrides)


def stored(cluster: LocalCluster, poll_id: str) -> dict[str, int]:
    """The poll's counts as the master of its slot holds them (the hash and its aside)."""
    with master(cluster.owner(slot_of(poll_id))) as client:
        counts: dict[str, int] = {}
        for key in (poll_key(poll_id), aside_key(poll_id)):
            if client.type(key) != "hash":
                continue
            for option, n in client.hgetall(key).items():
                counts[option] = counts.get(option, 0) + int(n)
        return counts


def polls_per_master(
    cluster: LocalCluster, per_master: int, prefix: str = "p"
) -> dict[int, list[str]]:
    """`per_master` poll ids on each master (by port), as the cluster serves them now
    (one look at the slot map, not one per poll)."""
    owner_of = slot_owners(cluster)
    found: dict[int, list[str]] = {node.port: [] for node in cluster.nodes}
    for n in count():
        poll_id = f"{prefix}{n}"
        port = owner_of[slot_of(poll_id)]
        if len(found[port]) < per_master:
            found[port].append(poll_id)
        if all(len(p) == per_master for p in found.values()):
            return found
    raise AssertionError("unreachable")


def polls_on_every_master(cluster: LocalCluster, per_master: int = 4) -> list[str]:
    return [p for polls in polls_per_master(cluster, per_master).values() for p in polls]


def poll_on(cluster: LocalCluster, node: LocalNode, prefix: str = "p") -> str:
    """A poll id whose slot `node` serves now."""
    owner_of = slot_owners(cluster)
    return next(f"{prefix}{n}" for n in count() if owner_of[slot_of(f"{prefix}{n}")] == node.port)


def slot_owners(cluster: LocalCluster) -> dict[int, int]:
    """slot -> port of its master, from the first master's CLUSTER SLOTS."""
    owners: dict[int, int] = {}
    with master(cluster.nodes[0]) as client:
        for first, last, (_, announced, node_id, *_rest), *_ in client.execute_command(
            "CLUSTER", "SLOTS"
        ):
            port = next(n.port for n in cluster.nodes if cluster.node_id(n) == node_id)
            del announced  # may be a proxy's port; the node's own port is what tests use
            for slot in range(first, last + 1):
                owners[slot] = port
    return owners


def same_slot_polls(poll_id: str, how_many: int) -> list[str]:
    slot = slot_of(poll_id)
    return [p for p in (f"s{n}" for n in range(400_000)) if slot_of(p) == slot][:how_many]


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll an observable state; the deadline only turns a hang into a failure."""
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {DEADLINE}s: {what}")
        time.sleep(0.01)


async def await_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {DEADLINE}s: {what}")
        await asyncio.sleep(0.01)


@asynccontextmanager
async def app_answering_500s(
    settings_: Settings,
) -> AsyncIterator[tuple[httpx.AsyncClient, PollingService]]:
    """As `running_app`, but an unhandled error comes back as the 500 a real server sends."""
    app = create_app(settings_)
    api = app.api if isinstance(app, FastPath) else app
    async with api.router.lifespan_context(api):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, api.state.service


class ScriptReplySwallowingProxy(Proxy):
    """Forwards everything; once armed, the next connection that sends a script (EVAL or
    EVALSHA) has it run by the master and never gets an answer on that connection again
    (the link stays open, silent, until the client gives up and closes it). Later
    connections are served normally: a client that re-sends gets its answer."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__(upstream_port)
        self.armed = False
        self.swallowed = 0

    def passes_to_node(self, link: dict[str, bool], data: bytes) -> None:
        if self.armed and b"EVAL" in data:
            self.armed = False
            link["silent"] = True
            self.swallowed += 1

    def keeps_reply(self, link: dict[str, bool], data: bytes) -> bool:
        return not link.get("silent")


@asynccontextmanager
async def behind_proxy(
    cluster: LocalCluster, node: LocalNode, gossiped: bool = False
) -> AsyncIterator[ScriptReplySwallowingProxy]:
    """`node` announces a proxy's port to cluster clients (`cluster-announce-port`, as
    behind NAT): at once in its own slot map (what a client starting from `node` reads),
    and with `gossiped` once every master knows it (what a MOVED to `node` names). Only
    for a cluster the test owns: the announcement is not undone (the cluster stops)."""
    proxy = await ScriptReplySwallowingProxy(node.port).start()
    node_id = cluster.node_id(node)

    def everyone_knows() -> bool:
        for other in cluster.nodes:
            with master(other) as client:
                text = str(client.execute_command("CLUSTER", "NODES"))
            line = next(ln for ln in text.splitlines() if ln.startswith(node_id))
            if f":{proxy.port}@" not in line.split()[1]:
                return False
        return True

    try:
        with master(node) as client:
            client.config_set("cluster-announce-port", proxy.port)
        if gossiped:
            await asyncio.to_thread(wait_until, everyone_knows, "the proxy's port gossiped")
        yield proxy
    finally:
        await proxy.stop()


def cluster_nodes_flag(cluster: LocalCluster, observer: LocalNode, node_id: str) -> list[str]:
    with master(observer) as client:
        text = str(client.execute_command("CLUSTER", "NODES"))
    line = next(ln for ln in text.splitlines() if ln.startswith(node_id))
    return line.split()[2].split(",")


# What the tests that define polls on the cluster send.
def add_master(cluster: LocalCluster, node: LocalNode) -> LocalNode:
    """Scale out: a new, empty master (started beforehand, cluster mode on) joins the
    cluster (CLUSTER MEET), as an operator does before resharding slots onto it."""
    bus = node.extra_args[node.extra_args.index("--cluster-port") + 1]
    for other in cluster.nodes:  # each meets it: no waiting for gossip to spread the news
        with master(other) as client:
            client.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, bus)
    cluster.nodes.append(node)  # stopped with the cluster
    cluster.wait_ok(DEADLINE)
    return node


TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TWO_OPTIONS = [{"id": "A", "label": "a"}, {"id": "B", "label": "b"}]


def defined_total(cluster: LocalCluster, poll_id: str) -> int:
    with master(cluster.owner(slot_of(poll_id))) as node:
        return int(node.hget(def_key(poll_id), "total") or 0)
