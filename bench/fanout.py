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

The client process is bench/fanout_client.py. `python -m bench.fanout` runs this part alone
(with two local nodes of its own).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import httpx

from app.devtools.local_nodes import LocalNode
from app.devtools.uvicorn_process import UvicornProcess
from bench import defined
from bench.alone import on_two_nodes
from bench.fanout_client import INTERVAL, ClientProcess, raise_open_files
from bench.wrk import run_wrk

POLL = "bench-fanout"
SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
TOP = int(os.environ.get("BENCH_SUBSCRIBERS", "10000"))
LATENCY_VOTES = int(os.environ.get("BENCH_LATENCY_VOTES", "200"))
VOTE_RATE = float(os.environ.get("BENCH_VOTE_RATE", "20"))
SPARE_FILES = 200  # file descriptors kept for everything else in a process
Log = Callable[[str], None]


def levels(top: int) -> list[int]:
    return [n for n in (100, 1000, 3000) if n < top] + [top]


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
