"""Stage 4: pending votes for one node, held in memory until the flusher takes them."""

from __future__ import annotations

from app.storage.base import Counts


class VoteBuffer:
    """Counters `{poll: {option: n}}` that votes increment without any I/O.

    `swap()` hands every pending vote to the caller and starts an empty buffer in one
    synchronous step: no vote can fall between the two, and none is handed out twice.
    `pairs` counts the (poll, option) counters held: what the buffer's memory grows with.
    """

    def __init__(self) -> None:
        self._counts: Counts = {}
        self.votes = 0
        self.pairs = 0

    def add(self, poll_id: str, option_id: str, n: int = 1) -> None:
        options = self._counts.get(poll_id)
        if options is None:
            self._counts[poll_id] = {option_id: n}
            self.pairs += 1
        elif option_id in options:
            options[option_id] += n
        else:
            options[option_id] = n
            self.pairs += 1
        self.votes += n

    def add_counts(self, poll_id: str, counts: dict[str, int]) -> int:
        """Add several options' counts for one poll; returns the votes added."""
        options = self._counts.setdefault(poll_id, {})
        added = 0
        for option_id, n in counts.items():
            if option_id in options:
                options[option_id] += n
            else:
                options[option_id] = n
                self.pairs += 1
            added += n
        self.votes += added
        return added

    def peek(self, poll_id: str) -> dict[str, int] | None:
        return self._counts.get(poll_id)

    def has_pair(self, poll_id: str, option_id: str) -> bool:
        options = self._counts.get(poll_id)
        return options is not None and option_id in options

    def new_pairs(self, counts: Counts) -> int:
        """How many of these (poll, option) pairs the buffer does not hold yet."""
        return sum(
            1
            for poll_id, options in counts.items()
            for o in options
            if not self.has_pair(poll_id, o)
        )

    @property
    def polls(self) -> int:
        return len(self._counts)

    def swap(self) -> Counts:
        taken, self._counts = self._counts, {}
        self.votes = 0
        self.pairs = 0
        return taken
