"""Stage 1 for defined polls: definitions, voters and counts in this process."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from app.storage.base import NodeUnavailable
from app.storage.defined import (
    HISTORY_GAP_MS,
    HISTORY_MAX_POINTS,
    DefinedVote,
    PollDefinition,
    PollRecord,
)
from app.storage.memory import MEMORY_NODE


@dataclass
class _Poll:
    definition: PollDefinition
    closed: bool = False
    revealed: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    voters: dict[str, int] = field(default_factory=dict)
    history: list[tuple[int, int, str]] = field(default_factory=list)  # (total, ms, JSON)


def _now_ms() -> int:
    return int(time.time() * 1000)


class MemoryDefinedStore:
    def __init__(self) -> None:
        self._polls: dict[str, _Poll] = {}

    def node_for(self, poll_id: str) -> str:
        return MEMORY_NODE

    def served_via(self, poll_id: str) -> str:
        return MEMORY_NODE

    async def create(self, definition: PollDefinition) -> bool:
        if definition.poll_id in self._polls:
            return False
        self._polls[definition.poll_id] = _Poll(definition)
        return True

    def _closed(self, poll: _Poll) -> bool:
        closes_at = poll.definition.closes_at
        if not poll.closed and closes_at is not None and _now_ms() >= closes_at:
            poll.closed = True
        return poll.closed

    async def load(self, poll_id: str) -> PollRecord | None:
        poll = self._polls.get(poll_id)
        if poll is None:
            return None
        counts = {o: poll.counts.get(o, 0) for o in poll.definition.option_ids}
        return PollRecord(
            poll.definition, self._closed(poll), poll.revealed, counts, sum(counts.values())
        )

    async def vote(self, poll_id: str, votes: list[DefinedVote]) -> list[str]:
        poll = self._polls.get(poll_id)
        if poll is None:
            return ["missing"] * len(votes)
        outcomes = []
        for v in votes:
            if self._closed(poll):
                outcomes.append("closed")
            elif v.option_id not in poll.definition.option_ids:
                outcomes.append("unknown_option")
            elif poll.voters.get(v.voter, 0) >= poll.definition.votes_per_voter:
                outcomes.append("already_voted")
            else:
                poll.voters[v.voter] = poll.voters.get(v.voter, 0) + 1
                poll.counts[v.option_id] = poll.counts.get(v.option_id, 0) + 1
                outcomes.append("ok")
        return outcomes

    async def vote_many(
        self, node: str, polls: dict[str, list[DefinedVote]]
    ) -> dict[str, list[str] | NodeUnavailable]:
        return {poll_id: await self.vote(poll_id, votes) for poll_id, votes in polls.items()}

    async def set_state(self, poll_id: str, field: str, value: str) -> bool:
        poll = self._polls.get(poll_id)
        if poll is None:
            return False
        if field == "state":
            poll.closed = value == "closed"
        else:
            poll.revealed = value == "1"
        return True

    async def record_point(
        self, poll_id: str, counts_json: str, total: int, final: bool = False
    ) -> bool:
        poll = self._polls.get(poll_id)
        now = _now_ms()
        if poll is None:
            return False
        if poll.history:
            last_total, last_at, _ = poll.history[-1]
            if last_total >= total or (not final and now - last_at < HISTORY_GAP_MS):
                return False
        point = f'{{"at":{now},"total":{total},"counts":{counts_json}}}'
        poll.history = [*poll.history[-(HISTORY_MAX_POINTS - 1) :], (total, now, point)]
        return True

    async def history(self, poll_id: str) -> list[str]:
        poll = self._polls.get(poll_id)
        return [point for _, _, point in poll.history] if poll else []
