"""A ring change cut off after STAGE, then another ring configured: the `ring:moving` marker
makes the next start finish the staged moves, even when `ring:config` matches, and a record
for a node nobody names is a named error (README "Adding or removing a node")."""

from __future__ import annotations

import pytest
import redis

from app.devtools.local_nodes import LocalNode
from app.services.errors import RebalanceBlocked, ResultsUnavailable
from tests.conftest import NodeFactory
from tests.test_review_moves import Gate, find_poll, make_service


def markers(nodes: dict[str, LocalNode]) -> dict[str, bool]:
    found = {}
    for label, node in nodes.items():
        with redis.Redis(port=node.port) as client:
            found[label] = bool(client.exists("ring:moving"))
    return found


async def test_a_rolled_back_ring_change_is_finished_then_its_marker_cleared(
    start_node: NodeFactory,
) -> None:
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
    await first.stop()
    assert markers(nodes) == {"a": False, "b": False, "c": False}

    ring2, _, mover2 = make_service(nodes, ["a", "b", "c"])
    await ring2.store.open()
    await mover2._stage("a", [poll_id], True, True, True)  # kill -9 after STAGE
    await ring2.store.close()
    assert markers(nodes) == {"a": True, "b": False, "c": False}  # set with the record

    refused, _, _ = make_service(nodes, ["a", "b"])  # c named nowhere: refused, naming c
    with pytest.raises(RebalanceBlocked, match="c=redis://"):
        await refused.start()
    await refused.store.close()
    assert markers(nodes) == {"a": True, "b": False, "c": False}  # nothing changed

    back, _, _ = make_service(nodes, ["a", "b"], retiring=["c"])
    await back.start()
    assert back.migration is not None
    await back.migration.wait()
    try:
        assert back.migration.describe()["state"] == "done"
        assert (await back.results(poll_id)).results == {"A": 4}
        assert markers(nodes) == {"a": False, "b": False, "c": False}
    finally:
        await back.stop()

    again, _, _ = make_service(nodes, ["a", "b"])  # c no longer named anywhere on the nodes
    await again.start()
    try:
        assert again.migration is not None
        assert again.migration.describe()["state"] == "none"  # nothing left to finish
        assert (await again.results(poll_id)).results == {"A": 4}
    finally:
        await again.stop()


async def test_a_record_for_a_node_named_nowhere_is_a_named_error_not_a_key_error(
    start_node: NodeFactory,
) -> None:
    """A record without the marker (staged by a version before it): its target c is neither
    on the ring nor retiring. The first read answers 503 naming c and the way out, the
    background move shows the same error in /health and retries; nothing is lost: once c is
    named retiring, the move finishes."""
    nodes = {label: start_node() for label in "abc"}
    poll_id = find_poll("p", [(["a", "b"], "a"), (["a", "b", "c"], "c")])
    with redis.Redis(port=nodes["a"].port) as client:
        client.hset(f"poll:{{{poll_id}}}", mapping={"A": 5})
        client.sadd(f"poll:{{{poll_id}}}:options", "A")
    ring2, _, mover2 = make_service(nodes, ["a", "b", "c"])
    await ring2.store.open()
    await mover2._stage("a", [poll_id], True, True, True)
    await ring2.store.close()
    with redis.Redis(port=nodes["a"].port) as client:
        client.delete("ring:moving")

    service, _, mover = make_service(nodes, ["a", "b"])  # no ring recorded: a move runs
    retry = mover.before[("a", "scan", 2)] = Gate()  # the second attempt's first scan
    await service.start()
    try:
        try:
            await service.results(poll_id)
            raise AssertionError("read P without its staged counts")
        except ResultsUnavailable as exc:
            message = str(exc)
        assert "node c" in message and "REDIS_RETIRING_NODES" in message, message
        await retry.reached.wait()
        assert service.migration is not None
        error = str(service.migration.describe()["error"])
        assert "node c" in error and "REDIS_RETIRING_NODES" in error, error
    finally:
        retry.go.set()
        assert service.migration is not None
        await service.migration.stop()
        await service.stop()

    fixed, _, _ = make_service(nodes, ["a", "b"], retiring=["c"])
    await fixed.start()
    assert fixed.migration is not None
    await fixed.migration.wait()
    try:
        assert (await fixed.results(poll_id)).results == {"A": 5}
    finally:
        await fixed.stop()
