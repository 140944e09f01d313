"""Live results streams (Server-Sent Events), the CSV export and the history of totals.

Streams are read in-process through `tests/sse.py` (httpx's ASGITransport would wait for the
end of an endless response), and once through a real uvicorn process.
"""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from app.api.fast_path import FastPath
from app.core.config import Settings
from app.devtools.local_nodes import LocalNode
from app.main import create_app
from app.services.event_frames import unchunk
from app.services.live_results import LiveResults, Snapshot
from tests.conftest import NodeFactory, ServiceProcess, nodes_setting, settings_for
from tests.sse import StreamClient

TOKEN = "stream-token"
ORGANISER = {"Authorization": f"Bearer {TOKEN}"}
INTERVAL = 0.05


@asynccontextmanager
async def live_app(settings: Settings) -> AsyncIterator[tuple[Any, httpx.AsyncClient, LiveResults]]:
    """The app (with its lifespan), an HTTP client for plain requests, and its publishers."""
    app = create_app(settings)
    api = app.api if isinstance(app, FastPath) else app
    async with api.router.lifespan_context(api):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield app, client, api.state.live


def stream_settings(nodes: list[LocalNode] | None, **overrides: Any) -> Settings:
    return settings_for(nodes, api_token=TOKEN, stream_interval_seconds=INTERVAL, **overrides)


async def define(client: httpx.AsyncClient, poll_id: str, results: str = "live") -> None:
    body = {
        "poll_id": poll_id,
        "question": "Which talk next?",
        "options": [{"id": "A", "label": 'Rust, "fast"'}, {"id": "B", "label": "Python"}],
        "votes_per_voter": 1,
        "results": results,
    }
    answer = await client.post("/api/v1/polls", json=body, headers=ORGANISER)
    assert answer.status_code == 201, answer.text


async def vote(client: httpx.AsyncClient, poll_id: str, voter: str, option: str) -> None:
    answer = await client.post(
        f"/api/v1/polls/{poll_id}/vote", json={"option_id": option}, headers={"X-Voter-Id": voter}
    )
    assert answer.status_code == 200, answer.text


async def test_a_stream_sends_the_current_state_at_once_and_an_event_after_a_vote(
    start_node: NodeFactory,
) -> None:
    async with live_app(stream_settings([start_node()])) as (app, client, _):
        await define(client, "talk")
        await vote(client, "talk", "v1", "A")
        defined = await StreamClient(app, "/api/v1/polls/talk/stream").start().answered()
        adhoc = await StreamClient(app, "/api/v1/results/100/stream").start().answered()
        assert defined.status == adhoc.status == 200
        assert defined.response_headers["content-type"].startswith("text/event-stream")
        assert defined.last == (await client.get("/api/v1/polls/talk/results")).json()
        assert defined.last["total_votes"] == 1
        plain = (await client.get("/api/v1/results/100")).json()
        assert adhoc.last == {**plain, "served_via": adhoc.last["served_via"]}  # cache or node
        assert adhoc.last["results"] == {}

        await vote(client, "talk", "v2", "B")
        await client.post("/api/v1/vote/100", json={"option_id": "A"})
        await defined.wait_until(lambda c: c.events == 2)
        await adhoc.wait_until(lambda c: c.events == 2)
        assert defined.last == (await client.get("/api/v1/polls/talk/results")).json()
        assert defined.last["total_votes"] == 2
        assert adhoc.last["results"] == {"A": 1}
        await defined.close()
        await adhoc.close()


async def test_many_votes_within_one_interval_give_one_event(start_node: NodeFactory) -> None:
    async with live_app(stream_settings([start_node()])) as (app, client, live):
        await client.post("/api/v1/vote/7", json={"option_id": "A"})  # the option is known now
        service = app.api.state.service
        loop = asyncio.get_running_loop()
        began = loop.time()
        stream = await StreamClient(app, "/api/v1/results/7/stream").start().answered()
        assert stream.last is not None and stream.last["results"] == {"A": 1}
        for _ in range(500):  # no await in between: the publisher cannot read in the middle
            service.vote("7", "A")
        await stream.wait_until(lambda c: c.last["results"] != {"A": 1})
        assert stream.last["results"] == {"A": 501}
        assert stream.events == 2  # the first state, then one event with all 500 votes
        reads = live.reads["adhoc:7"]
        intervals = (loop.time() - began) / INTERVAL
        print(f"\ncoalescing: {reads} reads over {intervals:.1f} intervals, 500 votes, 2 events")
        assert stream.events <= reads <= intervals + 1
        await stream.close()
        assert not live.publishers  # the last subscriber left: the publisher stopped


