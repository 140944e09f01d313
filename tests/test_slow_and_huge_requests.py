"""Slow and huge requests against the real server: a body that stalls gets 408, and
(with the header-capped protocol) an oversized request head gets 431."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import httpx
import pytest
from uvicorn import Config
from uvicorn.server import ServerState

from app.api.deadlines import BodyDeadlines, BodyTimeout
from app.core.http_protocol import PROTOCOL, HeaderCappedProtocol
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


def get(target: str, *headers: str) -> bytes:
    lines = [f"GET {target} HTTP/1.1", "Host: test", "Connection: close", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


HEADS = {
    "12 KB header, under the default 16 KiB cap": (get("/", "X-Big: " + "a" * 12_000), 200),
    "20 KB header": (get("/", "X-Big: " + "a" * 20_000), 431),
    "20 KB URL": (get("/?q=" + "a" * 20_000), 431),
    "100 headers of 200 bytes": (get("/", *(f"X-{i}: {'a' * 200}" for i in range(100))), 431),
}


def test_a_request_head_over_the_cap_gets_431_and_the_connection_closes(
    start_service: Callable[..., ServiceProcess],
) -> None:
    service = start_service({"REDIS_NODES": ""})
    for case, (request, status) in HEADS.items():
        answer = exchange(service.port, request)  # reads until the server closes
        assert answer.startswith(b"HTTP/1.1 %d " % status), (case, answer[:200])
        if status == 431:
            assert b"connection: close" in answer.lower()
            assert answer.endswith(
                b'{"detail":"request line and headers must be at most 16384 bytes"}'
            )
    assert httpx.get(f"{service.url}/").json() == {"status": "healthy"}  # still serving


class FakeTransport:
    """Just enough of a transport for the protocol to run without a socket."""

    def __init__(self) -> None:
        self.written = b""
        self.closed = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(name)

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def test_a_header_line_that_never_ends_is_cut_off_near_the_cap() -> None:
    """httptools buffers an unfinished header line without calling back; the reads that fall
    wholly inside a head are counted as they come, so it cannot grow without bound."""

    async def app(scope: object, receive: object, send: object) -> None:
        raise AssertionError("the request must not reach the app")

    config = Config(app=app, http=PROTOCOL, log_config=None)
    protocol = HeaderCappedProtocol(config=config, server_state=ServerState(), app_state={})
    transport = FakeTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: test\r\nX-Big: ")
    sent = 0
    while not transport.closed and sent < 10 * protocol.cap:
        protocol.data_received(b"a" * 1000)
        sent += 1000
    assert transport.written.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert sent <= protocol.cap + 1000
