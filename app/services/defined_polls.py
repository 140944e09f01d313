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

from app.services.errors import (
    AlreadyVoted,
    NodeDown,
    OutcomeUnknown,
    PollClosed,
    PollExists,
    PollNotFound,
)
from app.services.instruments import Rejections
from app.services.node_batcher import NodeBatcher
from app.storage.base import NodeUnavailable
from app.storage.defined import DefinedStore, DefinedVote, PollDefinition, PollRecord

logger = logging.getLogger("app.defined_polls")


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
    ) -> None:
        self.store = store
        # While polls move after a ring change: makes a poll whole on its owner before its
        # keys are used (`PollingService.whole`), so a vote never meets a poll not yet moved.
        self.whole = whole
        self.batcher: NodeBatcher[_Check, str] = NodeBatcher(self._send)
        self.accepted_votes = 0
        self.rejected: Rejections = {}  # the API counts refused votes here
        self._definitions: OrderedDict[str, PollDefinition] = OrderedDict()
        self._max_definitions = max_definitions

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
            raise PollNotFound(f"poll {poll_id} does not exist")
        self._remember(record.definition)
        return record

    async def definition(self, poll_id: str) -> PollDefinition:
        """The definition, from memory when this instance has seen it (it never changes)."""
        known = self._definitions.get(poll_id)
        return known if known is not None else (await self.load(poll_id)).definition

    async def vote(self, poll_id: str, option_id: str, voter: str) -> None:
        definition = await self.definition(poll_id)
        if option_id not in definition.option_ids:
            raise UnknownOption(definition.option_ids)
        await self._ready(poll_id)
        node = self.store.node_for(poll_id)
        try:
            outcome = await self.batcher.submit(
                node, _Check(poll_id, DefinedVote(voter, option_id))
            )
        except NodeUnavailable as exc:
            raise unavailable(exc) from exc
        if outcome == "ok":
            self.accepted_votes += 1
            return
        if outcome == "already_voted":
            raise AlreadyVoted(
                f"this voter has already used the {definition.votes_per_voter} vote(s) "
                "the poll allows; this one was not counted"
            )
        if outcome == "closed":
            raise PollClosed(f"poll {poll_id} is closed")
        if outcome == "unknown_option":
            raise UnknownOption(definition.option_ids)
        raise PollNotFound(f"poll {poll_id} does not exist")

    async def set_state(self, poll_id: str, field: str, value: str) -> PollRecord:
        await self._ready(poll_id)
        try:
            found = await self.store.set_state(poll_id, field, value)
        except NodeUnavailable as exc:
            raise unavailable(exc) from exc
        if not found:
            raise PollNotFound(f"poll {poll_id} does not exist")
        return await self.load(poll_id)

    async def close(self, poll_id: str) -> PollRecord:
        """From the moment this answers, no instance counts a vote for the poll: every
        vote is checked on the node, after this write."""
        return await self.set_state(poll_id, "state", "closed")

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
