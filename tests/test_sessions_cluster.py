"""A whole session on the Redis Cluster store (a real cluster of 3 masters): an event
joined by code, a poll of each type in it, votes of each type on two instances with
racing duplicates and keyed retries, the current poll moving, an instance restarted,
exact final results and the CSV export (docs/sessions.md)."""

from __future__ import annotations

import asyncio
import csv
import io
from collections import Counter
from typing import Any

import httpx
from redis.crc import key_slot

from app.devtools.local_cluster import LocalCluster
from app.storage.events import event_tag, key
from tests.cluster_helpers import cluster, cluster_pool, fresh, master, settings
from tests.conftest import running_app
from tests.test_question_types import POLLS, ballot, counted, expected

__all__ = ["cluster", "cluster_pool", "fresh"]  # fixtures

TOKEN = "cluster-sessions"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
VOTERS = list(range(8))


async def vote(client: httpx.AsyncClient, poll_id: str, i: int, key_: str = "") -> int:
    headers = {"X-Voter-Id": f"v{i}", **({"Idempotency-Key": key_} if key_ else {})}
    r = await client.post(
        f"/api/v1/polls/{poll_id}/vote", json=ballot_of(poll_id, i), headers=headers
    )
    return r.status_code


KINDS: dict[str, str] = {}  # poll id -> type, filled as the polls are made


def ballot_of(poll_id: str, i: int) -> dict[str, Any]:
    return ballot(KINDS[poll_id], i)


async def current_of(client: httpx.AsyncClient, event_id: str) -> str | None:
    state = (await client.get(f"/api/v1/events/{event_id}/state")).json()
    return None if state["current"] is None else str(state["current"]["poll_id"])


def masters_holding(cluster: LocalCluster, keys: list[str]) -> set[int]:
    """The ports of the masters that hold any of `keys` (each read where its slot lives)."""
    ports = set()
    for name in keys:
        owner = cluster.owner(key_slot(name.encode()))
        with master(owner) as client:
            if client.exists(name):
                ports.add(owner.port)
    return ports


async def test_a_session_runs_on_the_cluster_across_two_instances_and_a_restart(
    fresh: LocalCluster,
) -> None:
    config = settings(fresh, api_token=TOKEN, voter_secret="shared-secret")
    async with running_app(config) as (one, _):
        async with running_app(config) as (two, _):
            created = await one.post("/api/v1/events", json={"title": "Clustered"}, headers=AUTH)
            assert created.status_code == 201, created.text
            event_id, code = created.json()["event_id"], created.json()["code"]
            joined = await two.get(f"/api/v1/events/by-code/{code.lower()}")
            assert joined.status_code == 200 and joined.json()["event_id"] == event_id
            ids: list[str] = []
            for n, (kind, body) in enumerate(POLLS.items()):
                maker = (one, two)[n % 2]
                r = await maker.post(
                    f"/api/v1/events/{event_id}/polls",
                    json={"question": f"{kind}?", **body},
                    headers=AUTH,
                )
                assert r.status_code == 201, r.text
                ids.append(r.json()["poll_id"])
                KINDS[ids[-1]] = kind
            tag = event_tag(event_id)
            assert masters_holding(fresh, [key(tag), key(tag, "polls")])  # on the cluster

            for n, poll_id in enumerate(ids):
                presenter, phone = (one, two) if n % 2 == 0 else (two, one)
                r = await presenter.post(
                    f"/api/v1/events/{event_id}/current", json={"poll_id": poll_id}, headers=AUTH
                )
                assert r.status_code == 200, r.text
                assert await current_of(phone, event_id) == poll_id

                async def both(i: int, poll_id: str = poll_id) -> list[int]:
                    # the same voter on both instances at once: one counts, one is refused
                    return list(await asyncio.gather(vote(one, poll_id, i), vote(two, poll_id, i)))

                answers = await asyncio.gather(*(both(i) for i in VOTERS))
                assert all(sorted(a) == [200, 409] for a in answers), answers
                retried = await vote(two, poll_id, 0, key_=f"k-{poll_id}")
                assert retried == 409  # the voter's vote was counted without this key
                assert await vote(one, poll_id, 99, key_="k-99") == 200
                assert await vote(two, poll_id, 99, key_="k-99") == 200  # a keyed retry
        # the second instance stops; a new one starts and finds everything on the cluster

        async with running_app(config) as (three, _):
            view = (await three.get(f"/api/v1/events/{event_id}")).json()
            assert [p["poll_id"] for p in view["polls"]] == ids
            assert view["current_poll_id"] == ids[-1]
            by_code = (await three.get(f"/api/v1/events/by-code/{code}")).json()
            assert by_code["current"]["poll_id"] == ids[-1]
            for poll_id in ids:
                kind = KINDS[poll_id]
                closed = await three.post(f"/api/v1/polls/{poll_id}/close", headers=AUTH)
                assert closed.status_code == 200, closed.text
                results = (await one.get(f"/api/v1/polls/{poll_id}/results")).json()
                assert results["final"] is True and results["voters"] == len(VOTERS) + 1
                assert counted(results) == expected(kind, [*VOTERS, 99]), kind
                assert results["total_votes"] == sum(counted(results).values())
            text = (await three.get(f"/api/v1/events/{event_id}/export.csv", headers=AUTH)).text
            rows = list(csv.DictReader(io.StringIO(text)))
            for poll_id in ids:
                exported = Counter(
                    {r["key"]: int(r["count"]) for r in rows if r["poll_id"] == poll_id}
                )
                assert +exported == expected(KINDS[poll_id], [*VOTERS, 99]), KINDS[poll_id]
            assert {r["state"] for r in rows} == {"closed"}
