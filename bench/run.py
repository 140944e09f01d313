"""`make bench`: the service against two references measured in the same run.

Starts two local nodes, the service, and the *naive* and *bare* reference apps (same uvicorn
settings, one worker each), drives them in turns with wrk over several rounds, and reports
medians and ratios. The service's defined-poll vote takes its turn beside its ad-hoc vote;
a node of its own measures what a defined poll's voter costs in memory; last, the live
results fan-out (bench/fanout.py): subscribers held on one worker; then how far apart two
instances' answers are (bench/instances.py); then the Redis Cluster store beside the sharded
store, and two workers on the cluster with the counts check (bench/cluster.py); what waiting
for durability (WAIT / WAITAOF) costs on a cluster with replicas (bench/durability.py);
last, the time to move 100,000 polls after a third node joins (bench/migrate.py). Writes results.md,
results.json and chart.png to bench/results/ (the tables and chart: bench/report.py).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import redis

from app.core.consistent_hash import HashRing
from app.devtools.local_nodes import LocalNode, free_port
from app.devtools.uvicorn_process import UvicornProcess
from bench import cluster, defined, durability, fanout, instances, migrate, question_types
from bench.alone import TOKEN, log
from bench.report import chart, markdown
from bench.wrk import WrkResult, run_wrk

OUT = Path(__file__).resolve().parent / "results"
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
VOTERS = int(os.environ.get("BENCH_VOTERS", "1000000"))  # for the voter memory
DEFINED_POLL = "bench-defined"
Rounds = dict[str, list[WrkResult]]


def median(results: list[WrkResult], field: str) -> float:
    return float(statistics.median(getattr(r, field) for r in results))


def take_turns(
    apps: dict[str, str],
    script: str,
    label: str,
    env: dict[str, str] | None = None,
    scripts: dict[str, str] | None = None,
) -> Rounds:
    """Every app once per round, in turn, so drift on a noisy machine hits all alike.
    `scripts` gives an app a script of its own; wrk sees the round as BENCH_ROUND."""
    rounds: Rounds = {name: [] for name in apps}
    for i in range(1, ROUNDS + 1):
        for name, url in apps.items():
            wrk_env = {**(env or os.environ), "BENCH_ROUND": str(i)}
            result = run_wrk(url, (scripts or {}).get(name, script), SECONDS, env=wrk_env)
            rounds[name].append(result)
            figures = f"{result.rps:,.0f} req/s, p99 {result.p99_ms:.2f} ms"
            log(f"{label} round {i}/{ROUNDS} {name}: {figures}")
    return rounds


def service_env(nodes: list[LocalNode], **extra: str) -> dict[str, str]:
    return {
        "REDIS_NODES": ",".join(f"redis_{n.port}={n.url}" for n in nodes),
        "CACHE_TTL_SECONDS": "60",  # GET rounds measure cache hits
        "API_TOKEN": TOKEN,
        **extra,
    }


def stored_total(nodes: list[LocalNode]) -> int:
    total = 0
    for node in nodes:
        client = redis.Redis(port=node.port)
        for key in client.scan_iter("poll:*"):
            if not key.endswith(b":options"):  # counts: poll:{id} and poll:{id}:aside
                total += sum(int(v) for v in client.hvals(key))
        client.close()
    return total


def ring_lookups_per_second() -> float:
    ring = HashRing(["redis_7000", "redis_7001"])
    keys = [str(i) for i in range(1, 1001)]
    for key in keys:
        ring.get_node(key)
    calls = 0
    started = time.perf_counter()
    while time.perf_counter() - started < 1.0:
        for key in keys:
            ring.get_node(key)
        calls += len(keys)
    return calls / (time.perf_counter() - started)


def main() -> None:
    OUT.mkdir(exist_ok=True)
    nodes = [LocalNode(free_port()).start(), LocalNode(free_port()).start()]
    processes: list[UvicornProcess] = []

    def start(
        target: str, env: dict[str, str] | None = None, workers: int = 1, factory: bool = True
    ) -> str:
        process = UvicornProcess(target, env, workers, factory, quiet=True)
        processes.append(process)
        return process.wait_ready().url

    try:
        log(f"nodes on {[n.port for n in nodes]}; {ROUNDS} rounds of {SECONDS:g} s per app")
        service = start("app.main:create_app", service_env(nodes))
        apps = {
            "service": service,
            "naive": start("bench.reference_apps:naive", factory=False),
            "bare": start("bench.reference_apps:bare", factory=False),
        }
        defined.create_poll(service, TOKEN, DEFINED_POLL)
        log(f"defined poll {DEFINED_POLL}: options {defined.OPTIONS}, 1 vote per voter")
        trips_before, sent_before = defined.counters(service)
        vote_apps = {"service": service, "defined": service, "naive": apps["naive"]}
        vote_apps["bare"] = apps["bare"]
        vote_env = {**os.environ, "BENCH_POLL": DEFINED_POLL}
        votes = take_turns(
            vote_apps, "vote.lua", "POST vote", vote_env, {"defined": "defined_vote.lua"}
        )
        with httpx.Client(base_url=service) as client:  # warm the cache for the GET rounds
            for poll in range(1, 1001):
                client.get(f"/api/v1/results/{poll}")
        reads = take_turns(apps, "results.lua", "GET results")
        bulk_env = {**os.environ, "BENCH_TOKEN": TOKEN}
        accepted_before = httpx.get(f"{service}/api/v1/health").json()["counters"]["accepted_votes"]
        bulk = take_turns({"service": service}, "bulk.lua", "POST votes (bulk)", bulk_env)[
            "service"
        ]

        health = httpx.get(f"{service}/api/v1/health").json()
        accepted = health["counters"]["accepted_votes"]
        trips, sent = defined.counters(service)
        total = defined.total_votes(service, DEFINED_POLL)
        defined_checks = defined_report(votes, trips - trips_before, sent - sent_before, total)
        votes_per_bulk = (accepted - accepted_before) / sum(r.requests for r in bulk)
        service_process = processes[0]
        service_process.terminate()  # SIGTERM: the final flush
        counted = stored_total(nodes)
        flush_lines = [ln for ln in service_process.output.splitlines() if "flush:" in ln]
        counters = health["counters"]
        log(f"counts check: accepted {accepted:,}, counted in Redis {counted:,}")

        for node in nodes:
            redis.Redis(port=node.port).flushall()
        two = start("app.main:create_app", service_env(nodes), workers=2)
        workers2 = take_turns({"service, 2 workers": two}, "vote.lua", "POST vote")[
            "service, 2 workers"
        ]
        processes.pop().terminate()  # the 2-worker service
        journal_modes = {"no journal": votes["service"]}
        for mode in ("off", "everysec", "always"):
            with tempfile.TemporaryDirectory() as journal_dir:
                env = service_env(nodes, JOURNAL_DIR=journal_dir, JOURNAL_FSYNC=mode)
                url = start("app.main:create_app", env)
                name = f"journal {mode}"
                journal_modes[name] = take_turns({name: url}, "vote.lua", "POST vote")[name]
                processes.pop().terminate()
        ring_rate = ring_lookups_per_second()
        log(f"ring: {ring_rate:,.0f} get_node calls/s")
        nodes.append(LocalNode(free_port()).start())  # a node of its own
        memory = defined.voter_memory(nodes[-1].port, VOTERS, log)
        per_voter = memory["memory_usage_per_voter"]
        log(f"voter memory: {per_voter:.1f} bytes a voter (MEMORY USAGE of the voters hash)")
        typed = question_types.measure(nodes, log)  # the service on 2, memory on the third
        fanned = fanout.measure(nodes[:2], TOKEN, log)
        apart = instances.measure(nodes[:2], TOKEN, log)
        clustered = cluster.measure(log)
        durable = durability.measure(log)  # a cluster with replicas of its own
        migrated = migrate.measure(log)  # three nodes of its own
    finally:
        for process in processes:
            process.kill()
        for node in nodes:
            node.kill()

    report = build_report(
        votes,
        reads,
        bulk,
        votes_per_bulk,
        workers2,
        ring_rate,
        accepted,
        counted,
        counters,
        flush_lines,
    )
    report["defined"] = {**defined_checks, "memory": memory}
    report["journal"] = {
        name: {**summary(r), "vs_no_journal": median(r, "rps") / median(votes["service"], "rps")}
        for name, r in journal_modes.items()
    }
    report["question_types"] = typed
    report["fanout"] = fanned
    report["instances"] = apart
    report["cluster"] = clustered
    report["durability"] = durable
    report["migrate"] = migrated
    (OUT / "results.json").write_text(json.dumps(report, indent=2))
    table = markdown(report)
    (OUT / "results.md").write_text(table)
    chart(report, OUT / "chart.png")
    print()
    print(table)
    print(f"written: {OUT}/results.md, results.json, chart.png")


def summary(results: list[WrkResult]) -> dict[str, float]:
    return {
        "rps": median(results, "rps"),
        "p50_ms": median(results, "p50_ms"),
        "p99_ms": median(results, "p99_ms"),
        "non_2xx": sum(r.non_2xx for r in results),
        "rounds": len(results),
    }


def defined_report(votes: Rounds, trips: int, sent: int, total: int) -> dict[str, Any]:
    """The defined vote beside the ad-hoc one, its round trips, and its `total_votes` against
    the 2xx answers wrk read. wrk stops with up to one request in flight on each of its 50
    connections and never reads their answers; the service still counts them, so
    `total_votes` may exceed the 2xx by up to 50 a round ("consistent"); anything else, or
    a vote sent to the node and not counted, is a MISMATCH."""
    rounds = votes["defined"]
    answered = sum(r.requests - r.non_2xx for r in rounds)
    unread = total - answered
    if unread == 0 and sent == total:
        check = "exact"
    elif 0 < unread <= 50 * len(rounds) and sent == total:
        check = "consistent"
    else:
        check = "MISMATCH"
    log(f"defined check: total_votes {total:,}, 2xx read by wrk {answered:,}: {check}")
    log(f"defined: {trips:,} node round trips for {total:,} accepted votes")
    return {
        **summary(rounds),
        "vs_ad_hoc": median(rounds, "rps") / median(votes["service"], "rps"),
        "round_trips": trips,
        "votes_sent": sent,
        "round_trips_per_vote": trips / max(total, 1),
        "votes_per_round_trip": sent / max(trips, 1),
        "total_votes": total,
        "wrk_2xx": answered,
        "unread_at_stop": unread,
        "total_check": check,
    }


def build_report(
    votes: Rounds,
    reads: Rounds,
    bulk: list[WrkResult],
    votes_per_bulk: float,
    workers2: list[WrkResult],
    ring_rate: float,
    accepted: int,
    counted: int,
    counters: dict[str, int],
    flush_lines: list[str],
) -> dict[str, Any]:
    vote = {name: summary(r) for name, r in votes.items()}
    read = {name: summary(r) for name, r in reads.items()}
    bulk_summary = summary(bulk)
    bulk_votes = bulk_summary["rps"] * votes_per_bulk
    bulk_entries = bulk_summary["rps"] * 1000
    return {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "settings": {"rounds": ROUNDS, "seconds": SECONDS, "connections": 50, "wrk_threads": 1},
        "post_vote": vote,
        "get_results": read,
        "bulk": {
            **bulk_summary,
            "entries_per_request": 1000,
            "votes_per_request": votes_per_bulk,
            "votes_per_s": bulk_votes,
            "entries_per_s": bulk_entries,
        },
        "workers": {"1": vote["service"]["rps"], "2": summary(workers2)["rps"]},
        "ratios": {
            "vote_vs_naive": vote["service"]["rps"] / vote["naive"]["rps"],
            "vote_vs_bare": vote["service"]["rps"] / vote["bare"]["rps"],
            "results_vs_naive": read["service"]["rps"] / read["naive"]["rps"],
            "bulk_votes_vs_single": bulk_votes / vote["service"]["rps"],
            "bulk_entries_vs_single": bulk_entries / vote["service"]["rps"],
        },
        "ring_get_node_per_s": ring_rate,
        "flushes": counters["flushes"],
        "round_trips_per_flush": counters["round_trips"] / max(counters["flushes"], 1),
        "counts": {"accepted": accepted, "counted": counted, "exact": accepted == counted},
        "last_flush_line": flush_lines[-1] if flush_lines else "",
    }


if __name__ == "__main__":
    main()
