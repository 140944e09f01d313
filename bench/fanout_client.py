"""The fan-out benchmark's client process (bench/fanout.py, bench/pushpin.py): many SSE
subscribers on asyncio protocols (uvloop, no thread per connection), a few of them watchers
that note when each event arrives, and single votes sent one after another; driven from the
benchmark's process over a pipe (`ClientProcess`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import resource
import statistics
import time
from multiprocessing.connection import Connection
from typing import Any, cast
from urllib.parse import urlsplit

import httpx

from bench import defined
from bench.alone import Log

INTERVAL = 0.5  # STREAM_INTERVAL_SECONDS of the service
OPEN_AT_ONCE = 250  # connections being opened at a time (the listen backlog is 2048)


def raise_open_files() -> int:
    """Raise this process's soft open-file limit to its hard limit; returns the limit.
    Children started afterwards (the service, the client) inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= hard:
        return hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class Subscriber(asyncio.Protocol):
    """One SSE connection. Counts events (`\\ndata: ` in the raw bytes, chunk framing and
    all); a watcher also notes each event's arrival time and `total_votes`."""

    MARK = b"\ndata: "

    def __init__(self, request: bytes, watch: bool) -> None:
        self.request = request
        self.watch = watch
        self.events = 0
        self.tail = b""
        self.lines = b""
        self.totals: list[tuple[float, int]] = []
        self.first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.head_checked = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        if not self.head_checked:
            self.head_checked = True
            if not data.startswith(b"HTTP/1.1 200"):
                self._fail(f"answered {data[:40]!r}")
                return
        joined = self.tail + data
        found = joined.count(self.MARK)
        self.tail = joined[-(len(self.MARK) - 1) :]
        if found:
            self.events += found
            if not self.first.done():
                self.first.set_result(None)
        if self.watch:
            *complete, self.lines = (self.lines + data).split(b"\n")
            for line in complete:
                if line.startswith(b"data: "):
                    self.totals.append((now, int(json.loads(line[6:])["total_votes"])))

    def _fail(self, why: str) -> None:
        if not self.first.done():
            self.first.set_exception(ConnectionError(why))
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail(f"closed before the first event ({exc})")


