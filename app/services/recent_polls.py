"""How many polls the live results remember (their last state, read time, read count)."""

from __future__ import annotations

from collections import OrderedDict

RECENT_POLLS = 10_000


class BoundedCounter(OrderedDict[str, int]):
    """Reads per poll key for the last `RECENT_POLLS` keys; `total` counts them all."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __missing__(self, key: str) -> int:
        return 0

    def add(self, key: str) -> None:
        self.total += 1
        self[key] = self.pop(key, 0) + 1
        if len(self) > RECENT_POLLS:
            self.popitem(last=False)
