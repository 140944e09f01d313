"""A ring change in real service processes: kill -9 in the middle of the background move,
and a restart that resumes it while votes keep coming; counts exact after."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import redis

from app.devtools.local_nodes import LocalNode
from tests.conftest import NodeFactory, ServiceProcess, running_app, settings_for
from tests.test_rebalance import LABELS, assert_on_owners, expected, labelled, moved, seed

POLLS = [f"p{i}" for i in range(10_000)]


def rebalance(client: httpx.Client) -> dict[str, object]:
    state: dict[str, object] = client.get("/api/v1/health").json()["rebalance"]
    return state


def vote(client: httpx.Client, rng: random.Random, acked: Counter[tuple[str, str]]) -> None:
    poll_id, option_id = rng.choice(POLLS), rng.choice("AB")
    reply = client.post(f"/api/v1/vote/{poll_id}", json={"option_id": option_id})
    assert reply.status_code == 200, reply.text
    acked[poll_id, option_id] += 1


def ring_of(node: LocalNode) -> str:
    with redis.Redis(port=node.port, decode_responses=True) as client:
        return str(client.get("ring:config"))


async def test_kill_9_in_the_middle_of_a_move_then_a_restart_resumes_it(
    start_node: NodeFactory,
    start_service: Callable[..., ServiceProcess],
    tmp_path: Path,
) -> None:
    nodes = [start_node(), start_node(), start_node()]
    seed(nodes, ["a", "b"], POLLS)
    async with running_app(settings_for(None, redis_nodes=labelled(nodes[:2]))) as (_, service):
        await moved(service)  # records the ring a, b
    old_ring = ring_of(nodes[0])
    env = {
        "REDIS_NODES": labelled(nodes),
        "REBALANCE_BATCH": "1",  # one poll per round trip: a move long enough to cut
        "BATCH_INTERVAL_SECONDS": "0.2",
        "JOURNAL_DIR": str(tmp_path / "journal"),
        "JOURNAL_FSYNC": "always",  # a 200 is on disk: it survives kill -9
    }
    acked: Counter[tuple[str, str]] = Counter()
    rng = random.Random(7)
    first = start_service(env)
    with httpx.Client(base_url=first.url, timeout=10) as client:
        while True:
            for _ in range(20):
                vote(client, rng, acked)
            state = rebalance(client)
            assert state["state"] == "moving", state  # the move outlasts this loop
            if int(str(state["polls_moved"])) >= 100:
                break
    first.kill()  # kill -9, between two requests: every vote sent was answered
    assert ring_of(nodes[0]) == old_ring  # the move was cut off: the new ring not recorded
    print(f"killed after {state['polls_moved']} polls moved, {sum(acked.values())} votes")
    second = start_service({k: v for k, v in env.items() if k != "REBALANCE_BATCH"})
    with httpx.Client(base_url=second.url, timeout=10) as client:
        while rebalance(client)["state"] == "moving":
            for _ in range(20):
                vote(client, rng, acked)
        for _ in range(20):
            vote(client, rng, acked)
        state = rebalance(client)
    assert "stopped: all held votes flushed" in second.terminate()
    assert ring_of(nodes[0]) != old_ring
    print(f"resumed: {state}; {sum(acked.values())} votes acknowledged in all")
    counts: dict[str, dict[str, int]] = {}
    for poll_id in POLLS:
        counts[poll_id] = {o: n + acked[poll_id, o] for o, n in expected(poll_id).items()}
    assert_on_owners(nodes, LABELS, POLLS, counts.__getitem__)
