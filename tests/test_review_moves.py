"""Hostile review of the ring change done while serving (review-m). Each test is one broken
promise of README "Adding or removing a node", against real nodes, synchronised by events
on the mover's node calls (no sleeps)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import pytest
import redis

from app.core.consistent_hash import HashRing
from app.core.nodes import NodeSpec
from app.devtools.local_nodes import LocalNode
from app.services.defined_polls import DefinedPolls
from app.services.errors import PollNotFound, RebalanceBlocked, ResultsUnavailable
from app.services.polling_service import PollingService
from app.storage.defined import PollDefinition
from app.storage.mover import SAMPLE, Mover
from app.storage.redis_store import ShardedRedisStore
from tests.conftest import NodeFactory, moving_service

T = TypeVar("T")


class Gate:
    """A point in a node call where the test holds the mover: `reached` is set when it
    gets there, and it waits for `go`."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self.go = asyncio.Event()

    async def hold(self) -> None:
        self.reached.set()
        await self.go.wait()


class GatedMover(Mover):
    """The real mover; `before[(node, step, n)]` holds the n-th call (1-based) of that step
    on that node before it runs, `after[...]` once its reply is in; `before[(None, step, 0)]`
    holds every call of that step."""

    def __init__(self, mover: Mover) -> None:
        super().__init__(mover.manager, mover.call, mover.group)
        self.before: dict[tuple[str | None, str, int], Gate] = {}
        self.after: dict[tuple[str | None, str, int], Gate] = {}
        self.calls: dict[tuple[str, str], int] = {}

    async def run(self, node: str, step: str, operation: Awaitable[T]) -> T:
        n = self.calls[(node, step)] = self.calls.get((node, step), 0) + 1
        for key in ((node, step, n), (None, step, 0)):
            if key in self.before:
                try:
                    await self.before[key].hold()
                except asyncio.CancelledError:
                    if asyncio.iscoroutine(operation):
                        operation.close()
                    raise
        result = await super().run(node, step, operation)
        if (node, step, n) in self.after:
            await self.after[(node, step, n)].hold()
        return result


def make_service(
    nodes: dict[str, LocalNode],
    labels: list[str],
    retiring: list[str] = (),  # type: ignore[assignment]
) -> tuple[PollingService, DefinedPolls, GatedMover]:
    specs = [NodeSpec(label, nodes[label].url) for label in labels]
    old = [NodeSpec(label, nodes[label].url) for label in retiring]
    store = ShardedRedisStore(specs, 100, 2.0, retiring=old)
    mover = GatedMover(Mover(store.manager, store.call))
    service, defined = moving_service(store, mover)
    return service, defined, mover


def find_poll(prefix: str, owners: list[tuple[list[str], str]]) -> str:
    """A poll id whose owner under each ring (labels) is the one given."""
    rings = [(HashRing(labels, 100), owner) for labels, owner in owners]
    for i in range(100_000):
        poll_id = f"{prefix}{i}"
        if all(ring.get_node(poll_id) == owner for ring, owner in rings):
            return poll_id
    raise AssertionError("no such poll")


def counts_on(node: LocalNode, poll_id: str) -> dict[str, int]:
    with redis.Redis(port=node.port, decode_responses=True) as client:
        return {k: int(v) for k, v in client.hgetall(f"poll:{{{poll_id}}}").items()}


def definition(poll_id: str) -> PollDefinition:
    return PollDefinition(poll_id, "Q?", (("A", "a"), ("B", "b")), 1, "live", None, 0)


