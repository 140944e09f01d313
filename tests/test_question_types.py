"""The question types counted exactly on real nodes by real service processes: concurrent
voters on two instances, racing duplicates, Idempotency-Key retries, close with an exact
final, kill -9 of an instance; and the bad-input table of each type (docs/sessions.md)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.devtools.local_nodes import LocalNode
from app.devtools.uvicorn_process import UvicornProcess
from app.services.question_types import normalise_word
from tests.conftest import NodeFactory, running_app, settings_for

TOKEN = "types-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
OPTIONS = [{"id": o, "label": f"option {o}"} for o in "ABC"]
POLLS: dict[str, dict[str, Any]] = {
    "single": {"type": "single", "options": OPTIONS},
    "multiple": {"type": "multiple", "options": OPTIONS, "max_choices": 2},
    "rating": {"type": "rating", "min": 1, "max": 5},
    "words": {"type": "words", "max_words": 2},
    "quiz": {"type": "quiz", "options": OPTIONS, "correct": "B"},
}


def ballot(kind: str, i: int) -> dict[str, Any]:
    """Voter i's vote in the poll of that type."""
    if kind == "multiple":
        return {"option_ids": [["A", "C"], ["B"], ["C", "B"]][i % 3]}
    if kind == "rating":
        return {"value": 1 + i % 5}
    if kind == "words":
        return {"words": [["Rust", "  GO "], ["rust", "Python"], ["\uff47\uff4f"]][i % 3]}
    return {"option_id": "ABC"[i % 3]}


