"""Reviewer C: attacks on the Redis Cluster store, on a real 3-master cluster (no mocks)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import redis

from app.api.fast_path import FastPath
from app.devtools.local_cluster import LocalCluster
from app.devtools.local_nodes import LocalNode
from app.main import create_app
from app.services.polling_service import PollingService
from app.storage.cluster_store import slot_of
from app.storage.defined import counts_key, def_key, voters_key
from tests.conftest import ServiceProcess, running_app, settings_for
from tests.test_cluster import polls_on_every_master, stored

TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    started = LocalCluster(masters=3)
    try:
        yield started.start()
    finally:
        started.stop()


@pytest.fixture
def fresh(cluster: LocalCluster) -> Iterator[LocalCluster]:
    for node in cluster.nodes:
        with master(node) as client:
            client.execute_command("CLIENT", "UNPAUSE")
            client.flushall()
    yield cluster
    for node in cluster.nodes:
        with master(node) as client:
            client.execute_command("CLIENT", "UNPAUSE")


def master(node: LocalNode) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=node.port, decode_responses=True)


def settings(cluster: LocalCluster, **overrides: object) -> object:
    return settings_for(None, redis_cluster_url=cluster.url, **overrides)


BUSY_LOOP = "local i = 0 while i < tonumber(ARGV[1]) do i = i + 1 end return i"


def busy(node: LocalNode, iterations: int = 6_000_000) -> threading.Thread:
    """The master is busy for about two seconds (another client's slow script, under the
    5 s busy-reply threshold): commands sent meanwhile wait in its socket and run after,
    even if their client gave up and closed the connection. A slow master, as under a
    long fork, a big DEL or a busy neighbour."""

    def run() -> None:
        with master(node) as client:
            client.eval(BUSY_LOOP, 0, iterations)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    time.sleep(0.1)  # the script has started
    return thread


async def test_a_defined_vote_whose_reply_times_out_is_counted_once(fresh: LocalCluster) -> None:
    """One vote, one voter allowed several: a master slower than REDIS_TIMEOUT_SECONDS for a
    moment must not turn the one vote into several (the store's client must not re-send a
    script that is not idempotent)."""
    async with running_app(settings(fresh, api_token=TOKEN, redis_timeout_seconds=0.5)) as (
        client,
        _,
    ):
        created = await client.post(
            "/api/v1/polls",
            json={
                "question": "Which?",
                "options": [{"id": "A", "label": "a"}, {"id": "B", "label": "b"}],
                "votes_per_voter": 10,
            },
            headers=AUTH,
        )
        assert created.status_code == 201, created.text
        poll_id = created.json()["poll_id"]
        r = await client.post(
            f"/api/v1/polls/{poll_id}/vote", json={"option_id": "A"}, headers={"X-Voter-Id": "w"}
        )
        assert r.status_code == 200, r.text  # the definition is known from now on
        owner = fresh.owner(slot_of(poll_id))
        slow = busy(owner)
        r = await client.post(
            f"/api/v1/polls/{poll_id}/vote", json={"option_id": "A"}, headers={"X-Voter-Id": "v"}
        )
        slow.join()
        await asyncio.sleep(0.5)
        with master(owner) as node:
            voters = node.hgetall(voters_key(poll_id))
            counts = node.hgetall(counts_key(poll_id))
            total = int(node.hget(def_key(poll_id), "total") or 0)
        # voter w's vote, plus at most the one vote voter v sent, whatever the answer was
        assert total <= 2 and counts == {"A": str(total)}, (r.status_code, r.text, voters, total)
        assert r.status_code in (200, 503)


async def test_a_write_through_vote_redirected_to_a_slow_master_is_counted_once(
    fresh: LocalCluster,
) -> None:
    """Write-through (BATCH_INTERVAL_SECONDS=0): the poll's slot has just moved (resharding),
    so the pipeline gets MOVED and the client re-sends the script alone to the new master;
    that master is slow for a moment. One acknowledged vote must be counted once."""
    poll_id = polls_on_every_master(fresh, per_master=1)[0]
    slot = slot_of(poll_id)
    async with running_app(
        settings(fresh, batch_interval_seconds=0, cache_ttl_seconds=0, redis_timeout_seconds=0.5)
    ) as (client, _):
        r = await client.post(f"/api/v1/vote/{poll_id}", json={"option_id": "A"})
        assert r.status_code == 200, r.text  # the client knows the slot's master now
        target = next(n for n in fresh.nodes if n is not fresh.owner(slot))
        fresh.migrate_slot(slot, target)  # an operator reshards
        slow = busy(target)
        r = await client.post(f"/api/v1/vote/{poll_id}", json={"option_id": "A"})
        slow.join()
        await asyncio.sleep(0.5)
        counted = stored(fresh, poll_id).get("A", 0)
        expected = {200: 2, 503: counted}.get(r.status_code)  # 503 outcome_unknown: 1 or 2
        assert counted == expected and counted <= 2, (r.status_code, r.text, counted)


@asynccontextmanager
async def app_answering_500s(
    settings_: object,
) -> AsyncIterator[tuple[httpx.AsyncClient, PollingService]]:
    """As `running_app`, but an unhandled error comes back as the 500 a real server sends."""
    app = create_app(settings_)  # type: ignore[arg-type]
    api = app.api if isinstance(app, FastPath) else app
    async with api.router.lifespan_context(api):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, api.state.service


async def test_reads_and_health_while_the_whole_cluster_is_unreachable_never_500() -> None:
    """Every master gone (a partition, a power cut): a read of a poll read before answers
    200 marked stale (or 503), health answers degraded, a vote is held (batching), the
    flusher keeps the batch, and the stop reports the votes not flushed: never a 500 or an
    unhandled error (the client raises RedisClusterException, which is no RedisError)."""
    own = LocalCluster(masters=3).start()
    answers: dict[str, tuple[int, str]] = {}
    shutdown_error: BaseException | None = None
    try:
        poll_id = "p1"
        try:
            async with app_answering_500s(
                settings(
                    own, cache_ttl_seconds=0.2, redis_timeout_seconds=0.5, shutdown_flush_seconds=1
                )
            ) as (client, service):
                r = await client.post(f"/api/v1/vote/{poll_id}", json={"option_id": "A"})
                assert r.status_code == 200
                await service.flusher.flush()
                r = await client.get(f"/api/v1/results/{poll_id}")
                assert r.json()["results"] == {"A": 1}
                own.stop()  # every master is gone
                await asyncio.sleep(0.3)  # the cached snapshot is no longer fresh
                r = await client.post(f"/api/v1/vote/{poll_id}", json={"option_id": "A"})
                answers["vote"] = (r.status_code, r.text[:200])
                try:
                    await service.flusher.flush()  # fails: the vote stays held
                except Exception as exc:
                    answers["flush"] = (500, repr(exc)[:200])
                for path in (f"/api/v1/results/{poll_id}", "/api/v1/health", "/metrics"):
                    r = await client.get(path)
                    answers[path] = (r.status_code, r.text[:200])
        except Exception as exc:
            shutdown_error = exc
    finally:
        own.stop()
    assert all(code != 500 for code, _ in answers.values()), answers
    assert shutdown_error is None, repr(shutdown_error)


async def test_the_service_starts_while_the_cluster_is_unreachable() -> None:
    """Like the ring ("start-up survives a node that is down"; ClusterRedisStore.open says
    "start anyway; the flusher retries"): the service starts, health says the cluster is
    unreachable (no 500), and a vote answers 503 (its option cannot be registered), not 500."""
    own = LocalCluster(masters=3).start()
    url = own.url
    own.stop()
    s = settings_for(None, redis_cluster_url=url, redis_timeout_seconds=0.5)
    async with app_answering_500s(s) as (client, _):
        health = await client.get("/api/v1/health")
        assert health.status_code in (200, 503), health.text
        assert health.json()["nodes"][0]["reachable"] is False
        r = await client.post("/api/v1/vote/p1", json={"option_id": "A"})
        assert r.status_code == 503, r.text


def polls_per_master(cluster: LocalCluster, per_master: int) -> dict[int, list[str]]:
    """`per_master` poll ids on each master (by port), as the cluster serves them now."""
    owners = {slot: cluster.owner(slot).port for slot in range(0, 16384, 64)}

    def port_of(poll_id: str) -> int:
        slot = slot_of(poll_id)
        return owners.get(slot - slot % 64, cluster.owner(slot).port)

    found: dict[int, list[str]] = {node.port: [] for node in cluster.nodes}
    n = 0
    while any(len(p) < per_master for p in found.values()):
        poll_id = f"b{n}"
        n += 1
        slot = slot_of(poll_id)
        if slot % 64:  # only slots whose owner we looked up: no call per poll
            continue
        port = port_of(poll_id)
        if len(found[port]) < per_master:
            found[port].append(poll_id)
    return found


async def test_a_write_through_bulk_with_one_master_dead_counts_the_live_parts_at_most_once() -> (
    None
):
    """Write-through bulk over three masters, one of them just killed: the answer is 503
    outcome_unknown ("maybe, at most once"). The client's retry of the whole pipeline on
    ConnectionError (with `aclose()` of every connection, cutting the live masters'
    replies) must not run the live masters' scripts twice."""
    own = LocalCluster(masters=3).start()
    try:
        by_master = polls_per_master(own, 400)
        dead = own.nodes[2]
        async with running_app(
            settings(
                own,
                batch_interval_seconds=0,
                cache_ttl_seconds=0,
                api_token=TOKEN,
                redis_timeout_seconds=1.0,
                max_options_per_poll=5,
            )
        ) as (client, _):
            every = [p for polls in by_master.values() for p in polls]
            warm = [{"poll_id": p, "option_id": "A", "count": 1} for p in every]
            r = await client.post("/api/v1/votes", json=warm, headers=AUTH)
            assert r.status_code == 200, r.text  # options registered, scripts loaded
            dead.kill()
            body = [{"poll_id": p, "option_id": "A", "count": 1} for p in every]
            started = time.monotonic()
            r = await client.post("/api/v1/votes", json=body, headers=AUTH)
            took = time.monotonic() - started
        live = [p for port, polls in by_master.items() if port != dead.port for p in polls]
        for node in own.nodes:
            if node is not dead:  # the cluster is down by now: let us read what is stored
                with master(node) as c:
                    c.config_set("cluster-allow-reads-when-down", "yes")
        doubled = [p for p in live if stored(own, p).get("A", 0) > 2]
        print("took", took, r.status_code, r.text[:150], {stored(own, p).get("A", 0) for p in live})
        assert r.status_code == 503, (r.status_code, r.text)
        assert doubled == [], (len(doubled), len(live), r.text[:200], f"{took:.1f}s")
    finally:
        own.stop()


