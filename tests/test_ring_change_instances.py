"""Two service instances on the same new ring, each moving polls (README "Adding or
removing a node": "Another instance's mover may be moving the same poll"): what one has
staged, the other still reads whole, also when the first is killed -9 between its steps.
Real nodes, synchronised by gates on the mover's node calls (no sleeps)."""

from __future__ import annotations

import asyncio

import redis

from app.services.errors import PollNotFound
from tests.conftest import NodeFactory
from tests.ring_helpers import Gate, definition, find_poll, make_service, serving_with_votes


async def test_an_instance_whose_move_is_done_still_reads_whole_the_polls_another_one_staged(
    start_node: NodeFactory,
) -> None:
    """Two instances start on the new ring (README: "Another instance's mover may be
    moving the same poll"). Instance B stages an ad-hoc poll P and a defined poll D on
    their old owner a (STAGE done, COPY not yet) just after instance A's scan of a passed
    `move:*` / `dmove:*`; A's later `poll:*` / `def:*` passes no longer see them. A
    finishes and records the ring, and still reads P with its 2 votes and D with v1's
    vote. (Found in review: A read P without them and answered 404 for D.)"""
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


async def test_one_instance_moving_alone_keeps_the_counts_exact(
    start_node: NodeFactory,
) -> None:
    """Control for the test above: the same data, one instance, no interleaving."""
    nodes = {label: start_node() for label in "abc"}
    adhoc = find_poll("p", [(["a", "b"], "a"), (["a", "b", "c"], "c")])
    old = await serving_with_votes(nodes, ["a", "b"], adhoc, 1)
    await old.stop()
    new, _, _ = make_service(nodes, ["a", "b", "c"])
    await new.start()
    assert new.migration is not None
    await new.migration.wait()
    try:
        assert (await new.results(adhoc)).results == {"A": 1}
    finally:
        await new.stop()


async def test_an_instance_killed_after_stage_while_another_finishes_leaves_the_poll_whole(
    start_node: NodeFactory,
) -> None:
    """Two instances on the new ring. B's first touch of P stages it on a (STAGE done) and
    B is killed -9 before COPY, just after A's scan of a passed `move:*`. A finishes and
    records the ring. B restarts with the same ring: P reads its 3 votes and no `move:*`
    record is left. (Found in review: the matching ring started no move, nothing resumed
    `move:{P}`, and P's 3 votes were gone from every read.)"""
    nodes = {label: start_node() for label in "abc"}
    poll_id = find_poll("p", [(["a", "b"], "a"), (["a", "b", "c"], "c")])
    old = await serving_with_votes(nodes, ["a", "b"], poll_id, 3)
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
