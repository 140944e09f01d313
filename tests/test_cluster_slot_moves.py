"""Slots moving between masters of a real Redis Cluster while the service serves (the
operator's `valkey-cli --cluster reshard`): a hot slot moved under load, a defined poll's
slot moved key by key with votes at every step, a slot moved to a master added after the
start, and a vote on a healthy master sent while another poll's slot moves. Every
acknowledged vote counts once, no voter twice, and nothing answers 500. Each move is driven
step by step (CLUSTER SETSLOT, MIGRATE) with requests in between."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from app.devtools.local_cluster import LocalCluster
from app.storage.cluster_store import slot_of, slot_tags
from app.storage.defined import counts_key, def_key, voters_key
from tests.cluster_helpers import (
    AUTH,
    TOKEN,
    TWO_OPTIONS,
    ClusterPool,
    add_master,
    app_answering_500s,
    cluster,
    cluster_pool,
    defined_total,
    fresh,
    master,
    own_cluster,
    poll_on,
    same_slot_polls,
    settings,
    stored,
)
from tests.conftest import running_app

__all__ = ["cluster", "cluster_pool", "fresh", "own_cluster"]  # fixtures

# The cluster a test scales out, by test: (masters, data kept on disk, spare nodes).
OWN_CLUSTERS = {"scale out": (3, False, 1)}
OwnCluster = Callable[[str], LocalCluster]


async def test_a_hot_slot_moved_to_another_master_under_load_loses_and_doubles_nothing(
    fresh: LocalCluster,
) -> None:
    """Voters keep voting on a hot poll and its slot's neighbours while the slot moves, ten
    keys a call: every acknowledged vote is counted once. While a slot migrates, the
    cluster answers TRYAGAIN to scripts whose keys are split or partly absent: the flusher
    holds the votes and retries, and reads answer from the last snapshot, never going back.
    The flusher's marks move with the slot, so the move is not taken for a loss of data."""
    hot, *neighbours = same_slot_polls("hot", 6)
    slot = slot_of(hot)
    target = next(n for n in fresh.nodes if n is not fresh.owner(slot))
    with master(fresh.owner(slot)) as node:  # other data in the slot: the move takes a while
        node.mset({f"filler:{{{slot_tags()[slot]}}}:{i}": i for i in range(300)})
    async with running_app(
        settings(fresh, batch_interval_seconds=0.02, cache_ttl_seconds=0.05, api_token="t")
    ) as (client, service):
        ok = {"adhoc": 0, "neighbours": 0}
        moving = threading.Event()
        done = threading.Event()
        seen: list[int] = []

        async def vote(poll_id: str, key: str) -> None:
            while not done.is_set():
                r = await client.post(f"/api/v1/vote/{poll_id}", json={"option_id": "A"})
                assert r.status_code == 200, r.text
                ok[key] += 1
                await asyncio.sleep(0)

        async def read() -> None:
            while not done.is_set():
                r = await client.get(f"/api/v1/results/{hot}")
                assert r.status_code == 200, r.text
                seen.append(r.json()["results"].get("A", 0))
                await asyncio.sleep(0)

        chain = (service.flusher.flusher_id, slot)
        confirmed = service.store.chains.confirmed  # type: ignore[attr-defined]

        async def move() -> int:
            # The poll is hot, and the slot has confirmed a part, before the move starts.
            while ok["adhoc"] < 50 or not confirmed.get(chain):
                await asyncio.sleep(0.01)
            moving.set()
            try:
                return await asyncio.to_thread(fresh.migrate_slot, slot, target, 0.02, 10)
            finally:
                await asyncio.sleep(0.2)  # a few more flushes after the move
                done.set()

        tasks = [vote(hot, "adhoc"), *(vote(p, "neighbours") for p in neighbours), read()]
        results = await asyncio.gather(move(), *tasks)
        assert results[0] > 0 and moving.is_set()
        assert fresh.owner(slot) is target
        await service.flusher.flush()
        moved = confirmed[chain]
        r = await client.post(f"/api/v1/vote/{hot}", json={"option_id": "A"})
        assert r.status_code == 200, r.text
        ok["adhoc"] += 1
        await service.flusher.flush()
        assert service.flusher.in_flight_votes() == 0
        # The marks moved with the slot: a part chained to what the slot had confirmed
        # (on the old master) landed on the new one, and no loss of data was seen.
        assert confirmed[chain] > moved
        assert service.flusher.losses.losses == {}
        assert seen == sorted(seen)  # reads never went backwards
        assert stored(fresh, hot) == {"A": ok["adhoc"]}
        assert sum(stored(fresh, p).get("A", 0) for p in neighbours) == ok["neighbours"]
        service.cache.forget([hot])
        final = (await client.get(f"/api/v1/results/{hot}")).json()
        assert final["results"] == {"A": ok["adhoc"]}
        assert final["served_via"] == f"cluster 127.0.0.1:{target.port}"


