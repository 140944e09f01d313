"""The bare address: a browser gets the box to type a join code in, every other client the
health answer as before; the box's plain form sends a typed code on to its event page."""

from __future__ import annotations

from tests.conftest import running_app, settings_for


async def test_a_browser_gets_the_join_box_and_other_clients_the_health_answer() -> None:
    async with running_app(settings_for(None)) as (client, _):
        page = await client.get("/", headers={"Accept": "text/html,application/xhtml+xml,*/*"})
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert '<form id="join" method="get" action="/j">' in page.text
        assert 'name="code"' in page.text
        for accept in [None, "*/*", "application/json"]:
            headers = {"Accept": accept} if accept else {}
            answer = await client.get("/", headers=headers)
            assert answer.json() == {"status": "healthy"}, accept


async def test_a_typed_code_goes_to_its_event_page_and_nonsense_is_told_so() -> None:
    async with running_app(settings_for(None)) as (client, _):
        typed = await client.get("/j", params={"code": " ab-c 7k9 "})
        assert typed.status_code == 303 and typed.headers["location"] == "/j/ABC7K9"
        bad = await client.get("/j", params={"code": "<script>x</script>"})
        assert bad.status_code == 422 and bad.headers["content-type"].startswith("text/html")
        assert "<script>x" not in bad.text and "&lt;script&gt;x" in bad.text
        assert "not a code" in bad.text