async def test_one_master_killed_other_masters_polls_keep_landing_and_health_says_so() -> None:
    """One master killed (kill -9, no replica): health says the cluster is not reachable and
    degraded (no 500); the other masters' polls keep landing and reading fresh, as the ring's
    other nodes carry on. (A cluster without replicas that requires full coverage refuses
    every slot once the master is marked failed, cluster-node-timeout later.)"""
    own = LocalCluster(masters=3).start()
    try:
        by_master = polls_per_master(own, 2)
        dead = own.nodes[2]
        live = [p for port, polls in by_master.items() if port != dead.port for p in polls]
        async with app_answering_500s(
            settings(own, cache_ttl_seconds=0, redis_timeout_seconds=0.5)
        ) as (client, service):
            for poll_id in [p for polls in by_master.values() for p in polls]:
                r = await client.post(f"/api/v1/vote/{poll_id}", json={"option_id": "A"})
                assert r.status_code == 200
            await service.flusher.flush()
            dead.kill()
            await asyncio.sleep(6)  # past cluster-node-timeout (5 s): the master is marked failed
            for poll_id in live:
                r = await client.post(f"/api/v1/vote/{poll_id}", json={"option_id": "A"})
                assert r.status_code == 200
            await service.flusher.flush()
            health = await client.get("/api/v1/health")
            assert health.status_code != 500 and health.json()["nodes"][0]["reachable"] is False
            answers = {}
            for poll_id in live:
                r = await client.get(f"/api/v1/results/{poll_id}")
                body = r.json()
                answers[poll_id] = (r.status_code, body.get("stale", False), body.get("results"))
            held = service.flusher.in_flight_votes()
        assert all(a == (200, False, {"A": 2}) for a in answers.values()), answers
        assert held == 0, (held, service.flusher.down)  # the live masters' parts landed
    finally:
        own.stop()


