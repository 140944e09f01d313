"""Defined polls on the nodes: the organiser's definition, the voters, the counts.

Keys, under the poll's hash tag in a namespace of their own (`def:`), so a defined poll never
shares keys with the exercise's ad-hoc poll of the same id:
- `def:{<id>}`: hash: the definition (question, options, votes_per_voter, results,
  closes_at), its state (`open`/`closed`), `revealed`, and `total`: the votes accepted;
- `def:{<id>}:counts`: hash, option -> count;
- `def:{<id>}:voters`: hash, voter key -> votes used;
- `def:{<id>}:history`: list of points `{"at": ms, "total": n, "counts": {...}}`, oldest
  first, at most `HISTORY_MAX_POINTS`, each total greater than the one before.

A vote is checked and counted by one script, so an answer of 200 means the vote is stored:
`total` always equals the sum of the counts, and a closed poll's results are final at once.

(Long because the store's protocol, the record's codec and the Redis store that
runs them read best side by side; the scripts live in question_scripts.py and
defined_scripts.py.)
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

from app.storage.base import NodeUnavailable
from app.storage.defined_scripts import HIDE, REDEFINE, START
from app.storage.question_scripts import SCRIPTS
from app.storage.ring_durability import RingDurability

T = TypeVar("T")


class NodeClients(Protocol):
    """Where a poll lives and a client for it: our ring (`RedisManager`) or a cluster."""

    def node_for(self, poll_id: str) -> str: ...

    def client(self, label: str) -> Any: ...

    def served_via(self, poll_id: str) -> str: ...


HISTORY_MAX_POINTS = 3600  # an hour of points at the closest spacing
HISTORY_GAP_MS = 1000  # at most one point a second per poll (the final point always lands)


@dataclass(frozen=True)
class PollDefinition:
    poll_id: str
    question: str
    options: tuple[tuple[str, str], ...]  # (id, label), in the organiser's order
    votes_per_voter: int
    results: str  # "live" or "hidden"
    closes_at: int | None  # Unix time in milliseconds
    created_at: int
    type: str = "single"  # single, multiple, rating, words, quiz (question_types.py)
    max_choices: int = 1  # multiple
    scale_min: int = 1  # rating
    scale_max: int = 5  # rating
    max_words: int = 3  # words: entries per voter
    max_entries: int = 10_000  # words: distinct entries per poll
    correct: str | None = None  # quiz: the correct option
    time_limit: int | None = None  # quiz: seconds from the moment it becomes current
    event_id: str | None = None

    @property
    def option_ids(self) -> list[str]:
        return [option_id for option_id, _ in self.options]


@dataclass(frozen=True)
class PollRecord:
    """A defined poll as stored now."""

    definition: PollDefinition
    closed: bool
    revealed: bool
    counts: dict[str, int]
    total: int
    voters: int = 0  # people who answered
    hidden: frozenset[str] = frozenset()  # words the organiser hid from public views
    started_at: int | None = None  # when it first became its event's current poll (ms)
    moderated: int = 0  # times an entry was hidden or shown again: only grows
    redefined: int = 0  # times the definition was changed (a PATCH, a reopen): only grows


@dataclass(frozen=True)
class DefinedVote:
    voter: str  # a fixed-size key derived from the voter's id
    option_id: str  # the payload: an option, options or words joined by newlines, a value
    key: str = ""  # the Idempotency-Key, or ""
    type: str = "single"


class DefinedStore(Protocol):
    def node_for(self, poll_id: str) -> str: ...

    def served_via(self, poll_id: str) -> str:
        """What `served_via` says for the poll: its node, or the master serving it."""
        ...

    async def create(self, definition: PollDefinition) -> bool:
        """Store a new definition; False if the id is taken."""
        ...

    async def load(self, poll_id: str) -> PollRecord | None: ...

    async def vote(self, poll_id: str, votes: list[DefinedVote]) -> list[str]:
        """Check and count each vote in one atomic step; per vote "ok", "already_voted",
        "closed", "unknown_option" or "missing"."""
        ...

    async def vote_many(
        self, node: str, polls: dict[str, list[DefinedVote]]
    ) -> dict[str, list[str] | NodeUnavailable]:
        """`vote` for several polls of one node in one round trip; a poll whose script
        failed gets the error instead of its outcomes."""
        ...

    async def set_state(self, poll_id: str, field: str, value: str) -> bool:
        """Set `state` or `revealed`; False if the poll does not exist."""
        ...

    async def record_point(
        self, poll_id: str, counts_json: str, total: int, final: bool = False
    ) -> bool:
        """Append a history point stamped with the node's time, only if `total` is greater
        than the last point's (so instances never repeat a point or go back) and, unless
        `final`, at least HISTORY_GAP_MS after it (so nobody can flood the history)."""
        ...

    async def history(self, poll_id: str) -> list[str]:
        """The stored points, oldest first, each a JSON object."""
        ...

    async def mine(self, poll_id: str, voter: str) -> tuple[int, str]:
        """The votes this voter used and their own record ("" when none)."""
        ...

    async def records(self, poll_id: str) -> dict[str, str]:
        """Every voter's own record."""
        ...

    async def hide(self, poll_id: str, entry: str, hidden: bool) -> bool:
        """Hide (or show again) a words entry; False if the poll does not exist."""
        ...

    async def start(self, poll_id: str) -> bool:
        """Stamp `started_at` (the node's time) the first time; a quiz with a time limit
        then closes that many seconds later. False if the poll does not exist."""
        ...

    async def delete(self, poll_id: str) -> None:
        """Remove every key of the poll."""
        ...

    async def redefine(self, poll_id: str, fields: dict[str, str], locked: list[str]) -> str | None:
        """Set definition fields (as `encode_definition` writes them) in one step; unless a
        `locked` field would change while the poll has votes: then nothing is set and that
        field's name is answered. PollNotFound-style "missing" when there is no poll."""
        ...


