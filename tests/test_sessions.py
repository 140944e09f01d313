"""Events (sessions) on real nodes: join codes, the presenter's current poll followed by
a stream, order, delete, names and the quiz leaderboard, the export and the history of a
poll nobody watched; events survive a restart and move with a ring change while votes
come in (docs/sessions.md)."""

from __future__ import annotations

import asyncio
import csv
import io
import re
from typing import Any

import httpx
import redis

from app.devtools.local_nodes import LocalNode
from app.devtools.uvicorn_process import UvicornProcess
from app.services.events import CODE_ALPHABET
from app.storage.defined_moves import PARTS
from tests.conftest import NodeFactory, running_app, settings_for
from tests.sse import StreamClient
from tests.test_streams import live_app

TOKEN = "sessions-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
OPTIONS = [{"id": "A", "label": "Yes"}, {"id": "B", "label": "No"}]


async def new_event(client: httpx.AsyncClient, title: str = "Conf") -> dict[str, Any]:
    r = await client.post("/api/v1/events", json={"title": title}, headers=AUTH)
    assert r.status_code == 201, r.text
    event: dict[str, Any] = r.json()
    return event


async def add(client: httpx.AsyncClient, event_id: str, **body: Any) -> str:
    r = await client.post(
        f"/api/v1/events/{event_id}/polls", json={"question": "?", **body}, headers=AUTH
    )
    assert r.status_code == 201, r.text
    poll_id: str = r.json()["poll_id"]
    return poll_id


async def current(client: httpx.AsyncClient, event_id: str, poll_id: str | None) -> int:
    r = await client.post(
        f"/api/v1/events/{event_id}/current", json={"poll_id": poll_id}, headers=AUTH
    )
    return r.status_code


async def vote(client: httpx.AsyncClient, poll_id: str, voter: str, body: dict[str, Any]) -> int:
    r = await client.post(f"/api/v1/polls/{poll_id}/vote", json=body, headers={"X-Voter-Id": voter})
    return r.status_code


async def test_an_event_is_joined_by_code_and_followed_from_poll_to_poll(
    start_node: NodeFactory,
) -> None:
    settings = settings_for([start_node()], api_token=TOKEN, stream_interval_seconds=0.05)
    async with live_app(settings) as (app, client, _):
        event = await new_event(client)
        code, event_id = event["code"], event["event_id"]
        assert re.fullmatch(f"[{CODE_ALPHABET}]{{6}}", code)
        assert not set(code) & set("01OIL")
        first = await add(client, event_id, type="single", options=OPTIONS)
        second = await add(client, event_id, type="rating", min=0, max=10)
        typed = f"{code[:3].lower()}-{code[3:].lower()}"  # as a person types it
        joined = (await client.get(f"/api/v1/events/by-code/{typed}")).json()
        assert joined["event_id"] == event_id and joined["current"] is None
        phone = await StreamClient(app, f"/api/v1/events/{event_id}/stream").start().answered()
        assert phone.last is not None and phone.last["current"] is None
        assert await current(client, event_id, first) == 200
        await phone.wait_until(lambda c: c.last["current"] is not None)
        assert phone.last["current"]["poll_id"] == first and phone.last["position"] == 1
        assert await current(client, event_id, second) == 200
        await phone.wait_until(lambda c: c.last["current"]["poll_id"] == second)
        assert phone.last["current"]["type"] == "rating" and phone.last["current"]["max"] == 10
        await client.post(f"/api/v1/polls/{second}/close", headers=AUTH)
        await phone.wait_until(lambda c: c.last["current"]["state"] == "closed")
        assert await current(client, event_id, None) == 200
        await phone.wait_until(lambda c: c.last["current"] is None)
        await phone.close()

        view = (await client.get(f"/api/v1/events/{event_id}")).json()
        assert [p["poll_id"] for p in view["polls"]] == [first, second]
        r = await client.post(
            f"/api/v1/events/{event_id}/order", json={"poll_ids": [second, first]}, headers=AUTH
        )
        assert [p["poll_id"] for p in r.json()["polls"]] == [second, first]
        for bad in ([first], [first, first], [first, second, "x"]):
            r = await client.post(
                f"/api/v1/events/{event_id}/order", json={"poll_ids": bad}, headers=AUTH
            )
            assert r.status_code == 422 and r.json()["type"] == "not_in_event"
        other = await new_event(client, "Other")
        stranger = await add(client, other["event_id"], type="single", options=OPTIONS)
        assert await current(client, event_id, stranger) == 422
        listed = (await client.get("/api/v1/events", headers=AUTH)).json()["events"]
        assert [e["event_id"] for e in listed] == [event_id, other["event_id"]]
        assert (await client.get("/api/v1/events")).status_code == 401

        assert (await client.delete(f"/api/v1/events/{event_id}", headers=AUTH)).status_code == 204
        for path in (f"/api/v1/events/{event_id}", f"/api/v1/events/by-code/{code}"):
            gone = await client.get(path)
            assert gone.status_code == 404 and gone.json()["type"] == "event_not_found"
        assert (await client.get(f"/api/v1/polls/{first}")).status_code == 404
        assert (await client.get("/api/v1/events/by-code/0OI1LX")).status_code == 404


