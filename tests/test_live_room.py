"""The live room of one standalone poll in a real headless Chromium, driven by Playwright,
against the real service (uvicorn, two nodes): three voters vote from their phones, the
presenter page shows the counts and percentages live, the poll closes and every phone
learns it live; the presenter comes back to the stream after the service restarts.

Every test saves a screenshot in tests/screenshots/ (git-ignored) for a person to look at."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from app.devtools.local_nodes import LocalNode
from app.devtools.uvicorn_process import UvicornProcess
from tests.browser import CHROMIUM, CHROMIUM_FLAGS
from tests.conftest import ServiceProcess, nodes_setting

ARGS = CHROMIUM_FLAGS
SCREENSHOTS = Path(__file__).parent / "screenshots"
TOKEN = "organiser-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PHONE = {"viewport": {"width": 390, "height": 780}, "device_scale_factor": 2, "is_mobile": True}
OPTIONS = [{"id": "Y", "label": "Yes"}, {"id": "N", "label": "No"}]
# ms: how long a page may take to show a change without a reload: a deadline for the
# condition, not a timing claim (a loaded CI machine may take longer than a quiet one).
LIVE = 15_000


@pytest.fixture
def browser() -> Iterator[Browser]:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is required in CI (.ci/run installs it)")
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


@pytest.fixture
def service(
    two_nodes: list[LocalNode], start_service: Callable[..., ServiceProcess]
) -> ServiceProcess:
    env = {"REDIS_NODES": nodes_setting(two_nodes), "API_TOKEN": TOKEN, "VOTER_SECRET": "s"}
    return start_service(env)


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True)


def create_poll(service: ServiceProcess, question: str, labels: list[str], results: str) -> str:
    """A standalone poll through the API (the organiser page makes events: test_session_pages)."""
    options = [{"id": chr(65 + i), "label": label} for i, label in enumerate(labels)]
    body = {"question": question, "options": options, "results": results}
    created = httpx.post(f"{service.url}/api/v1/polls", json=body, headers=AUTH)
    assert created.status_code == 201
    poll_id: str = created.json()["poll_id"]
    return poll_id


def organiser_action(service: ServiceProcess, poll_id: str, action: str) -> None:
    answer = httpx.post(f"{service.url}/api/v1/polls/{poll_id}/{action}", headers=AUTH)
    assert answer.status_code == 200


def vote(page: Page, label: str) -> None:
    page.get_by_role("button", name=label, exact=True).click()


def expect_counts(presenter: Page, counts: dict[str, int], total: int) -> None:
    for option_id, count in counts.items():
        bar = presenter.locator(f'.bar[data-option="{option_id}"] .count')
        expect(bar).to_have_text(str(count), timeout=LIVE)
    expect(presenter.locator("#total")).to_have_text(str(total), timeout=LIVE)


def test_voters_vote_presenter_shows_live_then_final_and_phones_learn_the_close(
    browser: Browser, service: ServiceProcess
) -> None:
    poll_id = create_poll(service, "Which talk next?", ["Rust", "Python", "Go", "Zig"], "live")
    presenter = browser.new_page(base_url=service.url, viewport={"width": 1280, "height": 720})
    presenter.goto(f"/present/{poll_id}")
    join_url = f"{service.url}/p/{poll_id}"
    expect(presenter.locator("#join-url")).to_have_text(join_url)
    expect(presenter.locator(".qr svg")).to_be_visible()
    expect_counts(presenter, {"A": 0, "B": 0, "C": 0, "D": 0}, 0)

    voters = [browser.new_context(**PHONE) for _ in range(3)]  # three separate phones
    pages = [context.new_page() for context in voters]
    for page, label in zip(pages, ["Rust", "Python", "Go"], strict=True):
        page.goto(join_url)
        vote(page, label)
        expect(page.locator("#message")).to_have_text("Your vote counted")
    expect_counts(presenter, {"A": 1, "B": 1, "C": 1, "D": 0}, 3)
    screenshot(pages[0], "voter_counted")

    vote(pages[0], "Python")  # the same voter again
    expect(pages[0].locator("#message")).to_have_text("You already voted")
    results = httpx.get(f"{service.url}/api/v1/polls/{poll_id}/results").json()
    assert [o["count"] for o in results["options"]] == [1, 1, 1, 0]
    assert results["total_votes"] == 3
    expect_counts(presenter, {"A": 1, "B": 1, "C": 1, "D": 0}, 3)

    organiser_action(service, poll_id, "close")
    expect(presenter.locator("#state")).to_have_text("Voting closed — final results", timeout=LIVE)
    expect_counts(presenter, {"A": 1, "B": 1, "C": 1, "D": 0}, 3)
    screenshot(presenter, "presenter_final")

    for page in pages:  # each phone learns it live, without a reload
        expect(page.locator("#closed")).to_have_text("This poll is closed", timeout=LIVE)
        expect(page.get_by_role("button", name="Zig", exact=True)).to_be_disabled()
        expect(page.locator("#results")).to_contain_text("Rust: 1 (33%)")
    for context in voters:
        context.close()


def test_hidden_results_show_on_the_presenter_page_once_revealed(
    browser: Browser, service: ServiceProcess
) -> None:
    poll_id = create_poll(service, "Best snack?", ["Tea", "Cake"], "hidden")
    presenter = browser.new_page(base_url=service.url)
    presenter.goto(f"/present/{poll_id}")
    expect(presenter.get_by_text("Results hidden until revealed")).to_be_visible()
    expect(presenter.locator("#bars")).to_be_hidden()

    phone = browser.new_context(**PHONE)
    voter = phone.new_page()
    voter.goto(f"{service.url}/p/{poll_id}")
    vote(voter, "Cake")
    expect(voter.locator("#message")).to_have_text("Your vote counted")
    screenshot(presenter, "presenter_hidden")

    organiser_action(service, poll_id, "reveal")
    expect(presenter.locator("#bars")).to_be_visible(timeout=LIVE)
    expect_counts(presenter, {"A": 0, "B": 1}, 1)
    # the phone learns of the reveal without a reload (it looks every 3 s while hidden)
    expect(voter.locator("#results")).to_contain_text("Cake: 1 (100%)", timeout=3_000 + LIVE)
    phone.close()


def test_presenter_shows_reconnecting_and_goes_back_to_the_stream_after_a_restart(
    browser: Browser, two_nodes: list[LocalNode]
) -> None:
    env = {"REDIS_NODES": nodes_setting(two_nodes), "API_TOKEN": TOKEN, "VOTER_SECRET": "s"}
    first = UvicornProcess(env=env).wait_ready()
    second: UvicornProcess | None = None
    try:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        definition = {"poll_id": "drop", "question": "Still there?", "options": OPTIONS}
        assert httpx.post(f"{first.url}/api/v1/polls", json=definition, headers=auth).is_success
        presenter = browser.new_page(base_url=first.url)
        presenter.goto("/present/drop")
        expect(presenter.locator("#total")).to_have_text("0")
        expect(presenter.locator("#connection")).to_be_hidden()
        first.kill()
        expect(presenter.locator("#connection")).to_have_text("Reconnecting…", timeout=LIVE)
        screenshot(presenter, "presenter_reconnecting")
        second = UvicornProcess(env=env, port=first.port).wait_ready()  # the same address
        voter = {"X-Voter-Id": "after-the-drop"}
        vote = httpx.post(
            f"{second.url}/api/v1/polls/drop/vote", json={"option_id": "Y"}, headers=voter
        )
        assert vote.status_code == 200
        # back on the stream (EventSource's retry, then live.js's back-off of at most 8 s)
        expect(presenter.locator("#total")).to_have_text("1", timeout=8_000 + LIVE)
        expect(presenter.locator("#connection")).to_be_hidden()
        expect(presenter.locator('.bar[data-option="Y"] .percent')).to_have_text("100%")
    finally:
        first.kill()
        if second is not None:
            second.kill()


def test_voter_page_without_javascript_votes_through_the_plain_form(
    browser: Browser, service: ServiceProcess
) -> None:
    auth = AUTH
    definition = {
        "poll_id": "nojs",
        "question": "Coffee or tea?",
        "options": [{"id": "C", "label": "Coffee"}, {"id": "T", "label": "Tea"}],
    }
    created = httpx.post(f"{service.url}/api/v1/polls", json=definition, headers=auth)
    assert created.status_code == 201
    context = browser.new_context(java_script_enabled=False, **PHONE)
    page = context.new_page()
    page.goto(f"{service.url}/p/nojs")
    assert any(c["name"] == "voter" for c in context.cookies())
    vote(page, "Tea")
    expect(page.locator("#message")).to_have_text("Your vote counted")
    assert page.url == f"{service.url}/p/nojs"  # a page from the form's POST
    screenshot(page, "voter_no_javascript")
    vote(page, "Coffee")
    expect(page.locator("#message")).to_have_text("You already voted")
    httpx.post(f"{service.url}/api/v1/polls/nojs/close", headers=auth)
    page.goto(f"{service.url}/p/nojs")
    expect(page.locator("#closed")).to_have_text("This poll is closed")  # rendered by the server
    late = browser.new_context(java_script_enabled=False, **PHONE)  # a voter who had not voted
    late_page = late.new_page()
    late_page.goto(f"{service.url}/p/nojs")
    vote(late_page, "Coffee")
    expect(late_page.locator("#message")).to_have_text("This poll is closed")
    late.close()
    no_cookie = httpx.post(f"{service.url}/p/nojs", data={"option_id": "C"})
    assert no_cookie.status_code == 422 and "must accept cookies" in no_cookie.text
    assert no_cookie.headers["set-cookie"].startswith("voter=")
    results = httpx.get(f"{service.url}/api/v1/polls/nojs/results").json()
    assert [o["count"] for o in results["options"]] == [0, 1]
    context.close()


def test_unknown_poll_gives_the_404_page(browser: Browser, service: ServiceProcess) -> None:
    page = browser.new_page(base_url=service.url)
    for path in ["/p/no-such-poll", "/present/no-such-poll", "/p/bad%20id"]:
        response = page.goto(path)
        assert response is not None and response.status == 404, path
        assert response.headers["content-type"].startswith("text/html")
        expect(page.get_by_role("heading", name="No such poll")).to_be_visible()
    screenshot(page, "not_found")
    answer = httpx.post(f"{service.url}/p/no-such-poll", data={"option_id": "A"})
    assert answer.status_code == 404 and "No such poll" in answer.text
