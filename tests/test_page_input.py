"""What the pages and exports do with hostile input, without a browser: forged cross-site
votes, a Host too long for a QR code, oversized forms, formulas in labels."""

from __future__ import annotations

import pytest

from tests.conftest import running_app, settings_for

TOKEN = "t"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
POLL = {
    "poll_id": "talk",
    "question": "Q?",
    "options": [{"id": "A", "label": '=HYPERLINK("http://evil")'}, {"id": "B", "label": "+1"}],
}


@pytest.mark.parametrize("fast", [True, False])
async def test_a_vote_by_cookie_from_another_sites_page_is_refused(fast: bool) -> None:
    settings = settings_for(None, api_token=TOKEN, fast_vote_path=fast)
    async with running_app(settings) as (client, _):
        assert (await client.post("/api/v1/polls", json=POLL, headers=AUTH)).status_code == 201
        await client.get("/p/talk")  # the browser gets its voter cookie
        evil = {"Origin": "http://127.0.0.1:9999"}
        forged = await client.post("/api/v1/polls/talk/vote", json={"option_id": "A"}, headers=evil)
        assert forged.status_code == 403 and forged.json()["type"] == "cross_origin"
        form = await client.post("/p/talk", data={"option_id": "A"}, headers=evil)
        assert form.status_code == 403
        by_header = await client.post(
            "/api/v1/polls/talk/vote",
            json={"option_id": "B"},
            headers={**evil, "X-Voter-Id": "kiosk-1"},  # no cookie involved: not a forgery
        )
        assert by_header.status_code == 200
        own = await client.post(
            "/api/v1/polls/talk/vote", json={"option_id": "A"}, headers={"Origin": "http://test"}
        )
        assert own.status_code == 200
        results = (await client.get("/api/v1/polls/talk/results")).json()
        assert results["total_votes"] == 2


async def test_pages_survive_a_long_host_and_an_oversized_form() -> None:
    async with running_app(settings_for(None, api_token=TOKEN)) as (client, _):
        await client.post("/api/v1/polls", json=POLL, headers=AUTH)
        page = await client.get("/present/talk", headers={"Host": "h" * 4000})
        assert page.status_code == 200 and "h" * 4000 in page.text and "<svg" not in page.text
        await client.get("/p/talk")
        big = await client.post(
            "/p/talk",
            content=b"option_id=A&" + b"x" * 2000,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert big.status_code == 413
        assert (await client.get("/api/v1/polls/talk/results")).json()["total_votes"] == 0


async def test_csv_cells_that_would_be_formulas_are_escaped() -> None:
    async with running_app(settings_for(None, api_token=TOKEN)) as (client, _):
        await client.post("/api/v1/polls", json=POLL, headers=AUTH)
        text = (await client.get("/api/v1/polls/talk/results.csv")).text
        assert text.splitlines()[1:] == ['A,"\'=HYPERLINK(""http://evil"")",0', "B,'+1,0"]