async def test_the_leaderboard_ranks_correct_answers_then_time_with_names(
    start_node: NodeFactory,
) -> None:
    async with running_app(settings_for([start_node()], api_token=TOKEN)) as (client, _):
        event_id = (await new_event(client))["event_id"]
        quizzes = [await add(client, event_id, type="quiz", options=OPTIONS, correct="A")]
        quizzes.append(await add(client, event_id, type="quiz", options=OPTIONS, correct="B"))
        for name, voter in (("Ann <b>", "ann"), ("Bob", "bob"), ("  Cy   Z ", "cy")):
            r = await client.post(
                f"/api/v1/events/{event_id}/join",
                json={"name": name},
                headers={"X-Voter-Id": voter},
            )
            assert r.status_code == 200
        too_long = await client.post(
            f"/api/v1/events/{event_id}/join", json={"name": "x" * 33}, headers={"X-Voter-Id": "d"}
        )
        assert too_long.status_code == 422 and too_long.json()["detail"][0]["loc"] == [
            "body",
            "name",
        ]
        await current(client, event_id, quizzes[0])
        # ann answers both right; bob and cy one each, bob first on the first question
        assert await vote(client, quizzes[0], "bob", {"option_id": "A"}) == 200
        assert await vote(client, quizzes[0], "ann", {"option_id": "A"}) == 200
        assert await vote(client, quizzes[0], "cy", {"option_id": "B"}) == 200
        await current(client, event_id, quizzes[1])
        assert await vote(client, quizzes[1], "ann", {"option_id": "B"}) == 200
        assert await vote(client, quizzes[1], "cy", {"option_id": "B"}) == 200
        hidden = (await client.get(f"/api/v1/events/{event_id}/leaderboard")).json()
        assert hidden["quiz_polls"] == 0 and hidden["leaders"] == []  # nothing closed yet
        assert (await client.get(f"/api/v1/polls/{quizzes[0]}")).json()["correct"] is None
        for poll_id in quizzes:
            await client.post(f"/api/v1/polls/{poll_id}/close", headers=AUTH)
        board = (await client.get(f"/api/v1/events/{event_id}/leaderboard")).json()
        assert board["quiz_polls"] == 2 and board["voters"] == 3
        leaders = board["leaders"]
        assert [(r["name"], r["correct"], r["answered"]) for r in leaders] == [
            ("Ann <b>", 2, 2),
            *sorted(
                [("Bob", 1, 1), ("Cy Z", 1, 2)],
                key=lambda row: next(r["time_ms"] for r in leaders if r["name"] == row[0]),
            ),
        ]
        assert leaders[1]["time_ms"] <= leaders[2]["time_ms"]
        assert (await client.get(f"/api/v1/polls/{quizzes[0]}")).json()["correct"] == "A"


async def test_the_export_and_the_history_of_a_poll_nobody_watched(
    start_node: NodeFactory,
) -> None:
    async with running_app(settings_for([start_node()], api_token=TOKEN)) as (client, _):
        event_id = (await new_event(client))["event_id"]
        single = await add(client, event_id, type="single", options=OPTIONS)
        words = await add(client, event_id, type="words")
        await vote(client, single, "a", {"option_id": "B"})
        await vote(client, words, "a", {"words": ["=HYPERLINK()", "ok"]})
        await client.post(f"/api/v1/polls/{single}/close", headers=AUTH)
        assert (await client.get(f"/api/v1/events/{event_id}/export.csv")).status_code == 401
        text = (await client.get(f"/api/v1/events/{event_id}/export.csv", headers=AUTH)).text
        rows = list(csv.DictReader(io.StringIO(text)))
        assert [(r["poll_id"], r["kind"], r["key"], r["count"]) for r in rows] == [
            (single, "option", "A", "0"),
            (single, "option", "B", "1"),
            (words, "word", "'=hyperlink()", "1"),
            (words, "word", "ok", "1"),
        ]

        # no stream was ever opened: the history is recorded all the same
        async def history() -> list[dict[str, Any]]:
            r = await client.get(f"/api/v1/polls/{single}/history")
            points: list[dict[str, Any]] = r.json()["points"]
            return points

        while not (points := await history()) or points[-1]["total"] != 1:
            await asyncio.sleep(0.05)
        assert points[-1]["counts"] == {"A": 0, "B": 1}
        exported = (await client.get(f"/api/v1/events/{event_id}/export.json", headers=AUTH)).json()
        assert [p["poll_id"] for p in exported["polls"]] == [single, words]
        assert exported["polls"][0]["final"] is True and exported["polls"][0]["history"]


