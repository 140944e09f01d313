"""Defined polls: the organiser fixes the options; each voter has a number of votes; the
poll closes by hand or at `closes_at`; hidden results wait for a reveal.

Every vote is checked and counted on the poll's node by one script before it is answered,
so the answer is the truth across instances and restarts: 200 means counted once, 409
means not counted. Checks waiting for the same node share one round trip (`NodeBatcher`).
"""

from __future__ import annotations

import json
import logging
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from app.services.errors import (
    AlreadyVoted,
    IdempotencyKeyReused,
    NodeDown,
    OutcomeUnknown,
    PollClosed,
    PollExists,
    PollNotFound,
    VotesExist,
)
from app.services.instruments import Rejections
from app.services.node_batcher import NodeBatcher
from app.storage.base import NodeUnavailable
from app.storage.defined import DefinedStore, DefinedVote, PollDefinition, PollRecord

logger = logging.getLogger("app.defined_polls")
T = TypeVar("T")


class Refused(Exception):
    """The node refused the vote's content (`out_of_range`, `too_many_entries`): 422."""

    def __init__(self, outcome: str) -> None:
        super().__init__(outcome)
        self.outcome = outcome


class DefinitionChanged(Exception):
    """The poll was redefined since this instance read it: read it again."""


class UnknownOption(Exception):
    def __init__(self, allowed: list[str]) -> None:
        super().__init__(f"option_id must be one of {allowed}")
        self.allowed = allowed


@dataclass(frozen=True)
class _Check:
    poll_id: str
    vote: DefinedVote


def new_poll_id() -> str:
    return secrets.token_hex(6)


def unavailable(exc: NodeUnavailable) -> NodeDown | OutcomeUnknown:
    if exc.maybe_applied:
        return OutcomeUnknown(f"{exc}; the vote may or may not be counted")
    return NodeDown(f"{exc}; nothing was counted, retry later")


