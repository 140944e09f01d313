"""One ring at a time (docs/guarantees.md): two instances with different rings never both
take votes, and counts that an earlier split left on a non-owner are found and moved."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import signal
import time

import httpx
import pytest
import redis

from app.devtools.local_nodes import LocalNode
from app.devtools.uvicorn_process import UvicornProcess
from app.services.errors import RebalanceBlocked, ShuttingDown
from app.services.health_report import health_report
from app.services.polling_service import PollingService
from app.storage.moves import RING_KEY, ring_config
from app.storage.ring_lease import LEASES_KEY, SERVED_KEY, RingLease
from tests.conftest import NodeFactory
from tests.faults import abandon
from tests.ring_helpers import counts_on, find_poll, make_service, serving_with_votes


async def wait_for(condition: object, seconds: float = 30.0) -> None:
    """Poll `condition()` until true (a deadline, not a sleep standing in for an event)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():  # type: ignore[operator]
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def start_or_refusal(service: PollingService) -> str | None:
    try:
        await service.start()
    except RebalanceBlocked as exc:
        await service.store.close()
        return str(exc)
    return None


async def test_two_instances_started_at_once_with_different_rings_do_not_both_serve(
    start_node: NodeFactory,
) -> None:
    nodes = {label: start_node() for label in "abc"}
    two, _, _ = make_service(nodes, ["a", "b"])
    three, _, _ = make_service(nodes, ["a", "b", "c"])
    outcomes = await asyncio.gather(start_or_refusal(two), start_or_refusal(three))
    try:
        assert sorted(o is None for o in outcomes) == [False, True]  # one serves, one refused
        refusal = next(o for o in outcomes if o is not None)
        assert "another ring" in refusal and "REDIS_NODES" in refusal
        loser = two if outcomes[0] is not None else three
        assert not loser.accepting
        with pytest.raises(ShuttingDown):
            loser.vote("p", "A")
    finally:
        for service in (two, three):
            if service.accepting:
                await service.stop()


async def test_a_killed_instances_lease_ends_and_a_new_ring_then_starts(
    start_node: NodeFactory,
) -> None:
    nodes = {label: start_node() for label in "abc"}
    poll_id = find_poll("p", [(["a", "b"], "a"), (["a", "b", "c"], "c")])
    old = await serving_with_votes(nodes, ["a", "b"], poll_id, 1)
    await abandon(old)  # kill -9: its leases stay on the nodes until they run out
    with redis.Redis(port=nodes["a"].port) as client:
        assert client.hlen(LEASES_KEY) == 1
    new, _, _ = make_service(nodes, ["a", "b", "c"])
    await new.start()  # waits for the dead instance's lease to run out, then serves
    try:
        assert new.migration is not None
        await new.migration.wait()
        assert counts_on(nodes["c"], poll_id) == {"A": 1}
    finally:
        await new.stop()


async def test_an_instance_whose_lease_another_ring_took_stops_taking_votes(
    start_node: NodeFactory,
) -> None:
    nodes = {label: start_node() for label in "ab"}
    service, _, mover = make_service(nodes, ["a", "b"])
    await service.start()
    try:
        with redis.Redis(port=nodes["a"].port) as client:
            client.delete(LEASES_KEY)  # its lease lapsed there (a long stall, say)
        other = RingLease(mover.manager, mover.call, "another ring", 60)
        await other._acquire("a")  # and an instance with another ring took the node
        await wait_for(lambda: service.ring_lost is not None)  # the next renewal sees it
        with pytest.raises(ShuttingDown, match="no longer serves the ring"):
            service.vote("p", "A")
        report = await health_report(service)
        assert report["status"] == "degraded" and "another ring" in str(report["ring_lost"])
    finally:
        await service.stop()


def seed_an_old_split(nodes: dict[str, LocalNode], config: str, poll_id: str) -> None:
    """What an earlier split left, on nodes from before leases: the ring recorded, no list
    of the rings that served, and a poll's counts on a node that is not its owner."""
    for node in nodes.values():
        with redis.Redis(port=node.port) as client:
            client.set(RING_KEY, config)
            client.delete(SERVED_KEY)
    with redis.Redis(port=nodes["b"].port) as client:
        client.hset(f"poll:{{{poll_id}}}", mapping={"A": 2})
        client.sadd(f"poll:{{{poll_id}}}:options", "A")


