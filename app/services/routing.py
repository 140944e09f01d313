"""Split counts by the node that owns each poll."""

from __future__ import annotations

from app.storage.base import Counts, Store


def route(store: Store, counts: Counts) -> dict[str, Counts]:
    """{node: {poll: {option: n}}}: each poll's counts under the node the store puts it on."""
    routed: dict[str, Counts] = {}
    for poll_id, options in counts.items():
        routed.setdefault(store.node_for(poll_id), {})[poll_id] = options
    return routed