async def test_the_export_keeps_negative_rating_values_as_numbers(start_node: NodeFactory) -> None:
    """A plain number is no formula: the CSV defence leaves -2 as -2, not '-2."""
    async with running_app(settings_for([start_node()], api_token=TOKEN)) as (client, _):
        event_id = (await new_event(client))["event_id"]
        rating = await add(client, event_id, type="rating", min=-2, max=2)
        labelled = await add(
            client, event_id, type="single", options=[{"id": "A", "label": "-1+2"}, *OPTIONS[1:]]
        )
        assert await vote(client, rating, "a", {"value": -2}) == 200
        text = (await client.get(f"/api/v1/events/{event_id}/export.csv", headers=AUTH)).text
        rows = list(csv.DictReader(io.StringIO(text)))
        values = [(r["key"], r["count"]) for r in rows if r["poll_id"] == rating]
        assert values == [("-2", "1"), ("-1", "0"), ("0", "0"), ("1", "0"), ("2", "0")]
        assert next(r["label"] for r in rows if r["poll_id"] == labelled) == "'-1+2"
        own = (await client.get(f"/api/v1/polls/{rating}/results.csv")).text
        assert list(csv.reader(io.StringIO(own)))[1] == ["-2", "-2", "1"]


def owner_keys(port: int) -> set[str]:
    with redis.Redis(port=port, decode_responses=True) as client:
        return set(client.scan_iter("def:*"))


async def test_events_survive_a_restart_and_move_with_a_ring_change_while_votes_come_in(
    start_node: NodeFactory,
) -> None:
    first = start_node(persist=True)
    # Labelled nodes: a single unlabelled node ('redis') renamed 'redis_<port>' when a second
    # joins is a case the mover's first touch misses today (reported; not this test's part).
    ring = f"a={first.url}"
    async with running_app(settings_for(None, redis_nodes=ring, api_token=TOKEN)) as (client, _):
        event = await new_event(client)
        event_id = event["event_id"]
        polls = [await add(client, event_id, type="multiple", options=OPTIONS, max_choices=2)]
        polls += [await add(client, event_id, type="words") for _ in range(5)]
        await current(client, event_id, polls[0])
        await client.post(
            f"/api/v1/events/{event_id}/join", json={"name": "Ann"}, headers={"X-Voter-Id": "v0"}
        )
        for i in range(10):
            assert await vote(client, polls[0], f"v{i}", {"option_ids": ["A", "B"]}) == 200
    first.stop()
    first.start()  # the node restarts from its files
    second = start_node()
    ring += f",b={second.url}"
    async with running_app(settings_for(None, redis_nodes=ring, api_token=TOKEN)) as (
        client,
        service,
    ):
        # votes go on while the ring change moves the event and its polls to their owners
        statuses = await asyncio.gather(
            *(vote(client, p, f"w{i}", {"words": ["moved"]}) for p in polls[1:] for i in range(8)),
            *(vote(client, polls[0], f"v{i}", {"option_ids": ["B"]}) for i in range(10, 20)),
        )
        assert statuses.count(200) == len(statuses), statuses
        joined = (await client.get(f"/api/v1/events/by-code/{event['code']}")).json()
        assert joined["current"]["poll_id"] == polls[0]
        assert service.migration is not None
        await service.migration.wait()
        results = (await client.get(f"/api/v1/polls/{polls[0]}/results")).json()
        assert {o["id"]: o["count"] for o in results["options"]} == {"A": 10, "B": 20}
        for poll_id in polls[1:]:
            words = (await client.get(f"/api/v1/polls/{poll_id}/results")).json()["words"]
            assert words == [{"text": "moved", "count": 8}]
        view = (await client.get(f"/api/v1/events/{event_id}")).json()
        assert [p["poll_id"] for p in view["polls"]] == polls
        assert await vote(client, polls[0], "v3", {"option_ids": ["A"]}) == 409  # still known
        board = await client.get(f"/api/v1/events/{event_id}/leaderboard")
        assert board.status_code == 200
        # every event and poll key is on the node the ring now puts it on
        manager = service.store.manager  # type: ignore[attr-defined]
        for node, port in (("first", first.port), ("second", second.port)):
            for key in owner_keys(port):
                tag = key[key.index("{") + 1 : key.index("}")]
                label = manager.node_for(tag)
                assert manager.client(label).connection_pool.connection_kwargs["port"] == port, (
                    node,
                    key,
                )
        assert {k.rsplit(":", 1)[-1] for k in owner_keys(second.port)} & set(PARTS)


