"""Stage 5: a consistent-hash ring of our own, mapping a poll id to a node label.

Each node owns `virtual_nodes` points on a ring of 2**64 positions; a key belongs to the
first point clockwise from its own hash (wrapping past the top back to the first point).
Hashing is BLAKE2b, never Python's `hash()`, so every process maps a key the same way.
"""

from __future__ import annotations

import bisect
import hashlib

RING_SIZE = 2**64
MEMO_LIMIT = 65_536


def ring_hash(key: str) -> int:
    """A fixed 64-bit hash: the same in every process, platform and restart."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


class HashRing:
    """Consistent-hash ring with virtual nodes and binary-search lookups.

    Lookups of repeated keys are served from a small memo, which any change to the ring clears.
    """

    def __init__(self, nodes: list[str] | tuple[str, ...] = (), virtual_nodes: int = 100) -> None:
        if virtual_nodes < 1:
            raise ValueError("virtual_nodes must be at least 1")
        self.virtual_nodes = virtual_nodes
        self._positions: list[int] = []
        self._owners: list[str] = []
        self._nodes: set[str] = set()
        self._memo: dict[str, str] = {}
        for node in nodes:
            self.add_node(node)

    @property
    def nodes(self) -> list[str]:
        return sorted(self._nodes)

    def _points(self, node: str) -> list[int]:
        return [ring_hash(f"{node}#{i}") for i in range(self.virtual_nodes)]

    def add_node(self, node: str) -> None:
        if node in self._nodes:
            raise ValueError(f"node {node!r} is already on the ring")
        self._nodes.add(node)
        for point in self._points(node):
            index = bisect.bisect_left(self._positions, point)
            self._positions.insert(index, point)
            self._owners.insert(index, node)
        self._memo.clear()

    def remove_node(self, node: str) -> None:
        if node not in self._nodes:
            raise KeyError(f"node {node!r} is not on the ring")
        self._nodes.discard(node)
        kept = [(p, o) for p, o in zip(self._positions, self._owners, strict=True) if o != node]
        self._positions = [p for p, _ in kept]
        self._owners = [o for _, o in kept]
        self._memo.clear()

    def get_node(self, key: str) -> str:
        """The node that owns `key`."""
        node = self._memo.get(key)
        if node is not None:
            return node
        if not self._positions:
            raise LookupError("the ring has no nodes")
        index = bisect.bisect_left(self._positions, ring_hash(key))
        node = self._owners[index % len(self._owners)]  # past the top wraps to the first point
        if len(self._memo) >= MEMO_LIMIT:
            self._memo.clear()
        self._memo[key] = node
        return node

    def key_share(self) -> dict[str, float]:
        """The fraction of the key space each node owns (sums to 1)."""
        share = dict.fromkeys(self._nodes, 0.0)
        if not self._positions:
            return share
        previous = self._positions[-1] - RING_SIZE  # the arc that wraps round to the first point
        for point, owner in zip(self._positions, self._owners, strict=True):
            share[owner] += (point - previous) / RING_SIZE
            previous = point
        return share
