"""Slow and huge requests against the real server: a body that stalls gets 408, and
(with the header-capped protocol) an oversized request head gets 431."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import httpx
import pytest

from app.api.deadlines import BodyDeadlines, BodyTimeout
from tests.conftest import ServiceProcess

TOKEN = "tok"


def exchange(port: int, request: bytes) -> bytes:
    """Send `request` and read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:  # a hang guard
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def head(path: str, *headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: test", "Content-Type: application/json", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


STALLS = {
    "vote, part of the body": ("/api/v1/vote/p", "true", ["Content-Length: 18"], b'{"option_id"'),
    "vote, no body at all": ("/api/v1/vote/p", "true", ["Content-Length: 18"], b""),
    "vote, chunked": ("/api/v1/vote/p", "true", ["Transfer-Encoding: chunked"], b'5\r\n{"opt\r\n'),
    "vote without the fast path": (
        "/api/v1/vote/p",
        "false",
        ["Content-Length: 18"],
        b'{"option_id"',
    ),
    "bulk": (
        "/api/v1/votes",
        "true",
        [f"Authorization: Bearer {TOKEN}", "Content-Length: 46"],
        b'[{"poll_id": "p", "option_id": "A",',
    ),
}


@pytest.mark.parametrize("case", list(STALLS))
def test_a_body_that_stalls_gets_408_and_counts_nothing(
    case: str, start_service: Callable[..., ServiceProcess]
) -> None:
    path, fast, headers, part = STALLS[case]
    env = {
        "REDIS_NODES": "",
        "BODY_TIMEOUT_SECONDS": "0.5",
        "FAST_VOTE_PATH": fast,
        "API_TOKEN": TOKEN,
    }
    service = start_service(env)
    answer = exchange(service.port, head(path, *headers) + part)  # then the client stalls
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 408 Request Timeout", answer
    assert b"connection: close" in rest.lower()
    assert rest.endswith(b'{"detail":"request body did not arrive within 0.5 seconds"}')
    results = httpx.get(f"{service.url}/api/v1/results/p").json()
    assert results["results"] == {}


async def test_a_deadline_turns_only_its_own_cancellation_into_a_timeout() -> None:
    deadlines = BodyDeadlines(0.05)
    never = asyncio.Event()
    with pytest.raises(BodyTimeout):
        await deadlines.run(never.wait())
    assert await deadlines.run(asyncio.sleep(0, "in time")) == "in time"
    reader = asyncio.create_task(deadlines.run(never.wait()))
    await asyncio.sleep(0)  # let it start reading
    reader.cancel()  # e.g. the server shutting down
    with pytest.raises(asyncio.CancelledError):
        await reader
    assert not deadlines.expired
