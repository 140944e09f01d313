"""Live results through Debian's Pushpin, for real: two service instances, each behind its
own Pushpin, both publishing to both (docs/pushpin-and-cache.md)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from app.devtools.local_pushpin import PUSHPIN, LocalPushpin
from tests.conftest import NodeFactory, ServiceProcess, failed
from tests.publish_counter import PublishCounter

pytestmark = pytest.mark.skipif(
    PUSHPIN is None and os.environ.get("CI") != "true", reason="pushpin is not installed"
)
GRIP_KEY = "a-grip-key-of-at-least-32-bytes-for-hs256"
TOKEN = "organiser-token"
ORGANISER = {"authorization": f"Bearer {TOKEN}"}
SUBSCRIBERS = 1000
ROUNDS = 5
BATCH = 100  # new streams at a time


def ids_of(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"(?m)^id: (\d+)$", text)]


@pytest.fixture
def pushpins(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[[], LocalPushpin]]:
    """Pushpins with their ports chosen, started by `.start(upstreams)`; all stopped after
    (and, when the test failed, the end of each one's log printed)."""
    started: list[LocalPushpin] = []

    def start() -> LocalPushpin:
        pushpin = LocalPushpin(tmp_path / f"pushpin-{len(started)}", GRIP_KEY)
        started.append(pushpin)
        return pushpin

    yield start
    for pushpin in started:
        pushpin.stop()
        if failed(request) and pushpin.log.exists():
            print(f"--- {pushpin.log} (ports {pushpin.ports}):")
            print(pushpin.log.read_text(errors="replace")[-6000:])


def service_env(node_url: str, publish_urls: list[str], **extra: str) -> dict[str, str]:
    return {
        "REDIS_NODES": node_url,
        "API_TOKEN": TOKEN,
        "PUSHPIN_GRIP_KEY": GRIP_KEY,
        "PUSHPIN_PUBLISH_URLS": ",".join(publish_urls),
        "STREAM_INTERVAL_SECONDS": "0.2",
        **extra,
    }


async def until(
    check: Callable[[], bool],
    what: str,
    timeout: float = 30.0,
    tasks: list[asyncio.Task[None]] | None = None,
) -> None:
    """Wait for `check`; a subscriber task in `tasks` that failed fails the wait at once,
    with its own error."""
    deadline = time.monotonic() + timeout
    while not check():
        for task in tasks or []:
            if task.done() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def all_subscribed(edges: list[LocalPushpin], channel: str, streams: int) -> None:
    """Until the Pushpins' handlers subscribed `streams` streams to `channel` (their logs)."""
    subscribed = lambda: sum(e.subscriptions(channel) for e in edges)  # noqa: E731
    await until(lambda: subscribed() >= streams, "every stream subscribed")


async def subscribe(client: httpx.AsyncClient, url: str, got: list[str]) -> None:
    """Read one stream to its end; `got[0]` holds what arrived so far. Pushpin 1.36 answers
    502 to part of a burst of new streams before any event, and has been seen to drop one
    before its answer in a full run: a client (EventSource) connects again, and so does
    this one, a few times; a stream that got data is never opened twice."""
    for attempt in range(5):
        last = attempt == 4
        try:
            async with client.stream("GET", url) as reply:
                if reply.status_code == 502 and not got[0] and not last:
                    await asyncio.sleep(0.2 * (attempt + 1))
                    continue
                assert reply.status_code == 200, (attempt, reply.status_code, await reply.aread())
                async for chunk in reply.aiter_text():
                    got[0] += chunk
                return
        except httpx.RemoteProtocolError:
            if got[0] or last:
                raise
            await asyncio.sleep(0.2 * (attempt + 1))


async def test_a_thousand_subscribers_through_pushpin_get_every_state_once_from_two_instances(
    start_node: NodeFactory,
    start_service: Callable[..., ServiceProcess],
    pushpins: Callable[[], LocalPushpin],
) -> None:
    node = start_node()
    edges = [pushpins(), pushpins()]
    async with (
        PublishCounter(edges[0].publish_url) as one,
        PublishCounter(edges[1].publish_url) as two,
    ):
        counters = [one, two]
        env = service_env(node.url, [c.url for c in counters])
        services = [start_service(env), start_service(env)]
        for edge, service in zip(edges, services, strict=True):
            edge.start([f"127.0.0.1:{service.port}"])
        api = services[0].url + "/api/v1"
        async with httpx.AsyncClient(timeout=30) as http:
            poll = {
                "poll_id": "crowd",
                "question": "Which?",
                "options": [{"id": "A", "label": "a"}, {"id": "B", "label": "b"}],
            }
            assert (
                await http.post(f"{api}/polls", json=poll, headers=ORGANISER)
            ).status_code == 201
        channel = "poll-def-crowd"
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            # One watcher first, so that the first publish (of the state every later
            # subscriber starts with) is out before they come.
            streams: list[list[str]] = [[""]]
            path = "/api/v1/polls/crowd/stream"
            tasks = [asyncio.create_task(subscribe(client, edges[0].url + path, streams[0]))]
            await until(lambda: len(one.ids(channel)) == 1, "the first publish")
            for i in range(SUBSCRIBERS):
                streams.append([""])
                url = edges[i % 2].url + path
                tasks.append(asyncio.create_task(subscribe(client, url, streams[-1])))
                if len(streams) % BATCH == 1:  # (Pushpin 502s part of a burst of 250)
                    await until(
                        lambda: all(ids_of(s[0]) for s in streams), "first events", 90, tasks
                    )
            assert {ids_of(s[0])[0] for s in streams} == {1}  # 0 votes, open, visible
            # A stream's first event is the service's answer; Pushpin subscribes it just
            # after, and only a subscribed stream gets what is published.
            await all_subscribed(edges, channel, len(streams))

            async with httpx.AsyncClient(timeout=30) as http:
                for n in range(1, ROUNDS + 1):
                    vote = f"{services[n % 2].url}/api/v1/polls/crowd/vote"
                    reply = await http.post(
                        vote, json={"option_id": "A"}, headers={"x-voter-id": f"v{n}"}
                    )
                    assert reply.status_code == 200
                    await until(lambda n=n: str(4 * n + 1) in one.ids(channel), f"state {n}")
                close = f"{services[1].url}/api/v1/polls/crowd/close"
                assert (await http.post(close, headers=ORGANISER)).status_code == 200
            await asyncio.wait_for(asyncio.gather(*tasks), 60)  # every stream ends (close)

    states = [1] + [4 * n + 1 for n in range(1, ROUNDS + 1)] + [4 * ROUNDS + 3]
    for counter in counters:  # exactly one publish per state, to each Pushpin
        assert counter.ids(channel) == [str(v) for v in states] + [f"{states[-1]}-close"]
    # The first watcher gets the state it connected with once more when Pushpin subscribed
    # it before the first publish came (Pushpin's log says whether it reached it), else not
    # (docs/pushpin-and-cache.md, "What a subscriber may see").
    repeated = edges[0].receivers(channel)[0] == 1
    assert ids_of(streams[0][0]) == ([1, *states] if repeated else states)
    for got in streams[1:]:
        assert ids_of(got[0]) == states  # every state, in order, once, the final one last
        last = json.loads(got[0].rstrip().rsplit("data: ", 1)[1])
        assert (last["final"], last["state"], last["total_votes"]) == (True, "closed", ROUNDS)


async def test_the_publisher_stops_once_nobody_watches_and_unsigned_streams_are_direct(
    start_node: NodeFactory,
    start_service: Callable[..., ServiceProcess],
    pushpins: Callable[[], LocalPushpin],
) -> None:
    node = start_node()
    edge = pushpins()
    env = service_env(node.url, [edge.publish_url], PUSHPIN_WATCH_SECONDS="2")
    service = start_service(env)
    edge.start([f"127.0.0.1:{service.port}"])
    lease = "grip:{idle}:adhoc:lease"
    store = redis.Redis(port=node.port)
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            # Unsigned (or wrongly signed) requests are streamed by the service itself.
            direct = f"{service.url}/api/v1/results/idle/stream"
            headers = {"grip-sig": "not.a.valid-signature"}
            async with client.stream("GET", direct, headers=headers) as reply:
                assert reply.status_code == 200 and "grip-hold" not in reply.headers
                async for chunk in reply.aiter_text():
                    assert chunk.startswith("id: ")
                    break
            assert not store.exists(lease)  # no publisher for a direct stream

            got = [""]
            task = asyncio.create_task(
                subscribe(client, edge.url + "/api/v1/results/idle/stream", got)
            )
            await until(lambda: bool(ids_of(got[0])), "the first event", tasks=[task])
            await until(lambda: bool(store.exists(lease)), "a publisher")
            # While the watcher stays, Pushpin's next-link requests keep the poll watched:
            # the lease is held for more than twice the watched lease's life.
            held_until = time.monotonic() + 5
            while time.monotonic() < held_until:
                assert store.exists(lease)
                await asyncio.sleep(0.2)
            task.cancel()  # the watcher leaves
            await until(lambda: not store.exists(lease), "the publisher to stop", 20)
    finally:
        store.close()


async def test_when_the_publishing_instance_dies_the_other_takes_over_without_a_repeat(
    start_node: NodeFactory,
    start_service: Callable[..., ServiceProcess],
    pushpins: Callable[[], LocalPushpin],
) -> None:
    """kill -9 of the publishing instance: the other takes the lease, and every subscriber,
    on either Pushpin, gets the next state and the final one, each once. Each Pushpin lists
    both instances (its own first), so its next-link requests skip the dead one."""
    node = start_node()
    edges = [pushpins(), pushpins()]
    async with (
        PublishCounter(edges[0].publish_url) as one,
        PublishCounter(edges[1].publish_url) as two,
    ):
        env = service_env(node.url, [one.url, two.url])
        services = [start_service(env), start_service(env)]
        ports = [f"127.0.0.1:{service.port}" for service in services]
        edges[0].start(ports)
        edges[1].start(ports[::-1])
        api = services[1].url + "/api/v1"
        async with httpx.AsyncClient(timeout=30) as http:
            poll = {
                "poll_id": "failover",
                "question": "Which?",
                "options": [{"id": "A", "label": "a"}, {"id": "B", "label": "b"}],
            }
            assert (
                await http.post(f"{api}/polls", json=poll, headers=ORGANISER)
            ).status_code == 201
        channel = "poll-def-failover"
        path = "/api/v1/polls/failover/stream"
        streams: list[list[str]] = []
        tasks = []
        first: list[int] = []  # what the first watcher gets before the votes
        async with httpx.AsyncClient(timeout=60) as client:
            # Instance 0 gets the first watcher, so it leads; once its first publish is out
            # on both Pushpins (and delivered), one more watcher on each side.
            for n, edge in enumerate([edges[0], edges[0], edges[1]]):
                streams.append([""])
                tasks.append(asyncio.create_task(subscribe(client, edge.url + path, streams[-1])))
                await until(lambda: bool(ids_of(streams[-1][0])), "a first event")
                if n == 0:
                    await until(lambda: one.ids(channel) == two.ids(channel) == ["1"], "publish")
                    await until(lambda: bool(edges[0].receivers(channel)), "publish handled")
                    first[:] = [1, 1] if edges[0].receivers(channel)[0] == 1 else [1]
                    await until(lambda: ids_of(streams[0][0]) == first, "publish delivered")
            await all_subscribed(edges, channel, len(streams))
            services[0].kill()  # the leader, at once, while it holds its lease
            async with httpx.AsyncClient(timeout=30) as http:
                reply = await http.post(
                    f"{api}/polls/failover/vote",
                    json={"option_id": "A"},
                    headers={"x-voter-id": "v1"},
                )
                assert reply.status_code == 200
                # the other instance takes the lease once it expires and publishes the state
                await until(lambda: "5" in one.ids(channel), "takeover")
                await until(lambda: all(5 in ids_of(s[0]) for s in streams), "state 5 delivered")
                close = await http.post(f"{api}/polls/failover/close", headers=ORGANISER)
                assert close.status_code == 200
            await asyncio.wait_for(asyncio.gather(*tasks), 60)  # every stream ends (close)

    for counter in (one, two):  # never a state twice, to either Pushpin
        assert counter.ids(channel) == ["1", "5", "7", "7-close"]
    assert ids_of(streams[0][0]) == [*first, 5, 7]  # the first watcher's repeat, as above
    for got in streams[1:]:
        # (a watcher may still repeat its first state when it races the first publish,
        # docs/pushpin-and-cache.md; the states after the takeover come once, in order)
        assert ids_of(got[0]) in ([1, 5, 7], [1, 1, 5, 7])
    for got in streams:
        last = json.loads(got[0].rstrip().rsplit("data: ", 1)[1])
        assert (last["final"], last["state"], last["total_votes"]) == (True, "closed", 1)


async def test_a_hidden_poll_through_pushpin_holds_the_organiser_past_renewals_and_no_one_else(
    start_node: NodeFactory,
    start_service: Callable[..., ServiceProcess],
    pushpins: Callable[[], LocalPushpin],
) -> None:
    """Pushpin's next-link (renew) requests do not carry the organiser's token, so they are
    known by a token in the link instead; a client adding `?grip_renew=1` itself to a hidden
    poll's stream gets 403, not a hold on the channel its counts are published to."""
    node = start_node()
    edge = pushpins()
    service = start_service(service_env(node.url, [edge.publish_url], PUSHPIN_WATCH_SECONDS="2"))
    edge.start([f"127.0.0.1:{service.port}"])
    api = service.url + "/api/v1"
    async with httpx.AsyncClient(timeout=30) as client:
        poll = {
            "poll_id": "secret",
            "question": "Which?",
            "options": [{"id": "A", "label": "a"}, {"id": "B", "label": "b"}],
            "results": "hidden",
        }
        assert (await client.post(f"{api}/polls", json=poll, headers=ORGANISER)).status_code == 201
        stream = edge.url + "/api/v1/polls/secret/stream"
        for query in ["", "?grip_renew=1"]:
            sneaky = await client.get(stream + query, timeout=10)
            assert sneaky.status_code == 403, (query, sneaky.status_code)
        got = [""]
        organiser = asyncio.create_task(subscribe_with(client, stream, got, ORGANISER))
        try:
            await until(lambda: bool(ids_of(got[0])), "the organiser's first event")
            held_until = time.monotonic() + 3  # several next-link renewals (every 1 s)
            while time.monotonic() < held_until:
                assert not organiser.done(), got[0]
                await asyncio.sleep(0.2)
            reply = await client.post(
                f"{api}/polls/secret/vote", json={"option_id": "A"}, headers={"x-voter-id": "v"}
            )
            assert reply.status_code == 200
            await until(lambda: '"total_votes":1' in got[0], "the vote in the held stream")
        finally:
            organiser.cancel()


async def subscribe_with(
    client: httpx.AsyncClient, url: str, got: list[str], headers: dict[str, str]
) -> None:
    async with client.stream("GET", url, headers=headers) as reply:
        assert reply.status_code == 200
        async for chunk in reply.aiter_text():
            got[0] += chunk


async def test_hiding_a_word_reaches_subscribers_through_pushpin(
    start_node: NodeFactory,
    start_service: Callable[..., ServiceProcess],
    pushpins: Callable[[], LocalPushpin],
) -> None:
    node = start_node()
    edge = pushpins()
    async with PublishCounter(edge.publish_url) as counter, httpx.AsyncClient(timeout=30) as client:
        service = start_service(service_env(node.url, [counter.url]))
        edge.start([f"127.0.0.1:{service.port}"])
        api = service.url + "/api/v1"
        poll = {"poll_id": "cloud", "question": "One word?", "type": "words", "max_words": 1}
        assert (await client.post(f"{api}/polls", json=poll, headers=ORGANISER)).status_code == 201
        voted = await client.post(
            f"{api}/polls/cloud/vote", json={"words": ["rude"]}, headers={"x-voter-id": "v"}
        )
        assert voted.status_code == 200
        got = [""]
        task = asyncio.create_task(subscribe(client, edge.url + "/api/v1/polls/cloud/stream", got))
        try:
            channel = "poll-def-cloud"
            await until(lambda: "rude" in got[0], "the entry in the first event")
            await until(lambda: len(counter.ids(channel)) == 1, "the first publish")
            await until(lambda: bool(edge.receivers(channel)), "the first publish handled")
            await until(lambda: edge.subscriptions(channel) == 1, "the stream subscribed")
            # subscribed before the first publish came: it gets that state once more
            events = 1 + edge.receivers(channel)[0]
            await until(lambda: got[0].count("data: ") == events, "the first publish's event")
            seen = len(got[0])
            hid = await client.post(
                f"{api}/polls/cloud/hide", json={"text": "rude"}, headers=ORGANISER
            )
            assert hid.status_code == 200
            await until(lambda: "data: " in got[0][seen:], "an event after the hide", 10)
            assert "rude" not in got[0][seen:]
        finally:
            task.cancel()
