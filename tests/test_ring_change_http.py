"""Ring changes seen through the API, with real nodes: a third node joins while voters vote
and readers read; defined polls move off a retiring node with their voters and history; a
keyed request retried after a ring change counts once."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from collections import Counter

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families

from app.core.consistent_hash import HashRing
from app.devtools.local_nodes import LocalNode
from app.storage.redis_store import ShardedRedisStore
from tests.conftest import NodeFactory, running_app, settings_for
from tests.test_rebalance import LABELS, expected, labelled, moved, seed

TOKEN = "organiser-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def everywhere(nodes: list[LocalNode], key: str) -> dict[str, dict[str, str]]:
    """The hash `key` on each node that has it."""
    found = {}
    for label, node in zip(LABELS, nodes, strict=False):
        with redis.Redis(port=node.port, decode_responses=True) as client:
            if value := client.hgetall(key):
                found[label] = value
    return found


async def test_a_third_node_joins_while_votes_and_reads_go_on(start_node: NodeFactory) -> None:
    nodes = [start_node(), start_node(), start_node()]
    polls = [f"p{i}" for i in range(3000)]
    seed(nodes, ["a", "b"], polls)
    async with running_app(settings_for(None, redis_nodes=labelled(nodes[:2]))) as (_, service):
        await moved(service)  # records the ring a, b (nothing moves)
    acked: Counter[tuple[str, str]] = Counter()
    during = Counter[str]()
    async with running_app(settings_for(None, redis_nodes=labelled(nodes))) as (client, service):
        migration = service.migration
        assert migration is not None and migration.active
        assert scraped(await client.get("/metrics"))["polling_rebalance_active"] == 1

        async def voter(seed: int) -> None:
            rng = random.Random(seed)
            while migration.active:
                poll_id, option_id = rng.choice(polls), rng.choice("AB")
                reply = await client.post(f"/api/v1/vote/{poll_id}", json={"option_id": option_id})
                assert reply.status_code == 200, reply.text
                acked[poll_id, option_id] += 1
                during["votes"] += 1
                await asyncio.sleep(0)  # a turn for the others

        async def reader(watched: list[str]) -> None:
            last: dict[str, dict[str, int]] = {}
            while migration.active:
                for poll_id in watched:
                    reply = await client.get(f"/api/v1/results/{poll_id}")
                    assert reply.status_code == 200, reply.text
                    counts = reply.json()["results"]
                    before = last.get(poll_id, {})
                    assert all(counts.get(o, 0) >= n for o, n in before.items()), poll_id
                    last[poll_id] = counts
                    during["reads"] += 1
                    await asyncio.sleep(0)  # a turn for the others

        async def flushing() -> None:
            while migration.active:
                await service.flusher.flush()  # votes land on new owners mid-move
                await asyncio.sleep(0)

        readers = [reader(polls[k::400]) for k in range(4)]
        await asyncio.gather(*(voter(k) for k in range(8)), *readers, flushing())
        await moved(service)
        report = migration.report
        print(
            f"third node under load: {report.moved} of {report.polls} polls moved, "
            f"{during['votes']} votes and {during['reads']} reads during the move, "
            f"{migration.on_demand} polls made whole on first touch"
        )
        assert during["votes"] > 0 and during["reads"] > 0 and migration.on_demand > 0
        assert 0.2 < report.moved / report.polls < 0.5
        metrics = scraped(await client.get("/metrics"))
        assert metrics["polling_rebalance_active"] == 0
        assert metrics["polling_rebalance_polls_moved_total"] == report.moved
        health = (await client.get("/api/v1/health")).json()["rebalance"]
        assert health["state"] == "done" and health["polls_moved"] == report.moved
    # Stopped: everything flushed. Every poll whole on its owner, exact.
    owners = HashRing(LABELS)
    stored = {label: all_polls(node) for label, node in zip(LABELS, nodes, strict=True)}
    for poll_id in polls:
        holders = [label for label in LABELS if poll_id in stored[label]]
        assert holders == [owners.get_node(poll_id)], poll_id
        want = {o: n + acked[poll_id, o] for o, n in expected(poll_id).items()}
        assert stored[holders[0]][poll_id] == want, poll_id


def all_polls(node: LocalNode) -> dict[str, dict[str, int]]:
    """Every ad-hoc poll's counts on the node."""
    with redis.Redis(port=node.port, decode_responses=True) as client:
        keys = [k for k in client.scan_iter("poll:*", count=1000) if k.endswith("}")]
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        return {
            k[k.index("{") + 1 : -1]: {o: int(n) for o, n in v.items()}
            for k, v in zip(keys, pipe.execute(), strict=True)
        }


def scraped(reply: httpx.Response) -> dict[str, float]:
    """The unlabelled samples of a /metrics answer, parsed by prometheus-client."""
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(reply.text)
        for sample in family.samples
        if not sample.labels
    }


def expected_for(i: int) -> dict[str, int]:
    return {"A": i % 3 + 1, "B": i % 2}