def expected(kind: str, voters: list[int]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for i in voters:
        body = ballot(kind, i)
        if kind == "multiple":
            counts.update(body["option_ids"])
        elif kind == "rating":
            counts[str(body["value"])] += 1
        elif kind == "words":
            counts.update(normalise_word(w) for w in body["words"])
        else:
            counts[body["option_id"]] += 1
    return counts


def counted(results: dict[str, Any]) -> Counter[str]:
    if results["type"] == "rating":
        return Counter({v: n for v, n in results["values"].items() if n})
    if results["type"] == "words":
        return Counter({w["text"]: w["count"] for w in results["words"]})
    return Counter({o["id"]: o["count"] for o in results["options"] if o["count"]})


def env(nodes: list[LocalNode]) -> dict[str, str]:
    return {
        "REDIS_NODES": ",".join(n.url for n in nodes),
        "API_TOKEN": TOKEN,
        "VOTER_SECRET": "shared-secret",
    }


@pytest.fixture
def two_services(two_nodes: list[LocalNode]) -> Iterator[list[UvicornProcess]]:
    """Two service processes on the same two nodes, started side by side."""
    services = [UvicornProcess(env=env(two_nodes)) for _ in range(2)]
    try:
        yield [service.wait_ready() for service in services]
    finally:
        for service in services:
            service.kill()


async def create_polls(client: httpx.AsyncClient) -> dict[str, str]:
    event = (await client.post("/api/v1/events", json={"title": "t"}, headers=AUTH)).json()
    ids = {}
    for kind, body in POLLS.items():
        r = await client.post(
            f"/api/v1/events/{event['event_id']}/polls",
            json={"question": f"{kind}?", **body},
            headers=AUTH,
        )
        assert r.status_code == 201, r.text
        ids[kind] = r.json()["poll_id"]
    return ids


async def post_vote(
    client: httpx.AsyncClient, poll_id: str, voter: str, body: dict[str, Any], key: str = ""
) -> int:
    headers = {"X-Voter-Id": voter, **({"Idempotency-Key": key} if key else {})}
    r = await client.post(f"/api/v1/polls/{poll_id}/vote", json=body, headers=headers)
    return r.status_code


async def test_every_type_counts_exactly_from_racing_voters_on_two_instances(
    two_services: list[UvicornProcess],
) -> None:
    first, second = two_services
    voters = list(range(16))
    async with (
        httpx.AsyncClient(base_url=first.url, timeout=30) as one,
        httpx.AsyncClient(base_url=second.url, timeout=30) as two,
    ):
        ids = await create_polls(one)

        async def race(kind: str, i: int) -> list[int]:
            # each voter's vote goes to both instances at once; odd voters with one key
            key = f"k-{kind}-{i}" if i % 2 else ""
            body = ballot(kind, i)
            calls = (post_vote(c, ids[kind], f"v{i}", body, key) for c in (one, two))
            return sorted(await asyncio.gather(*calls))

        outcomes = await asyncio.gather(*(race(k, i) for k in POLLS for i in voters))
        for (kind, i), statuses in zip(
            [(k, i) for k in POLLS for i in voters], outcomes, strict=True
        ):
            # a keyed retry is answered as counted (once); a plain duplicate is refused
            assert statuses == ([200, 200] if i % 2 else [200, 409]), (kind, i, statuses)
        for kind, poll_id in ids.items():
            assert (await one.post(f"/api/v1/polls/{poll_id}/close", headers=AUTH)).is_success
            results = (await two.get(f"/api/v1/polls/{poll_id}/results")).json()
            assert results["final"] is True and results["voters"] == len(voters)
            assert counted(results) == expected(kind, voters), kind
            assert results["total_votes"] == sum(expected(kind, voters).values())
            late = await post_vote(two, poll_id, "late", ballot(kind, 0))
            assert late == 409
            mine = (
                await two.get(f"/api/v1/polls/{poll_id}/my-vote", headers={"X-Voter-Id": "v4"})
            ).json()
            assert mine["voted"] and mine["choices_left"] == 0
        rating = (await one.get(f"/api/v1/polls/{ids['rating']}/results")).json()
        assert rating["mean"] == round(sum(1 + i % 5 for i in voters) / len(voters), 2)
        quiz = (await one.get(f"/api/v1/polls/{ids['quiz']}/results")).json()
        assert quiz["correct"] == "B"


async def test_kill_9_of_an_instance_then_keyed_retries_count_every_voter_once(
    two_services: list[UvicornProcess],
) -> None:
    victim, survivor = two_services
    voters = list(range(20))
    async with (
        httpx.AsyncClient(base_url=victim.url, timeout=10) as doomed,
        httpx.AsyncClient(base_url=survivor.url, timeout=30) as other,
    ):
        ids = await create_polls(other)
        unanswered: list[tuple[str, int]] = []

        async def to_victim(kind: str, i: int) -> None:
            try:
                status = await post_vote(doomed, ids[kind], f"v{i}", ballot(kind, i), f"k{i}")
                assert status == 200
            except httpx.TransportError:
                unanswered.append((kind, i))

        half = [to_victim(k, i) for k in POLLS for i in voters[:10]]
        await asyncio.gather(*half)
        rest = asyncio.gather(*(to_victim(k, i) for k in POLLS for i in voters[10:]))
        await asyncio.sleep(0)  # some of the rest are on their way when the process dies
        os.killpg(victim.process.pid, signal.SIGKILL)
        await rest
        victim.finish()
        assert unanswered, "the kill came after every answer: nothing was in flight"
        for kind, i in unanswered:  # the client retries on the other instance, same key
            assert await post_vote(other, ids[kind], f"v{i}", ballot(kind, i), f"k{i}") == 200
        for kind, poll_id in ids.items():
            await other.post(f"/api/v1/polls/{poll_id}/close", headers=AUTH)
            results = (await other.get(f"/api/v1/polls/{poll_id}/results")).json()
            assert counted(results) == expected(kind, voters), kind
            assert results["voters"] == len(voters) and results["final"]


# -- bad input, per type: 422 naming the field, nothing changed ----------------------------

BAD: list[tuple[str, Any, str]] = [
    ("single", {"option_ids": ["A"]}, "option_id"),
    ("single", {"option_id": "Z"}, "option_id"),
    ("single", {"option_id": 1}, "option_id"),
    ("multiple", {"option_id": "A"}, "option_ids"),
    ("multiple", {"option_ids": []}, "option_ids"),
    ("multiple", {"option_ids": "A"}, "option_ids"),
    ("multiple", {"option_ids": ["A", "A"]}, "option_ids"),
    ("multiple", {"option_ids": ["A", "B", "C"]}, "option_ids"),
    ("multiple", {"option_ids": ["A", "Z"]}, "option_ids"),
    ("multiple", {"option_ids": ["A"], "value": 3}, "value"),
    ("rating", {"value": 0}, "value"),
    ("rating", {"value": 6}, "value"),
    ("rating", {"value": 4.0}, "value"),
    ("rating", {"value": "4"}, "value"),
    ("rating", {"value": True}, "value"),
    ("rating", {"option_id": "A"}, "value"),
    ("words", {"words": []}, "words"),
    ("words", {"words": "rust"}, "words"),
    ("words", {"words": ["a", "b", "c"]}, "words"),
    ("words", {"words": ["x" * 41]}, "words"),
    ("words", {"words": ["   "]}, "words"),
    ("words", {"words": ["Rust", "rust "]}, "words"),
    ("words", {"words": [7]}, "words"),
    ("words", {"words": ["\u200b"]}, "words"),  # only a zero-width space: empty
    ("words", {"words": ["\ufeff\u2060 \u200c"]}, "words"),  # only invisible characters
    ("words", {"words": ["Rust", "ru\u200bst"]}, "words"),  # the same entry, invisibly apart
    ("words", {"words": ["a\x00b"]}, "words"),  # a control character
    ("words", {"words": ["\x07"]}, "words"),
    ("quiz", {"option_id": "Q"}, "option_id"),
    ("quiz", {"value": 1}, "option_id"),
]


async def test_bad_votes_of_each_type_answer_422_naming_the_field_and_count_nothing(
    start_node: NodeFactory,
) -> None:
    async with running_app(settings_for([start_node()], api_token=TOKEN)) as (client, _):
        ids = await create_polls(client)
        for kind, body, field in BAD:
            r = await client.post(
                f"/api/v1/polls/{ids[kind]}/vote", json=body, headers={"X-Voter-Id": "bad"}
            )
            assert r.status_code == 422, (kind, body, r.text)
            assert r.json()["detail"][0]["loc"] == ["body", field], (kind, body, r.text)
        for kind, poll_id in ids.items():
            results = (await client.get(f"/api/v1/polls/{poll_id}/results")).json()
            assert results["total_votes"] == 0 and results["voters"] == 0, kind
            mine = await client.get(
                f"/api/v1/polls/{poll_id}/my-vote", headers={"X-Voter-Id": "bad"}
            )
            assert mine.json()["voted"] is False
            # the voter can still vote: nothing was used up
            assert await post_vote(client, poll_id, "bad", ballot(kind, 0)) == 200


BAD_POLLS: list[tuple[dict[str, Any], str]] = [
    ({"type": "poll", "options": OPTIONS}, "type"),
    ({"type": "single"}, "options"),
    ({"type": "rating", "options": OPTIONS}, "options"),
    ({"type": "rating", "min": 5, "max": 5}, "max"),
    ({"type": "rating", "max": 101}, "max"),
    ({"type": "rating", "max_choices": 2}, "max_choices"),
    ({"type": "multiple", "options": OPTIONS, "max_choices": 4}, "max_choices"),
    ({"type": "multiple", "options": OPTIONS, "votes_per_voter": 2}, "votes_per_voter"),
    ({"type": "words", "max_words": 6}, "max_words"),
    ({"type": "words", "max_entries": 0}, "max_entries"),
    ({"type": "quiz", "options": OPTIONS}, "correct"),
    ({"type": "quiz", "options": OPTIONS, "correct": "Z"}, "correct"),
    ({"type": "quiz", "options": OPTIONS, "correct": "A", "time_limit": 1}, "time_limit"),
    ({"type": "single", "options": OPTIONS, "correct": "A"}, "correct"),
]


@pytest.mark.parametrize("where", ["event", "poll"])
async def test_bad_definitions_answer_422_naming_the_field_and_create_nothing(
    start_node: NodeFactory, where: str
) -> None:
    async with running_app(settings_for([start_node()], api_token=TOKEN)) as (client, _):
        event = (await client.post("/api/v1/events", json={"title": "t"}, headers=AUTH)).json()
        path = f"/api/v1/events/{event['event_id']}/polls" if where == "event" else "/api/v1/polls"
        for body, field in BAD_POLLS:
            r = await client.post(path, json={"question": "?", **body}, headers=AUTH)
            assert r.status_code == 422, (body, r.text)
            assert r.json()["detail"][0]["loc"][:2] == ["body", field], r.text
        found = (await client.get(f"/api/v1/events/{event['event_id']}")).json()
        assert found["polls"] == []


def test_a_words_entry_is_counted_as_it_looks() -> None:
    """Invisible (format) characters are removed before counting, so entries that look the
    same count as one; the 40-character limit counts code points once normalised."""
    assert normalise_word("Ru\u200bst\ufeff") == normalise_word(" rust ") == "rust"
    assert normalise_word("\u2060go\u200d") == "go"
    assert normalise_word("\u202eevil") == "evil"  # a right-to-left override is invisible
    assert normalise_word("E\u0301" * 40) == "\u00e9" * 40  # composed: 40, not 80


async def test_the_words_cap_refuses_new_entries_but_takes_known_ones(
    start_node: NodeFactory,
) -> None:
    async with running_app(settings_for([start_node()], api_token=TOKEN)) as (client, _):
        body = {"question": "?", "type": "words", "max_words": 2, "max_entries": 3}
        poll_id = (await client.post("/api/v1/polls", json=body, headers=AUTH)).json()["poll_id"]
        assert await post_vote(client, poll_id, "a", {"words": ["one", "two"]}) == 200
        r = await client.post(
            f"/api/v1/polls/{poll_id}/vote",
            json={"words": ["three", "four"]},
            headers={"X-Voter-Id": "b"},
        )
        assert r.status_code == 422 and r.json()["detail"][0]["type"] == "too_many_entries"
        assert await post_vote(client, poll_id, "b", {"words": ["ONE", "three"]}) == 200
        assert await post_vote(client, poll_id, "c", {"words": ["two"]}) == 200
        results = (await client.get(f"/api/v1/polls/{poll_id}/results")).json()
        assert results["words"] == [
            {"text": "one", "count": 2},
            {"text": "two", "count": 2},
            {"text": "three", "count": 1},
        ]
        assert results["total_votes"] == 5 and results["voters"] == 3
        hidden = await client.post(
            f"/api/v1/polls/{poll_id}/hide", json={"text": " One"}, headers=AUTH
        )
        assert hidden.json()["hidden_words"] == ["one"]
        for path in ("results", "results.csv"):
            public = (await client.get(f"/api/v1/polls/{poll_id}/{path}")).text
            assert "two" in public and "one" not in public, path
        results = (await client.get(f"/api/v1/polls/{poll_id}/results")).json()
        assert results["total_votes"] == 5  # the counts stay on the node


async def test_a_type_field_changes_before_votes_but_not_after_on_any_instance(
    two_services: list[UvicornProcess],
) -> None:
    first, second = two_services
    async with (
        httpx.AsyncClient(base_url=first.url) as one,
        httpx.AsyncClient(base_url=second.url) as two,
    ):
        body = {"question": "?", "type": "single", "options": OPTIONS}
        poll_id = (await one.post("/api/v1/polls", json=body, headers=AUTH)).json()["poll_id"]
        refused = await two.post(  # the second instance now remembers it as single
            f"/api/v1/polls/{poll_id}/vote", json={"value": 3}, headers={"X-Voter-Id": "x"}
        )
        assert refused.status_code == 422
        changed = await one.patch(
            f"/api/v1/polls/{poll_id}", json={"type": "rating", "min": 0, "max": 3}, headers=AUTH
        )
        assert changed.status_code == 200 and changed.json()["type"] == "rating"
        assert await post_vote(two, poll_id, "a", {"value": 3}) == 200  # it read it again
        for patch, field in (
            ({"type": "single", "options": OPTIONS}, "type"),
            ({"max": 4}, "max"),
            ({"min": 1}, "min"),
        ):
            r = await one.patch(f"/api/v1/polls/{poll_id}", json=patch, headers=AUTH)
            assert r.status_code == 422, r.text
            assert r.json()["detail"][0]["loc"] == ["body", field]
            assert r.json()["detail"][0]["type"] == "votes_exist"
        bad = await one.patch(f"/api/v1/polls/{poll_id}", json={"max": "9"}, headers=AUTH)
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "max"]
        renamed = await one.patch(
            f"/api/v1/polls/{poll_id}", json={"question": "How sure?"}, headers=AUTH
        )
        assert renamed.status_code == 200 and renamed.json()["question"] == "How sure?"
        results = (await two.get(f"/api/v1/polls/{poll_id}/results")).json()
        assert results["values"] == {"0": 0, "1": 0, "2": 0, "3": 1} and results["voters"] == 1