async def test_a_thousand_subscribers_get_the_final_counts_from_one_read_per_interval(
    start_node: NodeFactory,
) -> None:
    subscribers = 1000
    async with live_app(stream_settings([start_node()], stream_max_per_client=0)) as (
        app,
        client,
        live,
    ):
        await define(client, "keynote")
        loop = asyncio.get_running_loop()
        began = loop.time()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        streams = [
            StreamClient(app, "/api/v1/polls/keynote/stream").start() for _ in range(subscribers)
        ]
        await asyncio.gather(*(s.answered() for s in streams))
        per_subscriber = (tracemalloc.get_traced_memory()[0] - before) / subscribers
        held = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(True, "*/app/services/live_results.py")]
        )
        broadcaster = sum(stat.size for stat in held.statistics("filename")) / subscribers
        tracemalloc.stop()
        assert all(s.status == 200 and s.last["total_votes"] == 0 for s in streams)
        assert len(live.publishers) == 1

        for i in range(40):
            await vote(client, "keynote", f"voter-{i}", "B" if i % 3 == 0 else "A")
        closed = await client.post("/api/v1/polls/keynote/close", headers=ORGANISER)
        assert closed.status_code == 200
        await asyncio.gather(*(s.ended.wait() for s in streams))
        elapsed = loop.time() - began

        final = (await client.get("/api/v1/polls/keynote/results")).json()
        assert final["final"] is True and final["total_votes"] == 40
        for s in streams:
            assert s.last == final
        reads = live.reads["def:keynote"]
        print(
            f"\n{subscribers} subscribers: {per_subscriber / 1024:.1f} KiB each (tracemalloc, "
            f"service and test client together), of which the broadcaster's own "
            f"{broadcaster:.0f} bytes; {reads} reads in {elapsed / INTERVAL:.1f} "
            f"intervals; events per subscriber: {min(s.events for s in streams)}-"
            f"{max(s.events for s in streams)}"
        )
        assert reads <= elapsed / INTERVAL + 1
        assert not live.publishers
        await asyncio.gather(*(s.close() for s in streams))