async def test_a_hidden_word_leaves_the_live_stream_at_once(start_node: NodeFactory) -> None:
    settings = settings_for([start_node()], api_token=TOKEN, stream_interval_seconds=0.05)
    async with live_app(settings) as (app, client, _):
        body = {"question": "?", "type": "words"}
        poll_id = (await client.post("/api/v1/polls", json=body, headers=AUTH)).json()["poll_id"]
        assert await vote(client, poll_id, "a", {"words": ["rude", "fine"]}) == 200
        screen = await StreamClient(app, f"/api/v1/polls/{poll_id}/stream").start().answered()
        assert screen.last is not None and len(screen.last["words"]) == 2
        await client.post(f"/api/v1/polls/{poll_id}/hide", json={"text": "RUDE"}, headers=AUTH)
        await screen.wait_until(lambda c: [w["text"] for w in c.last["words"]] == ["fine"])
        assert screen.last["total_votes"] == 2  # the count stays
        await screen.close()


async def eventually(check: Any, seconds: float = 10.0) -> Any:
    """Poll `check()` until it answers something true, or fail at the deadline."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        found = await check()
        if found or asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(0.05)


async def test_codes_stay_unique_under_racing_creates_and_the_current_poll_crosses_instances(
    two_nodes: list[LocalNode],
) -> None:
    env = {
        "REDIS_NODES": ",".join(n.url for n in two_nodes),
        "API_TOKEN": TOKEN,
        "VOTER_SECRET": "shared-secret",
        "STREAM_INTERVAL_SECONDS": "0.1",
    }
    services = [UvicornProcess(env=env) for _ in range(2)]
    try:
        first, second = (service.wait_ready() for service in services)
        async with (
            httpx.AsyncClient(base_url=first.url, timeout=30) as one,
            httpx.AsyncClient(base_url=second.url, timeout=30) as two,
        ):
            created = await asyncio.gather(
                *(new_event(c, f"E{i}") for i in range(12) for c in (one, two))
            )
            codes = [e["code"] for e in created]
            assert len(set(codes)) == len(codes), codes
            for e in created[:4]:  # case-insensitive, from the other instance too
                found = await two.get(f"/api/v1/events/by-code/{e['code'].lower()}")
                assert found.json()["event_id"] == e["event_id"]
            event_id = created[0]["event_id"]
            p1 = await add(one, event_id, type="single", options=OPTIONS)
            p2 = await add(one, event_id, type="rating", min=1, max=5)

            async def current_on(client: httpx.AsyncClient, poll_id: str) -> bool:
                state = (await client.get(f"/api/v1/events/{event_id}/state")).json()
                return state["current"] is not None and state["current"]["poll_id"] == poll_id

            assert await current(one, event_id, p1) == 200
            assert await eventually(lambda: current_on(two, p1))
            assert await current(two, event_id, p2) == 200
            assert await eventually(lambda: current_on(one, p2))
            # the phone's own record, read on the other instance after a reload
            assert await vote(one, p2, "phone", {"value": 4}) == 200
            mine = await two.get(f"/api/v1/polls/{p2}/my-vote", headers={"X-Voter-Id": "phone"})
            assert mine.json()["voted"] is True and mine.json()["choice"] == {"value": 4}
            gone = created[1]
            assert (await two.delete(f"/api/v1/events/{gone['event_id']}", headers=AUTH)).is_success
            freed = await one.get(f"/api/v1/events/by-code/{gone['code']}")
            assert freed.status_code == 404
    finally:
        for service in services:
            service.kill()
