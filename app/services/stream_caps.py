"""How many live results streams this process holds, in total and per client.

Past a cap a new stream is refused (503 with Retry-After), so streams cannot take the file
handles that votes, reads, the journal and the nodes need. The per-client table holds only
clients with a stream open.
"""

from __future__ import annotations

from collections import Counter


class StreamsFull(Exception):
    """A cap is reached; the message says which."""


class StreamCaps:
    """`total` and `per_client` streams at most (0: no cap)."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self.held = 0
        self.by_client: Counter[str] = Counter()

    def take(self, client: str) -> None:
        """Count one more stream of `client`, or raise StreamsFull."""
        if self.total and self.held >= self.total:
            raise StreamsFull(f"this instance holds its most live streams ({self.total})")
        if self.per_client and self.by_client[client] >= self.per_client:
            raise StreamsFull(f"at most {self.per_client} live streams per client")
        self.held += 1
        self.by_client[client] += 1

    def give(self, client: str) -> None:
        self.held -= 1
        left = self.by_client[client] - 1
        if left > 0:
            self.by_client[client] = left
        else:
            del self.by_client[client]
