"""The question types in the benchmark (`python -m bench.question_types`): the vote rate of
`multiple`, `rating` and `words` against `single` on one worker, in turns over several
rounds (each round runs every type once, so drift on a noisy machine hits all alike), and
the node memory one voter costs in each type, written through the scripts the service runs.
Writes bench/results/question_types.json and prints a Markdown table."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import httpx
import redis

from app.api.voters import voter_key
from app.devtools.local_nodes import LocalNode, free_port
from app.devtools.uvicorn_process import UvicornProcess
from app.storage.defined import CREATE, PollDefinition, def_key, encode_definition, vote_keys
from app.storage.question_scripts import SCRIPTS
from bench.alone import TOKEN, Log, log
from bench.wrk import run_wrk

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
MEMORY_VOTERS = int(os.environ.get("BENCH_TYPE_VOTERS", "100000"))
# The nodes' fsync policy: everysec (as `make run` starts them) or always.
APPENDFSYNC = os.environ.get("BENCH_APPENDFSYNC", "everysec")
OPTIONS = [{"id": o, "label": o} for o in "ABC"]
POLLS: dict[str, dict[str, Any]] = {
    "single": {"type": "single", "options": OPTIONS},
    "multiple": {"type": "multiple", "options": OPTIONS, "max_choices": 2},
    "rating": {"type": "rating", "min": 1, "max": 5},
    "words": {"type": "words", "max_words": 2},
}
# What the node stores per voter, as bench/typed_vote.lua votes (normalised payloads).
PAYLOADS = {
    "single": ["A", "B", "C"],
    "multiple": ["A\nC", "B", "C\nB"],
    "rating": ["1", "3", "5"],
    "words": ["rust\ngo", "python", "zig\nrust"],
}
DEFINITIONS: dict[str, dict[str, Any]] = {
    "single": {"options": (("A", "A"), ("B", "B"), ("C", "C"))},
    "multiple": {"options": (("A", "A"), ("B", "B"), ("C", "C")), "max_choices": 2},
    "rating": {"scale_min": 1, "scale_max": 5},
    "words": {"max_words": 2},
}


def vote_rates(url: str, log: Log) -> dict[str, list[float]]:
    ids = {}
    organiser = {"Authorization": f"Bearer {TOKEN}"}
    for kind, body in POLLS.items():
        r = httpx.post(f"{url}/api/v1/polls", json={"question": "?", **body}, headers=organiser)
        r.raise_for_status()
        ids[kind] = r.json()["poll_id"]
    rates: dict[str, list[float]] = {kind: [] for kind in POLLS}
    for i in range(1, ROUNDS + 1):
        for kind, poll_id in ids.items():
            env = {**os.environ, "BENCH_POLL": poll_id, "BENCH_TYPE": kind, "BENCH_ROUND": str(i)}
            result = run_wrk(url, "typed_vote.lua", SECONDS, env=env)
            if result.non_2xx or result.socket_errors:
                raise RuntimeError(
                    f"{kind}: {result.non_2xx} non-2xx, {result.socket_errors} errors"
                )
            rates[kind].append(result.rps)
            log(f"typed vote round {i}/{ROUNDS} {kind}: {result.rps:,.0f} req/s")
    for kind, poll_id in ids.items():
        results = httpx.get(f"{url}/api/v1/polls/{poll_id}/results").json()
        if results["total_votes"] != sum(o["count"] for o in results["options"]) + sum(
            results.get("values", {}).values()
        ) + sum(w["count"] for w in results.get("words", [])):
            raise RuntimeError(f"{kind}: total_votes is not the sum of the counts")
    return rates


def voter_memory(port: int, kind: str, voters: int) -> dict[str, float]:
    """Write `voters` voters into a poll of this type through its script; the node memory
    they cost (used_memory before and after, and MEMORY USAGE of the poll's keys)."""
    client = redis.Redis(port=port)
    client.flushall(asynchronous=False)
    poll_id = f"memory-{kind}"
    params = {k: v for k, v in DEFINITIONS[kind].items() if k != "options"}
    options = DEFINITIONS[kind].get("options", ())
    now = int(time.time() * 1000)
    definition = PollDefinition(poll_id, "?", options, 1, "live", None, now, kind, **params)
    keys = vote_keys(poll_id)
    client.eval(CREATE, 1, def_key(poll_id), *encode_definition(definition))
    before = int(client.info("memory")["used_memory"])
    payloads = PAYLOADS[kind]
    for start in range(0, voters, 1000):
        batch = range(start, min(start + 1000, voters))
        args = [x for i in batch for x in (voter_key("h", f"v-{i}"), "", payloads[i % 3])]
        reply = client.eval(SCRIPTS[kind], len(keys), *keys, *args)
        if any(outcome != b"ok" for outcome in reply):
            raise RuntimeError(f"{kind}: the node refused a voter: {set(reply)}")
    after = int(client.info("memory")["used_memory"])
    usage = sum(int(client.memory_usage(k, samples=0) or 0) for k in keys[1:])
    client.close()
    return {"used_memory_per_voter": (after - before) / voters, "keys_per_voter": usage / voters}


# As shipped (each defined vote answered once its round trip is durable: WAIT + WAITAOF,
# and the nodes fsync every second), and with DURABLE_WAIT_SECONDS=0, where the rate shows
# what each type's script and parsing cost the worker.
SETTINGS = {"as shipped": {}, "DURABLE_WAIT_SECONDS=0": {"DURABLE_WAIT_SECONDS": "0"}}


def measure(nodes: list[LocalNode], log: Log) -> dict[str, Any]:
    env = {"REDIS_NODES": ",".join(f"n{i}={n.url}" for i, n in enumerate(nodes[:2]))}
    rates = {}
    for name, extra in SETTINGS.items():
        log(f"question types, {name}")
        service = UvicornProcess(env={**env, "API_TOKEN": TOKEN, **extra}, quiet=True)
        try:
            rates[name] = vote_rates(service.wait_ready().url, log)
        finally:
            service.kill()
    memory = {kind: voter_memory(nodes[2].port, kind, MEMORY_VOTERS) for kind in POLLS}
    return {"rounds": ROUNDS, "seconds": SECONDS, "rates": rates, "memory": memory}


def markdown(r: dict[str, Any]) -> list[str]:
    names = list(r["rates"])
    lines = [
        f"Vote rate per type, one worker, {r['rounds']} rounds of {r['seconds']} s in turns "
        "(ratio to `single` in the same round and setting: min-max); node memory per voter",
        "",
        "| type | "
        + " | ".join(f"{n}: req/s per round | ratio to single" for n in names)
        + " | bytes per voter: its keys | used_memory |",
        "|---|" + "---|---|" * len(names) + "---|---|",
    ]
    for kind in POLLS:
        cells = []
        for name in names:
            rates, single = r["rates"][name][kind], r["rates"][name]["single"]
            ratios = [rate / base for rate, base in zip(rates, single, strict=True)]
            cells.append(", ".join(f"{x:,.0f}" for x in rates))
            cells.append(f"**{min(ratios):.2f}-{max(ratios):.2f}**")
        memory = r["memory"][kind]
        lines.append(
            f"| {kind} | {' | '.join(cells)} | {memory['keys_per_voter']:.0f} | "
            f"{memory['used_memory_per_voter']:.0f} |"
        )
    return lines


def main() -> None:
    nodes = [LocalNode(free_port(), appendfsync=APPENDFSYNC).start() for _ in range(3)]
    try:
        report = measure(nodes, log)
    finally:
        for node in nodes:
            node.kill()
    out = os.path.join(os.path.dirname(__file__), "results")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "question_types.json"), "w") as f:
        json.dump(report, f, indent=2)
    print("\n".join(markdown(report)))


if __name__ == "__main__":
    main()