async def test_a_move_cut_off_then_resumed_under_a_third_ring_strands_counts_on_a_non_owner(
    start_node: NodeFactory,
) -> None:
    """Ring 1 (a, b, c); ring 2 removes c (c retiring): P moves c -> a, and the process is
    killed right after STAGE on c (the record `move:{P}` says target a). The operator then
    starts ring 3 (a, b, d; c still retiring), under which P belongs to d. The scan visits
    a, b, d, then c: it resumes the record on c and copies P's counts to the record's
    target a -- after a was scanned -- records the ring and stops. P's votes sit on a
    forever; every read (on d) misses them."""
    nodes = {label: start_node() for label in "abcd"}
    poll_id = find_poll("p", [(["a", "b", "c"], "c"), (["a", "b"], "a"), (["a", "b", "d"], "d")])
    with redis.Redis(port=nodes["c"].port) as client:
        client.hset(f"poll:{{{poll_id}}}", mapping={"A": 7, "B": 2})
        client.sadd(f"poll:{{{poll_id}}}:options", "A", "B")

    # Ring 2: the move of P stops right after STAGE on c (kill -9: nothing more happens).
    service2, _, mover2 = make_service(nodes, ["a", "b"], retiring=["c"])
    await service2.store.open()
    staged = await mover2._stage("c", [poll_id], True, True, True)
    assert staged[0].adhoc is not None and staged[0].adhoc.target == "a"
    await service2.store.close()

    # Ring 3.
    service3, _, _ = make_service(nodes, ["a", "b", "d"], retiring=["c"])
    await service3.start()
    assert service3.migration is not None
    await service3.migration.wait()
    try:
        assert service3.migration.describe()["state"] == "done"
        where = {label: counts_on(node, poll_id) for label, node in nodes.items()}
        assert (await service3.results(poll_id)).results == {"A": 7, "B": 2}, where
    finally:
        await service3.stop()


async def test_an_instance_whose_move_is_done_stops_making_polls_whole_while_another_moves(
    start_node: NodeFactory,
) -> None:
    """Two instances start on the new ring (README: "Another instance's mover may be
    moving the same poll"). Instance B stages an ad-hoc poll P and a defined poll D on
    their old owner a (STAGE done, COPY not yet) just after instance A's scan of a passed
    `move:*` / `dmove:*`; A's later `poll:*` / `def:*` passes no longer see them. A
    finishes, records the ring, and from then on reads and votes with no `ensure`: the
    read of P misses its old counts, and D answers 404 on A."""
    nodes = {label: start_node() for label in "abc"}
    adhoc = find_poll("p", [(["a", "b"], "a"), (["a", "b", "c"], "c")])
    defined_id = find_poll("d", [(["a", "b"], "a"), (["a", "b", "c"], "c")])

    old, old_defined, _ = make_service(nodes, ["a", "b"])
    await old.start()
    assert old.migration is not None
    await old.migration.wait()  # records ring a, b
    await old_defined.create(definition(defined_id))
    await old_defined.vote(defined_id, "A", "v1")
    await old.register({adhoc: ["A"]})
    old.vote(adhoc, "A")
    old.vote(adhoc, "A")
    assert await old.flusher.flush()
    assert (await old.results(adhoc)).results == {"A": 2}  # a client saw 2
    await old.stop()

    a_service, a_defined, a_mover = make_service(nodes, ["a", "b", "c"])
    b_service, b_defined, b_mover = make_service(nodes, ["a", "b", "c"])
    after_move = a_mover.after[("a", "scan", 1)] = Gate()  # A scanned a's move:*
    after_dmove = a_mover.after[("a", "scan", 3)] = Gate()  # A scanned a's dmove:*
    b_scan = b_mover.before[(None, "scan", 0)] = Gate()  # B's background scan waits
    b_copy = b_mover.before[(None, "copy", 0)] = Gate()  # B holds after STAGE
    await a_service.start()
    await b_service.start()
    tasks: list[asyncio.Task[object]] = []
    try:
        await after_move.reached.wait()
        tasks.append(asyncio.create_task(b_service.results(adhoc)))  # B: ensure(P)
        await b_copy.reached.wait()  # P staged on a by B
        after_move.go.set()
        await after_dmove.reached.wait()
        b_copy.reached.clear()
        tasks.append(asyncio.create_task(b_defined.load(defined_id)))  # B: ensure(D)
        await b_copy.reached.wait()  # D staged on a by B
        after_dmove.go.set()
        assert a_service.migration is not None
        await a_service.migration.wait()
        assert a_service.migration.describe()["state"] == "done"

        observed: dict[str, object] = {}
        observed["P"] = (await a_service.results(adhoc)).results
        try:
            observed["D"] = (await a_defined.load(defined_id)).counts
        except PollNotFound as exc:
            observed["D"] = f"404: {exc}"
        assert observed == {"P": {"A": 2}, "D": {"A": 1, "B": 0}}
    finally:
        b_copy.go.set()
        b_scan.go.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await a_service.stop()
        await b_service.stop()


