"""The exactness promise against every fault of our own I/O, one at a time.

A scenario runs two service lifetimes on one journal folder and two real nodes: the first
takes votes (single and bulk, across both nodes), flushes, loses one node's reply, takes
more votes and dies (kill -9); someone damages a journal line; the second recovers, takes
votes, flushes and stops. The scenario is first run clean to number its I/O steps (each
file write, fsync, rename, delete, read and each node call). Then, for every step k: step
k fails; or the process dies right after step k; or (node calls) step k's reply is lost.
After each, a clean start recovers and drains, and the invariants are checked:
- every acknowledged vote is counted exactly once, and nothing refused is counted (votes
  whose answer never came, or came as `outcome_unknown`, count at most once);
- start-up succeeds, and nothing is left in the journal once everything has landed.
"""

from __future__ import annotations

import contextlib
import random
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis

from app.api import bulk, handlers
from app.core.nodes import NodeSpec
from app.devtools.local_nodes import LocalNode, free_port
from app.services.defined_polls import DefinedPolls
from app.services.errors import VoteRejected
from app.services.events import Events
from app.services.journal import Journal
from app.services.polling_service import PollingService
from app.services.question_types import vote_payload
from app.services.results_cache import ResultsCache
from app.storage.base import NodeUnavailable
from app.storage.defined import PollDefinition, RedisDefinedStore
from app.storage.events import RedisEventStore
from app.storage.redis_store import ShardedRedisStore, poll_key
from tests.faults import Crash, FaultPlan, FaultyFiles, FaultyStore, abandon, faulty_call

POLLS = ["p0", "p1", "p2", "p3", "p4", "p5"]
TOKEN = "t"
Pair = tuple[str, str]


# Every step of two lifetimes, each broken several ways: minutes on a loaded machine.
pytestmark = pytest.mark.timeout(600)


@dataclass
class Tally:
    acknowledged: Counter[Pair] = field(default_factory=Counter)
    unknown: Counter[Pair] = field(default_factory=Counter)  # no answer, or outcome_unknown


@pytest.fixture(scope="module")
def nodes() -> Iterator[list[LocalNode]]:
    # appendfsync always: WAITAOF answers at once (with everysec it waits for the next fsync)
    started = [LocalNode(free_port(), appendfsync="always").start() for _ in range(2)]
    yield started
    for node in started:
        node.kill()


def build(nodes: list[LocalNode], folder: Path, plan: FaultPlan) -> PollingService:
    specs = [NodeSpec(f"n{i}", node.url) for i, node in enumerate(nodes)]
    store = FaultyStore(ShardedRedisStore(specs, 100, 2.0), plan)
    return PollingService(
        store,
        batch_interval=3600,  # the scenario flushes by hand: steps come in a fixed order
        batch_max_votes=1_000_000,
        cache=ResultsCache(0, 1000),
        max_options_per_poll=10,
        max_pending_pairs_per_node=1000,
        shutdown_flush_seconds=0,
        journal=Journal(folder, "always", FaultyFiles(plan)),
    )


async def vote(
    service: PollingService, tally: Tally, poll: str, option: str, key: str | None = None
) -> None:
    try:
        status, body, _ = await handlers.vote(
            service, poll, b'{"option_id": "%s"}' % option.encode(), key
        )
    except Crash:
        tally.unknown[poll, option] += 1
        raise
    if status == 200:
        tally.acknowledged[poll, option] += 1
    elif msgspec.json.decode(body).get("type") == "outcome_unknown":
        tally.unknown[poll, option] += 1


async def vote_bulk(
    service: PollingService,
    tally: Tally,
    entries: list[tuple[str, str, int]],
    key: str | None = None,
) -> None:
    payload = msgspec.json.encode(
        [{"poll_id": p, "option_id": o, "count": n} for p, o, n in entries]
    )

    async def body(limit: int) -> bytes:
        return payload

    pairs = Counter({(p, o): n for p, o, n in entries})
    try:
        status, reply, _ = await bulk.ingest(service, TOKEN, f"Bearer {TOKEN}", body, key)
    except Crash:
        tally.unknown.update(pairs)
        raise
    if status == 200:
        tally.acknowledged.update(pairs)
    elif msgspec.json.decode(reply).get("type") == "outcome_unknown":
        tally.unknown.update(pairs)