async def test_a_defined_vote_on_a_healthy_master_is_not_failed_by_another_polls_moving_slot(
    fresh: LocalCluster,
) -> None:
    """Two defined polls, on different masters; one poll's slot is mid-move (its definition
    already on the new master, its counts and voters not yet: the cluster answers TRYAGAIN
    for it). A vote on the other poll, sent at the same moment, lands: it must answer 200,
    not 503 for a vote that was in fact counted (all defined votes share one round trip,
    node "cluster", and the pipeline raises on the first error)."""
    source, healthy_master, target = fresh.nodes
    moving, healthy = poll_on(fresh, source, "m"), poll_on(fresh, healthy_master, "h")
    slot = slot_of(moving)
    try:
        async with running_app(settings(fresh, api_token=TOKEN)) as (client, _):
            for poll_id in (moving, healthy):
                definition = {"poll_id": poll_id, "question": "Which?", "options": TWO_OPTIONS}
                created = await client.post("/api/v1/polls", json=definition, headers=AUTH)
                assert created.status_code == 201, created.text
                r = await client.post(  # counts and voters exist
                    f"/api/v1/polls/{poll_id}/vote",
                    json={"option_id": "A"},
                    headers={"X-Voter-Id": "first"},
                )
                assert r.status_code == 200, r.text
            with master(source) as src, master(target) as dst:
                dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", fresh.node_id(source))
                src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", fresh.node_id(target))
                src.execute_command(
                    "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", def_key(moving)
                )
            a, b = await asyncio.gather(
                client.post(
                    f"/api/v1/polls/{moving}/vote",
                    json={"option_id": "A"},
                    headers={"X-Voter-Id": "v1"},
                ),
                client.post(
                    f"/api/v1/polls/{healthy}/vote",
                    json={"option_id": "A"},
                    headers={"X-Voter-Id": "v2"},
                ),
            )
            total = defined_total(fresh, healthy)
    finally:  # the slot stays the source's; the moved key goes with the next flush
        for node in (source, target):
            with master(node) as c:
                c.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
    assert a.status_code == 503, a.text  # the moving poll: not counted, retry later
    assert (b.status_code, total) == (200, 2), (b.status_code, b.text, total)


