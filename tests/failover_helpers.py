"""What the failover tests share: a proxy that makes a replica lag behind its master, a
load of ad-hoc and defined votes that records every answer, the wait for a promotion,
and the exactness checks read from the masters that serve the slots after it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field

import httpx

from app.devtools.local_cluster import LocalCluster
from app.devtools.local_nodes import LocalNode
from app.storage.cluster_store import slot_of
from app.storage.defined import def_key, voters_key
from app.storage.redis_store import poll_key
from tests.cluster_helpers import DEADLINE, master
from tests.proxies import Proxy

TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TWO_OPTIONS = [{"id": "A", "label": "a"}, {"id": "B", "label": "b"}]


class LaggingReplicationProxy(Proxy):
    """Forwards every connection; the one that carries replication (it sends PSYNC) gets
    the master's bytes `lag` seconds late, in order. `stop()` drops what is still on its
    way, as a dead master's unsent stream is lost."""

    def __init__(self, upstream_port: int, lag: float) -> None:
        super().__init__(upstream_port)
        self.lag = lag
        self.replication_links = 0
        self._links: list[asyncio.Task[None]] = []

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            node_r, node_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_w.close()
            return
        link = {"replication": False}
        late: deque[tuple[float, bytes]] = deque()
        arrived = asyncio.Event()

        async def to_node() -> None:
            while data := await client_r.read(65536):
                if b"PSYNC" in data or b"SYNC" in data:
                    if not link["replication"]:
                        self.replication_links += 1
                    link["replication"] = True
                node_w.write(data)
                await node_w.drain()

        async def from_node() -> None:
            while data := await node_r.read(65536):
                if link["replication"]:
                    late.append((time.monotonic() + self.lag, data))
                    arrived.set()
                    continue
                client_w.write(data)
                await client_w.drain()

        tasks = [asyncio.create_task(t()) for t in (to_node, from_node)]
        tasks.append(asyncio.create_task(self._deliver_late(late, arrived, client_w)))
        self._links.extend(tasks)
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            await asyncio.wait(tasks[:2], return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        for writer in (client_w, node_w):
            writer.close()

    @staticmethod
    async def _deliver_late(
        late: deque[tuple[float, bytes]], arrived: asyncio.Event, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            await arrived.wait()
            arrived.clear()
            while late:
                due, data = late[0]
                if due > time.monotonic():  # the lag itself, not a synchronisation
                    await asyncio.sleep(due - time.monotonic())
                late.popleft()
                writer.write(data)
                await writer.drain()

    async def stop(self) -> None:
        for task in self._links:
            task.cancel()
        await super().stop()


def slot_owner_port(cluster: LocalCluster, slot: int, observer: LocalNode) -> int:
    """The port of the node serving `slot`, as `observer` sees it (by node id)."""
    ids = {}
    for node in [*cluster.nodes, *cluster.replica_nodes]:
        if node.process is not None and node.process.poll() is None:  # alive
            ids[cluster.node_id(node)] = node.port
    with master(observer) as client:
        for first, last, (_, _port, node_id, *_), *_ in client.execute_command("CLUSTER", "SLOTS"):
            if int(first) <= slot <= int(last):
                return ids[node_id]
    raise LookupError(slot)


def promoted(cluster: LocalCluster, replica: LocalNode) -> bool:
    with master(replica) as client:
        return bool(client.execute_command("ROLE")[0] == "master")


@dataclass
class Load:
    """Voters and ad-hoc votes against the app until `stop`; every answer recorded."""

    client: httpx.AsyncClient
    adhoc_polls: list[str]
    defined_polls: list[str]
    acked: dict[str, int] = field(default_factory=dict)  # ad-hoc poll -> 200s
    # defined poll -> voter -> final answer ("ok" 200, "already" 409 after an unknown)
    voters: dict[str, dict[str, str]] = field(default_factory=dict)
    answers: dict[int, int] = field(default_factory=dict)  # status -> count
    first_ok_after: dict[str, float] = field(default_factory=dict)  # poll -> time of 200
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    mark: float = float("inf")  # record the first 200 per poll after this moment

    def _note(self, status: int, poll_id: str) -> None:
        self.answers[status] = self.answers.get(status, 0) + 1
        if status == 200 and time.monotonic() >= self.mark:
            self.first_ok_after.setdefault(poll_id, time.monotonic())

    async def adhoc(self, poll_id: str) -> None:
        while not self.stop.is_set():
            r = await self.client.post(f"/api/v1/vote/{poll_id}", json={"option_id": "A"})
            assert r.status_code in (200, 503), r.text
            self._note(r.status_code, poll_id)
            if r.status_code == 200:
                self.acked[poll_id] = self.acked.get(poll_id, 0) + 1
            await asyncio.sleep(0.002)  # pace the load; nothing waits on it

    async def defined(self, poll_id: str, worker: int) -> None:
        seen = self.voters.setdefault(poll_id, {})
        n = 0
        while not self.stop.is_set():
            n += 1
            voter = f"w{worker}-v{n}"
            deadline = time.monotonic() + DEADLINE
            while True:  # a voter retries a 503 until counted (200) or told it was (409)
                r = await self.client.post(
                    f"/api/v1/polls/{poll_id}/vote",
                    json={"option_id": "A"},
                    headers={"X-Voter-Id": voter},
                )
                assert r.status_code in (200, 409, 503), r.text
                self._note(r.status_code, poll_id)
                if r.status_code in (200, 409):
                    seen[voter] = "ok" if r.status_code == 200 else "already"
                    break
                assert time.monotonic() < deadline, f"voter {voter} never answered"
                await asyncio.sleep(0.01)

    def tasks(self) -> list[asyncio.Task[None]]:
        found = [asyncio.create_task(self.adhoc(p)) for p in self.adhoc_polls]
        found += [
            asyncio.create_task(self.defined(p, w)) for p in self.defined_polls for w in (1, 2)
        ]
        return found


async def create_defined(client: httpx.AsyncClient, poll_id: str) -> None:
    definition = {"poll_id": poll_id, "question": "Which?", "options": TWO_OPTIONS}
    r = await client.post("/api/v1/polls", json=definition, headers=AUTH)
    assert r.status_code == 201, r.text


async def revote_all(load: Load) -> dict[str, list[int]]:
    """Every voter answered 200 or 409 votes again: anything but 409 is a voter counted
    twice (its first vote was lost). Returns the statuses that were not 409, by poll."""
    wrong: dict[str, list[int]] = {}
    for poll_id, voters in load.voters.items():
        for voter in voters:
            r = await load.client.post(
                f"/api/v1/polls/{poll_id}/vote",
                json={"option_id": "A"},
                headers={"X-Voter-Id": voter},
            )
            if r.status_code != 409:
                wrong.setdefault(poll_id, []).append(r.status_code)
    return wrong


def exactness(cluster: LocalCluster, load: Load, observer: LocalNode) -> dict[str, object]:
    """What the serving masters hold against what was acknowledged: ad-hoc counts vs 200s,
    defined totals and voter records vs the voters answered 200 or 409."""
    every = {n.port: n for n in [*cluster.nodes, *cluster.replica_nodes]}
    adhoc = {}
    for poll_id in load.adhoc_polls:
        node = every[slot_owner_port(cluster, slot_of(poll_id), observer)]
        with master(node) as client:
            adhoc[poll_id] = (
                int(client.hget(poll_key(poll_id), "A") or 0),
                load.acked.get(poll_id, 0),
            )
    defined = {}
    for poll_id in load.defined_polls:
        node = every[slot_owner_port(cluster, slot_of(poll_id), observer)]
        with master(node) as client:
            total = int(client.hget(def_key(poll_id), "total") or 0)
            records = client.hgetall(voters_key(poll_id))
        answered = len(load.voters.get(poll_id, {}))
        defined[poll_id] = (total, len(records), sorted(set(records.values())), answered)
    return {"adhoc": adhoc, "defined": defined}


def assert_exact(found: dict[str, object]) -> None:
    adhoc = found["adhoc"]
    defined = found["defined"]
    assert isinstance(adhoc, dict) and isinstance(defined, dict)
    lost_or_doubled = {p: v for p, v in adhoc.items() if v[0] != v[1]}
    assert not lost_or_doubled, f"(stored, acknowledged) differ: {lost_or_doubled}"
    for poll_id, (total, records, values, answered) in defined.items():
        assert (total, records) == (answered, answered), (poll_id, total, records, answered)
        assert values in ([], ["1"]), (poll_id, values)