class DefinedPolls:
    def __init__(
        self,
        store: DefinedStore,
        max_definitions: int = 10_000,
        whole: Callable[[str], Awaitable[None]] | None = None,
        fence: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        # Before a "no such poll": raises (503) when this instance no longer holds its ring
        # (`PollingService.confirm_ring`): an instance that stalled past its lease while
        # another ring moved the poll away must not say that the poll does not exist.
        self.fence = fence
        # While polls move after a ring change: makes a poll whole on its owner before its
        # keys are used (`PollingService.whole`), so a vote never meets a poll not yet moved.
        self.whole = whole
        self.batcher: NodeBatcher[_Check, str] = NodeBatcher(self._send)
        self.accepted_votes = 0
        self.rejected: Rejections = {}  # the API counts refused votes here
        # Told the poll id after this instance counted a vote or closed/revealed a poll, so
        # its remembered results (`ReadStates`) are read afresh: read-your-own-writes.
        self.changed: Callable[[str], None] = lambda poll_id: None
        self._definitions: OrderedDict[str, PollDefinition] = OrderedDict()
        self._max_definitions = max_definitions
        # Told of each poll that counted a vote or closed (the history recorder).
        self.on_change: Callable[[str], None] | None = None

    async def _send(self, node: str, checks: list[_Check]) -> list[str | Exception]:
        polls: dict[str, list[DefinedVote]] = {}
        for check in checks:
            polls.setdefault(check.poll_id, []).append(check.vote)
        found = await self.store.vote_many(node, polls)
        failed = {p: e for p, e in found.items() if isinstance(e, NodeUnavailable)}
        taken = {p: iter(o) for p, o in found.items() if not isinstance(o, NodeUnavailable)}
        return [failed.get(c.poll_id) or next(taken[c.poll_id]) for c in checks]

    async def _ready(self, poll_id: str) -> None:
        if self.whole is not None:
            try:
                await self.whole(poll_id)
            except NodeUnavailable as exc:
                raise NodeDown(f"{exc}; nothing was counted, retry later") from exc

    def _remember(self, definition: PollDefinition) -> None:
        self._definitions.pop(definition.poll_id, None)
        if len(self._definitions) >= self._max_definitions:
            self._definitions.popitem(last=False)
        self._definitions[definition.poll_id] = definition

    async def create(self, definition: PollDefinition) -> PollRecord:
        await self._ready(definition.poll_id)
        try:
            created = await self.store.create(definition)
        except NodeUnavailable as exc:
            raise NodeDown(f"{exc}; retry later") from exc
        if not created:
            raise PollExists(f"poll {definition.poll_id} already exists")
        self._remember(definition)
        return PollRecord(definition, False, False, dict.fromkeys(definition.option_ids, 0), 0)

    async def load(self, poll_id: str) -> PollRecord:
        await self._ready(poll_id)
        try:
            record = await self.store.load(poll_id)
        except NodeUnavailable as exc:
            raise NodeDown(f"{exc}; retry later") from exc
        if record is None:
            raise await self._not_found(poll_id)
        self._remember(record.definition)
        return record

    async def _not_found(self, poll_id: str) -> PollNotFound:
        if self.fence is not None:
            await self.fence()
        return PollNotFound(f"poll {poll_id} does not exist")

    async def definition(self, poll_id: str, fresh: bool = False) -> PollDefinition:
        """The definition, from memory when this instance has seen it (it changes only
        before the first vote: the node's script tells when it did)."""
        known = None if fresh else self._definitions.get(poll_id)
        return known if known is not None else (await self.load(poll_id)).definition

    def remembered(self, poll_id: str) -> bool:
        return poll_id in self._definitions

    async def redefine(self, poll_id: str, fields: dict[str, str], locked: list[str]) -> str | None:
        """Change the definition's fields; None when done, else the first `locked` field
        that would change while votes exist (nothing changed)."""
        await self._ready(poll_id)
        try:
            refused = await self.store.redefine(poll_id, fields, locked)
        except NodeUnavailable as exc:
            self.changed(poll_id)  # it may have been written
            raise unavailable(exc) from exc
        self._definitions.pop(poll_id, None)
        self.changed(poll_id)
        if refused == "missing":
            raise PollNotFound(f"poll {poll_id} does not exist")
        return refused

    async def vote(
        self, poll_id: str, option_id: str, voter: str, key: str = "", kind: str = "single"
    ) -> bool:
        """Count the vote (payload `option_id`, checked by app/services/question_types.py);
        True when counted now, False when it is a retry of this voter's last counted vote
        under the same Idempotency-Key (nothing added)."""
        definition = await self.definition(poll_id)
        if kind in ("single", "quiz") and option_id not in definition.option_ids:
            raise UnknownOption(definition.option_ids)
        await self._ready(poll_id)
        node = self.store.node_for(poll_id)
        try:
            outcome = await self.batcher.submit(
                node, _Check(poll_id, DefinedVote(voter, option_id, key, kind))
            )
        except NodeUnavailable as exc:
            self.changed(poll_id)  # it may have been counted
            raise unavailable(exc) from exc
        if outcome == "ok":
            self.accepted_votes += 1
            self.changed(poll_id)
            if self.on_change is not None:
                self.on_change(poll_id)
            return True
        if outcome == "repeat":
            return False
        if outcome == "changed":
            self._definitions.pop(poll_id, None)
            raise DefinitionChanged(poll_id)
        if outcome == "missing":
            self._definitions.pop(poll_id, None)
            raise await self._not_found(poll_id)
        raise self._refusal(poll_id, definition, outcome)

    def _refusal(self, poll_id: str, definition: PollDefinition, outcome: str) -> Exception:
        if outcome == "already_voted":
            allowed = definition.votes_per_voter
            return AlreadyVoted(
                f"this voter has already used the {allowed} vote(s) "
                "the poll allows; this one was not counted"
            )
        if outcome == "key_reused":
            return IdempotencyKeyReused(
                "this Idempotency-Key was used by this voter for another vote; not counted"
            )
        if outcome == "closed":
            return PollClosed(f"poll {poll_id} is closed")
        if outcome == "unknown_option":
            return UnknownOption(definition.option_ids)
        if outcome in ("out_of_range", "too_many_entries"):
            return Refused(outcome)
        return PollNotFound(f"poll {poll_id} does not exist")

    async def set_state(self, poll_id: str, field: str, value: str) -> PollRecord:
        await self._ready(poll_id)
        try:
            found = await self.store.set_state(poll_id, field, value)
        except NodeUnavailable as exc:
            self.changed(poll_id)  # it may have been written
            raise unavailable(exc) from exc
        if not found:
            raise PollNotFound(f"poll {poll_id} does not exist")
        self.changed(poll_id)
        return await self.load(poll_id)

    async def close(self, poll_id: str) -> PollRecord:
        """From the moment this answers, no instance counts a vote for the poll: every
        vote is checked on the node, after this write."""
        record = await self.set_state(poll_id, "state", "closed")
        if self.on_change is not None:
            self.on_change(poll_id)  # its final point
        return record

    async def reopen(self, poll_id: str) -> PollRecord:
        """Open a closed poll again, only while nobody has answered it (checked on the node,
        so a vote counted meanwhile on any instance refuses it); a closing time is cleared,
        as it has passed or would close it again."""
        refused = await self.redefine(poll_id, {"state": "open", "closes_at": ""}, ["state"])
        if refused is not None:
            raise VotesExist("the poll has answers: it cannot be reopened")
        if self.on_change is not None:
            self.on_change(poll_id)
        return await self.load(poll_id)

    async def reveal(self, poll_id: str) -> PollRecord:
        return await self.set_state(poll_id, "revealed", "1")

    async def record_point(self, record: PollRecord) -> bool:
        """Add the record's totals to the poll's history if they are newer than its last
        point (see `DefinedStore.record_point`)."""
        counts = {o: record.counts.get(o, 0) for o in record.definition.option_ids}
        await self._ready(record.definition.poll_id)
        try:
            return await self.store.record_point(
                record.definition.poll_id,
                json.dumps(counts, separators=(",", ":")),
                record.total,
                final=record.closed,
            )
        except NodeUnavailable as exc:
            raise NodeDown(f"{exc}; retry later") from exc

    async def history(self, poll_id: str) -> list[str]:
        await self._ready(poll_id)
        try:
            return await self.store.history(poll_id)
        except NodeUnavailable as exc:
            raise NodeDown(f"{exc}; retry later") from exc

    async def ready(self, name: str) -> None:
        """Make `name` (a poll id, or an event's tag) whole on its node first."""
        await self._ready(name)

    async def _guard(self, poll_id: str, step: Awaitable[T]) -> T:
        await self._ready(poll_id)
        try:
            return await step
        except NodeUnavailable as exc:
            raise NodeDown(f"{exc}; retry later") from exc

    async def mine(self, poll_id: str, voter: str) -> tuple[int, str]:
        """The votes this voter used and the payload(s) they chose ("" when none)."""
        used, record = await self._guard(poll_id, self.store.mine(poll_id, voter))
        return used, record.partition("\t")[2].split("\t")[0]

    async def answers(self, poll_id: str) -> dict[str, tuple[str, int]]:
        """A quiz's answers: voter -> (option, ms since the question started)."""
        found = await self._guard(poll_id, self.store.records(poll_id))
        answers = {}
        for voter, record in found.items():
            _, option, ms = ([*record.split("\t"), "0"])[:3]
            answers[voter] = (option, int(ms or 0))
        return answers

    async def hide(self, poll_id: str, entry: str, hidden: bool) -> PollRecord:
        try:
            if not await self._guard(poll_id, self.store.hide(poll_id, entry, hidden)):
                raise PollNotFound(f"poll {poll_id} does not exist")
        finally:
            self.changed(poll_id)  # public views drop (or show) the entry at once
        return await self.load(poll_id)

    async def start(self, poll_id: str) -> None:
        if not await self._guard(poll_id, self.store.start(poll_id)):
            raise PollNotFound(f"poll {poll_id} does not exist")

    async def delete(self, poll_id: str) -> None:
        await self._guard(poll_id, self.store.delete(poll_id))
        self._definitions.pop(poll_id, None)
