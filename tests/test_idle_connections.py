"""No door for idle connections (issue 17, item 4), against the real service under uvicorn
started with `ulimit -n 1024`: floods of idle streams and of idle TCP connections leave
votes and reads answered; the stream caps answer 503 with Retry-After; a connection without
a complete request head is closed after HEAD_TIMEOUT_SECONDS.
"""

from __future__ import annotations

import asyncio
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.devtools.local_nodes import LocalNode
from app.devtools.uvicorn_process import UvicornProcess
from tests.conftest import nodes_setting

TOKEN = "limits-token"
LIMIT = 1024  # the service's `ulimit -n`
DEADLINE = 60.0  # seconds a condition may take on a loaded machine before the test fails


@pytest.fixture(autouse=True)
def room_for_the_flood() -> None:
    """This process opens about a thousand sockets: raise its own soft limit to the hard."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4 * LIMIT:
        pytest.skip(f"the open-file hard limit ({hard}) is too low for the floods")
    if soft < 4 * LIMIT:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8 * LIMIT), hard))


def start(node: LocalNode, tmp_path: Path, **env: str) -> UvicornProcess:
    settings = {
        "REDIS_NODES": nodes_setting([node]),
        "API_TOKEN": TOKEN,
        "BATCH_INTERVAL_SECONDS": "0.2",
        "JOURNAL_DIR": str(tmp_path / "journal"),  # a vote needs a file handle for a segment
        **env,
    }
    return UvicornProcess(env=settings, open_files=LIMIT, quiet=True).wait_ready()


@pytest.fixture
def service_process() -> Iterator[list[UvicornProcess]]:
    started: list[UvicornProcess] = []
    yield started
    for service in started:
        service.kill()


def request_head(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n\r\n".encode()


async def open_stream(
    port: int, path: str, source: str = "127.0.0.1"
) -> tuple[bytes, socket.socket]:
    """A stream request; returns the status line and headers, and the open socket."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, local_addr=(source, 0), limit=1 << 16
    )
    writer.write(request_head(path))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE)
    sock = writer.get_extra_info("socket").dup()
    writer.transport.abort()  # the duplicate keeps the connection open, idle
    return head, sock


def votes_answered(url: str, poll: str, voters: range) -> list[int]:
    statuses = []
    with httpx.Client(base_url=url, timeout=DEADLINE) as client:
        for i in voters:
            answer = client.post(f"/api/v1/vote/{poll}", json={"option_id": f"o{i % 3}"})
            statuses.append(answer.status_code)
        statuses.append(client.get(f"/api/v1/results/{poll}").status_code)
    return statuses


def test_a_flood_of_idle_streams_hits_the_cap_and_votes_are_still_answered(
    start_node: object, tmp_path: Path, service_process: list[UvicornProcess]
) -> None:
    node = start_node()  # type: ignore[operator]
    service = start(node, tmp_path, STREAM_MAX_PER_CLIENT="0")
    service_process.append(service)
    with httpx.Client(base_url=service.url) as client:
        assert client.post("/api/v1/vote/flood", json={"option_id": "o0"}).status_code == 200

    async def flood() -> list[tuple[bytes, socket.socket]]:
        opened = []
        for start_at in range(0, 987, 100):  # the 987 idle subscribers, one client
            batch = range(start_at, min(start_at + 100, 987))
            opened += await asyncio.gather(
                *(open_stream(service.port, "/api/v1/results/flood/stream") for _ in batch)
            )
        return opened

    streams = asyncio.run(flood())
    try:
        statuses = [head.split(b" ", 2)[1] for head, _ in streams]
        held = statuses.count(b"200")
        refused = [head for head, _ in streams if b" 503 " in head.split(b"\r\n")[0]]
        # the default cap: the open-file limit less FILES_RESERVED (128) less 128 for requests
        assert held == LIMIT - 128 - 128
        assert len(refused) == 987 - held and all(b"retry-after: 5" in h for h in refused)
        # votes and reads on new connections, and the journal's segments, still get files
        assert votes_answered(service.url, "flood", range(20)) == [200] * 21
        with httpx.Client(base_url=service.url) as client:
            text = client.get("/metrics").text
        assert f"polling_stream_subscribers {held}.0" in text
    finally:
        for _, sock in streams:
            sock.close()
    with httpx.Client(base_url=service.url) as client:
        deadline = time.monotonic() + DEADLINE
        while "polling_stream_subscribers 0.0" not in client.get("/metrics").text:
            assert time.monotonic() < deadline, "the streams were not released"
        assert client.get("/api/v1/results/flood").json()["results"] == {
            "o0": 8,
            "o1": 7,
            "o2": 6,
        }  # every vote counted once: 1 before the flood and 20 during it (o0 o1 o2 ...)


