"""A whole session in a real headless Chromium (Debian's, driven by Playwright) against the
real service (uvicorn, two nodes): the organiser creates an event with three questions of
different types on the organiser page; three phones (390x844) join by typing the code at
`/`; the presenter screen (1920x1080) follows as the organiser moves through the
questions; every phone shows each new question without a reload (within the stream
interval + 1 s); the presenter shows percentages, a histogram with its mean, a word cloud;
a phone shows its choice after a reload; a closed question shows as closed on every phone.
Then the final screen of a 20-option and a 50-word question fits 1920x1080 and 1280x720.

Screenshots go to tests/screenshots/session/; docs/screenshots/ keeps shrunk copies of some
(docs/sessions-guide.md shows them)."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from app.devtools.local_nodes import LocalNode, free_port
from app.devtools.uvicorn_process import UvicornProcess
from tests.browser import CHROMIUM, CHROMIUM_FLAGS
from tests.conftest import nodes_setting

SCREENSHOTS = Path(__file__).parent / "screenshots" / "session"  # git-ignored; docs/screenshots
# holds a shrunk copy of some (python -m app.devtools.shrink_screenshots)
TOKEN = "organiser-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 1, "is_mobile": True}
INTERVAL = 0.5  # STREAM_INTERVAL_SECONDS of the service under test
# ms: how long a page may take to show a change without a reload. A deadline for the
# condition, not a timing claim (the "within the stream interval plus one second" is
# what the stream does on a quiet machine; a loaded CI machine may take longer).
FOLLOW = 15_000
SCREENS = [(1920, 1080), (1280, 720)]


@pytest.fixture(scope="module")
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


@pytest.fixture(scope="module")
def service() -> Iterator[UvicornProcess]:
    """One service on two real nodes for the module's tests (each makes its own event)."""
    nodes = [LocalNode(free_port(), appendfsync="always") for _ in range(2)]
    service: UvicornProcess | None = None
    try:
        for node in nodes:
            node.start()
        env = {
            "REDIS_NODES": nodes_setting(nodes),
            "API_TOKEN": TOKEN,
            "VOTER_SECRET": "s",
            "STREAM_INTERVAL_SECONDS": str(INTERVAL),
        }
        service = UvicornProcess(env=env).wait_ready()
        yield service
    finally:
        if service is not None:
            service.kill()
        for node in nodes:
            node.kill()


def screenshot(page: Page, name: str, full_page: bool = False) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=full_page)


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
    browser: Browser, service: UvicornProcess
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
    phones[0].get_by_label("Your name on the quiz leaderboard").fill("Ann <i>")
    phones[0].get_by_role("button", name="Save name").click()
    expect(phones[0].locator(".name-box")).to_contain_text("Saved: Ann <i>")

    # the organiser reorders (from the server's list) and finally deletes the event
    first = organiser.locator("#questions li").first
    first.get_by_role("button", name="Down").click()
    expect(organiser.locator("#questions li").first).to_contain_text("How useful was it?")
    order = api(service, "GET", f"/events/{event_id}")["polls"]
    assert [p["question"] for p in order][:2] == ["How useful was it?", "Which talk next?"]  # type: ignore[index]
    rating = organiser.locator("#questions li").first
    soon = (dt.datetime.now() + dt.timedelta(days=30)).replace(hour=10, minute=30)
    rating.get_by_label("Closing time of How useful was it?").fill(soon.strftime("%Y-%m-%dT%H:%M"))
    rating.get_by_role("button", name="Set closing time").click()
    expect(organiser.locator("#message")).to_be_hidden()
    closes = api(service, "GET", f"/events/{event_id}")["polls"][0]["closes_at"]  # type: ignore[index]
    expected = soon.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M")  # local time, sent in UTC
    assert str(closes).startswith(expected), (closes, expected)
    with organiser.expect_download() as saved:  # the event's CSV, fetched with the token
        organiser.locator("#event-links").get_by_role("link", name="CSV").click()
    csv_text = Path(saved.value.path()).read_text()
    assert csv_text.startswith("event_id,") and "Which talk next?" in csv_text
    screenshot(organiser, "organiser", full_page=True)
    results = httpx.get(f"{service.url}/api/v1/events/{event_id}", headers=AUTH).json()
    assert sorted(p["voters"] for p in results["polls"]) == [3, 3, 3]
    organiser.once("dialog", lambda dialog: dialog.accept())
    organiser.get_by_role("button", name="Delete this event").click()
    expect(organiser.locator(f'#events li[data-event-id="{event_id}"]')).to_have_count(0)
    gone = phones[0].goto(f"/j/{code}")
    assert gone is not None and gone.status == 404
    for context in contexts:
        context.close()