class Client:
    """Holds the subscribers; answers the benchmark's commands."""

    def __init__(self, url: str, poll: str, replies: Connection) -> None:
        parts = urlsplit(url)
        self.url = url
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.poll = poll
        self.replies = replies
        path = f"/api/v1/polls/{poll}/stream"
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAccept: text/event-stream\r\n\r\n"
        ).encode()
        self.subscribers: list[Subscriber] = []
        self.watch_at: set[int] = set()

    def log(self, message: str) -> None:
        self.replies.send({"log": message})

    async def _one(self, index: int) -> Subscriber:
        loop = asyncio.get_running_loop()
        watch = index in self.watch_at
        _, sub = await loop.create_connection(
            lambda: Subscriber(self.request, watch), self.host, self.port
        )
        await asyncio.wait_for(sub.first, 30)
        return sub

    async def open(self, total: int) -> dict[str, Any]:
        """Open subscribers until `total` are held (each has had its first event)."""
        started = time.monotonic()
        # Watchers: the first three, the last of this step, and one in each thousand.
        self.watch_at |= {0, 1, 2, total - 1} | set(range(500, total, 1000))
        error = ""
        while len(self.subscribers) < total and not error:
            batch = range(len(self.subscribers), min(len(self.subscribers) + OPEN_AT_ONCE, total))
            got = await asyncio.gather(*(self._one(i) for i in batch), return_exceptions=True)
            for item in got:
                if isinstance(item, Subscriber):
                    self.subscribers.append(item)
                elif not error:
                    error = f"{type(item).__name__}: {item}"
            held = len(self.subscribers)
            if held % 1000 == 0 or held == total or error:
                self.log(f"fan-out: {held:,} subscribers held")
        return {
            "held": self.held(),
            "seconds": time.monotonic() - started,
            "error": error,
        }

    def held(self) -> int:
        return sum(not s.lost for s in self.subscribers)

    def count(self) -> dict[str, Any]:
        return {"events": sum(s.events for s in self.subscribers), "held": self.held()}

    async def latency(self, votes: int, rate: float, tag: str) -> dict[str, Any]:
        """Single votes one after another at `rate` a second; the delay from each 200 to the
        first event at each watcher whose total includes it."""
        watchers = [s for s in self.subscribers if s.watch and not s.lost]
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as http:
            results = await http.get(f"/api/v1/polls/{self.poll}/results")
            base = int(results.json()["total_votes"])
            for w in watchers:
                w.totals.clear()
            acks: list[float] = []
            refused = 0
            started = time.monotonic()
            deadline = started + 1.5 * votes / rate  # a saturated service: fewer votes
            for k in range(votes):
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(max(0.0, started + k / rate - time.monotonic()))
                answer = await http.post(
                    f"/api/v1/polls/{self.poll}/vote",
                    json={"option_id": defined.OPTIONS[k % len(defined.OPTIONS)]},
                    headers={"X-Voter-Id": f"latency-{tag}-{k}"},
                )
                acks.append(time.monotonic())
                refused += answer.status_code != 200
        await asyncio.sleep(2 * INTERVAL + 1.0)  # the last votes' events
        delays: list[float] = []
        missing = 0
        worst: list[float] = []  # each watcher's p99
        for w in watchers:
            mine: list[float] = []
            j = 0
            for k, ack in enumerate(acks):
                while j < len(w.totals) and w.totals[j][1] < base + k + 1:
                    j += 1
                if j == len(w.totals):
                    missing += len(acks) - k
                    break
                mine.append((w.totals[j][0] - ack) * 1000)
            delays += mine
            if len(mine) >= 2:
                worst.append(quantile(mine, 0.99))
        return {
            "votes": len(acks),
            "rate": rate,
            "refused": refused,
            "watchers": len(watchers),
            "delays": len(delays),
            "missing": missing,
            "p50_ms": quantile(delays, 0.5),
            "p99_ms": quantile(delays, 0.99),
            "max_ms": max(delays, default=float("nan")),
            "worst_watcher_p99_ms": max(worst, default=float("nan")),
        }

    async def close(self) -> dict[str, Any]:
        for s in self.subscribers:
            if s.transport is not None:
                s.transport.close()
        self.subscribers.clear()
        await asyncio.sleep(0.5)
        return {"held": 0}


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


async def _serve(url: str, poll: str, commands: Connection, replies: Connection) -> None:
    client = Client(url, poll, replies)
    loop = asyncio.get_running_loop()
    while True:
        command: dict[str, Any] = await loop.run_in_executor(None, commands.recv)
        name = command.pop("cmd")
        if name == "stop":
            await client.close()
            replies.send({"done": {}})
            return
        try:
            if name == "open":
                result = await client.open(**command)
            elif name == "count":
                result = client.count()
            elif name == "latency":
                result = await client.latency(**command)
            else:
                result = await client.close()
            replies.send({"done": result})
        except Exception as exc:  # reported to the benchmark, which stops
            replies.send({"failed": f"{type(exc).__name__}: {exc}"})


def client_main(url: str, poll: str, commands: Connection, replies: Connection) -> None:
    raise_open_files()
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(url, poll, commands, replies))
    else:
        uvloop.run(_serve(url, poll, commands, replies))


class ClientProcess:
    """The subscribers' process, driven by commands over a pipe."""

    def __init__(self, url: str, poll: str, log: Log) -> None:
        context = multiprocessing.get_context("spawn")
        child_commands, self.commands = context.Pipe(duplex=False)  # (receiver, sender)
        self.replies, child_replies = context.Pipe(duplex=False)
        self.log = log
        self.process = context.Process(
            target=client_main, args=(url, poll, child_commands, child_replies), daemon=True
        )
        self.process.start()

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        self.commands.send({"cmd": cmd, **args})
        while True:
            reply: dict[str, Any] = self.replies.recv()
            if "log" in reply:
                self.log(reply["log"])
            elif "failed" in reply:
                raise RuntimeError(f"fan-out client: {reply['failed']}")
            else:
                done: dict[str, Any] = reply["done"]
                return done

    def stop(self) -> None:
        if self.process.is_alive():
            with contextlib.suppress(Exception):
                self.call("stop")
            self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
