"""Review of the Pushpin (GRIP) stream path (issue 17): a request that carries a valid
Grip-Sig is what Pushpin forwards for any client, so everything in it but the signature is
the client's own. Run in-process: the GRIP answer is a plain response, not an endless one."""

from __future__ import annotations

import time

import jwt

from tests.conftest import NodeFactory
from tests.test_streams import ORGANISER, define, live_app, stream_settings

GRIP_KEY = "a-grip-key-of-at-least-32-bytes-for-hs256"


def grip_sig(key: str = GRIP_KEY, **claims: object) -> str:
    return jwt.encode({"iss": "pushpin", "exp": int(time.time()) + 60, **claims}, key)


async def test_a_hidden_poll_is_never_held_for_a_non_organiser_even_on_the_renew_link(
    start_node: NodeFactory,
) -> None:
    """`?grip_renew=1` is just a query parameter a client can add: through Pushpin it must
    not subscribe a non-organiser to a hidden poll's channel (where its counts are published)."""
    settings = stream_settings(
        [start_node()],
        pushpin_grip_key=GRIP_KEY,
        pushpin_publish_urls="http://127.0.0.1:9/publish/",
    )
    async with live_app(settings) as (_app, client, _live):
        await define(client, "secret", results="hidden")
        signed = {"grip-sig": grip_sig()}
        for query in ["", "?grip_renew=1"]:
            answer = await client.get(f"/api/v1/polls/secret/stream{query}", headers=signed)
            assert answer.status_code == 403, (query, answer.status_code)
            assert "grip-hold" not in answer.headers and "grip-channel" not in answer.headers


async def test_a_forged_grip_sig_never_gets_a_held_stream(start_node: NodeFactory) -> None:
    """Wrong key, expired, alg=none, no exp: streamed directly (not held), like no Grip-Sig."""
    settings = stream_settings(
        [start_node()],
        pushpin_grip_key=GRIP_KEY,
        pushpin_publish_urls="http://127.0.0.1:9/publish/",
    )
    forged = [
        grip_sig("another-key-of-at-least-32-bytes-long!!"),
        grip_sig(exp=int(time.time()) - 5),
        jwt.encode({"iss": "pushpin", "exp": int(time.time()) + 60}, None, algorithm="none"),
        jwt.encode({"iss": "pushpin"}, GRIP_KEY),
    ]
    async with live_app(settings) as (_app, client, _live):
        await define(client, "secret", results="hidden")
        for signature in forged:
            # a hidden poll answers 403 directly; a held stream would be 200 with grip-hold
            answer = await client.get(
                "/api/v1/polls/secret/stream?grip_renew=1", headers={"grip-sig": signature}
            )
            assert answer.status_code == 403 and "grip-hold" not in answer.headers


async def test_hiding_a_word_changes_the_results_etag(start_node: NodeFactory) -> None:
    """The ETag promises "the same results": after the organiser hides an entry, a client
    revalidating with the old ETag must get the new results (without the entry), not 304.
    (The same version also keeps the Pushpin publisher from publishing the hide.)"""
    async with live_app(stream_settings([start_node()])) as (_app, client, _live):
        body = {
            "poll_id": "cloud",
            "question": "One word?",
            "type": "words",
            "max_words": 1,
        }
        answer = await client.post("/api/v1/polls", json=body, headers=ORGANISER)
        assert answer.status_code == 201, answer.text
        voted = await client.post(
            "/api/v1/polls/cloud/vote", json={"words": ["rude"]}, headers={"X-Voter-Id": "v1"}
        )
        assert voted.status_code == 200, voted.text
        before = await client.get("/api/v1/polls/cloud/results")
        assert "rude" in before.text
        hid = await client.post(
            "/api/v1/polls/cloud/hide", json={"text": "rude"}, headers=ORGANISER
        )
        assert hid.status_code == 200, hid.text
        after = await client.get(
            "/api/v1/polls/cloud/results", headers={"If-None-Match": before.headers["etag"]}
        )
        assert after.status_code == 200 and "rude" not in after.text
        assert after.headers["etag"] != before.headers["etag"]