async def test_a_start_finds_and_moves_counts_an_earlier_split_left_on_a_non_owner(
    start_node: NodeFactory,
) -> None:
    nodes = {label: start_node() for label in "ab"}
    poll_id = find_poll("p", [(["a", "b"], "a")])  # owner a; the split left it on b
    service, _, mover = make_service(nodes, ["a", "b"])
    seed_an_old_split(nodes, ring_config(mover.manager), poll_id)
    await service.start()
    try:
        assert service.migration is not None
        await service.migration.wait()
        assert counts_on(nodes["a"], poll_id) == {"A": 2}
        assert counts_on(nodes["b"], poll_id) == {}
        assert (await service.results(poll_id)).results == {"A": 2}
    finally:
        await service.stop()
    with redis.Redis(port=nodes["a"].port, decode_responses=True) as client:
        assert len(client.smembers(SERVED_KEY)) == 1  # settled: only this ring since


async def test_a_restart_with_the_same_ring_recorded_scans_nothing(
    start_node: NodeFactory,
) -> None:
    """The control for the test above: with the list of rings kept, nothing is moved."""
    nodes = {label: start_node() for label in "ab"}
    first, _, _ = make_service(nodes, ["a", "b"])
    await first.start()
    assert first.migration is not None
    await first.migration.wait()
    await first.stop()
    again, _, _ = make_service(nodes, ["a", "b"])
    await again.start()
    try:
        assert again.migration is not None and not again.migration.active
    finally:
        await again.stop()


def test_two_service_processes_started_at_once_with_different_rings_one_refuses(
    start_node: NodeFactory,
) -> None:
    """The same race between two real processes (uvicorn): the loser says why in one line
    and exits non-zero; the winner serves."""
    nodes = [start_node(), start_node(), start_node()]
    rings = [nodes[:2], nodes]
    env = {"BATCH_INTERVAL_SECONDS": "0.2", "RING_LEASE_SECONDS": "1"}
    processes = [
        UvicornProcess(env={**env, "REDIS_NODES": ",".join(n.url for n in ring)}) for ring in rings
    ]
    try:
        deadline = time.monotonic() + 60
        while all(p.process.poll() is None for p in processes):
            assert time.monotonic() < deadline, "neither start was refused"
            time.sleep(0.05)
        loser = next(p for p in processes if p.process.poll() is not None)
        winner = next(p for p in processes if p is not loser)
        printed = loser.finish()
        assert loser.process.returncode != 0
        assert "Traceback" not in printed
        assert len([line for line in printed.splitlines() if "another ring" in line]) == 1
        winner.wait_ready()
        assert httpx.post(f"{winner.url}/api/v1/vote/p", json={"option_id": "A"}).status_code == 200
    finally:
        for process in processes:
            process.kill()


