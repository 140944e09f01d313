"""The Redis Cluster store beside the sharded store, in one run (a part of `make bench`).

Three plain nodes on our ring, and a cluster of three masters (`app/devtools/local_cluster`):
one service on each, with a short flush interval (0.5 s) so that many flushes happen, voted at
in turns by wrk (`bench/vote.lua`: 1,000 polls, 4 options, 50 connections). Reported: the
vote rate of each and their ratio, and the flush cost from each service's own flush log lines
(median ms per flush and per 1,000 polls in it). Then the capacity plan's run: two workers on
the cluster store, voted at for the same rounds, and the counts check at the end (votes in
the cluster = 2xx answers wrk read, plus at most the 50 requests in flight when wrk stops a
round). `python -m bench.cluster` runs this part alone.
"""

from __future__ import annotations

import os
import re
import statistics
from collections.abc import Callable
from typing import Any

import httpx
import redis

from app.devtools.local_cluster import LocalCluster
from app.devtools.local_nodes import LocalNode, free_port
from app.devtools.uvicorn_process import UvicornProcess
from bench.alone import log
from bench.wrk import WrkResult, run_wrk

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
INTERVAL = "0.5"
FLUSH_LINE = re.compile(r"flush: (\d+) votes, (\d+) polls, \d+ nodes in ([\d.]+) ms")
Log = Callable[[str], None]


def stored_total(ports: list[int]) -> int:
    """Every count in `poll:{id}` and `poll:{id}:aside` on these servers."""
    total = 0
    for port in ports:
        with redis.Redis(port=port) as client:
            for key in client.scan_iter("poll:*", count=1000):
                if not key.endswith(b":options"):
                    total += sum(int(v) for v in client.hvals(key))
    return total


def flush_costs(output: str) -> dict[str, float]:
    """Median ms per flush and per 1,000 polls flushed, from the service's flush lines."""
    flushes = [(int(v), int(p), float(ms)) for v, p, ms in FLUSH_LINE.findall(output) if int(v)]
    if not flushes:
        return {"flushes": 0, "ms_per_flush": 0.0, "ms_per_1000_polls": 0.0, "polls": 0.0}
    return {
        "flushes": len(flushes),
        "ms_per_flush": statistics.median(ms for _, _, ms in flushes),
        "ms_per_1000_polls": statistics.median(1000 * ms / p for _, p, ms in flushes),
        "polls": statistics.median(p for _, p, _ in flushes),
    }


def vote_rounds(urls: dict[str, str], log: Log) -> dict[str, list[WrkResult]]:
    rounds: dict[str, list[WrkResult]] = {name: [] for name in urls}
    for i in range(1, ROUNDS + 1):
        for name, url in urls.items():
            result = run_wrk(url, "vote.lua", SECONDS)
            rounds[name].append(result)
            log(f"cluster bench round {i}/{ROUNDS} {name}: {result.rps:,.0f} req/s")
    return rounds