async def test_defined_polls_leave_a_retiring_node_whole(start_node: NodeFactory) -> None:
    nodes = [start_node(), start_node(), start_node()]
    ids = [f"d{i}" for i in range(30)]
    before = settings_for(None, redis_nodes=labelled(nodes), api_token=TOKEN)
    async with running_app(before) as (client, service):
        await moved(service)
        for i, poll_id in enumerate(ids):
            body = {"poll_id": poll_id, "question": "Q?", "options": [{"id": "A", "label": "a"},
                    {"id": "B", "label": "b"}], "votes_per_voter": 1}  # fmt: skip
            assert (await client.post("/api/v1/polls", json=body, headers=AUTH)).status_code == 201
            for option_id, n in expected_for(i).items():
                for v in range(n):
                    voter = {"X-Voter-Id": f"{option_id}{v}"}
                    vote = {"option_id": option_id}
                    reply = await client.post(
                        f"/api/v1/polls/{poll_id}/vote", json=vote, headers=voter
                    )
                    assert reply.status_code == 200
            point = json.dumps({"at": 1, "total": sum(expected_for(i).values()), "counts": {}})
            node = service.store.node_for(poll_id)
            with redis.Redis(port=nodes[LABELS.index(node)].port) as direct:
                direct.rpush(f"def:{{{poll_id}}}:history", point)
    after = settings_for(
        None,
        redis_nodes=labelled(nodes[:2]),
        redis_retiring_nodes=f"c={nodes[2].url}",
        api_token=TOKEN,
    )
    async with running_app(after) as (client, service):
        assert service.migration is not None and service.migration.active
        for i, poll_id in enumerate(ids):  # at once, before the background move is over
            again = await client.post(
                f"/api/v1/polls/{poll_id}/vote",
                json={"option_id": "B"},
                headers={"X-Voter-Id": "A0"},
            )
            assert again.status_code == 409 and again.json()["type"] == "already_voted"
            new = await client.post(
                f"/api/v1/polls/{poll_id}/vote",
                json={"option_id": "B"},
                headers={"X-Voter-Id": "new"},
            )
            assert new.status_code == 200
            results = (await client.get(f"/api/v1/polls/{poll_id}/results")).json()
            want = expected_for(i)
            counts = {o["id"]: o["count"] for o in results["options"]}
            assert counts == {"A": want["A"], "B": want["B"] + 1}
            assert results["total_votes"] == sum(want.values()) + 1
            history = (await client.get(f"/api/v1/polls/{poll_id}/history")).json()
            assert [p["total"] for p in history["points"]] == [sum(want.values())]
        await moved(service)
    with redis.Redis(port=nodes[2].port) as retired:
        # ring:config stays; `durable:probe` is the durability wait's own 1 s key (it
        # expires by itself): nothing of any poll is left.
        assert not [k for k in retired.scan_iter() if k not in (b"ring:config", b"durable:probe")]
    for poll_id in ids:
        assert len(everywhere(nodes, f"def:{{{poll_id}}}")) == 1


async def test_a_keyed_retry_after_a_ring_change_counts_once(start_node: NodeFactory) -> None:
    nodes = [start_node(), start_node(), start_node()]
    entries = [{"poll_id": f"q{i}", "option_id": "A", "count": 5} for i in range(40)]
    body = json.dumps(entries).encode()
    headers = {**AUTH, "Content-Type": "application/json", "Idempotency-Key": "batch-7"}
    before = settings_for(None, redis_nodes=labelled(nodes[:2]), api_token=TOKEN)
    async with running_app(before) as (client, service):
        await moved(service)
        single = {"Idempotency-Key": "one-1"}
        assert (
            await client.post("/api/v1/vote/q1", json={"option_id": "B"}, headers=single)
        ).status_code == 200
        # The bulk request's first attempt: its claim, and only node a's part landed (the
        # reply of node b's part was lost, say): b's part has no marker.
        store = service.store
        assert isinstance(store, ShardedRedisStore)
        fingerprint = "bulk " + hashlib.sha256(body).hexdigest()
        assert await store.claim("batch-7", fingerprint) == "claimed"
        part_a = {e["poll_id"]: {"A": 5} for e in entries if store.node_for(e["poll_id"]) == "a"}
        assert await store.apply_once("a", "batch-7", fingerprint, part_a) == "applied"
    after = settings_for(None, redis_nodes=labelled(nodes), api_token=TOKEN)
    async with running_app(after) as (client, service):
        assert service.migration is not None and service.migration.active
        for _ in range(2):  # the retry, during the move, and again
            reply = await client.post("/api/v1/votes", content=body, headers=headers)
            assert reply.status_code == 200 and reply.json()["votes"] == 200
            again = await client.post("/api/v1/vote/q1", json={"option_id": "B"}, headers=single)
            assert again.status_code == 200
        other = await client.post("/api/v1/vote/q1", json={"option_id": "A"}, headers=single)
        assert other.status_code == 409 and other.json()["type"] == "idempotency_key_reused"
        fewer = json.dumps(entries[:5]).encode()
        changed = await client.post("/api/v1/votes", content=fewer, headers=headers)
        assert changed.status_code == 409
        await moved(service)
        for entry in entries:
            results = (await client.get(f"/api/v1/results/{entry['poll_id']}")).json()["results"]
            assert results == ({"A": 5, "B": 1} if entry["poll_id"] == "q1" else {"A": 5})
        moved_polls = {e["poll_id"] for e in entries if service.store.node_for(e["poll_id"]) == "c"}
        assert moved_polls  # some of the request's polls changed owner