def def_key(poll_id: str) -> str:
    return f"def:{{{poll_id}}}"


def counts_key(poll_id: str) -> str:
    return f"def:{{{poll_id}}}:counts"


def voters_key(poll_id: str) -> str:
    return f"def:{{{poll_id}}}:voters"


def mine_key(poll_id: str) -> str:
    """hash, voter key -> that voter's own record (question_scripts.py)."""
    return f"def:{{{poll_id}}}:mine"


def hidden_key(poll_id: str) -> str:
    """set: the words entries the organiser hid."""
    return f"def:{{{poll_id}}}:hidden"


def vote_keys(poll_id: str) -> list[str]:
    return [def_key(poll_id), counts_key(poll_id), voters_key(poll_id), mine_key(poll_id)]


VOTE = SCRIPTS["single"]  # the single-choice script (bench/ runs it directly)

# KEYS[1] = the definition, KEYS[2] = counts, KEYS[3] = voters, KEYS[4] = hidden. The
# definition, the counts, the node's time, the number of voters and the hidden entries.
READ = """
local t = redis.call('TIME')
return {redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2]),
        tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000),
        redis.call('HLEN', KEYS[3]), redis.call('SMEMBERS', KEYS[4])}
"""

READ_ONLY_SCRIPTS = (READ,)  # scripts that write nothing: no durability wait

# KEYS[1] = the definition; ARGV = field, value, ... Only if it exists.
CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""

SET_STATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


def history_key(poll_id: str) -> str:
    return f"def:{{{poll_id}}}:history"


# KEYS[1] = history; ARGV = total, counts JSON, cap. Points are JSON text built here, so the
# counts keep the definition's option order.
RECORD_POINT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local last = redis.call('LINDEX', KEYS[1], -1)
if last then
  local point = cjson.decode(last)
  if tonumber(point['total']) >= tonumber(ARGV[1]) then return 0 end
  if ARGV[5] ~= '1' and now - tonumber(point['at']) < tonumber(ARGV[4]) then return 0 end