def test_the_stream_caps_in_total_and_per_client(
    start_node: object, tmp_path: Path, service_process: list[UvicornProcess]
) -> None:
    node = start_node()  # type: ignore[operator]
    service = start(node, tmp_path, STREAM_MAX_SUBSCRIBERS="3", STREAM_MAX_PER_CLIENT="2")
    service_process.append(service)
    path = "/api/v1/results/capped/stream"
    with httpx.Client(base_url=service.url) as client:
        assert client.post("/api/v1/vote/capped", json={"option_id": "A"}).status_code == 200

    async def scenario() -> list[socket.socket]:
        held = []
        for source in ("127.0.0.1", "127.0.0.1"):
            head, sock = await open_stream(service.port, path, source)
            assert head.startswith(b"HTTP/1.1 200"), head
            held.append(sock)
        head, sock = await open_stream(service.port, path, "127.0.0.1")
        sock.close()
        assert head.startswith(b"HTTP/1.1 503") and b"retry-after: 5" in head  # per client
        head, sock = await open_stream(service.port, path, "127.0.0.2")
        assert head.startswith(b"HTTP/1.1 200"), head  # another client
        held.append(sock)
        head, sock = await open_stream(service.port, path, "127.0.0.3")
        sock.close()
        assert head.startswith(b"HTTP/1.1 503") and b"retry-after: 5" in head  # in total
        held.pop(0).close()  # one leaves: its place is free again
        deadline = time.monotonic() + DEADLINE
        while True:
            head, sock = await open_stream(service.port, path, "127.0.0.3")
            if head.startswith(b"HTTP/1.1 200"):
                held.append(sock)
                return held
            sock.close()
            assert time.monotonic() < deadline, head
            await asyncio.sleep(0.05)  # polling for the server to see the close

    held = asyncio.run(scenario())
    try:
        assert votes_answered(service.url, "capped", range(5)) == [200] * 6
    finally:
        for sock in held:
            sock.close()


def closed_by_server(sock: socket.socket) -> bool:
    """Waits (up to DEADLINE) for the server to close; True when it did."""
    sock.settimeout(DEADLINE)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


def test_a_connection_without_a_complete_head_is_closed(
    start_node: object, tmp_path: Path, service_process: list[UvicornProcess]
) -> None:
    node = start_node()  # type: ignore[operator]
    service = start(node, tmp_path, HEAD_TIMEOUT_SECONDS="1")
    service_process.append(service)
    silent = socket.create_connection(("127.0.0.1", service.port))
    partial = socket.create_connection(("127.0.0.1", service.port))
    partial.sendall(b"GET /api/v1/results/x HTTP/1.1\r\nHost: test\r\n")  # no blank line
    try:
        assert closed_by_server(silent)  # never sent a byte
        assert closed_by_server(partial)
    finally:
        silent.close()
        partial.close()
    with httpx.Client(base_url=service.url) as client:  # a complete request is answered
        assert client.get("/api/v1/results/x").status_code == 200


def test_a_flood_of_idle_tcp_connections_is_closed_and_votes_are_answered(
    start_node: object, tmp_path: Path, service_process: list[UvicornProcess]
) -> None:
    node = start_node()  # type: ignore[operator]
    service = start(node, tmp_path, HEAD_TIMEOUT_SECONDS="2")
    service_process.append(service)
    keep_alive = httpx.Client(base_url=service.url, timeout=DEADLINE)
    idle: list[socket.socket] = []
    try:
        assert keep_alive.post("/api/v1/vote/tcp", json={"option_id": "A"}).status_code == 200
        for _ in range(1000):  # the thousand connections that never send a byte
            idle.append(socket.create_connection(("127.0.0.1", service.port)))
        # a connection opened before the flood is still served: files were kept in reserve
        assert keep_alive.post("/api/v1/vote/tcp", json={"option_id": "A"}).status_code == 200
        # past the connection cap, new ones are answered 503 at once (not left hanging)
        assert all(closed_by_server(sock) for sock in idle)  # each: 503 or the head deadline
        assert votes_answered(service.url, "tcp", range(10)) == [200] * 11
    finally:
        keep_alive.close()
        for sock in idle:
            sock.close()