async def test_a_defined_vote_on_a_healthy_master_is_not_failed_by_another_polls_moving_slot() -> (
    None
):
    """Two defined polls, on different masters; one poll's slot is mid-move (its definition
    already on the new master, its counts and voters not yet: the cluster answers TRYAGAIN
    for it). A vote on the other poll, sent at the same moment, lands: it must answer 200,
    not 503 for a vote that was in fact counted (all defined votes share one round trip,
    node "cluster", and the pipeline raises on the first error)."""
    own = LocalCluster(masters=3).start()
    try:
        async with running_app(settings(own, api_token=TOKEN)) as (client, _):
            ids = []
            for _ in range(20):  # two polls whose slots are on different masters
                created = await client.post(
                    "/api/v1/polls",
                    json={
                        "question": "Which?",
                        "options": [{"id": "A", "label": "a"}, {"id": "B", "label": "b"}],
                    },
                    headers=AUTH,
                )
                ids.append(created.json()["poll_id"])
                owners = {own.owner(slot_of(p)).port for p in ids}
                if len(owners) == 2:
                    break
            moving, healthy = ids[0], ids[-1]
            for poll_id in (moving, healthy):  # counts and voters exist
                r = await client.post(
                    f"/api/v1/polls/{poll_id}/vote",
                    json={"option_id": "A"},
                    headers={"X-Voter-Id": "first"},
                )
                assert r.status_code == 200, r.text
            slot = slot_of(moving)
            source = own.owner(slot)
            target = next(n for n in own.nodes if n not in (source, own.owner(slot_of(healthy))))
            with master(source) as src, master(target) as dst:
                dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", own.node_id(source))
                src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", own.node_id(target))
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
            with master(own.owner(slot_of(healthy))) as node:
                total = int(node.hget(def_key(healthy), "total") or 0)
        assert a.status_code == 503, a.text  # the moving poll: not counted, retry later
        assert (b.status_code, total) == (200, 2), (b.status_code, b.text, total)
    finally:
        own.stop()