end
local ms = string.format('%d', now)
local point = '{"at":' .. ms .. ',"total":' .. ARGV[1] .. ',"counts":' .. ARGV[2] .. '}'
redis.call('RPUSH', KEYS[1], point)
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[3]), -1)
return 1
"""


TYPE_FIELDS = ("max_choices", "scale_min", "scale_max", "max_words", "max_entries")


def encode_definition(d: PollDefinition) -> list[str]:
    fields = {
        "question": d.question,
        "options": json.dumps(d.options),
        "option_ids": "\n" + "".join(f"{o}\n" for o in d.option_ids),
        "votes_per_voter": str(d.votes_per_voter),
        "results": d.results,
        "closes_at": "" if d.closes_at is None else str(d.closes_at),
        "created_at": str(d.created_at),
        "state": "open",
        "revealed": "0",
        "total": "0",
        "type": d.type,
        **{name: str(getattr(d, name)) for name in TYPE_FIELDS},
        "correct": d.correct or "",
        "time_limit": "" if d.time_limit is None else str(d.time_limit),
        "event_id": d.event_id or "",
    }
    return [x for pair in fields.items() for x in pair]


def count_keys(d: PollDefinition, counts: dict[str, str]) -> list[str]:
    """The keys results show: the options, every value of a rating, the words counted."""
    if d.type == "rating":
        return [str(v) for v in range(d.scale_min, d.scale_max + 1)]
    if d.type == "words":
        return list(counts)
    return d.option_ids


def decode_record(
    poll_id: str, raw: dict[str, str], counts: dict[str, str], now: int
) -> PollRecord:
    closes_at = int(raw["closes_at"]) if raw.get("closes_at") else None
    defaults = PollDefinition("", "", (), 1, "live", None, 0)

    def number(name: str) -> int:
        value = raw.get(name)
        return int(value) if value else int(getattr(defaults, name))

    definition = PollDefinition(
        poll_id,
        raw["question"],
        tuple((str(o), str(label)) for o, label in json.loads(raw["options"])),
        int(raw["votes_per_voter"]),
        raw["results"],
        closes_at,
        int(raw["created_at"]),
        raw.get("type") or "single",
        max_choices=number("max_choices"),
        scale_min=number("scale_min"),
        scale_max=number("scale_max"),
        max_words=number("max_words"),
        max_entries=number("max_entries"),
        correct=raw.get("correct") or None,
        time_limit=int(raw["time_limit"]) if raw.get("time_limit") else None,
        event_id=raw.get("event_id") or None,
    )
    closed = raw.get("state") == "closed" or (closes_at is not None and now >= closes_at)
    return PollRecord(
        definition,
        closed,
        raw.get("revealed") == "1",
        {o: int(counts.get(o, 0)) for o in count_keys(definition, counts)},
        int(raw.get("total", 0)),
        started_at=int(raw["started_at"]) if raw.get("started_at") else None,
        moderated=int(raw.get("moderated") or 0),
        redefined=int(raw.get("redefined") or 0),
    )


def _pairs(flat: list[Any]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


class RedisDefinedStore:
    def __init__(
        self,
        manager: NodeClients,
        call: Callable[[str, Awaitable[Any]], Awaitable[Any]],
        durable: RingDurability | None = None,
    ) -> None:
        self.manager = manager
        self.call = call
        # On our ring, writes wait until durable (a cluster's clients do it themselves).
        self.durable = durable

    def node_for(self, poll_id: str) -> str:
        return self.manager.node_for(poll_id)

    def served_via(self, poll_id: str) -> str:
        return self.manager.served_via(poll_id)

    async def _eval(self, poll_id: str, script: str, keys: list[str], *args: str) -> Any:
        node = self.node_for(poll_id)
        client = self.manager.client(node)
        if self.durable is not None and script not in READ_ONLY_SCRIPTS:
            command = ("EVAL", script, len(keys), *keys, *args)
            [reply] = await self.call(node, self.durable.run(node, client, [command]))
            return reply
        return await self.call(node, client.eval(script, len(keys), *keys, *args))

    async def create(self, definition: PollDefinition) -> bool:
        keys = [def_key(definition.poll_id)]
        return bool(
            await self._eval(definition.poll_id, CREATE, keys, *encode_definition(definition))
        )

    async def load(self, poll_id: str) -> PollRecord | None:
        keys = [def_key(poll_id), counts_key(poll_id), voters_key(poll_id), hidden_key(poll_id)]
        raw, counts, now, voters, hidden = await self._eval(poll_id, READ, keys)
        if not raw or "question" not in _pairs(raw):
            return None
        record = decode_record(poll_id, _pairs(raw), _pairs(counts), int(now))
        return replace(record, voters=int(voters), hidden=frozenset(hidden))

    async def vote(self, poll_id: str, votes: list[DefinedVote]) -> list[str]:
        found = (await self.vote_many(self.node_for(poll_id), {poll_id: votes}))[poll_id]
        if isinstance(found, NodeUnavailable):
            raise found
        return found

    async def vote_many(
        self, node: str, polls: dict[str, list[DefinedVote]]
    ) -> dict[str, list[str] | NodeUnavailable]:
        client = self.manager.client(node)
        commands = []
        for poll_id, votes in polls.items():
            keys = vote_keys(poll_id)
            args = [x for v in votes for x in (v.voter, v.key, v.option_id)]
            commands.append(("EVAL", SCRIPTS[votes[0].type], len(keys), *keys, *args))
        # Each poll's script stands alone: one that failed (a slot moving, on a cluster)
        # fails that poll's votes only, never the others' answers.
        if self.durable is not None:
            sent = self.durable.run(node, client, commands, raise_on_error=False)
        else:
            pipe = client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            sent = pipe.execute(raise_on_error=False)
        replies = await self.call(node, sent)
        found: dict[str, list[str] | NodeUnavailable] = {}
        for (poll_id, votes), reply in zip(polls.items(), replies, strict=True):
            if isinstance(reply, Exception):
                found[poll_id] = await self._as_unavailable(node, reply)
            else:
                found[poll_id] = reply if reply != ["missing"] else ["missing"] * len(votes)
        return found

    async def _as_unavailable(self, node: str, error: Exception) -> NodeUnavailable:
        """The store's own wording for a failed reply (password-free, typed)."""

        async def fail() -> None:
            raise error

        try:
            await self.call(node, fail())
        except NodeUnavailable as exc:
            return exc
        raise AssertionError("call() turns every node error into NodeUnavailable")

    async def set_state(self, poll_id: str, field: str, value: str) -> bool:
        return bool(await self._eval(poll_id, SET_STATE, [def_key(poll_id)], field, value))

    async def record_point(
        self, poll_id: str, counts_json: str, total: int, final: bool = False
    ) -> bool:
        keys = [history_key(poll_id)]
        args = [str(total), counts_json, str(HISTORY_MAX_POINTS), str(HISTORY_GAP_MS)]
        return bool(await self._eval(poll_id, RECORD_POINT, keys, *args, "1" if final else "0"))

    async def history(self, poll_id: str) -> list[str]:
        node = self.node_for(poll_id)
        client = self.manager.client(node)
        points: list[str] = await self.call(node, client.lrange(history_key(poll_id), 0, -1))
        return points

    async def mine(self, poll_id: str, voter: str) -> tuple[int, str]:
        node = self.node_for(poll_id)
        pipe = self.manager.client(node).pipeline(transaction=False)
        pipe.hget(voters_key(poll_id), voter)
        pipe.hget(mine_key(poll_id), voter)
        used, record = await self.call(node, pipe.execute())
        return int(used or 0), record or ""

    async def records(self, poll_id: str) -> dict[str, str]:
        node = self.node_for(poll_id)
        found = await self.call(node, self.manager.client(node).hgetall(mine_key(poll_id)))
        return {str(v): str(r) for v, r in found.items()}

    async def hide(self, poll_id: str, entry: str, hidden: bool) -> bool:
        keys = [def_key(poll_id), hidden_key(poll_id)]
        return bool(await self._eval(poll_id, HIDE, keys, entry, "1" if hidden else "0"))

    async def start(self, poll_id: str) -> bool:
        return bool(await self._eval(poll_id, START, [def_key(poll_id)]))

    async def redefine(self, poll_id: str, fields: dict[str, str], locked: list[str]) -> str | None:
        pairs = [x for item in fields.items() for x in item]
        args = [str(len(locked)), *locked, *pairs]
        found = await self._eval(poll_id, REDEFINE, [def_key(poll_id)], *args)
        return None if found[0] == "ok" else str(found[-1])

    async def delete(self, poll_id: str) -> None:
        node = self.node_for(poll_id)
        keys = [*vote_keys(poll_id), history_key(poll_id), hidden_key(poll_id)]
        await self.call(node, self.manager.client(node).delete(*keys))
