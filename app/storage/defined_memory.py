"""Stage 1 for defined polls: definitions, voters and counts in this process."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from app.storage.base import NodeUnavailable
from app.storage.defined import (
    HISTORY_GAP_MS,
    HISTORY_MAX_POINTS,
    DefinedVote,
    PollDefinition,
    PollRecord,
    count_keys,
    decode_record,
    encode_definition,
)
from app.storage.memory import MEMORY_NODE


@dataclass
class _Poll:
    definition: PollDefinition
    closed: bool = False
    revealed: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    voters: dict[str, int] = field(default_factory=dict)
    mine: dict[str, str] = field(default_factory=dict)  # as question_scripts.py keeps it
    hidden: set[str] = field(default_factory=set)
    started_at: int | None = None
    moderated: int = 0
    redefined: int = 0
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
        d = poll.definition
        raw = {k: str(n) for k, n in poll.counts.items()}
        counts = {o: poll.counts.get(o, 0) for o in count_keys(d, raw)}
        return PollRecord(
            d,
            self._closed(poll),
            poll.revealed,
            counts,
            sum(poll.counts.values()),
            len(poll.voters),
            frozenset(poll.hidden),
            poll.started_at,
            poll.moderated,
            poll.redefined,
        )

    async def vote(self, poll_id: str, votes: list[DefinedVote]) -> list[str]:
        poll = self._polls.get(poll_id)
        if poll is None:
            return ["missing"] * len(votes)
        return [self._one(poll, v) for v in votes]

    def _one(self, poll: _Poll, v: DefinedVote) -> str:
        """What question_scripts.py does for one vote, in this process."""
        d = poll.definition
        used = poll.voters.get(v.voter, 0)
        if used:
            key, _, rest = poll.mine.get(v.voter, "").partition("\t")
            if v.key and key == v.key:
                last = rest.split("\t")[0]
                last = last.split("\n")[-1] if d.votes_per_voter > 1 else last
                return "repeat" if last == v.option_id else "key_reused"
        if self._closed(poll):
            return "closed"
        if used >= d.votes_per_voter:
            return "already_voted"
        entries = v.option_id.split("\n")
        if d.type in ("single", "multiple", "quiz") and not set(entries) <= set(d.option_ids):
            return "unknown_option"
        if d.type == "rating" and not d.scale_min <= int(v.option_id) <= d.scale_max:
            return "out_of_range"
        new = {e for e in entries if e not in poll.counts}
        if d.type == "words" and new and len(poll.counts) + len(new) > d.max_entries:
            return "too_many_entries"
        for entry in entries:
            poll.counts[entry] = poll.counts.get(entry, 0) + 1
        poll.voters[v.voter] = used + 1
        record = v.option_id
        if d.type == "single" and used:
            record = poll.mine[v.voter].partition("\t")[2] + "\n" + v.option_id
        if d.type == "quiz":
            record += f"\t{_now_ms() - (poll.started_at or d.created_at)}"
        poll.mine[v.voter] = f"{v.key}\t{record}"
        return "ok"

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

    async def mine(self, poll_id: str, voter: str) -> tuple[int, str]:
        poll = self._polls.get(poll_id)
        if poll is None:
            return 0, ""
        return poll.voters.get(voter, 0), poll.mine.get(voter, "")

    async def records(self, poll_id: str) -> dict[str, str]:
        poll = self._polls.get(poll_id)
        return dict(poll.mine) if poll else {}

    async def hide(self, poll_id: str, entry: str, hidden: bool) -> bool:
        poll = self._polls.get(poll_id)
        if poll is None:
            return False
        if (entry in poll.hidden) != hidden:
            poll.moderated += 1
        if hidden:
            poll.hidden.add(entry)
        else:
            poll.hidden.discard(entry)
        return True

    async def start(self, poll_id: str) -> bool:
        poll = self._polls.get(poll_id)
        if poll is None:
            return False
        if poll.started_at is None:
            poll.started_at = now = _now_ms()
            d = poll.definition
            if d.time_limit is not None:
                closes = now + d.time_limit * 1000
                if d.closes_at is None or d.closes_at > closes:
                    poll.definition = replace(d, closes_at=closes)
        return True

    async def delete(self, poll_id: str) -> None:
        self._polls.pop(poll_id, None)

    async def redefine(self, poll_id: str, fields: dict[str, str], locked: list[str]) -> str | None:
        poll = self._polls.get(poll_id)
        if poll is None:
            return "missing"
        flat = encode_definition(poll.definition)
        stored = dict(zip(flat[::2], flat[1::2], strict=True))
        if poll.counts:
            for name, value in fields.items():
                if name in locked and stored.get(name, "") != value:
                    return name
        stored.update(fields)
        poll.definition = decode_record(poll_id, stored, {}, 0).definition
        if "state" in fields:  # kept apart from the definition here (see `set_state`)
            poll.closed = fields["state"] == "closed"
        poll.redefined += 1
        return None