async def test_requests_while_a_slot_moves_to_a_master_added_after_start_never_500(
    own_cluster: OwnCluster, cluster_pool: ClusterPool
) -> None:
    """README: "Move slots as usual (valkey-cli --cluster reshard ...)". Scaling out: a new
    master joins, and a slot moves to it while the service runs. Mid-move the old master
    answers ASK for keys already moved (or absent); the client does not know the new master
    yet (redis-py's ASK handling then calls a method on None: AttributeError). A read, a vote
    and a keyed bulk whose Idempotency-Key claim lives in that slot must answer (200, or 503),
    never 500."""
    own = own_cluster("scale out")
    poll_id = "p1"
    async with app_answering_500s(settings(own, cache_ttl_seconds=0, api_token=TOKEN)) as (
        client,
        service,
    ):
        r = await client.post(f"/api/v1/vote/{poll_id}", json={"option_id": "A"})
        assert r.status_code == 200
        await service.flusher.flush()
        new = add_master(own, cluster_pool.spare("scale out"))
        slot = slot_of(poll_id)
        source = own.owner(slot)
        with master(source) as src, master(new) as dst:
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", own.node_id(source))
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", own.node_id(new))
            keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
            src.execute_command("MIGRATE", "127.0.0.1", new.port, "", 0, 5000, "KEYS", *keys)
        r = await client.get(f"/api/v1/results/{poll_id}")
        answers = {"results": (r.status_code, r.text[:200])}
        r = await client.post(f"/api/v1/vote/{poll_id}", json={"option_id": "A"})
        answers["vote"] = (r.status_code, r.text[:200])
        # a keyed bulk whose Idempotency-Key's claim (idem:{p1}) is in the moving slot
        bulk = [{"poll_id": "other", "option_id": "A", "count": 1}]
        headers = {**AUTH, "Idempotency-Key": poll_id}
        r = await client.post("/api/v1/votes", json=bulk, headers=headers)
        answers["keyed"] = (r.status_code, r.text[:200])
        try:
            await service.flusher.flush()
        except Exception as exc:
            answers["flush"] = (500, repr(exc))
        # the move completes: the slot is the new master's
        for node in own.nodes:
            with master(node) as c:
                c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", own.node_id(new))
        await service.flusher.flush()
        r = await client.get(f"/api/v1/results/{poll_id}")
        answers["after"] = (r.status_code, r.text[:200])
    assert all(code != 500 for code, _ in answers.values()), answers
    assert answers["after"][0] == 200 and '"A":2' in answers["after"][1], answers


async def test_defined_poll_votes_while_its_slot_moves_count_each_accepted_vote_once(
    fresh: LocalCluster,
) -> None:
    """One vote per voter while the defined poll's slot moves (with 300 other keys): each
    voter votes twice; the counts equal the 200s, and no voter has two. The move is driven
    step by step, and a round of votes runs at every step: slot marked, each of the poll's
    keys moved, the rest moved, the slot handed over."""
    source, target = fresh.nodes[1], fresh.nodes[2]
    poll_id = poll_on(fresh, source, "q")
    slot = slot_of(poll_id)
    async with running_app(settings(fresh, api_token=TOKEN)) as (client, _):
        definition = {"poll_id": poll_id, "question": "Q", "options": TWO_OPTIONS}
        created = await client.post("/api/v1/polls", json=definition, headers=AUTH)
        assert created.status_code == 201, created.text
        with master(source) as node:
            node.mset({f"filler:{{{poll_id}}}:{i}": i for i in range(300)})
        accepted = 0
        next_voter = 0

        async def voter(i: int) -> None:
            nonlocal accepted
            for _ in range(2):
                r = await client.post(
                    f"/api/v1/polls/{poll_id}/vote",
                    json={"option_id": "AB"[i % 2]},
                    headers={"X-Voter-Id": f"v{i}"},
                )
                accepted += r.status_code == 200

        async def round_of_votes() -> None:
            nonlocal next_voter
            await asyncio.gather(*(voter(next_voter + k) for k in range(5)))
            next_voter += 5

        await round_of_votes()
        source_id, target_id = fresh.node_id(source), fresh.node_id(target)
        with master(source) as src, master(target) as dst:
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            await round_of_votes()
            # the poll's own keys one at a time (every split of them is voted on), then the
            # rest of the slot ten keys a MIGRATE
            for key in (def_key(poll_id), counts_key(poll_id), voters_key(poll_id)):
                src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", key)
                await round_of_votes()
            while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 10):
                src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
            await round_of_votes()
            for node in (target, source, fresh.nodes[0]):
                with master(node) as c:
                    c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        await round_of_votes()
        with master(target) as node:
            counts = {k: int(v) for k, v in node.hgetall(counts_key(poll_id)).items()}
            per_voter = [int(v) for v in node.hgetall(voters_key(poll_id)).values()]
            total = int(node.hget(def_key(poll_id), "total") or 0)
    assert fresh.owner(slot) is target
    assert sum(counts.values()) == total == accepted == len(per_voter) and max(per_voter) == 1
