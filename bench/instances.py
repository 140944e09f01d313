"""How far apart two instances' answers can be: the last part of `make bench`.

Two service processes (one uvicorn worker each) on the same two local nodes. wrk drives
votes at both at once (`bench/vote.lua`, 1,000 ad-hoc polls, 25 connections each) while a
reader asks both instances for the same few polls every ~20 ms, the two requests sent
together, and notes the difference between the two totals. Once with the default settings
(`BATCH_INTERVAL_SECONDS=10`, `CACHE_TTL_SECONDS=5`; voting for 20 s, two intervals), once with
a short interval (0.1 s and 0.1 s); the vote rate of each setting is the two wrk rates added.
Last, the same for a defined poll's `total_votes` (`bench/defined_vote.lua` at both): counted
on the node before the answer, so the two differ only by votes landing between the two reads.

`python -m bench.instances` runs this part alone (with two local nodes of its own).
"""

from __future__ import annotations

import asyncio
import os
import statistics
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import redis

from app.devtools.local_nodes import LocalNode
from app.devtools.uvicorn_process import UvicornProcess
from bench import defined
from bench.alone import on_two_nodes
from bench.wrk import WrkResult, run_wrk

READ_POLLS = ["1", "2", "3", "4"]  # ad-hoc polls the reader follows (vote.lua votes 1..1000)
DEFINED_POLL = "bench-instances"
READ_EVERY = 0.02
SETTINGS = {"default": ("10", "5", 20.0), "short interval": ("0.1", "0.1", 5.0)}
DEFINED_SECONDS = 5.0
Log = Callable[[str], None]


async def follow(
    urls: list[str], paths: list[str], total: Callable[[Any], int], done: Callable[[], bool]
) -> list[int]:
    """Read every path from both instances together every READ_EVERY s until done();
    returns the differences between the two totals."""
    gaps: list[int] = []
    async with httpx.AsyncClient(timeout=10) as client:
        while not done():
            for path in paths:
                a, b = await asyncio.gather(*(client.get(url + path) for url in urls))
                gaps.append(abs(total(a.json()) - total(b.json())))
            await asyncio.sleep(READ_EVERY)
    return gaps


def drive(
    urls: list[str],
    script: str,
    seconds: float,
    paths: list[str],
    total: Callable[[Any], int],
    env: dict[str, str] | None = None,
) -> tuple[float, list[int]]:
    """wrk at both instances at once while following; the two rates added, and the gaps."""
    with ThreadPoolExecutor(2) as pool:
        runs: list[Future[WrkResult]] = [
            pool.submit(run_wrk, url, script, seconds, 25, {**(env or {}), "BENCH_ROUND": f"i{i}"})
            for i, url in enumerate(urls)
        ]
        gaps = asyncio.run(follow(urls, paths, total, lambda: all(r.done() for r in runs)))
        return sum(r.result().rps for r in runs), gaps


def figures(rate: float, gaps: list[int]) -> dict[str, float]:
    return {
        "votes_per_s": rate,
        "max_gap": max(gaps),
        "median_gap": statistics.median(gaps),
        "reads": len(gaps),
    }


def measure(nodes: list[LocalNode], token: str, log: Log) -> dict[str, Any]:
    report: dict[str, Any] = {}
    ad_hoc = [f"/api/v1/results/{p}" for p in READ_POLLS]
    for name, (interval, ttl, seconds) in SETTINGS.items():
        for node in nodes:
            redis.Redis(port=node.port).flushall()
        env = {
            "REDIS_NODES": ",".join(f"redis_{n.port}={n.url}" for n in nodes),
            "BATCH_INTERVAL_SECONDS": interval,
            "CACHE_TTL_SECONDS": ttl,
            "API_TOKEN": token,
            "VOTER_SECRET": "bench-instances",
        }
        services = [UvicornProcess(env=env, quiet=True) for _ in range(2)]
        try:
            urls = [s.wait_ready().url for s in services]
            log(
                f"instances ({name}: interval {interval} s, cache {ttl} s): "
                f"voting at both for {seconds:g} s"
            )
            rate, gaps = drive(
                urls, "vote.lua", seconds, ad_hoc, lambda r: sum(r["results"].values())
            )
            report[name] = figures(rate, gaps)
            log(
                f"instances ({name}): {rate:,.0f} votes/s, "
                f"gap max {max(gaps)} median {statistics.median(gaps):g} votes ({len(gaps)} reads)"
            )
            if name == "default":
                defined.create_poll(urls[0], token, DEFINED_POLL)
                log(f"instances: defined poll, voting at both for {DEFINED_SECONDS:g} s")
                path = [f"/api/v1/polls/{DEFINED_POLL}/results"]
                env_defined = {**os.environ, "BENCH_POLL": DEFINED_POLL}
                rate, gaps = drive(
                    urls,
                    "defined_vote.lua",
                    DEFINED_SECONDS,
                    path,
                    lambda r: int(r["total_votes"]),
                    env_defined,
                )
                report["defined"] = figures(rate, gaps)
                log(
                    f"instances (defined): {rate:,.0f} votes/s, total_votes "
                    f"gap max {max(gaps)} median {statistics.median(gaps):g} ({len(gaps)} reads)"
                )
        finally:
            for service in services:
                service.terminate()
    return report


def markdown(r: dict[str, Any]) -> list[str]:
    lines = [
        "Two instances (one worker each) on the same two nodes; wrk votes at both at once "
        "(25 connections each); every ~20 ms both are asked for the same poll together.",
        "",
        "| setting | votes/s (both) | gap between the two totals: max / median | max gap as "
        "seconds of the poll's votes | reads |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, label in [
        ("default", "ad-hoc, `BATCH_INTERVAL_SECONDS=10`, `CACHE_TTL_SECONDS=5`"),
        ("short interval", "ad-hoc, `BATCH_INTERVAL_SECONDS=0.1`, `CACHE_TTL_SECONDS=0.1`"),
        ("defined", "defined poll's `total_votes` (default settings)"),
    ]:
        f = r[name]
        per_poll = f["votes_per_s"] / (1 if name == "defined" else 1000)  # vote.lua: 1,000 polls
        lines.append(
            f"| {label} | {f['votes_per_s']:,.0f} | **{f['max_gap']:g}** / {f['median_gap']:g} "
            f"| {f['max_gap'] / per_poll:.2f} s | {f['reads']:,} |"
        )
    return lines


def main() -> None:
    print("\n".join(markdown(on_two_nodes(measure))))


if __name__ == "__main__":
    main()