class SlowTransport:
    """A subscriber's transport whose buffer is over the bound until `drained`."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.full = True

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def get_write_buffer_size(self) -> int:
        return 1 << 20 if self.full else 0


def totals(transport: SlowTransport) -> list[int]:
    return [int(unchunk(d).split(b"data: ")[1].split(b"\n")[0]) for d in transport.written]


async def test_a_subscriber_that_does_not_read_skips_states_and_gets_the_newest() -> None:
    live = LiveResults(interval=0.001)
    total = 0

    async def read() -> Snapshot:
        nonlocal total
        total += 1
        return Snapshot(b"%d" % total, total, total, final=total == 100)

    slow, watcher = live.subscribe("p", read), live.subscribe("p", read)
    first = await slow.first()
    assert first == await watcher.first()
    slow_sink, fast_sink = SlowTransport(), SlowTransport()
    fast_sink.full = False
    slow_done, fast_done = asyncio.Future[str](), asyncio.Future[str]()
    slow.attach(slow_sink, slow_done)
    watcher.attach(fast_sink, fast_done)
    while total < 50:
        await asyncio.sleep(0.001)
    slow_sink.full, drained_at = False, total  # it drains: the newest follows, not the missed
    assert await fast_done == "end" and await slow_done == "end"
    seen = totals(fast_sink)
    assert seen == sorted(set(seen)) and seen[-1] == 100  # never an older state, nor twice
    slow_seen = totals(slow_sink)
    assert slow_seen == sorted(set(slow_seen)) and slow_seen[-1] == 100
    assert slow_seen[1] >= drained_at  # it skipped every state while it was over the bound
    assert live.reads["p"] == 100 and live.reads.total == 100
    slow.close()
    watcher.close()
    assert not live.publishers and live.subscribers == 0


async def test_a_subscriber_stalled_past_the_deadline_is_closed() -> None:
    live = LiveResults(interval=0.001, stall_seconds=0.05)

    async def read() -> Snapshot:
        return Snapshot(b"1", 1, 1)

    stalled = live.subscribe("p", read)
    await stalled.first()
    done = asyncio.Future[str]()
    stalled.attach(SlowTransport(), done)
    assert await asyncio.wait_for(done, 10) == "stalled"
    stalled.close()
    assert not live.publishers


async def test_a_closed_polls_stream_ends_after_its_final_event(start_node: NodeFactory) -> None:
    async with live_app(stream_settings([start_node()])) as (app, client, _):
        await define(client, "done")
        await vote(client, "done", "v1", "A")
        await client.post("/api/v1/polls/done/close", headers=ORGANISER)
        stream = StreamClient(app, "/api/v1/polls/done/stream").start()
        await stream.ended.wait()
        assert stream.events == 1
        assert stream.last is not None and stream.last["final"] is True
        assert stream.last["options"][0]["count"] == 1
        assert stream.body == b""  # nothing after the final event


async def test_hidden_unknown_bad_ids_and_a_malformed_last_event_id(
    start_node: NodeFactory,
) -> None:
    async with live_app(stream_settings([start_node()])) as (app, client, live):
        await define(client, "secret", results="hidden")
        hidden = await StreamClient(app, "/api/v1/polls/secret/stream").start().answered()
        assert hidden.status == 403
        assert hidden.json()["type"] == "results_hidden" and hidden.json()["detail"]
        unknown = await StreamClient(app, "/api/v1/polls/nope/stream").start().answered()
        assert unknown.status == 404 and unknown.json()["type"] == "poll_not_found"
        bad = await StreamClient(app, "/api/v1/results/a%20b/stream").start().answered()
        assert bad.status == 422 and bad.json()["detail"][0]["loc"] == ["path", "poll_id"]

        organiser = (
            await StreamClient(
                app, "/api/v1/polls/secret/stream", {**ORGANISER, "Last-Event-ID": "not a number"}
            )
            .start()
            .answered()
        )
        assert organiser.status == 200 and organiser.last["total_votes"] == 0
        for last_id in ["-1", "99999999999999999999", ""]:
            again = (
                await StreamClient(app, "/api/v1/results/1/stream", {"Last-Event-ID": last_id})
                .start()
                .answered()
            )
            assert again.status == 200 and again.last["results"] == {}
            await again.close()
        await organiser.close()
        assert not live.publishers


async def test_csv_export_and_history(start_node: NodeFactory) -> None:
    async with live_app(stream_settings([start_node()])) as (app, client, _):
        await define(client, "talk")
        stream = await StreamClient(app, "/api/v1/polls/talk/stream").start().answered()
        for i, option in enumerate("AAB"):
            await vote(client, "talk", f"v{i}", option)
            await stream.wait_until(lambda c, n=i + 1: c.last["total_votes"] == n)
        csv = await client.get("/api/v1/polls/talk/results.csv")
        assert csv.status_code == 200
        assert csv.headers["content-type"].startswith("text/csv")
        assert csv.headers["content-disposition"] == 'attachment; filename="talk-results.csv"'
        assert csv.text == 'option_id,label,count\r\nA,"Rust, ""fast""",2\r\nB,Python,1\r\n'
        await client.post("/api/v1/polls/talk/close", headers=ORGANISER)
        await stream.wait_until(lambda c: c.last["final"])  # the final point always lands
        await stream.close()

        history = (await client.get("/api/v1/polls/talk/history")).json()
        assert history["poll_id"] == "talk"
        totals = [p["total"] for p in history["points"]]
        assert totals == sorted(set(totals)) and totals[-1] == 3
        assert history["points"][-1]["counts"] == {"A": 2, "B": 1}
        assert all(p["at"].endswith("Z") for p in history["points"])
        # points at least a second apart (but the final one): votes inside one second
        # add no point, so reconnecting watchers cannot flood the history
        assert totals == [0, 3]

        final = await client.get("/api/v1/polls/talk/results.csv")
        assert 'filename="talk-final-results.csv"' in final.headers["content-disposition"]

        await define(client, "secret", results="hidden")
        for path in ["results.csv", "history"]:
            assert (await client.get(f"/api/v1/polls/secret/{path}")).status_code == 403
            hidden_ok = await client.get(f"/api/v1/polls/secret/{path}", headers=ORGANISER)
            assert hidden_ok.status_code == 200
            missing = await client.get(f"/api/v1/polls/nope/{path}")
            assert missing.status_code == 404 and missing.json()["type"] == "poll_not_found"


async def test_history_from_two_instances_never_repeats_or_goes_back(
    two_nodes: list[LocalNode],
) -> None:
    settings = stream_settings(two_nodes)
    async with live_app(settings) as (app_a, client, _), live_app(settings) as (app_b, _b, _lb):
        await define(client, "both")
        streams = [
            await StreamClient(app, "/api/v1/polls/both/stream").start().answered()
            for app in (app_a, app_b)
        ]
        for i in range(6):
            await vote(client, "both", f"v{i}", "AB"[i % 2])
            for s in streams:
                await s.wait_until(lambda c, n=i + 1: c.last["total_votes"] == n)
        await client.post("/api/v1/polls/both/close", headers=ORGANISER)
        for s in streams:
            await s.wait_until(lambda c: c.last["final"])
            await s.close()
        points = (await client.get("/api/v1/polls/both/history")).json()["points"]
        totals = [p["total"] for p in points]
        assert totals == sorted(set(totals)) and totals[-1] == 6


