"""Time to move 100,000 polls after a third node joins two: a part of `make bench`.

Three local nodes of its own. 100,000 ad-hoc polls (2 options each, their options sets) are
written straight onto their owners under the ring `a, b`, which is recorded. Then:
1. the service starts with the ring `a, b, c` (one uvicorn worker, `REBALANCE_BATCH=100`):
   it serves at once and moves in the background; progress is read from `/health` every
   second until the move is done; the service's own figure (`seconds`) is the time;
2. the same again with `REBALANCE_BATCH=1` (one poll per round trip: stage, copy, release,
   stage again) on a sample of BENCH_MIGRATE_SAMPLE polls, to show what pipelining buys.
Both check after that every poll is whole on its owner and the votes add up.

`python -m bench.migrate` runs this part alone; `BENCH_MIGRATE_POLLS` changes 100,000.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import httpx
import redis

from app.core.consistent_hash import HashRing
from app.devtools.local_nodes import LocalNode, free_port
from app.devtools.uvicorn_process import UvicornProcess
from bench.alone import log

POLLS = int(os.environ.get("BENCH_MIGRATE_POLLS", "100000"))
SAMPLE = int(os.environ.get("BENCH_MIGRATE_SAMPLE", "20000"))
LABELS = ["a", "b", "c"]
Log = Callable[[str], None]


def counts_of(i: int) -> dict[str, int]:
    return {"A": i % 7 + 1, "B": i % 3}


def labelled(nodes: list[LocalNode]) -> str:
    return ",".join(f"{label}={n.url}" for label, n in zip(LABELS, nodes, strict=False))


def seed(nodes: list[LocalNode], polls: int) -> int:
    """Every poll on its owner under `a, b`; the ring `a, b` recorded. Returns the votes."""
    ring = HashRing(LABELS[:2])
    clients = {label: redis.Redis(port=n.port) for label, n in zip(LABELS, nodes, strict=True)}
    for client in clients.values():
        client.flushall()
    pipes = {label: client.pipeline(transaction=False) for label, client in clients.items()}
    votes = 0
    for i in range(polls):
        pipe = pipes[ring.get_node(f"m{i}")]
        counts = counts_of(i)
        pipe.hset(f"poll:{{m{i}}}", mapping={o: n for o, n in counts.items() if n})
        pipe.sadd(f"poll:{{m{i}}}:options", "A", "B")
        votes += sum(counts.values())
        if i % 5000 == 4999:
            for p in pipes.values():
                p.execute()
    for p in pipes.values():
        p.execute()
    for client in clients.values():
        client.close()
    return votes


def record_ring(nodes: list[LocalNode]) -> None:
    """What a service on `a, b` records, so the next start sees a changed ring."""
    config = (
        '{"nodes": {'
        + ", ".join(f'"{label}": "{n.url}"' for label, n in zip(LABELS[:2], nodes, strict=False))
        + '}, "virtual_nodes": 100}'
    )
    for node in nodes[:2]:
        with redis.Redis(port=node.port) as client:
            client.set("ring:config", config)


def check(nodes: list[LocalNode], polls: int, votes: int) -> bool:
    """Every poll on its owner under `a, b, c` only, no record left, votes all there."""
    ring = HashRing(LABELS)
    found = 0
    for label, node in zip(LABELS, nodes, strict=True):
        with redis.Redis(port=node.port, decode_responses=True) as client:
            if next(client.scan_iter("move:*", count=1000), None) is not None:
                return False
            keys = [k for k in client.scan_iter("poll:*", count=5000) if k.endswith("}")]
            if any(ring.get_node(k[k.index("{") + 1 : -1]) != label for k in keys):
                return False
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.hvals(key)
            found += sum(int(v) for values in pipe.execute() for v in values)
    return found == votes


def run_once(nodes: list[LocalNode], polls: int, batch: int, log: Log) -> dict[str, Any]:
    votes = seed(nodes, polls)
    record_ring(nodes)
    env = {"REDIS_NODES": labelled(nodes), "REBALANCE_BATCH": str(batch)}
    log(f"migrate: {polls:,} polls ({votes:,} votes) on a, b; starting on a, b, c, batch {batch}")
    process = UvicornProcess(env=env, quiet=True)
    started = time.perf_counter()
    try:
        process.wait_ready()
        ready = time.perf_counter() - started
        with httpx.Client(base_url=process.url, timeout=30) as client:
            while True:
                state = client.get("/api/v1/health").json()["rebalance"]
                if state["state"] != "moving":
                    break
                log(
                    f"migrate: {state['polls_moved']:,} polls moved, {state['keys_scanned']:,} "
                    f"keys scanned, {time.perf_counter() - started:.1f} s"
                )
                time.sleep(1.0)  # progress once a second; the service's own clock times it
    finally:
        process.terminate()
    seconds = float(state["seconds"])
    moved, seen = int(state["polls_moved"]), int(state["polls_seen"])
    exact = check(nodes, polls, votes)
    log(
        f"migrate: batch {batch}: {moved:,} of {seen:,} polls moved ({moved / seen:.1%}) in "
        f"{seconds:.2f} s: {moved / seconds:,.0f} polls/s; exact: {exact}"
    )
    return {
        "polls": seen,
        "moved": moved,
        "moved_fraction": moved / seen,
        "votes_moved": int(state["votes_moved"]),
        "seconds": seconds,
        "moved_per_second": moved / seconds,
        "scanned_per_second": seen / seconds,
        "ready_seconds": ready,
        "batch": batch,
        "exact": exact,
    }


def measure(log: Log) -> dict[str, Any]:
    nodes = [LocalNode(free_port()).start() for _ in LABELS]
    try:
        pipelined = run_once(nodes, POLLS, 100, log)
        single = run_once(nodes, min(SAMPLE, POLLS), 1, log)
    finally:
        for node in nodes:
            node.kill()
    return {"pipelined": pipelined, "one_at_a_time": single}


def markdown(r: dict[str, Any]) -> list[str]:
    lines = [
        "Moving polls after a third node joins two: the service starts on `a, b, c`, serves "
        "at once, and moves in the background (time from the service's `/health`).",
        "",
        "| polls per round trip (`REBALANCE_BATCH`) | polls | moved (fraction) | seconds | "
        "moved polls/s | polls checked/s | exact |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name in ("pipelined", "one_at_a_time"):
        m = r[name]
        lines.append(
            f"| {m['batch']} | {m['polls']:,} | {m['moved']:,} ({m['moved_fraction']:.1%}) | "
            f"{m['seconds']:.2f} | {m['moved_per_second']:,.0f} | "
            f"{m['scanned_per_second']:,.0f} | {'yes' if m['exact'] else 'NO'} |"
        )
    return lines


def main() -> None:
    print("\n".join(markdown(measure(log))))


if __name__ == "__main__":
    main()
