"""Join codes a person reads aloud and types (docs/sessions.md): no look-alikes in a new
code; a code typed in lower case, with spaces, dashes, full-width letters or a dropped
look-alike still joins, over the API, the page and its plain form; an event whose code
was made with the old alphabet still joins by it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from app.services import events
from tests.conftest import NodeFactory, running_app, settings_for

TOKEN = "codes-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LOOK_ALIKES = set("0O1IL" + "BGSZV")  # never in a new code


async def create(client: httpx.AsyncClient, title: str) -> dict[str, str]:
    r = await client.post("/api/v1/events", json={"title": title}, headers=AUTH)
    assert r.status_code == 201, r.text
    return {"event_id": r.json()["event_id"], "code": r.json()["code"]}


async def joined(client: httpx.AsyncClient, typed: str) -> str | None:
    """The event a typed code joins over the API (None: 404)."""
    r = await client.get(f"/api/v1/events/by-code/{typed}")
    if r.status_code == 404:
        assert r.json()["type"] == "event_not_found"
        return None
    assert r.status_code == 200, r.text
    return str(r.json()["event_id"])


def codes_made(codes: list[str]) -> Iterator[str]:
    yield from codes


async def test_a_new_code_has_no_look_alikes_and_a_mistyped_one_still_joins(
    start_node: NodeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_app(settings_for([start_node()], api_token=TOKEN)) as (client, _):
        made = [(await create(client, f"e{n}"))["code"] for n in range(20)]
        assert all(len(c) == 6 and set(c) <= set(events.CODE_ALPHABET) for c in made)
        assert not set("".join(made)) & LOOK_ALIKES
        assert len(events.CODE_ALPHABET) == 26 and not set(events.CODE_ALPHABET) & LOOK_ALIKES

        # one new event whose code holds every kept look-alike; one made with the old
        # alphabet (before the look-alikes went); one new event that code reads as
        queue = codes_made(["8652UA", "SBZGVA", "5826UA"])
        monkeypatch.setattr(events, "new_code", lambda: next(queue))
        new = await create(client, "new")
        old = await create(client, "old")
        twin = await create(client, "twin")
        assert [new["code"], old["code"], twin["code"]] == ["8652UA", "SBZGVA", "5826UA"]

        for typed in [
            "8652ua",
            "865-2ua",
            " 86 52 UA ",
            "bgsZva",
            "b6s-2uA",
            "\uff18\uff16sz\uff35a",
        ]:
            assert await joined(client, typed) == new["event_id"], typed
        assert await joined(client, "sbzgva") == old["event_id"]  # as stored, first
        assert await joined(client, "5826ua") == twin["event_id"]
        for typed in ["O652UA", "8652U", "8652UAA", "86S2U1", "zzzzzz"]:
            assert await joined(client, typed) is None, typed

        page = await client.get("/j/b6s-2uA")  # the page goes on to the real code
        assert page.status_code == 303 and page.headers["location"] == "/j/8652UA"
        page = await client.get("/j/8652UA")
        assert page.status_code == 200 and 'data-code="8652UA"' in page.text
        assert (await client.get("/j/SBZGVA")).status_code == 200  # the old code, as is
        form = await client.get("/j", params={"code": " bgs-zva "})  # the box at `/`
        assert form.status_code == 303 and form.headers["location"] == "/j/BGSZVA"
        assert (await client.get(form.headers["location"])).headers["location"] == "/j/8652UA"
        not_a_code = await client.get("/j", params={"code": "o652ua"})
        assert not_a_code.status_code == 422 and "not a code" in not_a_code.text
        unknown = await client.get("/j/QQQQQQ")
        assert unknown.status_code == 404 and "No such event" in unknown.text

        deleted = await client.delete(f"/api/v1/events/{old['event_id']}", headers=AUTH)
        assert deleted.status_code == 204
        assert await joined(client, "sbzgva") == twin["event_id"]  # now only the twin