async def scenario(nodes: list[LocalNode], folder: Path, plan: FaultPlan, tally: Tally) -> None:
    service = build(nodes, folder, plan)
    try:
        await service.start()
        for i in range(8):
            await vote(service, tally, POLLS[i % 6], "AB"[i % 2])
        await vote_bulk(service, tally, [("p0", "A", 5), ("p1", "C", 3), ("p4", "B", 2)])
        await vote(service, tally, "p3", "C", key="once")  # written through, with its key
        await vote_bulk(service, tally, [("p0", "C", 2), ("p5", "C", 4)], key="bulk-once")
        await service.flusher.flush()
        await vote(service, tally, "p2", "A")
        await vote(service, tally, "p3", "B")
        plan.lose_reply_once.add(service.store.node_for("p2"))  # applied, never confirmed
        await service.flusher.flush()
        for i in range(6):  # loose when the process dies: each write is followed by others
            await vote(service, tally, POLLS[i], "AB"[i % 2])
            if i == 2:
                await vote_bulk(service, tally, [("p2", "B", 4), ("p3", "A", 1)])
    except Crash:
        pass
    await abandon(service)  # the first lifetime always ends in kill -9
    if plan.crashed:
        return
    segment = next(iter(sorted(folder.glob("slot-*/votes-*.log"))), None)
    if segment is not None:  # someone damaged the journal
        with segment.open("ab") as f:
            f.write(b"garbage\x00\xff line\n")
    service = build(nodes, folder, plan)
    try:
        await service.start()
        await vote(service, tally, "p1", "B")
        await vote(service, tally, "p4", "A")
        await service.flusher.flush()
        await vote(service, tally, "p0", "B")
        await service.stop()
    except Crash:
        await abandon(service)


def stored(nodes: list[LocalNode]) -> Counter[Pair]:
    found: Counter[Pair] = Counter()
    for node in nodes:
        client = redis.Redis(port=node.port, decode_responses=True)
        try:
            for poll in POLLS:
                for option, n in client.hgetall(poll_key(poll)).items():
                    found[poll, option] += int(n)
        finally:
            client.close()
    return found


def flush_nodes(nodes: list[LocalNode]) -> None:
    for node in nodes:
        with contextlib.closing(redis.Redis(port=node.port)) as client:
            client.flushall()


async def run_case(
    nodes: list[LocalNode], at: int, mode: str, also: tuple[int, str] = (0, "")
) -> tuple[FaultPlan, Tally]:
    flush_nodes(nodes)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "journal"
        plan, tally = FaultPlan(at, mode, also), Tally()
        await scenario(nodes, folder, plan, tally)
        final = build(nodes, folder, FaultPlan())  # a clean restart: recover, then drain
        await final.start()
        assert await final.stop(), f"step {at} ({mode}): the clean restart could not drain"
        left = [p.name for p in folder.glob("slot-*/*") if p.name != "lock"]
        assert not left, f"step {at} ({mode}): left in the journal: {left}"
    counted = stored(nodes)
    for pair in set(counted) | set(tally.acknowledged) | set(tally.unknown):
        low, high = tally.acknowledged[pair], tally.acknowledged[pair] + tally.unknown[pair]
        assert low <= counted[pair] <= high, (
            f"step {at} {plan.steps[at - 1] if at else ''} ({mode}): {pair} counted "
            f"{counted[pair]}, acknowledged {low}, unknown {tally.unknown[pair]}"
        )
    return plan, tally


async def test_every_io_step_failed_or_crashed_keeps_counts_exact(
    nodes: list[LocalNode], capsys: pytest.CaptureFixture[str]
) -> None:
    clean, tally = await run_case(nodes, 0, "none")
    assert sum(tally.acknowledged.values()) > 0 and not tally.unknown
    kinds = set(clean.steps)
    assert {"file write", "fsync", "rename", "delete", "node apply", "node register"} <= kinds
    cases = 0
    for at, name in enumerate(clean.steps, start=1):
        modes = ["fail", "crash"] + (["lost_reply"] if name.startswith("node") else [])
        for mode in modes:
            await run_case(nodes, at, mode)
            cases += 1
    with capsys.disabled():
        print(f"\nfault injection: {len(clean.steps)} I/O steps, {cases} faults, all exact")


PAIRS_SAMPLED = 300  # of about 12,000 possible pairs; a fixed seed, so every run tries the same


async def test_pairs_of_faults_keep_counts_exact(
    nodes: list[LocalNode], capsys: pytest.CaptureFixture[str]
) -> None:
    """Two faults in one run: a node call fails or loses its reply (a node down, or a
    failover's lost answer), and later another step fails or the process dies (kill -9
    while that node is still held, a failed seal after it, ...). All pairs would take
    minutes, so a fixed sample of PAIRS_SAMPLED, every kind of first fault represented."""
    clean, _ = await run_case(nodes, 0, "none")
    firsts = [
        (at, mode)
        for at, name in enumerate(clean.steps, start=1)
        if name.startswith("node")
        for mode in ("fail", "lost_reply")
    ]
    seconds = [(at, mode) for at in range(1, len(clean.steps) + 1) for mode in ("fail", "crash")]
    possible = [(a, b) for a in firsts for b in seconds if b[0] > a[0]]
    chosen = random.Random(16).sample(possible, PAIRS_SAMPLED)
    for (first_at, first_mode), second in chosen:
        await run_case(nodes, first_at, first_mode, also=second)
    with capsys.disabled():
        print(f"\nfault pairs: {len(chosen)} sampled of {len(possible)} possible, all exact")


# -- the defined-poll and event write paths (sessions, question types) --------------------