async def test_the_words_cap_holds_under_a_race_of_new_entries(start_node: NodeFactory) -> None:
    async with running_app(settings_for([start_node()], api_token=TOKEN)) as (client, _):
        body = {"question": "?", "type": "words", "max_words": 1, "max_entries": 3}
        poll_id = (await client.post("/api/v1/polls", json=body, headers=AUTH)).json()["poll_id"]
        statuses = await asyncio.gather(
            *(post_vote(client, poll_id, f"v{i}", {"words": [f"w{i}"]}) for i in range(12))
        )
        assert sorted(statuses) == [200] * 3 + [422] * 9
        results = (await client.get(f"/api/v1/polls/{poll_id}/results")).json()
        assert len(results["words"]) == 3 and results["voters"] == 3
        assert results["total_votes"] == 3
        # a refused voter used up nothing: a known entry is still taken from them
        refused = [f"v{i}" for i, s in enumerate(statuses) if s == 422]
        known = results["words"][0]["text"]
        assert await post_vote(client, poll_id, refused[0], {"words": [known.upper()]}) == 200


async def test_a_keyed_retry_of_words_counts_once_and_another_body_is_refused(
    start_node: NodeFactory,
) -> None:
    async with running_app(settings_for([start_node()], api_token=TOKEN)) as (client, _):
        ids = await create_polls(client)
        words = ids["words"]
        assert await post_vote(client, words, "k", {"words": ["Rust"]}, key="key-1") == 200
        # the same entry as typed differently is the same vote: answered as counted
        assert await post_vote(client, words, "k", {"words": [" RUST\u200b"]}, key="key-1") == 200
        assert await post_vote(client, words, "k", {"words": ["go"]}, key="key-1") == 409
        results = (await client.get(f"/api/v1/polls/{words}/results")).json()
        assert results["words"] == [{"text": "rust", "count": 1}] and results["voters"] == 1


async def test_a_hidden_entry_is_not_kept_by_a_revalidating_cache(start_node: NodeFactory) -> None:
    """After a hide, the results' ETag changes: a browser or proxy that revalidates with
    If-None-Match gets the new body, not a 304 that keeps showing the hidden entry."""
    async with running_app(settings_for([start_node()], api_token=TOKEN)) as (client, _):
        body = {"question": "?", "type": "words", "max_words": 2}
        poll_id = (await client.post("/api/v1/polls", json=body, headers=AUTH)).json()["poll_id"]
        assert await post_vote(client, poll_id, "a", {"words": ["secret", "ok"]}) == 200
        before = await client.get(f"/api/v1/polls/{poll_id}/results")
        assert "secret" in before.text
        hidden = await client.post(
            f"/api/v1/polls/{poll_id}/hide", json={"text": "secret"}, headers=AUTH
        )
        assert hidden.status_code == 200
        again = await client.get(
            f"/api/v1/polls/{poll_id}/results", headers={"If-None-Match": before.headers["etag"]}
        )
        assert again.status_code == 200 and "secret" not in again.text
        assert again.headers["etag"] != before.headers["etag"]
