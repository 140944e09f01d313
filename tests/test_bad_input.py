"""Bad input gets a clear 4xx naming the problem, and changes nothing."""

from __future__ import annotations

import pytest

from tests.conftest import running_app, settings_for

LONG = "x" * 65

# (path poll id, raw body, status, loc of the first error or None)
CASES = [
    ("", b'{"option_id": "A"}', 422, ["path", "poll_id"]),
    (LONG, b'{"option_id": "A"}', 422, ["path", "poll_id"]),
    ("a b", b'{"option_id": "A"}', 422, ["path", "poll_id"]),
    ("a%2Fb", b'{"option_id": "A"}', 422, ["path", "poll_id"]),
    ("caf%C3%A9", b'{"option_id": "A"}', 422, ["path", "poll_id"]),
    ("p", b'{"option_id": ""}', 422, ["body", "option_id"]),
    ("p", b'{"option_id": "' + LONG.encode() + b'"}', 422, ["body", "option_id"]),
    ("p", b'{"option_id": "A/B"}', 422, ["body", "option_id"]),
    ("p", b'{"option_id": "A\\n"}', 422, ["body", "option_id"]),
    ("p", b'{"option_id": 1}', 422, ["body", "option_id"]),
    ("p", b'{"option_id": null}', 422, ["body", "option_id"]),
    ("p", b'{"option_id": ["A"]}', 422, ["body", "option_id"]),
    ("p", b"{}", 422, ["body", "option_id"]),
    ("p", b'{"option": "A"}', 422, ["body", "option_id"]),
    ("p", b'{"option_id": "A", "voter": "x"}', 422, ["body", "voter"]),
    ("p", b"", 422, ["body"]),
    ("p", b"{bad json", 422, ["body"]),
    ("p", b'"A"', 422, ["body"]),
    ("p", b"[1, 2]", 422, ["body"]),
    ("p", b"\xff\xfe", 422, ["body"]),
    ("p", b'{"option_id": "' + b"A" * 1100 + b'"}', 413, None),
]


