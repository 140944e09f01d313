"""A whole session in a real headless Chromium (Debian's, driven by Playwright) against the
real service (uvicorn, two nodes): the organiser creates an event with three questions of
different types on the organiser page; three phones (390x844) join by typing the code at
`/`; the presenter screen (1920x1080) follows as the organiser moves through the
questions; every phone shows each new question without a reload (within the stream
interval + 1 s); the presenter shows percentages, a histogram with its mean, a word cloud;
a phone shows its choice after a reload; a closed question shows as closed on every phone.
Then the final screen of a 20-option and a 50-word question fits 1920x1080 and 1280x720.

Screenshots go to docs/screenshots/ (the session guide shows them)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from app.devtools.local_nodes import LocalNode
from tests.browser import CHROMIUM, CHROMIUM_FLAGS
from tests.conftest import ServiceProcess, nodes_setting

SCREENSHOTS = Path(__file__).parent.parent / "docs" / "screenshots"
TOKEN = "organiser-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 1, "is_mobile": True}
INTERVAL = 0.5  # STREAM_INTERVAL_SECONDS of the service under test
FOLLOW = int((INTERVAL + 1) * 1000)  # ms: "within the stream interval plus one second"
SCREENS = [(1920, 1080), (1280, 720)]


@pytest.fixture
def browser() -> Iterator[Browser]:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is required in CI (.ci/run installs it)")
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--headless", *CHROMIUM_FLAGS]
        )
        yield browser
        browser.close()


@pytest.fixture
def service(
    two_nodes: list[LocalNode], start_service: Callable[..., ServiceProcess]
) -> ServiceProcess:
    env = {
        "REDIS_NODES": nodes_setting(two_nodes),
        "API_TOKEN": TOKEN,
        "VOTER_SECRET": "s",
        "STREAM_INTERVAL_SECONDS": str(INTERVAL),
    }
    return start_service(env)


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / f"{name}.png")


def add_question(organiser: Page, kind: str, question: str, **fields: str) -> None:
    """Fills the organiser's form: `fields` by input name."""
    form = organiser.locator("#question-form")
    form.get_by_label("Type").select_option(kind)
    form.get_by_label("Question").fill(question)
    for name, value in fields.items():
        form.locator(f'[name="{name}"]').fill(value)
    form.get_by_role("button", name="Add the question").click()
    expect(organiser.locator("#questions")).to_contain_text(question)


def expect_question(phones: list[Page], question: str) -> None:
    for phone in phones:
        expect(phone.locator("#question")).to_have_text(question, timeout=FOLLOW)


def next_question(organiser: Page) -> None:
    organiser.get_by_role("button", name="Next question").click()