TYPES: dict[str, dict[str, Any]] = {
    "single": {"options": (("A", "a"), ("B", "b"))},
    "multiple": {"options": (("A", "a"), ("B", "b"), ("C", "c")), "max_choices": 2},
    "rating": {"scale_min": 1, "scale_max": 5},
    "words": {"max_words": 2},
    "quiz": {"options": (("A", "a"), ("B", "b")), "correct": "B"},
}
VOTERS = 2
BALLOTS: dict[str, list[dict[str, Any]]] = {
    "single": [{"option_id": "A"}, {"option_id": "B"}, {"option_id": "A"}],
    "multiple": [{"option_ids": ["A", "C"]}, {"option_ids": ["B"]}, {"option_ids": ["C", "B"]}],
    "rating": [{"value": 5}, {"value": 1}, {"value": 5}],
    "words": [{"words": ["Rust", "go"]}, {"words": ["rust"]}, {"words": ["Zig"]}],
    "quiz": [{"option_id": "B"}, {"option_id": "A"}, {"option_id": "B"}],
}


@dataclass
class Session:
    """What the faulty lifetime achieved, as its client knows it."""

    event_id: str | None = None
    polls: dict[str, str] = field(default_factory=dict)  # type -> poll id, when answered


def session_parts(nodes: list[LocalNode], plan: FaultPlan) -> tuple[Any, Any, Any]:
    specs = [NodeSpec(f"n{i}", node.url) for i, node in enumerate(nodes)]
    store = ShardedRedisStore(specs, 100, 2.0)
    call = faulty_call(store.call, plan)
    polls = DefinedPolls(RedisDefinedStore(store.manager, call))
    return store, polls, Events(RedisEventStore(store.manager, call), polls)


async def cast(polls: DefinedPolls, poll_id: str, kind: str, i: int) -> None:
    definition = await polls.definition(poll_id)
    payload = vote_payload(definition, BALLOTS[kind][i])
    await polls.vote(poll_id, payload, f"voter-{i}", f"key-{kind}-{i}", kind)


async def session_scenario(polls: DefinedPolls, events: Events, done: Session) -> None:
    event = await events.create("faults")
    done.event_id = event.event_id
    for kind, extra in TYPES.items():
        params = {k: v for k, v in extra.items() if k != "options"}
        options = extra.get("options", ())
        poll_id = f"{kind}-{event.event_id}"
        definition = PollDefinition(
            poll_id, "?", options, 1, "live", None, 1, kind, **params, event_id=event.event_id
        )
        await events.add_poll(event.event_id, definition)
        done.polls[kind] = definition.poll_id
    await events.set_current(event.event_id, done.polls["quiz"])
    await events.join(event.event_id, "voter-0", "Ann")
    for i in range(VOTERS):
        for kind, poll_id in done.polls.items():
            await cast(polls, poll_id, kind, i)
    await polls.hide(done.polls["words"], "rust", True)


def expected_counts(kind: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for body in BALLOTS[kind][:VOTERS]:
        (value,) = body.values()
        items = value if isinstance(value, list) else [value]
        counts.update(str(v).casefold() if kind == "words" else str(v) for v in items)
    return counts


async def run_session_case(nodes: list[LocalNode], at: int, mode: str) -> FaultPlan:
    flush_nodes(nodes)
    plan, done = FaultPlan(at, mode), Session()
    store, polls, events = session_parts(nodes, plan)
    await store.open()
    try:
        await session_scenario(polls, events, done)
    except (Crash, VoteRejected, NodeUnavailable):
        pass  # the client saw an error (or the process died): it retries below
    finally:
        await store.close()
    where = f"step {at} {plan.steps[at - 1] if at else ''} ({mode})"
    store, polls, events = session_parts(nodes, FaultPlan())  # a clean instance
    await store.open()
    try:
        listed = await events.all()
        for event in listed:  # whatever was half made, nothing half made is visible
            assert (await events.by_code(event.code)).event_id == event.event_id, where
            assert len(await events.records(event)) <= len(event.polls), where
        if done.event_id is None:
            return plan
        event = await events.load(done.event_id)
        for kind, poll_id in done.polls.items():
            assert poll_id in event.polls, where
            for i in range(VOTERS):  # the client retries every vote with its key
                await cast(polls, poll_id, kind, i)
            record = await polls.close(poll_id)
            assert Counter({k: n for k, n in record.counts.items() if n}) == expected_counts(
                kind
            ), (where, kind, record.counts)
            assert record.total == sum(record.counts.values()) and record.voters == VOTERS, where
    finally:
        await store.close()
    return plan


async def test_every_node_call_of_sessions_failed_lost_or_crashed_keeps_votes_exact(
    nodes: list[LocalNode], capsys: pytest.CaptureFixture[str]
) -> None:
    clean = await run_session_case(nodes, 0, "none")
    cases = 0
    for at in range(1, len(clean.steps) + 1):
        for mode in ("fail", "crash", "lost_reply"):
            await run_session_case(nodes, at, mode)
            cases += 1
    with capsys.disabled():
        print(f"\nfault injection, sessions: {len(clean.steps)} node calls, {cases} faults, exact")