@pytest.mark.parametrize(("poll", "body", "status", "loc"), CASES)
async def test_bad_vote_is_rejected_and_changes_nothing(
    poll: str, body: bytes, status: int, loc: list[str] | None
) -> None:
    async with running_app(settings_for(None)) as (client, service):
        response = await client.post(
            f"/api/v1/vote/{poll}", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == status, response.text
        detail = response.json()["detail"]
        if loc is None:
            assert "1024 bytes" in detail
        else:
            assert detail[0]["loc"] == loc
            assert str(loc[-1]) in detail[0]["msg"] or loc == ["body"]
        assert service.pending_votes() == 0


async def test_too_many_options_in_one_poll_is_rejected() -> None:
    async with running_app(settings_for(None)) as (client, service):
        for i in range(100):
            r = await client.post("/api/v1/vote/p", json={"option_id": f"o{i}"})
            assert r.status_code == 200
        r = await client.post("/api/v1/vote/p", json={"option_id": "one-too-many"})
        assert r.status_code == 422
        assert r.json()["detail"][0]["loc"] == ["body", "option_id"]
        assert "100 options" in r.json()["detail"][0]["msg"]
        assert (await client.post("/api/v1/vote/p", json={"option_id": "o5"})).status_code == 200
        assert service.pending_votes() == 101


@pytest.mark.parametrize("poll", ["", "a b", "x" * 65])
async def test_bad_poll_id_on_results_is_422(poll: str) -> None:
    async with running_app(settings_for(None)) as (client, _):
        r = await client.get(f"/api/v1/results/{poll}")
        assert r.status_code == 422
        assert r.json()["detail"][0]["loc"] == ["path", "poll_id"]


async def test_oversized_body_without_content_length_is_413() -> None:
    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(20):
            yield b"x" * 100

    async with running_app(settings_for(None)) as (client, service):
        r = await client.post("/api/v1/vote/p", content=chunks())
        assert r.status_code == 413
        assert service.pending_votes() == 0


async def test_wrong_method_is_405_not_500() -> None:
    async with running_app(settings_for(None)) as (client, _):
        assert (await client.get("/api/v1/vote/p")).status_code == 405
        assert (await client.delete("/api/v1/results/p")).status_code == 405


async def test_votes_after_shutdown_began_get_503() -> None:
    async with running_app(settings_for(None)) as (client, service):
        service.accepting = False
        r = await client.post("/api/v1/vote/p", json={"option_id": "A"})
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        assert "shutting down" in r.json()["detail"]
        service.accepting = True


async def test_full_backlog_answers_503_with_retry_after() -> None:
    async with running_app(settings_for(None, max_pending_pairs_per_node=2)) as (client, service):
        for poll in ["a", "b", "a"]:
            assert (
                await client.post(f"/api/v1/vote/{poll}", json={"option_id": "A"})
            ).status_code == 200
        r = await client.post("/api/v1/vote/c", json={"option_id": "A"})
        assert r.status_code == 503 and r.headers["retry-after"]
        assert "in_memory" in r.json()["detail"]
        assert service.pending_votes() == 3
        await service.flusher.flush()
        assert (await client.post("/api/v1/vote/c", json={"option_id": "A"})).status_code == 200


async def test_client_leaving_mid_body_counts_nothing() -> None:
    from app.api.handlers import read_body, vote

    messages = [
        {"type": "http.request", "body": b'{"option_id": "A"}', "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> dict[str, object]:
        return messages.pop(0)

    body = await read_body(receive, 1024, None)
    assert body == b""
    async with running_app(settings_for(None)) as (_, service):
        status, _, _ = await vote(service, "p", body)
        assert status == 422 and service.pending_votes() == 0


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "fastapi"])
@pytest.mark.parametrize("dots", [".", ".."])
async def test_dot_and_dot_dot_ids_are_refused_everywhere(fast: bool, dots: str) -> None:
    """HTTP clients drop `.` and `..` path segments, so such a poll could never be reached."""
    encoded = dots.replace(".", "%2E")  # httpx would drop a literal one, as clients do
    settings = settings_for(None, fast_vote_path=fast, api_token="tok")
    auth = {"Authorization": "Bearer tok"}
    good = {"poll_id": "p", "option_id": "A", "count": 1}
    async with running_app(settings) as (client, service):
        answers = [
            (await client.post(f"/api/v1/vote/{encoded}", json={"option_id": "A"}), "poll_id"),
            (await client.post("/api/v1/vote/p", json={"option_id": dots}), "option_id"),
            (await client.get(f"/api/v1/results/{encoded}"), "poll_id"),
            (
                await client.post(
                    "/api/v1/votes", json=[good, {**good, "poll_id": dots}], headers=auth
                ),
                "poll_id",
            ),
            (
                await client.post(
                    "/api/v1/votes", json=[{**good, "option_id": dots}], headers=auth
                ),
                "option_id",
            ),
        ]
        for answer, field in answers:
            assert answer.status_code == 422, answer.text
            problem = answer.json()["detail"][0]
            assert problem["loc"][-1] == field
            assert problem["msg"] == f"{field} must not be '.' or '..'"
            assert problem["type"] == "string_pattern_mismatch"
        assert service.pending_votes() == 0
        # ids that merely contain dots are fine
        for poll in ["...", ".a", "a..b"]:
            r = await client.post(f"/api/v1/vote/{poll}", json={"option_id": ".x"})
            assert r.status_code == 200, r.text
        assert service.pending_votes() == 3


KIB, MIB = 1024, 1024 * 1024
NESTED = {
    "arrays": lambda size: b"[" * size,
    "objects": lambda size: b'{"a":' * (size // 5),
    "inside a valid vote": lambda size: b'{"option_id": "A", "x": ' + b"[" * (size - 30),
}


@pytest.mark.parametrize("shape", list(NESTED))
@pytest.mark.parametrize(
    ("path", "fast", "size"),
    [
        ("/api/v1/vote/p", True, KIB),
        ("/api/v1/vote/p", False, KIB),
        ("/api/v1/votes", True, KIB),
        ("/api/v1/votes", True, MIB),
    ],
    ids=["vote-fast-path", "vote-fastapi", "bulk-1KiB", "bulk-1MiB"],
)
async def test_deeply_nested_json_is_422_not_500(
    path: str, fast: bool, size: int, shape: str
) -> None:
    body = NESTED[shape](size)
    assert len(body) <= size
    settings = settings_for(None, fast_vote_path=fast, api_token="tok")
    headers = {"Authorization": "Bearer tok", "content-type": "application/json"}
    async with running_app(settings) as (client, service):
        r = await client.post(path, content=body, headers=headers)
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"][0] == "body"
        assert service.pending_votes() == 0