def wait_until(condition: object, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def health(process: UvicornProcess) -> dict[str, object]:
    reply: dict[str, object] = httpx.get(f"{process.url}/api/v1/health", timeout=10).json()
    return reply


def test_an_instance_stalled_past_its_lease_loses_no_acknowledged_vote(
    start_node: NodeFactory, tmp_path: object
) -> None:
    """A real process whose event loop stalls (SIGSTOP) for longer than its lease, while
    an instance with another ring starts and moves the polls; then SIGCONT. What it had
    acknowledged must still be counted, on the owner the serving ring reads, once it has
    been stopped and restarted with the ring the others run (the operator's way out)."""
    nodes = {label: start_node() for label in "abc"}
    poll_id = find_poll("p", [(["a", "b"], "a"), (["a", "b", "c"], "c")])

    def ring(labels: str) -> str:
        return ",".join(f"{label}={nodes[label].url}" for label in labels)

    journal = str(tmp_path / "journal")  # type: ignore[operator]
    env = {"RING_LEASE_SECONDS": "1", "CACHE_TTL_SECONDS": "0", "JOURNAL_DIR": journal}
    # No flush before its stop: a SIGSTOP in the middle of one (between its lease check and
    # its write reaching the node) is the window that remains (docs/guarantees.md).
    hold = {"BATCH_INTERVAL_SECONDS": "3600"}
    old = UvicornProcess(env={**env, "REDIS_NODES": ring("ab"), **hold})
    new: UvicornProcess | None = None
    again: UvicornProcess | None = None
    try:
        old.wait_ready()
        wait_until(lambda: health(old)["rebalance"]["state"] == "done")  # type: ignore[index]
        for _ in range(40):
            reply = httpx.post(f"{old.url}/api/v1/vote/{poll_id}", json={"option_id": "A"})
            assert reply.status_code == 200
        os.kill(old.process.pid, signal.SIGSTOP)  # its votes are held, its lease runs out
        new_env = {**env, "JOURNAL_DIR": str(tmp_path / "new")}  # type: ignore[operator]
        new = UvicornProcess(env={**new_env, "REDIS_NODES": ring("abc")})
        new.wait_ready()
        wait_until(lambda: health(new)["rebalance"]["state"] == "done")  # type: ignore[index]
        os.kill(old.process.pid, signal.SIGCONT)
        wait_until(lambda: "ring_lost" in health(old))
        old.terminate()
        # Restarted on its journal with the ring the others run, as the log tells.
        again = UvicornProcess(env={**env, "REDIS_NODES": ring("abc")})
        again.wait_ready()
        wait_until(lambda: health(again)["rebalance"]["state"] in ("done", "none"))  # type: ignore[index]
        wait_until(lambda: health(again)["buffer"]["in_flight_votes"] == 0)  # type: ignore[index]
        results = httpx.get(f"{new.url}/api/v1/results/{poll_id}").json()["results"]
        assert results == {"A": 40}, (results, counts_on(nodes["a"], poll_id))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(old.process.pid, signal.SIGCONT)
        for process in (old, new, again):
            if process is not None:
                process.kill()


def test_a_voter_sent_to_a_stalled_instance_is_never_counted_twice(
    start_node: NodeFactory, tmp_path: object
) -> None:
    """Defined votes sent to an instance while it is stalled (SIGSTOP) past its lease are
    answered once it wakes, after an instance with another ring took the nodes and moved
    the poll. Each is answered 200 (counted: a vote again through the serving instance is
    refused, 409) or 503, never 404 (the poll exists); nothing not answered 200 counts."""
    nodes = {label: start_node() for label in "abc"}
    poll_id = find_poll("t", [(["a", "b"], "a"), (["a", "b", "c"], "c")])

    def ring(labels: str) -> str:
        return ",".join(f"{label}={nodes[label].url}" for label in labels)

    auth = {"Authorization": "Bearer organiser"}
    env = {"RING_LEASE_SECONDS": "1", "CACHE_TTL_SECONDS": "0", "API_TOKEN": "organiser"}
    old = UvicornProcess(env={**env, "REDIS_NODES": ring("ab")})
    new: UvicornProcess | None = None
    try:
        old.wait_ready()
        options = [{"id": "A", "label": "a"}, {"id": "B", "label": "b"}]
        poll = {"poll_id": poll_id, "question": "Q?", "options": options}
        assert httpx.post(f"{old.url}/api/v1/polls", json=poll, headers=auth).status_code == 201
        os.kill(old.process.pid, signal.SIGSTOP)

        def vote(url: str, who: str) -> int:
            reply = httpx.post(
                f"{url}/api/v1/polls/{poll_id}/vote",
                json={"option_id": "A"},
                headers={"X-Voter-Id": who},
                timeout=60,
            )
            return reply.status_code

        voters = [f"v{i}" for i in range(20)]
        with concurrent.futures.ThreadPoolExecutor(len(voters)) as pool:
            stalled = [pool.submit(vote, old.url, who) for who in voters]  # wait in its socket
            new = UvicornProcess(env={**env, "REDIS_NODES": ring("abc")})
            new.wait_ready()
            wait_until(lambda: health(new)["rebalance"]["state"] == "done")  # type: ignore[index]
            os.kill(old.process.pid, signal.SIGCONT)
            answers = dict(zip(voters, (f.result() for f in stalled), strict=True))
        counted = [who for who, status in answers.items() if status == 200]
        assert set(answers.values()) <= {200, 503}, answers  # the poll exists: never a 404
        again = {who: vote(new.url, who) for who in counted}
        assert all(status == 409 for status in again.values()), (answers, again)
        results = httpx.get(f"{new.url}/api/v1/polls/{poll_id}/results").json()
        assert results["total_votes"] == len(counted), (answers, results)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(old.process.pid, signal.SIGCONT)
        for process in (old, new):
            if process is not None:
                process.kill()