def add_master(cluster: LocalCluster) -> LocalNode:
    """Scale out: a new, empty master joins the cluster (CLUSTER MEET), as an operator does
    before resharding slots onto it."""
    node = cluster._start_node(len(cluster.nodes))
    cluster.nodes.append(node)
    bus = node.extra_args[node.extra_args.index("--cluster-port") + 1]
    with master(cluster.nodes[0]) as client:
        client.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, bus)
    cluster.wait_ok(20)
    return node


async def test_requests_while_a_slot_moves_to_a_master_added_after_start_never_500() -> None:
    """README: "Move slots as usual (valkey-cli --cluster reshard ...)". Scaling out: a new
    master joins, and a slot moves to it while the service runs. Mid-move the old master
    answers ASK for keys already moved (or absent); the client does not know the new master
    yet (redis-py's ASK handling then calls a method on None: AttributeError). A read, a vote
    and a keyed bulk whose Idempotency-Key claim lives in that slot must answer (200, or 503),
    never 500."""
    own = LocalCluster(masters=3).start()
    try:
        poll_id = "p1"
        async with app_answering_500s(settings(own, cache_ttl_seconds=0, api_token=TOKEN)) as (
            client,
            service,
        ):
            r = await client.post(f"/api/v1/vote/{poll_id}", json={"option_id": "A"})
            assert r.status_code == 200
            await service.flusher.flush()
            new = add_master(own)
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

    finally:
        own.stop()


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:7000/2",  # a database: a cluster has only 0
        "redis://:pw@127.0.0.1:7000?x=1",  # an option redis-py does not know
        "redis://127.0.0.1:7000?socket_timeout=abc",
    ],
)
def test_a_cluster_url_redis_py_cannot_use_is_refused_by_the_settings(url: str) -> None:
    """A REDIS_CLUSTER_URL that can never work is a settings error naming the variable (as
    REDIS_NODES problems are), not a RedisClusterException/TypeError/ValueError traceback
    from the lifespan when the store is built."""
    from app.core.config import SettingsError, load_settings

    with pytest.raises(SettingsError, match="REDIS_CLUSTER_URL"):
        load_settings(redis_cluster_url=url)


