"""The live room's fan-out in `make bench`: many SSE subscribers held on one worker.

The service runs on one uvicorn worker (uvloop, httptools) with `STREAM_INTERVAL_SECONDS=0.5`
and a defined poll. A separate client process (asyncio protocols on uvloop, no thread per
connection) opens subscribers to `GET /api/v1/polls/<id>/stream` in steps (100, 1,000,
10,000; `BENCH_SUBSCRIBERS` sets the last step) and holds them. At every step:

- the vote rate: wrk with `bench/defined_vote.lua` against the same service, while every
  subscriber receives its events; compared with the rate at 0 subscribers (measured before
  the first step and again after the subscribers have left);
- the service's RSS (`VmRSS` in /proc/<pid>/status) against its RSS at 0 subscribers;
- the delay from an acknowledged vote to the first event that shows it: the client sends
  single votes at `BENCH_VOTE_RATE` a second, one after another, notes when each 200
  arrives, and a few subscribers (watchers, spread over the connection order) note when
  each event arrives and its `total_votes`. As votes go one at a time, vote k is shown by
  the first event with `total_votes >= base + k`.

Both processes raise their soft open-file limit to the hard limit (`resource.setrlimit`); the
service inherits the benchmark's limit, so it can hold the subscribers too.

`python -m bench.fanout` runs this part alone (with two local nodes of its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import resource
import statistics
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, cast
from urllib.parse import urlsplit

import httpx

from app.devtools.local_nodes import LocalNode
from app.devtools.uvicorn_process import UvicornProcess
from bench import defined
from bench.alone import on_two_nodes
from bench.wrk import run_wrk

POLL = "bench-fanout"
INTERVAL = 0.5  # STREAM_INTERVAL_SECONDS of the service
SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
TOP = int(os.environ.get("BENCH_SUBSCRIBERS", "10000"))
LATENCY_VOTES = int(os.environ.get("BENCH_LATENCY_VOTES", "200"))
VOTE_RATE = float(os.environ.get("BENCH_VOTE_RATE", "20"))
OPEN_AT_ONCE = 250  # connections being opened at a time (the listen backlog is 2048)
SPARE_FILES = 200  # file descriptors kept for everything else in a process
Log = Callable[[str], None]


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


def levels(top: int) -> list[int]:
    return [n for n in (100, 1000, 3000) if n < top] + [top]


# -- the client process ------------------------------------------------------------------


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


# -- the benchmark's side ----------------------------------------------------------------


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_idle(pid: int, timeout: float = 30.0) -> float:
    """Wait until the process uses under a tenth of a core; returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = cpu_seconds(pid)
        time.sleep(0.5)
        if cpu_seconds(pid) - before < 0.05:
            break
    return time.monotonic() - started


def _metric(url: str, name: str) -> int:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(f"{name} "):
            return int(float(line.split()[1]))
    return -1


def gc_pauses(url: str) -> dict[str, float]:
    """The service's garbage collections so far (`polling_gc_*`, from `gc.callbacks`):
    runs and seconds paused over all generations, full (generation 2) runs, longest pause."""
    found = {"runs": 0.0, "seconds": 0.0, "full_runs": 0.0, "longest_s": 0.0}
    for line in httpx.get(f"{url}/metrics", timeout=60).text.splitlines():
        name, _, value = line.rpartition(" ")
        if name.startswith("polling_gc_collections_total{"):
            found["runs"] += float(value)
            if 'generation="2"' in name:
                found["full_runs"] += float(value)
        elif name.startswith("polling_gc_pause_seconds_total{"):
            found["seconds"] += float(value)
        elif name.startswith("polling_gc_pause_max_seconds{"):
            found["longest_s"] = max(found["longest_s"], float(value))
    return found


def gc_since(url: str, before: dict[str, float]) -> dict[str, float]:
    now = gc_pauses(url)
    return {k: (now[k] if k == "longest_s" else now[k] - before[k]) for k in now}


def server_subscribers(url: str) -> int:
    return _metric(url, "polling_stream_subscribers")


def stream_reads(url: str) -> int:
    """The publishers' reads of results so far (`polling_stream_reads_total`)."""
    return _metric(url, "polling_stream_reads_total")


