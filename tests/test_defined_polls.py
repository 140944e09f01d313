"""Defined polls: options fixed by the organiser, one vote per voter, close and reveal, and
retry-safe votes (Idempotency-Key), in-process and across real service processes."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis

from app.devtools.local_nodes import LocalNode
from tests.conftest import NodeFactory, ServiceProcess, running_app, settings_for, stored_counts
from tests.proxies import ReplyCuttingProxy

TOKEN = "organiser-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
POLL = {
    "poll_id": "talk",
    "question": "Which talk next?",
    "options": [{"id": "A", "label": "Rust"}, {"id": "B", "label": "Python"}],
}
StartService = Callable[..., ServiceProcess]


def voter(name: str) -> dict[str, str]:
    return {"X-Voter-Id": name}


async def create(client: httpx.AsyncClient, **fields: Any) -> httpx.Response:
    return await client.post("/api/v1/polls", json={**POLL, **fields}, headers=AUTH)


async def vote(client: httpx.AsyncClient, who: str, option: str, poll: str = "talk") -> int:
    r = await client.post(
        f"/api/v1/polls/{poll}/vote", json={"option_id": option}, headers=voter(who)
    )
    return r.status_code


async def test_a_poll_is_defined_read_and_voted_on(two_nodes: list[LocalNode]) -> None:
    async with running_app(settings_for(two_nodes, api_token=TOKEN)) as (client, _):
        r = await create(client)
        assert r.status_code == 201
        assert r.json()["options"] == POLL["options"] and r.json()["state"] == "open"
        assert (await create(client)).status_code == 409  # the id is taken
        generated = await client.post(
            "/api/v1/polls", json={k: v for k, v in POLL.items() if k != "poll_id"}, headers=AUTH
        )
        assert generated.status_code == 201 and generated.json()["poll_id"]
        got = await client.get("/api/v1/polls/talk")
        assert got.json()["question"] == "Which talk next?"
        assert await vote(client, "ann", "A") == 200
        again = await client.post(
            "/api/v1/polls/talk/vote", json={"option_id": "B"}, headers=voter("ann")
        )
        assert again.status_code == 409 and again.json()["type"] == "already_voted"
        assert await vote(client, "bob", "B") == 200
        results = (await client.get("/api/v1/polls/talk/results")).json()
        assert [(o["id"], o["label"], o["count"]) for o in results["options"]] == [
            ("A", "Rust", 1),
            ("B", "Python", 1),
        ]
        assert results["total_votes"] == 2 and results["state"] == "open"
        assert results["final"] is False and results["served_via"].startswith("redis_")
        # the exercise's ad-hoc poll of the same id is another poll
        assert (await client.get("/api/v1/results/talk")).json()["results"] == {}


async def test_votes_per_voter_and_the_cookie_a_browser_gets(two_nodes: list[LocalNode]) -> None:
    async with running_app(settings_for(two_nodes, api_token=TOKEN)) as (client, _):
        await create(client, votes_per_voter=2)
        page = await client.get("/api/v1/polls/talk")
        assert "voter=" in page.headers["set-cookie"]
        statuses = [
            (await client.post("/api/v1/polls/talk/vote", json={"option_id": o})).status_code
            for o in "ABA"
        ]
        assert statuses == [200, 200, 409]  # the cookie identifies the browser
        client.cookies.clear()
        client.cookies.set("voter", "someone-else.0000")  # edited: the signature fails
        forged = await client.post("/api/v1/polls/talk/vote", json={"option_id": "A"})
        assert forged.status_code == 422 and forged.json()["detail"][0]["loc"] == [
            "header",
            "x-voter-id",
        ]
        assert (await client.get("/api/v1/polls/talk/results")).json()["total_votes"] == 2


@pytest.mark.parametrize(
    ("body", "headers", "status", "loc"),
    [
        ({**POLL, "options": POLL["options"][:1]}, AUTH, 422, ["body", "options"]),
        (
            {**POLL, "options": [{"id": str(i), "label": "x"} for i in range(21)]},
            AUTH,
            422,
            ["body", "options"],
        ),
        ({**POLL, "options": [{"id": "A", "label": "x"}] * 2}, AUTH, 422, ["body", "options"]),
        (
            {**POLL, "options": [{"id": "A", "label": "x" * 201}, {"id": "B", "label": "y"}]},
            AUTH,
            422,
            ["body", "options", 0, "label"],
        ),
        (
            {**POLL, "options": [{"id": "A b", "label": "x"}, {"id": "B", "label": "y"}]},
            AUTH,
            422,
            ["body", "options", 0, "id"],
        ),
        ({**POLL, "poll_id": ".."}, AUTH, 422, ["body", "poll_id"]),
        ({**POLL, "question": ""}, AUTH, 422, ["body", "question"]),
        ({**POLL, "votes_per_voter": 0}, AUTH, 422, ["body", "votes_per_voter"]),
        ({**POLL, "results": "sometimes"}, AUTH, 422, ["body", "results"]),
        ({**POLL, "closes_at": "2020-01-01T00:00:00Z"}, AUTH, 422, ["body", "closes_at"]),
        ({**POLL, "closes_at": "2099-01-01T00:00:00"}, AUTH, 422, ["body", "closes_at"]),
        ({**POLL, "closes_at": "9999-12-31T23:59:59-14:00"}, AUTH, 422, ["body", "closes_at"]),
        ({**POLL, "closes_at": 4102444800}, AUTH, 422, ["body", "closes_at"]),
        ({**POLL, "votes_per_voter": True}, AUTH, 422, ["body", "votes_per_voter"]),
        ({**POLL, "votes_per_voter": "2"}, AUTH, 422, ["body", "votes_per_voter"]),
        ({**POLL, "colour": "red"}, AUTH, 422, ["body", "colour"]),
        ([[[[[]]]]] * 1, AUTH, 422, ["body"]),
        (POLL, {}, 401, None),
        (POLL, {"Authorization": "Bearer wrong"}, 401, None),
    ],
)
async def test_bad_definitions_are_refused_and_store_nothing(
    body: Any, headers: dict[str, str], status: int, loc: list[Any] | None
) -> None:
    async with running_app(settings_for(None, api_token=TOKEN)) as (client, _):
        r = await client.post("/api/v1/polls", json=body, headers=headers)
        assert r.status_code == status, r.text
        if loc is not None:
            assert r.json()["detail"][0]["loc"][: len(loc)] == loc
        assert (await client.get("/api/v1/polls/talk")).status_code == 404


async def test_bad_votes_get_a_clear_4xx_and_count_nothing() -> None:
    async with running_app(settings_for(None, api_token=TOKEN)) as (client, _):
        await create(client)
        cases = [
            ("talk", {"option_id": "C"}, voter("ann"), 422, ["body", "option_id"]),
            ("nope", {"option_id": "A"}, voter("ann"), 404, None),
            ("talk", {"option_id": "A"}, {}, 422, ["header", "x-voter-id"]),
            ("talk", {"option_id": "A"}, voter("not ok!"), 422, ["header", "x-voter-id"]),
            ("talk", {"option_id": "A", "x": 1}, voter("ann"), 422, ["body", "x"]),
            ("a b", {"option_id": "A"}, voter("ann"), 422, ["path", "poll_id"]),
        ]
        for poll, body, headers, status, loc in cases:
            r = await client.post(f"/api/v1/polls/{poll}/vote", json=body, headers=headers)
            assert r.status_code == status, (poll, body, r.text)
            if loc is not None:
                assert loc in [item["loc"] for item in r.json()["detail"]]
        unknown = await client.post(
            "/api/v1/polls/talk/vote", json={"option_id": "C"}, headers=voter("x")
        )
        assert "['A', 'B']" in unknown.json()["detail"][0]["msg"]
        assert (await client.get("/api/v1/polls/talk/results")).json()["total_votes"] == 0
        big = await client.post("/api/v1/polls/talk/vote", content=b"{" * 5000, headers=voter("x"))
        assert big.status_code == 413


async def test_organiser_endpoints_are_off_without_a_token() -> None:
    async with running_app(settings_for(None)) as (client, _):
        assert (await client.post("/api/v1/polls", json=POLL)).status_code == 404
        assert (await client.post("/api/v1/polls/talk/close")).status_code == 404


async def test_close_reveal_and_final(two_nodes: list[LocalNode]) -> None:
    async with running_app(settings_for(two_nodes, api_token=TOKEN)) as (client, _):
        await create(client, results="hidden")
        assert await vote(client, "ann", "A") == 200
        hidden = await client.get("/api/v1/polls/talk/results")
        assert hidden.status_code == 403 and hidden.json()["type"] == "results_hidden"
        assert (await client.get("/api/v1/polls/talk/results", headers=AUTH)).status_code == 200
        assert (await client.post("/api/v1/polls/talk/close")).status_code == 401
        closed = await client.post("/api/v1/polls/talk/close", headers=AUTH)
        assert closed.status_code == 200 and closed.json()["state"] == "closed"
        late = await client.post(
            "/api/v1/polls/talk/vote", json={"option_id": "B"}, headers=voter("bob")
        )
        assert late.status_code == 409 and late.json()["type"] == "poll_closed"
        assert (await client.post("/api/v1/polls/talk/reveal", headers=AUTH)).status_code == 200
        results = (await client.get("/api/v1/polls/talk/results")).json()
        assert results["final"] is True and results["total_votes"] == 1
        assert (await client.post("/api/v1/polls/none/close", headers=AUTH)).status_code == 404


async def test_a_poll_closes_by_itself_at_closes_at(start_node: NodeFactory) -> None:
    node = start_node()
    async with running_app(settings_for([node], api_token=TOKEN)) as (client, _):
        soon = dt.datetime.now(dt.UTC) + dt.timedelta(milliseconds=300)
        assert (await create(client, closes_at=soon.isoformat())).status_code == 201
        while await vote(client, f"v{dt.datetime.now().timestamp()}", "A") == 200:
            await asyncio.sleep(0.02)  # poll until the node's clock passes closes_at
        results = (await client.get("/api/v1/polls/talk/results")).json()
        assert results["state"] == "closed" and results["final"] is True
        assert await vote(client, "late", "A") == 409


async def test_a_node_that_is_down_answers_503_and_counts_nothing(start_node: NodeFactory) -> None:
    node = start_node(persist=True)
    async with running_app(settings_for([node], api_token=TOKEN)) as (client, _):
        await create(client)
        assert await vote(client, "ann", "A") == 200
        node.stop()
        r = await client.post(
            "/api/v1/polls/talk/vote", json={"option_id": "B"}, headers=voter("bob")
        )
        assert r.status_code == 503 and r.headers["retry-after"]
        node.start()
        for who in ("cat", "bob"):  # the first may meet the dead pooled connection
            status = await vote(client, who, "B")
        assert status == 200
        results = (await client.get("/api/v1/polls/talk/results")).json()
        assert results["total_votes"] == sum(o["count"] for o in results["options"])
        assert results["options"][0]["count"] == 1


# -- Idempotency-Key on the exercise's ad-hoc votes and on bulk ---------------------------


async def test_a_vote_repeated_with_its_idempotency_key_counts_once(
    two_nodes: list[LocalNode],
) -> None:
    async with running_app(settings_for(two_nodes, api_token=TOKEN)) as (client, _):
        key = {"Idempotency-Key": "req-1"}
        for _ in range(3):
            r = await client.post("/api/v1/vote/p", json={"option_id": "A"}, headers=key)
            assert r.status_code == 200
        other = await client.post("/api/v1/vote/p", json={"option_id": "B"}, headers=key)
        assert other.status_code == 409 and other.json()["type"] == "idempotency_key_reused"
        bad = await client.post(
            "/api/v1/vote/p", json={"option_id": "A"}, headers={"Idempotency-Key": ""}
        )
        assert bad.status_code == 422
        entries = [{"poll_id": f"q{i}", "option_id": "A", "count": 7} for i in range(30)]
        bulk_key = {**AUTH, "Idempotency-Key": "batch-9"}
        for _ in range(2):
            r = await client.post("/api/v1/votes", json=entries, headers=bulk_key)
            assert r.status_code == 200 and r.json()["votes"] == 210
        changed = await client.post("/api/v1/votes", json=entries[:5], headers=bulk_key)
        assert changed.status_code == 409
        assert (await client.get("/api/v1/results/p")).json()["results"] == {"A": 1}
    assert sum(stored_counts(n, "p").get("A", 0) for n in two_nodes) == 1
    claims, parts = [], []
    for node in two_nodes:  # a part's marker outlives its claim: no repeat at the 24 h edge
        with redis.Redis(port=node.port) as client:
            claims += [client.ttl(k) for k in client.keys("idem:{req-1}")]
            parts += [client.ttl(k) for k in client.keys("poll:{p}:once:*")]
    assert len(claims) == len(parts) == 1
    assert 0 < claims[0] <= 24 * 3600 < parts[0]
    for i in range(30):
        assert sum(stored_counts(n, f"q{i}").get("A", 0) for n in two_nodes) == 7


async def test_an_idempotency_key_retried_after_its_reply_was_cut_counts_once(
    start_node: NodeFactory,
) -> None:
    node = start_node()
    proxy = await ReplyCuttingProxy(node.port).start()
    try:
        settings = settings_for(None, redis_nodes=f"n={proxy.url}", api_token=TOKEN)
        async with running_app(settings) as (client, _):
            key = {"Idempotency-Key": "retry-me"}
            proxy.cuts_left = 1  # the vote reaches the node; its answer does not come back
            first = await client.post("/api/v1/vote/p", json={"option_id": "A"}, headers=key)
            assert first.status_code == 503 and first.json()["type"] == "outcome_unknown"
            retry = await client.post("/api/v1/vote/p", json={"option_id": "A"}, headers=key)
            assert retry.status_code == 200
    finally:
        await proxy.stop()
    assert stored_counts(node, "p") == {"A": 1}


# -- real service processes sharing two nodes --------------------------------------------


def _env(nodes: list[LocalNode], tmp: str) -> dict[str, str]:
    return {
        "REDIS_NODES": ",".join(n.url for n in nodes),
        "API_TOKEN": TOKEN,
        "VOTER_SECRET": "shared-secret",
        "BATCH_INTERVAL_SECONDS": "0.2",
        "JOURNAL_DIR": tmp,
        "JOURNAL_FSYNC": "always",
    }


async def test_two_instances_one_voter_and_racing_duplicates(
    two_nodes: list[LocalNode], start_service: StartService, tmp_path: Any
) -> None:
    first = start_service(_env(two_nodes, str(tmp_path / "j1")))
    second = start_service(_env(two_nodes, str(tmp_path / "j2")))
    async with (
        httpx.AsyncClient(base_url=first.url) as one,
        httpx.AsyncClient(base_url=second.url) as two,
    ):
        assert (await create(one)).status_code == 201
        assert await vote(one, "ann", "A") == 200
        assert await vote(two, "ann", "B") == 409  # the other instance knows she voted
        # a cookie given by one instance is honoured by the other (same VOTER_SECRET)
        await one.get("/api/v1/polls/talk")
        two.cookies = one.cookies
        assert (
            await two.post("/api/v1/polls/talk/vote", json={"option_id": "A"})
        ).status_code == 200
        assert (
            await one.post("/api/v1/polls/talk/vote", json={"option_id": "A"})
        ).status_code == 409
        racing = [f"racer-{i}" for i in range(30)]
        statuses = await asyncio.gather(
            *(vote(c, who, "B") for who in racing for c in (one, two, one, two))
        )
        for i in range(len(racing)):
            assert sorted(statuses[4 * i : 4 * i + 4]) == [200, 409, 409, 409]
        results = (await two.get("/api/v1/polls/talk/results")).json()
        assert results["total_votes"] == 2 + len(racing)
        assert results["options"][1]["count"] == len(racing)
        # an Idempotency-Key sent to one instance and retried on the other counts once
        key = {"Idempotency-Key": "k-77"}
        for client in (one, two, one):
            r = await client.post("/api/v1/vote/p", json={"option_id": "A"}, headers=key)
            assert r.status_code == 200
        assert (await two.get("/api/v1/results/p")).json()["results"] == {"A": 1}


async def test_close_while_fifty_clients_vote_on_two_instances(
    two_nodes: list[LocalNode], start_service: StartService, tmp_path: Any
) -> None:
    services = [start_service(_env(two_nodes, str(tmp_path / f"j{i}"))) for i in range(2)]
    accepted: list[str] = []
    after_close: list[str] = []
    closed_at: list[float] = []
    loop = asyncio.get_running_loop()

    async def voter_task(index: int) -> None:
        async with httpx.AsyncClient(base_url=services[index % 2].url, timeout=10) as client:
            n = 0
            while True:
                who = f"v{index}-{n}"
                n += 1
                started = loop.time()
                status = await vote(client, who, "AB"[n % 2])
                if status == 200:
                    accepted.append(who)
                    if closed_at and started > closed_at[0]:
                        after_close.append(who)
                elif status == 409:
                    return  # closed
                else:
                    raise AssertionError(status)

    async with httpx.AsyncClient(base_url=services[0].url) as organiser:
        assert (await create(organiser)).status_code == 201
        voters = [asyncio.create_task(voter_task(i)) for i in range(50)]
        while len(accepted) < 300:
            await asyncio.sleep(0.01)
        r = await organiser.post("/api/v1/polls/talk/close", headers=AUTH)
        closed_at.append(loop.time())
        assert r.status_code == 200
        await asyncio.gather(*voters)
        results = (await organiser.get("/api/v1/polls/talk/results")).json()
    assert after_close == []  # no 200 for a vote sent after the close was answered
    assert results["final"] is True
    assert results["total_votes"] == len(accepted) == sum(o["count"] for o in results["options"])


async def test_kill_9_of_an_instance_keeps_every_counted_vote(
    two_nodes: list[LocalNode], start_service: StartService, tmp_path: Any
) -> None:
    import os
    import signal

    env = _env(two_nodes, str(tmp_path / "j"))
    service = start_service(env)
    async with httpx.AsyncClient(base_url=service.url) as client:
        assert (await create(client)).status_code == 201
        statuses = await asyncio.gather(*(vote(client, f"k{i}", "AB"[i % 2]) for i in range(100)))
    os.killpg(service.process.pid, signal.SIGKILL)
    service.finish()
    restarted = start_service(env)
    async with httpx.AsyncClient(base_url=restarted.url) as client:
        results = (await client.get("/api/v1/polls/talk/results")).json()
        assert await vote(client, "k0", "A") == 409  # still known as having voted
    assert results["total_votes"] == statuses.count(200) == 100


async def test_an_idempotency_key_is_one_request_whichever_nodes_it_touches(
    two_nodes: list[LocalNode],
) -> None:
    async with running_app(settings_for(two_nodes, api_token=TOKEN)) as (client, service):
        nodes = service.store.nodes
        polls = [f"p{i}" for i in range(40)]
        first = next(p for p in polls if service.store.node_for(p) == nodes[0])
        second = next(p for p in polls if service.store.node_for(p) == nodes[1])
        key = {"Idempotency-Key": "K1"}
        assert (
            await client.post(f"/api/v1/vote/{first}", json={"option_id": "A"}, headers=key)
        ).status_code == 200
        other = await client.post(f"/api/v1/vote/{second}", json={"option_id": "A"}, headers=key)
        assert other.status_code == 409  # another node, same key: still the same request
        for round_ in range(20):  # a bulk on both nodes racing a vote, both with one key
            key = {"Idempotency-Key": f"race-{round_}"}
            entries = [{"poll_id": p, "option_id": "B", "count": 10} for p in (first, second)]
            bulk, single = await asyncio.gather(
                client.post("/api/v1/votes", json=entries, headers={**AUTH, **key}),
                client.post(f"/api/v1/vote/{second}", json={"option_id": "C"}, headers=key),
            )
            assert sorted([bulk.status_code, single.status_code]) == [200, 409]
        counts = {
            p: (await client.get(f"/api/v1/results/{p}")).json()["results"] for p in (first, second)
        }
    bulks_won = counts[first].get("B", 0) // 10
    assert counts[first].get("A") == 1 and "A" not in counts[second]
    assert counts[second].get("B", 0) == 10 * bulks_won  # refused bulks counted nothing
    assert counts[second].get("C", 0) == 20 - bulks_won


@pytest.mark.parametrize("fast", [True, False])
async def test_both_paths_read_the_first_of_a_repeated_header(fast: bool) -> None:
    settings = settings_for(None, api_token=TOKEN, fast_vote_path=fast)
    async with running_app(settings) as (client, _):
        await create(client)
        repeated = [("x-voter-id", "bad id!"), ("x-voter-id", "ok")]
        r = await client.post("/api/v1/polls/talk/vote", json={"option_id": "A"}, headers=repeated)
        assert r.status_code == 422
        slash = await client.post(
            "/api/v1/polls/talk/vote/", json={"option_id": "A"}, headers=voter("x")
        )
        assert slash.status_code == 404


async def test_a_defined_vote_whose_reply_was_cut_is_counted_once_and_the_retry_says_so(
    start_node: NodeFactory,
) -> None:
    node = start_node()
    proxy = await ReplyCuttingProxy(node.port).start()
    try:
        settings = settings_for(None, redis_nodes=f"n={proxy.url}", api_token=TOKEN)
        async with running_app(settings) as (client, _):
            await create(client)
            proxy.cuts_left = 1  # the check-and-count reaches the node; its answer is lost
            first = await client.post(
                "/api/v1/polls/talk/vote", json={"option_id": "A"}, headers=voter("ann")
            )
            assert first.status_code == 503 and first.json()["type"] == "outcome_unknown"
            retry = await client.post(
                "/api/v1/polls/talk/vote", json={"option_id": "A"}, headers=voter("ann")
            )
            assert retry.status_code == 409 and retry.json()["type"] == "already_voted"
            results = (await client.get("/api/v1/polls/talk/results")).json()
            assert results["total_votes"] == 1 and results["options"][0]["count"] == 1
    finally:
        await proxy.stop()


async def test_a_closed_poll_reopens_only_while_nobody_has_answered(
    two_nodes: list[LocalNode],
) -> None:
    async with running_app(settings_for(two_nodes, api_token=TOKEN)) as (client, _):
        assert (await create(client)).status_code == 201
        await create(client, poll_id="answered")
        assert (await client.post("/api/v1/polls/talk/close", headers=AUTH)).status_code == 200
        assert await vote(client, "v1", "A") == 409  # closed
        reopened = await client.post("/api/v1/polls/talk/reopen", headers=AUTH)
        assert reopened.status_code == 200 and reopened.json()["state"] == "open"
        assert await vote(client, "v1", "A") == 200  # counted once it is open again

        assert await vote(client, "v2", "A", poll="answered") == 200
        assert (await client.post("/api/v1/polls/answered/close", headers=AUTH)).status_code == 200
        refused = await client.post("/api/v1/polls/answered/reopen", headers=AUTH)
        assert (refused.status_code, refused.json()["type"]) == (409, "votes_exist")
        results = (await client.get("/api/v1/polls/answered/results", headers=AUTH)).json()
        assert results["state"] == "closed" and results["total_votes"] == 1  # unchanged
        assert (await client.post("/api/v1/polls/talk/reopen")).status_code in (401, 403)


def etag_version(response: httpx.Response) -> int:
    """The state's version in a defined poll's weak ETag `W/"<version>.<digest>"`."""
    return int(response.headers["etag"].removeprefix('W/"').split(".")[0])


async def test_a_reopened_or_changed_poll_has_a_higher_version_and_reads_open_on_every_instance(
    two_nodes: list[LocalNode],
) -> None:
    # Instance B remembers the closed state; A reopens the poll. B must then answer it open,
    # and each change (the reopen, a new question before any vote) a higher version.
    settings = settings_for(two_nodes, api_token=TOKEN, results_max_age_seconds=0)
    async with running_app(settings) as (a, _), running_app(settings) as (b, _):
        assert (await create(a)).status_code == 201
        assert (await a.post("/api/v1/polls/talk/close", headers=AUTH)).status_code == 200
        closed = await b.get("/api/v1/polls/talk/results", headers=AUTH)
        assert closed.json()["state"] == "closed"
        assert (await a.post("/api/v1/polls/talk/reopen", headers=AUTH)).status_code == 200
        reopened = await b.get("/api/v1/polls/talk/results", headers=AUTH)
        assert (reopened.json()["state"], reopened.json()["final"]) == ("open", False)
        assert etag_version(reopened) > etag_version(closed)
        changed = await a.patch("/api/v1/polls/talk", json={"question": "Which one?"}, headers=AUTH)
        assert changed.status_code == 200
        renamed = await b.get("/api/v1/polls/talk/results", headers=AUTH)
        assert renamed.json()["question"] == "Which one?"
        assert etag_version(renamed) > etag_version(reopened)


async def test_a_closed_poll_reopens_on_the_memory_store() -> None:
    async with running_app(settings_for(None, api_token=TOKEN)) as (client, _):
        assert (await create(client)).status_code == 201
        assert (await client.post("/api/v1/polls/talk/close", headers=AUTH)).status_code == 200
        reopened = await client.post("/api/v1/polls/talk/reopen", headers=AUTH)
        assert reopened.status_code == 200 and reopened.json()["state"] == "open"
        assert await vote(client, "v1", "A") == 200  # counted once it is open again


async def test_a_poll_made_again_after_its_event_was_deleted_reads_afresh_on_every_instance(
    two_nodes: list[LocalNode],
) -> None:
    # Instance B remembers the first poll "talk" with votes; its event is deleted on A and a
    # poll with the same id made again: B must answer the new poll, not the deleted one.
    settings = settings_for(two_nodes, api_token=TOKEN, results_max_age_seconds=0)
    async with running_app(settings) as (a, _), running_app(settings) as (b, _):
        for attempt in ("first", "second"):
            made = await a.post("/api/v1/events", json={"title": attempt}, headers=AUTH)
            event_id = made.json()["event_id"]
            question = {**POLL, "question": f"The {attempt} question?"}
            added = await a.post(f"/api/v1/events/{event_id}/polls", json=question, headers=AUTH)
            assert added.status_code == 201
            if attempt == "first":
                for who in ("v1", "v2", "v3"):
                    assert await vote(a, who, "A") == 200
                old = (await b.get("/api/v1/polls/talk/results", headers=AUTH)).json()
                assert old["total_votes"] == 3
                deleted = await a.delete(f"/api/v1/events/{event_id}", headers=AUTH)
                assert deleted.status_code == 204
        new = (await b.get("/api/v1/polls/talk/results", headers=AUTH)).json()
        assert (new["question"], new["total_votes"]) == ("The second question?", 0)
