"""One unlabelled node (label `redis`) becomes two (`redis_<port>` each): the first server
keeps its polls under a new label. While the background scan is held, a first touch of a
poll that now belongs to the new node finds it on the old server under its new label: a
defined poll reads and takes votes (no 404), an ad-hoc poll reads its counts, and a keyed
request retried counts once (docs/ring-change-renamed-labels.md)."""

from __future__ import annotations

from app.core.nodes import parse_nodes
from app.devtools.local_nodes import LocalNode
from tests.conftest import NodeFactory
from tests.ring_helpers import Gate, definition, find_poll, make_service


async def test_polls_of_a_renamed_node_are_found_on_first_touch(start_node: NodeFactory) -> None:
    first, second = start_node(), start_node()
    old_label = "redis"
    new_labels = [f"redis_{first.port}", f"redis_{second.port}"]
    # The labels a start gives unlabelled URLs (REDIS_NODES=<one url>, then <two urls>).
    assert [s.label for s in parse_nodes(first.url)] == [old_label]
    assert [s.label for s in parse_nodes(f"{first.url},{second.url}")] == new_labels
    nodes: dict[str, LocalNode] = {old_label: first, new_labels[0]: first, new_labels[1]: second}
    to_second = [([old_label], old_label), (new_labels, new_labels[1])]
    defined_id = find_poll("d", to_second)
    adhoc = find_poll("p", to_second)
    key = find_poll("k", to_second)  # the Idempotency-Key's claim moves too

    old, old_defined, _ = make_service(nodes, [old_label])
    await old.start()
    try:
        assert old.migration is not None
        await old.migration.wait()  # records the ring {redis}
        await old_defined.create(definition(defined_id))
        assert await old_defined.vote(defined_id, "A", "v1")
        assert await old_defined.vote(defined_id, "B", "v2")
        await old.register({adhoc: ["A", "B"]})
        old.vote(adhoc, "A")
        old.vote(adhoc, "A")
        assert await old.flusher.flush()
        assert await old.vote_once(key, "fp", {adhoc: {"B": 1}}) == 1
        assert (await old.results(adhoc)).results == {"A": 2, "B": 1}
    finally:
        await old.stop()

    new, new_defined, mover = make_service(nodes, new_labels)
    scan = mover.before[(None, "scan", 0)] = Gate()  # the background move waits
    await new.start()
    try:
        assert new.migration is not None and new.migration.active
        assert (await new_defined.load(defined_id)).counts == {"A": 1, "B": 1}
        assert await new_defined.vote(defined_id, "A", "v3")
        assert (await new_defined.load(defined_id)).counts == {"A": 2, "B": 1}
        assert (await new.results(adhoc)).results == {"A": 2, "B": 1}
        assert await new.vote_once(key, "fp", {adhoc: {"B": 1}}) == 1  # the retry
        assert (await new.results(adhoc)).results == {"A": 2, "B": 1}
        assert new.migration.active  # all of it by first touch: the scan is still held
        # The first touch looks on the poll's (and key's) old server, under its new label.
        assert mover.holders(defined_id) == mover.holders(key) == [new_labels[0]]

        scan.go.set()
        await new.migration.wait()
        assert (await new_defined.load(defined_id)).counts == {"A": 2, "B": 1}
        assert (await new.results(adhoc)).results == {"A": 2, "B": 1}
    finally:
        scan.go.set()
        await new.stop()