def measure(nodes: list[LocalNode], token: str, log: Log) -> dict[str, Any]:
    """Start the service, hold subscribers in steps, and measure each step."""
    limit = raise_open_files()
    top = TOP
    limited = ""
    if top + SPARE_FILES > limit:
        top = limit - SPARE_FILES
        limited = f"open-file hard limit {limit:,}"
        log(f"fan-out: {TOP:,} subscribers exceed the {limited}; at most {top:,}")
    env = {
        "REDIS_NODES": ",".join(f"redis_{n.port}={n.url}" for n in nodes),
        "API_TOKEN": token,
        "STREAM_INTERVAL_SECONDS": str(INTERVAL),
        "STREAM_MAX_PER_CLIENT": "0",  # every subscriber comes from this one client
        "GC_TUNING": os.environ.get("BENCH_GC_TUNING", "true"),
    }
    service = UvicornProcess("app.main:create_app", env, quiet=True).wait_ready()
    url, pid = service.url, service.process.pid
    vote_env = {**os.environ, "BENCH_POLL": POLL}
    log(f"fan-out: service pid {pid}, open-file limit {limit:,}; steps {levels(top)}")

    def vote_rate(tag: str, held: int) -> dict[str, float]:
        result = run_wrk(url, "defined_vote.lua", SECONDS, env={**vote_env, "BENCH_ROUND": tag})
        log(f"fan-out: {held:,} subscribers, POST defined vote {result.rps:,.0f} req/s")
        return result.as_dict()

    client: ClientProcess | None = None
    steps: list[dict[str, Any]] = []
    try:
        defined.create_poll(url, token, POLL)
        client = ClientProcess(url, POLL, log)
        before = vote_rate("fanout-0a", 0)
        rss_base = rss_kib(pid)
        for n in levels(top):
            opened = client.call("open", total=n)
            held = int(opened["held"])
            if opened["error"]:
                limited = limited or opened["error"]
                log(f"fan-out: stopped at {held:,} subscribers: {opened['error']}")
            if held == 0:
                break
            wait_idle(pid)
            rss = rss_kib(pid)
            on_server = server_subscribers(url)
            points, count = stream_reads(url), client.call("count")
            collected = gc_pauses(url)
            started, worker_cpu = time.monotonic(), cpu_seconds(pid)
            rate = vote_rate(f"fanout-{held}", held)
            elapsed = time.monotonic() - started
            worker_share = (cpu_seconds(pid) - worker_cpu) / elapsed
            log(f"fan-out: {held:,} subscribers, the worker used {worker_share:.2f} of a core")
            points, count = (
                stream_reads(url) - points,
                {k: v - count[k] for k, v in client.call("count").items()},
            )
            events_per_s = count["events"] / elapsed
            log(
                f"fan-out: {held:,} subscribers got {events_per_s:,.0f} events/s while voting "
                f"({events_per_s / held:.2f} each; the poll was read {points} times)"
            )
            wait_idle(pid)
            log(
                f"fan-out: {held:,} subscribers, up to {LATENCY_VOTES} votes one by one "
                f"at {VOTE_RATE:g}/s"
            )
            cpu, events = cpu_seconds(pid), client.call("count")["events"]
            latency = client.call("latency", votes=LATENCY_VOTES, rate=VOTE_RATE, tag=str(held))
            cpu, events = cpu_seconds(pid) - cpu, client.call("count")["events"] - events
            cpu_per_event_us = cpu / max(events, 1) * 1e6
            collected = gc_since(url, collected)
            log(
                f"fan-out: {held:,} subscribers, garbage collector while voting and the delay "
                f"votes: {collected['runs']:.0f} runs ({collected['full_runs']:.0f} full), "
                f"{collected['seconds'] * 1000:.0f} ms paused; longest pause since start "
                f"{collected['longest_s'] * 1000:.0f} ms"
            )
            log(
                f"fan-out: {held:,} subscribers, {latency['votes']} votes, acknowledged -> "
                f"event: p50 "
                f"{latency['p50_ms']:.0f} ms, p99 {latency['p99_ms']:.0f} ms "
                f"({latency['watchers']} watchers, {latency['missing']} missing); the worker "
                f"used {cpu_per_event_us:.0f} us of CPU per event delivered"
            )
            steps.append(
                {
                    "subscribers": held,
                    "subscribers_on_server": on_server,
                    "open_seconds": opened["seconds"],
                    "rss_kib": rss,
                    "rss_per_subscriber_kib": (rss - rss_base) / held,
                    "vote": rate,
                    "events_per_s": events_per_s,
                    "events_per_subscriber_per_s": events_per_s / held,
                    "reads_while_voting": points,
                    "vote_seconds": elapsed,
                    "latency": latency,
                    "cpu_per_event_us": cpu_per_event_us,
                    "gc": collected,
                    "worker_cores_while_voting": worker_share,
                }
            )
            if held < n:
                break
        client.call("close")
        started = time.monotonic()
        while (left := server_subscribers(url)) > 0 and time.monotonic() - started < 60:
            time.sleep(0.5)
        gone = time.monotonic() - started
        wait_idle(pid)
        teardown = time.monotonic() - started
        log(
            f"fan-out: the service saw the subscribers leave in {gone:.1f} s ({left} left) "
            f"and was idle again after {teardown:.1f} s"
        )
        after = vote_rate("fanout-0b", 0)
    finally:
        if client is not None:
            client.stop()
        service.kill()
    baseline = (before["rps"] + after["rps"]) / 2
    for step in steps:
        step["vote_vs_none"] = step["vote"]["rps"] / baseline
    return {
        "interval_s": INTERVAL,
        "wrk_seconds": SECONDS,
        "target": TOP,
        "held_max": max((s["subscribers"] for s in steps), default=0),
        "limited_by": limited,
        "rss_base_kib": rss_base,
        "teardown_seconds": teardown,
        "none_before": before,
        "none_after": after,
        "none_rps": baseline,
        "steps": steps,
    }