def test_a_whole_session_organiser_presenter_and_three_phones(
    browser: Browser, service: ServiceProcess
) -> None:
    organiser = browser.new_page(base_url=service.url)
    organiser.goto("/organise")
    organiser.get_by_label("Organiser token").fill("wrong")
    organiser.get_by_role("button", name="Use this token").click()
    organiser.get_by_label("Title of a new event").fill("Friday <b>all-hands</b>")
    organiser.get_by_role("button", name="Create the event").click()
    expect(organiser.locator("#message")).to_have_text("The token was refused: type it again.")
    expect(organiser.get_by_label("Organiser token")).to_be_visible()  # typed again at once
    organiser.get_by_label("Organiser token").fill(TOKEN)
    organiser.get_by_role("button", name="Use this token").click()
    organiser.get_by_role("button", name="Create the event").click()
    expect(organiser.locator("#event-title")).to_have_text("Friday <b>all-hands</b>")  # escaped
    code = organiser.locator("#event-code").inner_text()
    assert len(code) == 6
    add_question(organiser, "single", "Which talk next?", options="Rust\nPython\nGo")
    add_question(organiser, "rating", "How useful was it?", min="1", max="5")
    add_question(organiser, "words", "One word for today?", max_words="2")
    expect(organiser.locator("#questions li")).to_have_count(3)
    event_id = organiser.locator("#event").get_attribute("data-event-id")
    listed = organiser.locator(f'#events li[data-event-id="{event_id}"]')
    expect(listed).to_contain_text("3 questions")  # the list comes from the server

    presenter = browser.new_page(base_url=service.url, viewport={"width": 1920, "height": 1080})
    presenter.goto(f"/present/e/{event_id}")
    expect(presenter.locator("#join-code")).to_have_text(code)
    expect(presenter.locator(".qr svg")).to_be_visible()

    contexts = [browser.new_context(base_url=service.url, **PHONE) for _ in range(3)]
    phones = [context.new_page() for context in contexts]
    for phone in phones:
        phone.goto("/")
        typed = f"{code[:3].lower()}-{code[3:]}"  # as a person types it
        phone.get_by_label("The code on the screen").fill(typed)
        phone.get_by_role("button", name="Join").click()
        expect(phone).to_have_url(f"{service.url}/j/{code}")
        expect(phone.locator("#question")).to_have_text("Waiting for the next question")

    # 1: single choice — bars with counts and percentages
    next_question(organiser)
    expect_question([presenter, *phones], "Which talk next?")
    for phone, label in zip(phones, ["Rust", "Python", "Rust"], strict=True):
        phone.get_by_role("button", name=label, exact=True).click()
        expect(phone.locator("#your-choice")).to_have_text(f"You chose: {label}")
        expect(phone.locator("#choices-left")).to_have_text("No choices left")
    rust = presenter.locator('.bar[data-option="A"]')
    expect(rust.locator(".count")).to_have_text("2", timeout=FOLLOW)
    expect(rust.locator(".percent")).to_have_text("67%")
    expect(presenter.locator('.bar[data-option="B"] .percent')).to_have_text("33%")
    phones[1].reload()  # the choice comes back from the voter's record on the node
    expect(phones[1].locator("#your-choice")).to_have_text("You chose: Python")
    expect(phones[1].get_by_role("button", name="Go", exact=True)).to_be_disabled()
    expect(phones[0].locator("#results")).to_contain_text("67%", timeout=FOLLOW)  # live results
    screenshot(presenter, "presenter-single")
    screenshot(phones[0], "phone-single")

    # 2: rating — a histogram and the mean
    next_question(organiser)
    expect_question([presenter, *phones], "How useful was it?")
    for phone, value in zip(phones, ["4", "5", "4"], strict=True):
        phone.get_by_role("button", name=value, exact=True).click()
        expect(phone.locator("#your-choice")).to_have_text(f"You rated: {value}")
    expect(presenter.locator('.column[data-value="4"] .count')).to_have_text("2", timeout=FOLLOW)
    expect(presenter.locator('.column[data-value="5"] .count')).to_have_text("1")
    expect(presenter.locator(".mean-value")).to_have_text("4.33")
    screenshot(presenter, "presenter-rating")

    # 3: words — a cloud, font size by count
    next_question(organiser)
    expect_question([presenter, *phones], "One word for today?")
    for phone, words in zip(phones, [["Rust", "calm"], ["  rust ", "Busy"], ["RUST"]], strict=True):
        for i, word in enumerate(words):
            phone.get_by_label(f"Word {i + 1}", exact=True).fill(word)
        phone.get_by_role("button", name="Send").click()
        expect(phone.locator("#message")).to_have_text("Your answer counted")
    cloud_rust = presenter.locator('.word[data-count="3"]')
    expect(cloud_rust).to_have_text("rust", timeout=FOLLOW)
    calm = presenter.locator(".word", has_text="calm")
    expect(calm).to_have_attribute("data-count", "1")
    assert font_px(cloud_rust) > font_px(calm)
    screenshot(phones[2], "phone-words")

    # the organiser closes it: every phone learns it live; the presenter shows it final
    item = organiser.locator("#questions li", has_text="One word for today?")
    item.get_by_role("button", name="Close").click()
    for phone in phones:
        expect(phone.locator("#closed")).to_have_text("This question is closed", timeout=FOLLOW)
    expect(presenter.locator("#state")).to_have_text("Closed — final results", timeout=FOLLOW)
    screenshot(presenter, "presenter-words")
    screenshot(organiser, "organiser")
    results = httpx.get(f"{service.url}/api/v1/events/{event_id}", headers=AUTH).json()
    assert [p["voters"] for p in results["polls"]] == [3, 3, 3]
    for context in contexts:
        context.close()


def font_px(locator: object) -> float:
    size = locator.evaluate("e => getComputedStyle(e).fontSize")  # type: ignore[attr-defined]
    return float(str(size).removesuffix("px"))