def font_px(locator: object) -> float:
    size = locator.evaluate("e => getComputedStyle(e).fontSize")  # type: ignore[attr-defined]
    return float(str(size).removesuffix("px"))


def api(service: UvicornProcess, method: str, path: str, **kwargs: object) -> dict[str, object]:
    answer = httpx.request(method, f"{service.url}/api/v1{path}", headers=AUTH, **kwargs)  # type: ignore[arg-type]
    assert answer.is_success, answer.text
    body: dict[str, object] = answer.json()
    return body


def outside_the_screen(page: Page, selector: str) -> list[str]:
    """Every element matching `selector` whose box is not wholly inside the viewport."""
    found: list[str] = page.evaluate(
        """(selector) => [...document.querySelectorAll(selector)].filter((e) => {
            const r = e.getBoundingClientRect();
            return r.width === 0 || r.left < 0 || r.top < 0 ||
                   r.right > innerWidth + 0.5 || r.bottom > innerHeight + 0.5;
        }).map((e) => e.className + ': ' + e.textContent.slice(0, 40))""",
        selector,
    )
    return found


LONG = "a rather long option label that goes on and on"
MUST_FIT = "h1, .qr, #join-code, #total, #state"


def test_the_final_screens_fit_1920x1080_and_1280x720_with_20_options_and_50_words(
    browser: Browser, service: UvicornProcess
) -> None:
    event = api(service, "POST", "/events", json={"title": "Fit"})
    event_id = str(event["event_id"])
    question = "A long question that a speaker might well ask, " * 4
    options = [{"id": f"O{i}", "label": f"{i + 1}: {LONG}"} for i in range(20)]
    many = api(
        service,
        "POST",
        f"/events/{event_id}/polls",
        json={"question": question, "options": options},
    )
    words = api(
        service,
        "POST",
        f"/events/{event_id}/polls",
        json={"type": "words", "question": "Fifty words?", "max_words": 5},
    )
    quiz_options = [{"id": "A", "label": "Paris"}, {"id": "B", "label": "Lyon"}]
    quiz = api(
        service,
        "POST",
        f"/events/{event_id}/polls",
        json={"type": "quiz", "question": "Capital?", "options": quiz_options, "correct": "A"},
    )
    for i in range(20):
        voter = {"X-Voter-Id": f"v{i}", **AUTH}
        vote = {"option_id": f"O{i % 20}"}
        assert httpx.post(
            f"{service.url}/api/v1/polls/{many['poll_id']}/vote", json=vote, headers=voter
        ).is_success
    for i in range(10):  # 10 voters x 5 distinct words = 50 words, counts 1..10
        voter = {"X-Voter-Id": f"w{i}"}
        body = {"words": [f"word{j}-{'x' * (j % 9)}" for j in range(5 * i, 5 * i + 5)]}
        assert httpx.post(
            f"{service.url}/api/v1/polls/{words['poll_id']}/vote", json=body, headers=voter
        ).is_success
    for i, (name, answer) in enumerate([("Ann <i>", "A"), ("Bob", "B"), ("Cy", "A")]):
        voter = {"X-Voter-Id": f"q{i}"}
        httpx.post(
            f"{service.url}/api/v1/events/{event_id}/join", json={"name": name}, headers=voter
        )
        api(service, "POST", f"/events/{event_id}/current", json={"poll_id": quiz["poll_id"]})
        assert httpx.post(
            f"{service.url}/api/v1/polls/{quiz['poll_id']}/vote",
            json={"option_id": answer},
            headers=voter,
        ).is_success
    for poll in (many, words, quiz):
        api(service, "POST", f"/polls/{poll['poll_id']}/close")

    for width, height in SCREENS:
        presenter = browser.new_page(
            base_url=service.url, viewport={"width": width, "height": height}
        )
        presenter.goto(f"/present/e/{event_id}")
        for poll, items, name in [
            (many, ".bar", "options"),
            (words, ".word", "words"),
            (quiz, ".bar", "quiz"),
        ]:
            api(service, "POST", f"/events/{event_id}/current", json={"poll_id": poll["poll_id"]})
            expect(presenter.locator("#state")).to_contain_text("Closed", timeout=FOLLOW + 2000)
            count = {"options": 20, "words": 50, "quiz": 2}[name]
            expect(presenter.locator(items)).to_have_count(count)
            if name == "quiz":
                expect(presenter.locator('.bar.correct[data-option="A"]')).to_be_visible()
                expect(presenter.locator("#leaders li").first).to_have_text("Ann <i> — 1")
            presenter.wait_for_function("() => document.fonts.status === 'loaded'")
            assert outside_the_screen(presenter, f"{MUST_FIT}, {items}") == [], (width, name)
            assert presenter.evaluate("document.documentElement.scrollHeight <= innerHeight")
            screenshot(presenter, f"fit-{name}-{width}x{height}")
        presenter.close()