def markdown(f: dict[str, Any]) -> list[str]:
    goal_ms = f["interval_s"] * 1000 + 100
    rows = [
        f"Fan-out: one worker, `STREAM_INTERVAL_SECONDS={f['interval_s']:g}`, subscribers held "
        "by a separate client process; `POST /polls/{id}/vote` by wrk (1 thread, 50 "
        f"connections, {f['wrk_seconds']} s) while every subscriber receives its events; "
        f"0 subscribers: {f['none_before']['rps']:,.0f} req/s before the first step, "
        f"{f['none_after']['rps']:,.0f} after the last (mean {f['none_rps']:,.0f}, the base "
        "of the ratios).",
        "",
        "| subscribers held | vote req/s | vs 0 subscribers | events/s delivered (each) "
        "| poll reads while voting | RSS MiB (KiB per subscriber) | worker CPU per event us "
        "| vote acknowledged -> event p50 / p99 ms (votes) | GC runs (full), ms paused "
        "| longest GC pause ms | worker cores while voting |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in f["steps"]:
        lat = s["latency"]
        rows.append(
            f"| {s['subscribers']:,} | {s['vote']['rps']:,.0f} | **{s['vote_vs_none']:.2f}x** "
            f"| {s['events_per_s']:,.0f} ({s['events_per_subscriber_per_s']:.2f}) "
            f"| {s['reads_while_voting']} in {s['vote_seconds']:.1f} s "
            f"| {s['rss_kib'] / 1024:.0f} ({s['rss_per_subscriber_kib']:.1f}) "
            f"| {s['cpu_per_event_us']:.0f} "
            f"| {lat['p50_ms']:.0f} / **{lat['p99_ms']:.0f}** ({lat['votes']}) "
            f"| {s['gc']['runs']:.0f} ({s['gc']['full_runs']:.0f}), "
            f"{s['gc']['seconds'] * 1000:.0f} "
            f"| {s['gc']['longest_s'] * 1000:.0f} | {s['worker_cores_while_voting']:.2f} |"
        )
    if not f["steps"]:
        return rows
    top = f["steps"][-1]
    fast = [s["subscribers"] for s in f["steps"] if s["latency"]["p99_ms"] <= goal_ms]
    flowing = [s["subscribers"] for s in f["steps"] if s["vote_vs_none"] >= 0.8]
    met = top["subscribers"] >= f["target"] and top["vote_vs_none"] >= 0.8
    rows += [
        "",
        "Poll reads: the publishers' reads while voting (`polling_stream_reads_total`). "
        f"Delay: single votes at {top['latency']['rate']:g}/s, one after another; from each "
        "200 to the first event showing it at a few watching subscribers (the first opened, "
        "the last, one per thousand); a step sends fewer when the service cannot answer them "
        "in time.",
        f"Goals: {f['target']:,} subscribers with votes at >= 0.8x the rate with none: "
        f"{'met' if met else 'NOT met'}"
        f" ({top['subscribers']:,} held, {top['vote_vs_none']:.2f}x; >= 0.8x up to "
        f"{max(flowing, default=0):,}); p99 delay <= {goal_ms:.0f} ms: up to "
        f"{max(fast, default=0):,} subscribers ({top['latency']['p99_ms']:.0f} ms at "
        f"{top['subscribers']:,}).",
    ]
    if f["limited_by"]:
        rows.append(f"Held at most {f['held_max']:,} subscribers: {f['limited_by']}.")
    return rows


def main() -> None:
    result = on_two_nodes(measure)
    print(json.dumps(result, indent=2))
    print("\n".join(markdown(result)))


if __name__ == "__main__":
    main()