def test_a_stream_through_a_real_server_and_the_fast_path(
    two_nodes: list[LocalNode], start_service: Any
) -> None:
    service: ServiceProcess = start_service(
        {
            "REDIS_NODES": nodes_setting(two_nodes),
            "API_TOKEN": TOKEN,
            "STREAM_INTERVAL_SECONDS": "0.05",
        }
    )
    base = service.url + "/api/v1"
    body = {
        "poll_id": "real",
        "question": "Q?",
        "options": [{"id": "A", "label": "a"}, {"id": "B", "label": "b"}],
    }
    assert httpx.post(f"{base}/polls", json=body, headers=ORGANISER).status_code == 201
    events: list[dict[str, Any]] = []
    with httpx.stream("GET", f"{base}/polls/real/stream", timeout=30) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        for line in lines:
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: ") :]))
                if len(events) == 1:
                    vote_answer = httpx.post(
                        f"{base}/polls/real/vote",
                        json={"option_id": "A"},
                        headers={"X-Voter-Id": "x"},
                    )
                    assert vote_answer.status_code == 200
                elif len(events) == 2:
                    httpx.post(f"{base}/polls/real/close", headers=ORGANISER)
    # the loop ends because the server ended the stream after the final event
    assert [e["total_votes"] for e in events] == [0, 1, 1]
    assert [e["final"] for e in events] == [False, False, True]


async def test_watchers_who_come_and_go_cost_one_read_per_interval(start_node: NodeFactory) -> None:
    """Reconnecting in a loop (as an EventSource does after a stream ends) starts no more
    reads than one watcher would, and adds no history points beyond one a second."""
    settings = settings_for([start_node()], api_token=TOKEN, stream_interval_seconds=60)
    async with live_app(settings) as (app, client, live):
        await define(client, "churn")
        started = asyncio.get_running_loop().time()
        for i in range(40):
            await vote(client, "churn", f"c{i}", "A")
            stream = await StreamClient(app, "/api/v1/polls/churn/stream").start().answered()
            assert stream.status == 200
            await stream.close()
        intervals = (asyncio.get_running_loop().time() - started) // 60
        assert live.reads["def:churn"] <= 1 + intervals  # 40 watchers, one read
        await client.post("/api/v1/polls/churn/close", headers=ORGANISER)
        history = (await client.get("/api/v1/polls/churn/history")).json()["points"]
        assert len(history) <= 2


async def test_a_closed_polls_stream_tells_the_browser_not_to_come_back(
    start_node: NodeFactory,
) -> None:
    async with live_app(stream_settings([start_node()])) as (app, client, live):
        await define(client, "done")
        await client.post("/api/v1/polls/done/close", headers=ORGANISER)
        for _ in range(5):
            stream = StreamClient(app, "/api/v1/polls/done/stream").start()
            await stream.wait_until(lambda c: c.ended.is_set())
            assert stream.last["final"] is True
            assert stream.retry is not None and stream.retry >= 3_600_000  # EventSource waits
        assert live.reads["def:done"] == 1  # a final, visible state is not read again


async def test_one_heartbeat_per_poll_reaches_every_subscriber() -> None:
    live = LiveResults(interval=0.01, heartbeat=0.02)

    async def read() -> Snapshot:
        return Snapshot(b"{}", 1, 1)  # never changes: only pings follow the first event

    subscriptions = [live.subscribe("p", read) for _ in range(3)]
    sinks = [SlowTransport() for _ in subscriptions]
    for subscription, sink in zip(subscriptions, sinks, strict=True):
        await subscription.first()
        sink.full = False
        subscription.attach(sink, asyncio.Future[str]())
    while len(sinks[0].written) < 4:
        await asyncio.sleep(0.01)
    pings = [[d for d in sink.written if unchunk(d) == b": ping\n\n"] for sink in sinks]
    assert all(len(p) >= 3 for p in pings)
    assert pings[0][0] is pings[1][0] is pings[2][0]  # one frame, written to each
    assert len(live.publishers) == 1 and len(asyncio.all_tasks()) == 2  # this test + 1 timer
    for subscription in subscriptions:
        subscription.close()