def measure(log: Log) -> dict[str, Any]:
    nodes = [LocalNode(free_port()).start() for _ in range(3)]
    cluster = LocalCluster(masters=3)
    processes: list[UvicornProcess] = []
    try:
        cluster.start()
        log(f"cluster bench: 3 nodes on our ring, and a cluster of 3 masters ({cluster.url})")
        common = {"BATCH_INTERVAL_SECONDS": INTERVAL, "CACHE_TTL_SECONDS": "60"}
        envs = {
            "sharded": {**common, "REDIS_NODES": ",".join(n.url for n in nodes)},
            "cluster": {**common, "REDIS_CLUSTER_URL": cluster.url},
        }
        processes = [UvicornProcess(env=env, quiet=True) for env in envs.values()]
        urls = dict(zip(envs, (p.wait_ready().url for p in processes), strict=True))
        rounds = vote_rounds(urls, log)
        accepted = {
            name: httpx.get(f"{url}/api/v1/health").json()["counters"]["accepted_votes"]
            for name, url in urls.items()
        }
        outputs = [p.terminate() for p in processes]
        ports = {"sharded": [n.port for n in nodes], "cluster": [n.port for n in cluster.nodes]}
        report: dict[str, Any] = {}
        for name, output in zip(envs, outputs, strict=True):
            counted = stored_total(ports[name])
            report[name] = {
                "rps": statistics.median(r.rps for r in rounds[name]),
                "p99_ms": statistics.median(r.p99_ms for r in rounds[name]),
                "non_2xx": sum(r.non_2xx for r in rounds[name]),
                **flush_costs(output),
                "accepted": accepted[name],
                "counted": counted,
                "exact": accepted[name] == counted,
            }
            log(f"cluster bench {name}: accepted {accepted[name]:,}, counted {counted:,}")
        report["cluster_vs_sharded"] = report["cluster"]["rps"] / report["sharded"]["rps"]
        report["two_workers"] = two_workers(cluster, log)
        return report
    finally:
        for process in processes:
            process.kill()
        cluster.stop()
        for node in nodes:
            node.kill()


def two_workers(cluster: LocalCluster, log: Log) -> dict[str, Any]:
    """Two workers on the cluster store (cleared first), and the counts check."""
    for node in cluster.nodes:
        with redis.Redis(port=node.port) as client:
            client.flushall()
    env = {"REDIS_CLUSTER_URL": cluster.url, "BATCH_INTERVAL_SECONDS": INTERVAL}
    process = UvicornProcess(env=env, workers=2, quiet=True)
    try:
        url = process.wait_ready().url
        rounds = vote_rounds({"cluster, 2 workers": url}, log)["cluster, 2 workers"]
    finally:
        process.terminate()
    answered = sum(r.requests - r.non_2xx for r in rounds)
    counted = stored_total([n.port for n in cluster.nodes])
    unread = counted - answered
    check = "exact" if unread == 0 else "consistent" if 0 < unread <= 50 * ROUNDS else "MISMATCH"
    log(f"cluster bench, 2 workers: 2xx read by wrk {answered:,}, counted {counted:,}: {check}")
    return {
        "rps": statistics.median(r.rps for r in rounds),
        "p99_ms": statistics.median(r.p99_ms for r in rounds),
        "wrk_2xx": answered,
        "counted": counted,
        "unread_at_stop": unread,
        "check": check,
    }


def markdown(r: dict[str, Any]) -> list[str]:
    s, c, two = r["sharded"], r["cluster"], r["two_workers"]
    lines = [
        "Cluster store beside the sharded store: 3 nodes on our ring against a cluster of 3 "
        f"masters, one worker each, `BATCH_INTERVAL_SECONDS={INTERVAL}`, voted at in turns.",
        "",
        "| store | POST vote req/s | p99 ms | flushes | ms per flush (median) | ms per 1,000 "
        "polls flushed | counts check |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, f in (("sharded (ring)", s), ("cluster", c)):
        check = "exact" if f["exact"] else "MISMATCH"
        lines.append(
            f"| {name} | {f['rps']:,.0f} | {f['p99_ms']:.2f} | {f['flushes']} "
            f"| {f['ms_per_flush']:.1f} | {f['ms_per_1000_polls']:.1f} "
            f"| {f['accepted']:,} = {f['counted']:,}: **{check}** |"
        )
    lines += [
        "",
        f"Cluster / sharded vote rate: **{r['cluster_vs_sharded']:.2f}x**. Two workers on the "
        f"cluster store: {two['rps']:,.0f} req/s (p99 {two['p99_ms']:.2f} ms); votes in the "
        f"cluster {two['counted']:,} = 2xx read by wrk {two['wrk_2xx']:,} + "
        f"{two['unread_at_stop']} in flight at wrk's stops: **{two['check']}**.",
    ]
    return lines


def main() -> None:
    print("\n".join(markdown(measure(log))))


if __name__ == "__main__":
    main()