async def test_a_master_killed_mid_flush_and_restarted_counts_every_vote_once(
    tmp_path: Path,
) -> None:
    """Voters keep voting on polls of every master; one master is killed (-9) while batches
    flow and restarted on its data (appendfsync always, so the master itself loses nothing it
    acknowledged) having forgotten the scripts: every acknowledged vote is counted once."""
    own = LocalCluster(masters=3, data_dir=tmp_path / "cluster").start()
    try:
        for node in own.nodes:
            with master(node) as c:
                c.config_set("appendfsync", "always")
        polls = polls_on_every_master(own, per_master=3)
        victim = own.owner(slot_of(polls[-1]))
        async with running_app(
            settings(
                own, batch_interval_seconds=0.01, cache_ttl_seconds=0, redis_timeout_seconds=0.5
            )
        ) as (client, service):
            ok: dict[str, int] = {p: 0 for p in polls}
            done = asyncio.Event()

            async def vote(poll_id: str) -> None:
                while not done.is_set():
                    r = await client.post(f"/api/v1/vote/{poll_id}", json={"option_id": "A"})
                    if r.status_code == 200:
                        ok[poll_id] += 1
                    await asyncio.sleep(0.002)

            async def chaos() -> None:
                await asyncio.sleep(0.5)
                victim.kill()
                await asyncio.sleep(1.0)
                await asyncio.to_thread(victim.start)
                await asyncio.to_thread(own.wait_ok, 20)
                await asyncio.sleep(1.0)
                done.set()

            await asyncio.gather(chaos(), *(vote(p) for p in polls))
            deadline = time.monotonic() + 20
            while service.flusher.has_work() and time.monotonic() < deadline:
                await service.flusher.flush()
                await asyncio.sleep(0.1)
            assert not service.flusher.has_work()
            counted = {p: stored(own, p).get("A", 0) for p in polls}
        assert counted == ok
    finally:
        own.stop()


async def test_a_keyed_bulk_whose_one_slot_failed_is_completed_once_by_its_retry(
    fresh: LocalCluster,
) -> None:
    """Idempotency-Key, parts on every master; one slot's part is refused (its keys hold no
    counts), the others land: 503 outcome_unknown. Fixed, the same request again lands the
    missing part only; a third send adds nothing."""
    polls = polls_on_every_master(fresh, per_master=2)
    broken = polls[0]
    with master(fresh.owner(slot_of(broken))) as c:
        c.set(f"poll:{{{broken}}}", "x")
        c.set(f"poll:{{{broken}}}:aside", "y")
    async with running_app(
        settings(fresh, batch_interval_seconds=0, cache_ttl_seconds=0, api_token=TOKEN)
    ) as (client, _):
        bulk = [{"poll_id": p, "option_id": "A", "count": 3} for p in polls]
        headers = {**AUTH, "Idempotency-Key": "kk-1"}
        r = await client.post("/api/v1/votes", json=bulk, headers=headers)
        assert r.status_code in (503, 422), r.text
        with master(fresh.owner(slot_of(broken))) as c:
            c.delete(f"poll:{{{broken}}}", f"poll:{{{broken}}}:aside")
        answers = []
        for _ in range(2):
            r = await client.post("/api/v1/votes", json=bulk, headers=headers)
            answers.append(r.status_code)
        counted = {p: stored(fresh, p).get("A", 0) for p in polls}
    assert answers == [200, 200] and set(counted.values()) == {3}, (answers, counted, r.text)


