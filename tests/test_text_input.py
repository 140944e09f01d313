"""Text typed into a session (docs/sessions.md "Text"): an event title, a question or an
option label holding a control character, a line break or a bidi override answers 422
naming the field and the character, on every path that takes it, and changes nothing; a
words entry is normalised (white space and invisible characters) and refused only for the
other control characters; accents and emoji are kept and shown by the pages as typed."""

from __future__ import annotations

from typing import Any

import httpx
import redis

from app.devtools.local_nodes import LocalNode
from tests.conftest import NodeFactory, running_app, settings_for

TOKEN = "text-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
OPTIONS = [{"id": "A", "label": "Yes"}, {"id": "B", "label": "No"}]
# Refused in a title, a question, a label: (the character, what the 422 names).
REFUSED = [
    ("\x00", "U+0000"),
    ("\t", "U+0009"),
    ("\n", "U+000A"),
    ("\r", "U+000D"),
    ("\x1b", "U+001B"),
    ("\x1f", "U+001F"),
    ("\x7f", "U+007F"),
    ("\x85", "U+0085"),
    ("\u2028", "U+2028 (LINE SEPARATOR)"),
    ("\u2029", "U+2029 (PARAGRAPH SEPARATOR)"),
    *((chr(c), f"U+{c:04X}") for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]),
]
ENGLAND = "\U0001f3f4" + "".join(chr(0xE0000 + ord(c)) for c in "gbeng") + "\U000e007f"
FANCY = f"Café Zürich 🎉 — Ünïcødé, 日本語, עברית 👩\u200d💻 {ENGLAND}"  # joiner, tags kept


def stored(node: LocalNode) -> dict[str, dict[str, str] | list[str]]:
    """Every hash and list on the node, as it holds them now."""
    with redis.Redis(port=node.port, decode_responses=True) as client:
        found: dict[str, dict[str, str] | list[str]] = {}
        for name in client.scan_iter():
            kind = client.type(name)
            if kind == "hash":
                found[name] = client.hgetall(name)
            elif kind == "list":
                found[name] = client.lrange(name, 0, -1)
        return found


def refused(r: httpx.Response, loc: list[str | int], char: str) -> None:
    assert r.status_code == 422, r.text
    [problem] = r.json()["detail"]
    assert problem["loc"] == loc and problem["type"] == "control_character", problem
    assert char in problem["msg"] and str(loc[-1]) in problem["msg"], problem


async def test_control_characters_in_titles_questions_and_labels_answer_422_and_change_nothing(
    start_node: NodeFactory,
) -> None:
    node = start_node()
    async with running_app(settings_for([node], api_token=TOKEN)) as (client, _):
        event = (
            await client.post("/api/v1/events", json={"title": "  Conf  "}, headers=AUTH)
        ).json()
        assert event["title"] == "Conf"  # surrounding spaces go
        event_id = event["event_id"]
        polls = f"/api/v1/events/{event_id}/polls"
        made = await client.post(
            polls, json={"question": "Ready?", "options": OPTIONS}, headers=AUTH
        )
        poll_id = made.json()["poll_id"]
        before = stored(node)

        for char, name in REFUSED:
            bad = f"a{char}b"
            r = await client.post("/api/v1/events", json={"title": bad}, headers=AUTH)
            refused(r, ["body", "title"], name)
            for path in (polls, "/api/v1/polls"):
                body: dict[str, Any] = {"question": bad, "options": OPTIONS}
                refused(
                    await client.post(path, json=body, headers=AUTH), ["body", "question"], name
                )
                labels = [{"id": "A", "label": bad}, OPTIONS[1]]
                body = {"question": "?", "options": labels}
                refused(
                    await client.post(path, json=body, headers=AUTH),
                    ["body", "options", 0, "label"],
                    name,
                )
            r = await client.patch(f"/api/v1/polls/{poll_id}", json={"question": bad}, headers=AUTH)
            refused(r, ["body", "question"], name)
        for blank in ["", "   ", "\u3000"]:
            r = await client.post("/api/v1/events", json={"title": blank}, headers=AUTH)
            assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "title"]

        listed = (await client.get("/api/v1/events", headers=AUTH)).json()["events"]
        assert [e["event_id"] for e in listed] == [event_id]  # no event was made
        view = (await client.get(f"/api/v1/events/{event_id}")).json()
        assert [p["poll_id"] for p in view["polls"]] == [poll_id]  # no poll was added
        assert view["polls"][0]["question"] == "Ready?"  # no patch was applied
        assert stored(node) == before  # nor anything else, on any path


async def test_words_entries_are_normalised_or_refused_and_fancy_text_is_shown_as_typed(
    start_node: NodeFactory,
) -> None:
    async with running_app(settings_for([start_node()], api_token=TOKEN)) as (client, _):
        event = (await client.post("/api/v1/events", json={"title": FANCY}, headers=AUTH)).json()
        assert event["title"] == FANCY
        event_id, code = event["event_id"], event["code"]
        polls = f"/api/v1/events/{event_id}/polls"
        body = {"question": "Un mot ? ✍️", "type": "words", "max_words": 1}
        words = (await client.post(polls, json=body, headers=AUTH)).json()["poll_id"]

        async def vote(voter: str, entry: str) -> httpx.Response:
            return await client.post(
                f"/api/v1/polls/{words}/vote",
                json={"words": [entry]},
                headers={"X-Voter-Id": voter},
            )

        for n, entry in enumerate(["\x00rust", "ru\x7fst", "\x1b[31mrust", "rust\x9b"]):
            r = await vote(f"bad{n}", entry)
            assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "words"]
            assert r.json()["detail"][0]["type"] == "control_character", entry
        kept = ["rust\tlang", "rust\nlang", "rust\u2028lang", "\u202erust lang\u202c", "Rust  Lang"]
        for n, entry in enumerate(kept):  # white space and invisible characters: normalised
            assert (await vote(f"ok{n}", entry)).status_code == 200, entry
        assert (await vote("bad0", "rust lang")).status_code == 200  # refused: not counted
        results = (await client.get(f"/api/v1/polls/{words}/results")).json()
        assert results["words"] == [{"text": "rust lang", "count": len(kept) + 1}]

        await client.post(
            f"/api/v1/events/{event_id}/current", json={"poll_id": words}, headers=AUTH
        )
        for path in (f"/j/{code}", f"/present/e/{event_id}"):
            page = await client.get(path)
            assert (
                page.status_code == 200
                and page.headers["content-type"] == "text/html; charset=utf-8"
            )
            assert f"<title>{FANCY}" in page.text or f">{FANCY}<" in page.text, path
        assert "Un mot ? ✍️" in (await client.get(f"/j/{code}")).text
        exported = await client.get(f"/api/v1/events/{event_id}/export.csv", headers=AUTH)
        assert "Un mot ? ✍️" in exported.content.decode("utf-8")