async def test_after_both_instances_finish_the_counts_are_exact(
    start_node: NodeFactory,
) -> None:
    """Control for the test above: the same data, one instance, no interleaving."""
    nodes = {label: start_node() for label in "abc"}
    adhoc = find_poll("p", [(["a", "b"], "a"), (["a", "b", "c"], "c")])
    old, _, _ = make_service(nodes, ["a", "b"])
    await old.start()
    assert old.migration is not None
    await old.migration.wait()
    await old.register({adhoc: ["A"]})
    old.vote(adhoc, "A")
    assert await old.flusher.flush()
    await old.stop()
    new, _, _ = make_service(nodes, ["a", "b", "c"])
    await new.start()
    assert new.migration is not None
    await new.migration.wait()
    try:
        assert (await new.results(adhoc)).results == {"A": 1}
    finally:
        await new.stop()


@pytest.mark.parametrize("value", ["0", "-1", "abc", "1e9"])
def test_rebalance_batch_bad_values_give_a_settings_error(value: str) -> None:
    from app.core.config import SettingsError, load_settings

    with pytest.raises(SettingsError):
        load_settings(rebalance_batch=value)


async def test_during_the_move_one_node_down_fails_first_reads_of_polls_it_never_held(
    start_node: NodeFactory,
) -> None:
    """README: "A touch that needs a node that is down answers 503, as a read of that node
    would." P lives on a under both rings (a, b) and (a, b, c); it was never on b. With b
    down during the move, the first read of P fails (ensure STAGEs on every node), although
    a read of P needs only a, and the same read with no move running is served.

    (move-fixes: with the ring (a, b) recorded, a first touch looks at the poll's owner
    under that ring only. Without a recorded ring it cannot know where P was, so it looks
    everywhere: the ring is recorded first here. A poll Q that was on b still answers 503.)"""
    nodes = {label: start_node() for label in "abc"}
    poll_id = find_poll("p", [(["a", "b"], "a"), (["a", "b", "c"], "a")])
    on_b = find_poll("q", [(["a", "b"], "b"), (["a", "b", "c"], "c")])
    old, _, _ = make_service(nodes, ["a", "b"])
    await old.start()
    assert old.migration is not None
    await old.migration.wait()  # records the ring a, b
    await old.stop()
    with redis.Redis(port=nodes["b"].port) as client:
        client.hset(f"poll:{{{on_b}}}", mapping={"A": 1})
    with redis.Redis(port=nodes["a"].port) as client:
        client.hset(f"poll:{{{poll_id}}}", mapping={"A": 3})
        client.sadd(f"poll:{{{poll_id}}}:options", "A")
    service, _, mover = make_service(nodes, ["a", "b", "c"])
    scan = mover.before[(None, "scan", 0)] = Gate()  # the background move stays active
    await service.start()
    try:
        await scan.reached.wait()
        nodes["b"].kill()
        observed: object
        try:
            observed = (await service.results(poll_id)).results
        except Exception as exc:
            observed = f"{type(exc).__name__}: {exc}"
        assert observed == {"A": 3}
        with pytest.raises(ResultsUnavailable, match="node b"):
            await service.results(on_b)  # it may hold counts a client saw: never without them
    finally:
        scan.go.set()
        assert service.migration is not None
        await service.migration.stop()
        await service.stop()