def test_ring_journal_batches_stop_a_start_on_the_cluster(
    fresh: LocalCluster,
    start_node: Callable[..., LocalNode],
    start_service: Callable[..., ServiceProcess],
    tmp_path: Path,
) -> None:
    """Moving from the ring to the cluster after a crash (the README asks for a clean stop,
    but a kill -9 is not one): a batch sealed for a ring node may have landed there, and
    the cluster's per-slot marks cannot tell. The start on the cluster refuses, naming the
    way out; a start on the ring drains the batch, exactly."""
    node = start_node(persist=True)
    journal = str(tmp_path / "journal")
    env = {
        "REDIS_NODES": node.url,
        "BATCH_INTERVAL_SECONDS": "0.05",
        "JOURNAL_DIR": journal,
        "JOURNAL_FSYNC": "always",
    }
    first = start_service(env)
    with httpx.Client(base_url=first.url) as client:  # the option is known: no node needed
        assert client.post("/api/v1/vote/pr", json={"option_id": "A"}).is_success
    node.stop()
    with httpx.Client(base_url=first.url) as client:
        for _ in range(5):
            assert client.post("/api/v1/vote/pr", json={"option_id": "A"}).is_success
        while client.get("/api/v1/health").json()["buffer"]["in_flight_votes"] == 0:
            pass  # until the flusher has sealed a batch and failed to send it
    first.kill()
    with pytest.raises(RuntimeError, match="switch stores"):
        start_service({"REDIS_CLUSTER_URL": fresh.url, "JOURNAL_DIR": journal})
    assert stored(fresh, "pr") == {}
    node.start()
    start_service(env).terminate()
    with redis.Redis(host="127.0.0.1", port=node.port) as ring:
        assert ring.hgetall("poll:{pr}") == {b"A": b"6"}


async def test_a_defined_poll_created_while_its_master_is_slow_is_not_answered_409(
    fresh: LocalCluster,
) -> None:
    """The organiser defines a poll with its own id while the slot's master is slow for a
    moment: the poll is created once, and the answer is 201 (or 503), not 409 "id taken"
    because the client re-sent CREATE by itself and the second run found the first's poll."""
    poll_id = "talk-42"
    async with running_app(settings(fresh, api_token=TOKEN, redis_timeout_seconds=0.5)) as (
        client,
        _,
    ):
        slow = busy(fresh.owner(slot_of(poll_id)))
        created = await client.post(
            "/api/v1/polls",
            json={
                "poll_id": poll_id,
                "question": "Which?",
                "options": [{"id": "A", "label": "a"}, {"id": "B", "label": "b"}],
            },
            headers=AUTH,
        )
        slow.join()
    assert created.status_code in (201, 503), (created.status_code, created.text)


async def test_defined_poll_votes_while_its_slot_moves_count_each_accepted_vote_once(
    fresh: LocalCluster,
) -> None:
    """One vote per voter while the defined poll's slot moves (with 300 other keys, ten a
    call): each voter votes twice; the counts equal the 200s, and no voter has two."""
    async with running_app(settings(fresh, api_token=TOKEN)) as (client, _):
        created = await client.post(
            "/api/v1/polls",
            json={
                "question": "Q",
                "options": [{"id": "A", "label": "a"}, {"id": "B", "label": "b"}],
            },
            headers=AUTH,
        )
        poll_id = created.json()["poll_id"]
        slot = slot_of(poll_id)
        with master(fresh.owner(slot)) as node:
            node.mset({f"filler:{{{poll_id}}}:{i}": i for i in range(300)})
        target = next(n for n in fresh.nodes if n is not fresh.owner(slot))
        accepted = 0
        done = asyncio.Event()

        async def voter(i: int) -> None:
            nonlocal accepted
            for _ in range(2):
                r = await client.post(
                    f"/api/v1/polls/{poll_id}/vote",
                    json={"option_id": "AB"[i % 2]},
                    headers={"X-Voter-Id": f"v{i}"},
                )
                accepted += r.status_code == 200

        async def voters() -> None:
            i = 0
            while not done.is_set():
                await asyncio.gather(*(voter(i + k) for k in range(5)))
                i += 5

        async def move() -> None:
            await asyncio.sleep(0.1)
            await asyncio.to_thread(fresh.migrate_slot, slot, target, 0.02, 10)
            await asyncio.sleep(0.2)
            done.set()

        await asyncio.gather(move(), voters())
        with master(fresh.owner(slot)) as node:
            counts = {k: int(v) for k, v in node.hgetall(counts_key(poll_id)).items()}
            per_voter = [int(v) for v in node.hgetall(voters_key(poll_id)).values()]
            total = int(node.hget(def_key(poll_id), "total"))
    assert fresh.owner(slot) is target
    assert sum(counts.values()) == total == accepted == len(per_voter) and max(per_voter) == 1
