"""POST /api/v1/votes: bulk ingestion behind a bearer token, all or nothing."""

from __future__ import annotations

import pytest

from app.devtools.local_nodes import LocalNode
from tests.conftest import running_app, settings_for, stored_counts

TOKEN = "t0ken-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_bulk_is_off_without_a_token() -> None:
    async with running_app(settings_for(None)) as (client, _):
        r = await client.post(
            "/api/v1/votes", json=[{"poll_id": "1", "option_id": "A", "count": 1}]
        )
        assert r.status_code == 404


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic " + TOKEN, TOKEN])
async def test_bulk_needs_the_right_bearer_token(header: str | None) -> None:
    async with running_app(settings_for(None, api_token=TOKEN)) as (client, service):
        headers = {"Authorization": header} if header else {}
        body = [{"poll_id": "1", "option_id": "A", "count": 1}]
        r = await client.post("/api/v1/votes", json=body, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert service.pending_votes() == 0


async def test_bulk_votes_are_counted_and_flushed(two_nodes: list[LocalNode]) -> None:
    entries = [{"poll_id": str(p), "option_id": o, "count": 3} for p in range(20) for o in "AB"]
    async with running_app(settings_for(two_nodes, api_token=TOKEN)) as (client, service):
        r = await client.post("/api/v1/votes", json=entries, headers=AUTH)
        assert r.json() == {"status": "success", "entries": 40, "votes": 120}
        assert (await client.get("/api/v1/results/7")).json()["results"] == {"A": 3, "B": 3}
        await service.flusher.flush()
    for poll in range(20):
        assert sum(sum(stored_counts(n, str(poll)).values()) for n in two_nodes) == 6


@pytest.mark.parametrize(
    ("entries", "loc"),
    [
        ([{"poll_id": "1", "option_id": "A", "count": 0}], ["body", 0, "count"]),
        ([{"poll_id": "1", "option_id": "A", "count": 1.5}], ["body", 0, "count"]),
        ([{"poll_id": "1", "option_id": "A", "count": "2"}], ["body", 0, "count"]),
        ([{"poll_id": "1", "option_id": "A", "count": 10**7}], ["body", 0, "count"]),
        ([{"poll_id": "1", "option_id": "A"}], ["body", 0]),
        ([{"poll_id": "1", "option_id": "A", "count": 1, "x": 1}], ["body", 0]),
        (
            [
                {"poll_id": "1", "option_id": "A", "count": 1},
                {"poll_id": "", "option_id": "A", "count": 1},
            ],
            ["body", 1, "poll_id"],
        ),
        ([{"poll_id": "1", "option_id": "A b", "count": 1}], ["body", 0, "option_id"]),
        ([{"poll_id": "1", "option_id": "A\n", "count": 1}], ["body", 0, "option_id"]),
        ([], ["body"]),
        ({"poll_id": "1"}, ["body"]),
        ([{"poll_id": "1", "option_id": "A", "count": 1}] * 10_001, ["body"]),
    ],
)
async def test_bad_bulk_entry_rejects_the_whole_request(entries: object, loc: list[object]) -> None:
    async with running_app(settings_for(None, api_token=TOKEN)) as (client, service):
        r = await client.post("/api/v1/votes", json=entries, headers=AUTH)
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == loc
        assert service.pending_votes() == 0


async def test_bulk_accepts_a_whole_number_written_as_a_float() -> None:
    async with running_app(settings_for(None, api_token=TOKEN)) as (client, service):
        body = [{"poll_id": "1", "option_id": "A", "count": 4.0}]
        r = await client.post("/api/v1/votes", json=body, headers=AUTH)
        assert r.json() == {"status": "success", "entries": 1, "votes": 4}
        assert service.pending_votes() == 4


async def test_bulk_over_the_option_cap_changes_nothing() -> None:
    entries = [{"poll_id": "p", "option_id": f"o{i}", "count": 1} for i in range(101)]
    async with running_app(settings_for(None, api_token=TOKEN)) as (client, service):
        r = await client.post("/api/v1/votes", json=entries, headers=AUTH)
        assert r.status_code == 422
        assert service.pending_votes() == 0
        assert (await client.get("/api/v1/results/p")).json()["results"] == {}


async def test_bulk_body_too_large_is_413() -> None:
    async with running_app(settings_for(None, api_token=TOKEN)) as (client, _):
        r = await client.post("/api/v1/votes", content=b"[" + b" " * 3_000_000 + b"]", headers=AUTH)
        assert r.status_code == 413


async def test_bulk_in_write_through_mode_lands_before_the_answer(start_node: object) -> None:
    node: LocalNode = start_node()  # type: ignore[operator]
    settings = settings_for([node], api_token=TOKEN, batch_interval_seconds=0)
    async with running_app(settings) as (client, _):
        body = [{"poll_id": "9", "option_id": "A", "count": 5}]
        assert (await client.post("/api/v1/votes", json=body, headers=AUTH)).status_code == 200
        assert stored_counts(node, "9") == {"A": 5}
