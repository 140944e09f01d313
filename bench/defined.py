"""Defined polls in `make bench`: the poll the vote rounds use, the checks read back from the
service afterwards, and the node memory a voter costs."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import redis

from app.api.voters import voter_key
from app.storage.defined import (
    CREATE,
    VOTE,
    PollDefinition,
    encode_definition,
    vote_keys,
)

OPTIONS = ["A", "B", "C"]  # bench/defined_vote.lua votes for these
VOTERS_PER_SCRIPT = 1000  # voters checked by one run of the script (the service sends ~25)
SCRIPTS_PER_PIPELINE = 10


def create_poll(url: str, token: str, poll_id: str) -> None:
    """Define a poll on the service: one vote per voter, live results."""
    poll = {
        "poll_id": poll_id,
        "question": "Which one?",
        "options": [{"id": o, "label": f"option {o}"} for o in OPTIONS],
        "votes_per_voter": 1,
        "results": "live",
    }
    organiser = {"Authorization": f"Bearer {token}"}
    httpx.post(f"{url}/api/v1/polls", json=poll, headers=organiser).raise_for_status()


def counters(url: str) -> tuple[int, int]:
    """The service's defined-poll round trips and votes sent in them, since it started."""
    c = httpx.get(f"{url}/api/v1/health").json()["counters"]
    return int(c["defined_round_trips"]), int(c["defined_votes_sent"])


def total_votes(url: str, poll_id: str) -> int:
    return int(httpx.get(f"{url}/api/v1/polls/{poll_id}/results").json()["total_votes"])


def voter_memory(port: int, voters: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Write `voters` distinct voters into one poll on the node at `port`, through the VOTE
    script the service runs, and measure what the voters hash costs."""
    client = redis.Redis(port=port)
    poll_id = "memory"
    definition = PollDefinition(
        poll_id, "?", tuple((o, o) for o in OPTIONS), 1, "live", None, int(time.time() * 1000)
    )
    keys = vote_keys(poll_id)
    client.eval(CREATE, 1, keys[0], *encode_definition(definition))
    used_before = int(client.info("memory")["used_memory"])
    started = time.perf_counter()
    done = 0
    while done < voters:
        pipe = client.pipeline(transaction=False)
        for _ in range(SCRIPTS_PER_PIPELINE):
            batch = range(done, min(done + VOTERS_PER_SCRIPT, voters))
            if not batch:
                break
            voter_args = ((voter_key("h", f"voter-{i}"), "", OPTIONS[i % 3]) for i in batch)
            args = [x for triple in voter_args for x in triple]
            pipe.eval(VOTE, len(keys), *keys, *args)
            done = batch[-1] + 1
        for reply in pipe.execute():
            if any(outcome != b"ok" for outcome in reply):
                raise RuntimeError(f"the node refused a voter: {set(reply)}")
        if done % 100_000 == 0 or done == voters:
            log(f"voter memory: {done:,} voters written")
    seconds = time.perf_counter() - started
    used_after = int(client.info("memory")["used_memory"])
    # the voter's count and their own record (voters and mine hashes)
    key_bytes = sum(int(client.memory_usage(k, samples=0) or 0) for k in keys[2:])
    stored = client.hlen(keys[2])
    client.close()
    if stored != voters:
        raise RuntimeError(f"{stored:,} voters stored, {voters:,} written")
    return {
        "voters": voters,
        "write_seconds": seconds,
        "memory_usage_bytes": key_bytes,
        "memory_usage_per_voter": key_bytes / voters,
        "used_memory_delta": used_after - used_before,
        "used_memory_per_voter": (used_after - used_before) / voters,
    }