async def test_the_moves_bookkeeping_is_not_bounded_by_the_documented_cap(
    start_node: NodeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README: polls are remembered "up to 1,000,000 polls; past that they are checked
    again". The scan's Report keeps every poll id it saw (`seen`), every moved one twice
    (`counted`, `moves`), for the life of the process (`Migration.last`): about 150 bytes
    a poll (1M polls: ~150 MB measured with tracemalloc), unbounded by any cap. With the
    cap lowered to 10, 200 polls stay remembered after the move."""
    from app.services import migration as migration_module

    monkeypatch.setattr(migration_module, "MAX_SETTLED", 10)
    nodes = {label: start_node() for label in "abc"}
    ring = HashRing(["a", "b"], 100)
    polls = [f"m{i}" for i in range(200)]
    for poll_id in polls:
        with redis.Redis(port=nodes[ring.get_node(poll_id)].port) as client:
            client.hset(f"poll:{{{poll_id}}}", mapping={"A": 1})
    service, _, _ = make_service(nodes, ["a", "b", "c"])
    await service.start()
    assert service.migration is not None
    await service.migration.wait()
    try:
        last = service.migration.last
        assert last is not None
        moving = sum(1 for p in polls if HashRing(["a", "b", "c"], 100).get_node(p) == "c")
        assert last.moved == moving > migration_module.MAX_SETTLED  # counted, every one
        # What the report keeps of poll ids: a sample per (source, target), whatever the
        # number of polls (its counters are numbers).
        remembered = sum(len(ids) for ids in last.sample.values())
        assert remembered <= SAMPLE * len(last.moves) < moving, remembered
    finally:
        await service.stop()


async def test_rolling_back_a_ring_change_cut_off_mid_move_hides_the_staged_counts(
    start_node: NodeFactory,
) -> None:
    """Ring (a, b) recorded. Change to (a, b, c): the process is killed right after STAGE
    of P on a (target c). The operator rolls back to (a, b) (c received nothing). The ring
    recorded on a and b is the configured one, so no move runs and nothing looks at
    `move:{P}` on a: P's 4 votes are invisible for good (reads answer {}). Without the
    ring record (or with a retiring node named) the move runs, and the first read raises a
    bare KeyError: 'c' (HTTP 500) while the background move retries for ever."""
    nodes = {label: start_node() for label in "abc"}
    poll_id = find_poll("p", [(["a", "b"], "a"), (["a", "b", "c"], "c")])
    first, _, _ = make_service(nodes, ["a", "b"])
    await first.start()
    assert first.migration is not None
    await first.migration.wait()  # records the ring a, b
    await first.register({poll_id: ["A"]})
    for _ in range(4):
        first.vote(poll_id, "A")
    assert await first.flusher.flush()
    assert (await first.results(poll_id)).results == {"A": 4}
    await first.stop()
    ring2, _, mover2 = make_service(nodes, ["a", "b", "c"])
    await ring2.store.open()
    await mover2._stage("a", [poll_id], True, True, True)  # kill -9 after STAGE
    await ring2.store.close()

    refused, _, _ = make_service(nodes, ["a", "b"])
    with pytest.raises(RebalanceBlocked, match="c=redis://"):
        await refused.start()  # the marker names c: the rollback must name it retiring
    await refused.store.close()
    service, _, _ = make_service(nodes, ["a", "b"], retiring=["c"])
    await service.start()
    try:
        observed: object
        try:
            observed = (await service.results(poll_id)).results
        except Exception as exc:
            observed = f"{type(exc).__name__}: {exc}"
        assert observed == {"A": 4}
    finally:
        assert service.migration is not None
        await service.migration.stop()
        await service.stop()


async def test_first_touch_under_a_third_ring_reads_without_the_counts_of_a_stale_staged_move(
    start_node: NodeFactory,
) -> None:
    """As the first test, but P is read while the background move is held before its
    first scan: `ensure` resumes the record on c (copy to its stale target a) in parallel
    with moving P off a (nothing there yet), reads d, and marks P settled, so the
    background scan skips it for good: the read misses 9 votes, and so does every later
    read (this one survives a fix of the scan's order alone)."""
    nodes = {label: start_node() for label in "abcd"}
    poll_id = find_poll("p", [(["a", "b", "c"], "c"), (["a", "b"], "a"), (["a", "b", "d"], "d")])
    with redis.Redis(port=nodes["c"].port) as client:
        client.hset(f"poll:{{{poll_id}}}", mapping={"A": 7, "B": 2})
        client.sadd(f"poll:{{{poll_id}}}:options", "A", "B")
    service2, _, mover2 = make_service(nodes, ["a", "b"], retiring=["c"])
    await service2.store.open()
    await mover2._stage("c", [poll_id], True, True, True)  # kill -9 after STAGE
    await service2.store.close()

    service3, _, mover3 = make_service(nodes, ["a", "b", "d"], retiring=["c"])
    scan = mover3.before[(None, "scan", 0)] = Gate()
    await service3.start()
    try:
        await scan.reached.wait()
        first = (await service3.results(poll_id)).results
        scan.go.set()
        assert service3.migration is not None
        await service3.migration.wait()
        service3.cache.forget([poll_id])
        later = (await service3.results(poll_id)).results
        assert (first, later) == ({"A": 7, "B": 2}, {"A": 7, "B": 2})
    finally:
        scan.go.set()
        await service3.stop()


async def test_an_instance_killed_after_stage_while_another_finishes_loses_the_poll_for_good(
    start_node: NodeFactory,
) -> None:
    """Two instances on the new ring. B's first touch of P stages it on a (STAGE done) and
    B is killed -9 before COPY, just after A's scan of a passed `move:*`. A finishes and
    records the ring. B restarts with the same ring: the recorded ring matches, so no move
    runs, and nothing ever resumes `move:{P}`: P's 3 votes are gone from every read, on
    every instance, for good."""
    nodes = {label: start_node() for label in "abc"}
    poll_id = find_poll("p", [(["a", "b"], "a"), (["a", "b", "c"], "c")])
    old, _, _ = make_service(nodes, ["a", "b"])
    await old.start()
    assert old.migration is not None
    await old.migration.wait()
    await old.register({poll_id: ["A"]})
    for _ in range(3):
        old.vote(poll_id, "A")
    assert await old.flusher.flush()
    await old.stop()

    a_service, _, a_mover = make_service(nodes, ["a", "b", "c"])
    b_service, _, b_mover = make_service(nodes, ["a", "b", "c"])
    after_move = a_mover.after[("a", "scan", 1)] = Gate()
    b_mover.before[(None, "scan", 0)] = Gate()  # B's background scan never runs
    b_copy = b_mover.before[(None, "copy", 0)] = Gate()
    await a_service.start()
    await b_service.start()
    touch = None
    try:
        await after_move.reached.wait()
        touch = asyncio.create_task(b_service.results(poll_id))
        await b_copy.reached.wait()  # STAGE done on a; B is killed here
        touch.cancel()
        assert b_service.migration is not None
        await b_service.migration.stop()
        await b_service.flusher.stop()
        await b_service.store.close()
        after_move.go.set()
        assert a_service.migration is not None
        await a_service.migration.wait()
    finally:
        after_move.go.set()
        await asyncio.gather(*(t for t in [touch] if t), return_exceptions=True)
        await a_service.stop()

    restarted, _, _ = make_service(nodes, ["a", "b", "c"])
    await restarted.start()
    try:
        assert restarted.migration is not None
        state = restarted.migration.describe()["state"]
        with redis.Redis(port=nodes["a"].port, decode_responses=True) as client:
            left = sorted(client.scan_iter("move:*"))
        observed = ((await restarted.results(poll_id)).results, state, left)
        assert observed == ({"A": 3}, "none", [])
    finally:
        await restarted.stop()
