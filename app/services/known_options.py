"""The options this instance knows each poll has, so that votes for them need no I/O.

The poll's node holds the authoritative list (`Store.register_options`, which enforces the
per-poll cap for every instance and across restarts); this is only a bounded memo of it.
Forgetting a poll (least recently used first) costs one round trip on its next new vote,
never correctness.
"""

from __future__ import annotations

from collections import OrderedDict


class KnownOptions:
    def __init__(self, max_polls: int) -> None:
        self.max_polls = max_polls
        self._polls: OrderedDict[str, frozenset[str]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._polls)

    def knows(self, poll_id: str, option_id: str) -> bool:
        options = self._polls.get(poll_id)
        return options is not None and option_id in options

    def unknown(self, poll_id: str, option_ids: list[str]) -> list[str]:
        options = self._polls.get(poll_id, frozenset())
        return [o for o in option_ids if o not in options]

    def learn(self, poll_id: str, options: set[str]) -> None:
        """Record the node's answer: every option the poll has."""
        self._polls.pop(poll_id, None)
        if len(self._polls) >= self.max_polls:
            self._polls.popitem(last=False)
        self._polls[poll_id] = frozenset(options)