def test_the_audience_page_works_without_javascript_and_a_wrong_code_is_a_clear_404(
    browser: Browser, service: UvicornProcess
) -> None:
    event = api(service, "POST", "/events", json={"title": "No script"})
    options = [{"id": "T", "label": "Tea"}, {"id": "C", "label": "Coffee"}]
    poll = api(
        service,
        "POST",
        f"/events/{event['event_id']}/polls",
        json={"type": "multiple", "question": "Drinks?", "options": options, "max_choices": 2},
    )
    api(service, "POST", f"/events/{event['event_id']}/current", json={"poll_id": poll["poll_id"]})
    context = browser.new_context(java_script_enabled=False, base_url=service.url, **PHONE)
    phone = context.new_page()
    phone.goto(f"/j/{str(event['code']).lower()}")
    expect(phone.locator("#question")).to_have_text("Drinks?")
    phone.get_by_label("Tea").check()
    phone.get_by_label("Coffee").check()
    phone.get_by_role("button", name="Send").click()
    expect(phone.locator("#message")).to_have_text("Your answer counted")
    phone.get_by_role("button", name="Send").click()  # nothing ticked: told which field
    expect(phone.locator("#message")).to_contain_text("That answer does not fit this question:")
    phone.get_by_label("Tea").check()
    phone.get_by_role("button", name="Send").click()
    expect(phone.locator("#message")).to_have_text("You already answered this question")
    results = httpx.get(f"{service.url}/api/v1/polls/{poll['poll_id']}/results").json()
    assert [o["count"] for o in results["options"]] == [1, 1] and results["voters"] == 1
    for path in ["/j/ZZZZZZ", "/j/%3Cscript%3E", "/present/e/000000000000"]:
        answer = phone.goto(path)
        assert answer is not None and answer.status == 404, path
        expect(phone.get_by_role("heading", name="No such event")).to_be_visible()
    context.close()


def test_hidden_results_appear_on_the_presenter_and_the_phone_when_revealed(
    browser: Browser, service: UvicornProcess
) -> None:
    event = api(service, "POST", "/events", json={"title": "Hidden"})
    event_id = str(event["event_id"])
    options = [{"id": "Y", "label": "Yes"}, {"id": "N", "label": "No"}]
    body = {"question": "Ready?", "options": options, "results": "hidden"}
    poll = api(service, "POST", f"/events/{event_id}/polls", json=body)
    api(service, "POST", f"/events/{event_id}/current", json={"poll_id": poll["poll_id"]})
    presenter = browser.new_page(base_url=service.url, viewport={"width": 1280, "height": 720})
    presenter.goto(f"/present/e/{event_id}")
    expect(presenter.locator("#hidden")).to_have_text("Results hidden until revealed")
    expect(presenter.locator("#connection")).to_be_hidden()  # refused is not cut off
    context = browser.new_context(base_url=service.url, **PHONE)
    phone = context.new_page()
    phone.goto(f"/j/{event['code']}")
    phone.get_by_role("button", name="Yes", exact=True).click()
    expect(phone.locator("#your-choice")).to_have_text("You chose: Yes")
    expect(phone.locator("#results")).to_be_hidden()
    api(service, "POST", f"/polls/{poll['poll_id']}/reveal")
    # the event's stream tells the reveal; the results stream opens after its back-off (1 s)
    revealed = FOLLOW + 1000
    expect(presenter.locator('.bar[data-option="Y"] .percent')).to_have_text(
        "100%", timeout=revealed
    )
    expect(presenter.locator("#hidden")).to_be_hidden()
    expect(phone.locator("#results")).to_contain_text("100%", timeout=revealed)
    api(service, "POST", f"/polls/{poll['poll_id']}/close")
    expect(phone.locator("#closed")).to_be_visible(timeout=FOLLOW)
    context.close()
    presenter.close()
