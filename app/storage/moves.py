"""Moving ad-hoc polls to their owner under a new ring, each count exactly once.

One poll moves from node X to node Y in four node calls (docs/design.md, "Changing the ring"):
1. STAGE on X: the poll's keys become one record `move:{<id>}` (transfer id T, target Y, the
   counts of `poll:{<id>}` and its aside key, its options), atomically; an existing record
   is returned as it is, so a restart resumes the same transfer.
2. SADD the options on Y (idempotent).
3. COPY on Y: add the counts and set the marker `moved:{<id>}:<T>`, only if it is absent.
4. RELEASE on X: delete the record if it still holds T.
A crash leaves either the poll's keys on X (nothing staged), or the record on X (steps 2-4
run again; the marker makes 3 a no-op if it had landed), or nothing on X: never both copies
counted, never neither. The marker is kept (a few bytes per moved poll).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from redis.asyncio import Redis

from app.core.redis_manager import RedisManager
from app.storage.base import NodeUnavailable
from app.storage.redis_store import ADD_COUNTS, aside_key, options_key, poll_key

logger = logging.getLogger("app.rebalance")

T = TypeVar("T")
RING_KEY = "ring:config"
SCAN_COUNT = 1_000

# KEYS[1] = the record, KEYS[2..4] = poll hash, aside hash, options set; ARGV[1] = a new
# transfer id, ARGV[2] = the target. Replies the record (HGETALL), {} when nothing is there.
# Fields: id, target, dropped (values that were no count: reads never showed them),
# c:<option> (count), o:<option> (an option of the poll).
STAGE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HGETALL', KEYS[1]) end
if #KEYS == 1 or redis.call('EXISTS', KEYS[2], KEYS[3], KEYS[4]) == 0 then return {} end
local counts, dropped = {}, 0
for k = 2, 3 do
  local kind = redis.call('TYPE', KEYS[k])['ok']
  if kind == 'hash' then
    local flat = redis.call('HGETALL', KEYS[k])
    for i = 1, #flat, 2 do
      local v = flat[i + 1]
      if #v <= 15 and string.match(v, '^%d+$') then
        counts[flat[i]] = (counts[flat[i]] or 0) + tonumber(v)
      else
        dropped = dropped + 1
      end
    end
  elseif kind ~= 'none' then
    dropped = dropped + 1
  end
end
local record = {'id', ARGV[1], 'target', ARGV[2], 'dropped', dropped}
for option, n in pairs(counts) do
  table.insert(record, 'c:' .. option)
  table.insert(record, string.format('%d', n))
end
if redis.call('TYPE', KEYS[4])['ok'] == 'set' then
  for _, option in ipairs(redis.call('SMEMBERS', KEYS[4])) do
    table.insert(record, 'o:' .. option)
    table.insert(record, '1')
  end
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
redis.call('HSET', KEYS[1], unpack(record))
return record
"""

# KEYS[1] = the marker, KEYS[2], KEYS[3] = poll hash and aside hash (ADD_COUNTS' layout);
# ARGV[1] = transfer id, ARGV[2] unused, ARGV[3..] = 1, option, count, ... Replies {1, ...}
# when added now, {2} when the marker says it was added before.
COPY = (
    ADD_COUNTS
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return {2} end
local reply = add_counts({1})
if reply['err'] then return reply end
redis.call('SET', KEYS[1], ARGV[1])
return reply
"""
)

# KEYS[1] = the record; ARGV[1] = its transfer id.
RELEASE = """
if redis.call('HGET', KEYS[1], 'id') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def record_key(poll_id: str) -> str:
    return f"move:{{{poll_id}}}"


def marker_key(poll_id: str, transfer_id: str) -> str:
    return f"moved:{{{poll_id}}}:{transfer_id}"


def poll_of(key: str) -> str:
    return key[key.index("{") + 1 : key.rindex("}")]


def ring_config(manager: RedisManager) -> str:
    """The ring as recorded on the nodes: labels, their URL identities, virtual nodes."""
    nodes = {label: spec.safe_url for label, spec in manager.specs.items()}
    return json.dumps({"virtual_nodes": manager.ring.virtual_nodes, "nodes": nodes}, sort_keys=True)


@dataclass
class Record:
    transfer_id: str
    target: str
    counts: dict[str, int]
    options: list[str]
    dropped: int

    @classmethod
    def parse(cls, flat: list[str]) -> Record:
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        counts = {k[2:]: int(v) for k, v in fields.items() if k.startswith("c:")}
        options = [k[2:] for k in fields if k.startswith("o:")]
        return cls(fields["id"], fields["target"], counts, options, int(fields["dropped"]))


@dataclass
class Report:
    """What a scan found (dry run) or did: polls seen, and moved by (source, target)."""

    seen: set[str] = field(default_factory=set, repr=False)
    moves: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    votes: int = 0

    @property
    def polls(self) -> int:
        return len(self.seen)

    @property
    def moved(self) -> int:
        return sum(len(p) for p in self.moves.values())


class Mover:
    """Finds the polls whose owner changed and moves them, one at a time."""

    def __init__(self, manager: RedisManager, call: Callable[[str, Awaitable[Any]], Any]) -> None:
        self.manager = manager
        self.call = call  # the store's node call: failures become NodeUnavailable

    @property
    def sources(self) -> list[str]:
        return [*self.manager.specs, *self.manager.retiring]

    def client(self, node: str) -> Redis:
        return self.manager.client(node)

    async def run(self, node: str, step: str, operation: Awaitable[T]) -> T:
        """One node call; the seam the crash tests break."""
        result: T = await self.call(node, operation)
        return result

    async def recorded(self) -> dict[str, str | NodeUnavailable | None]:
        """Each node's `ring:config` (ring and retiring nodes), or why it could not be read."""
        found: dict[str, str | NodeUnavailable | None] = {}
        for node in self.sources:
            try:
                value = await self.run(node, "read ring", self.client(node).get(RING_KEY))
            except NodeUnavailable as exc:
                found[node] = exc
                continue
            found[node] = None if value is None else str(value)
        return found

    async def record(self) -> None:
        config = ring_config(self.manager)
        for node in self.manager.specs:
            await self.run(node, "write ring", self.client(node).set(RING_KEY, config))

    async def move_poll(self, source: str, poll_id: str) -> int:
        """Move the poll's keys off `source` to its owner (or finish a staged move);
        returns the votes moved."""
        votes = 0
        while True:
            owner = self.manager.node_for(poll_id)
            keys = [record_key(poll_id), poll_key(poll_id), aside_key(poll_id)]
            keys.append(options_key(poll_id))
            if owner == source:  # only a staged record can be left to finish
                keys = keys[:1]
            client = self.client(source)
            flat = await self.run(
                source, "stage", client.eval(STAGE, len(keys), *keys, uuid.uuid4().hex, owner)
            )
            if not flat:
                return votes
            record = Record.parse(flat)
            if record.dropped:
                logger.warning(
                    "rebalance: poll %s on %s had %d values that were no count (reads never "
                    "showed them); not moved",
                    poll_id,
                    source,
                    record.dropped,
                )
            await self._copy(poll_id, record)
            await self.run(
                source,
                "release",
                client.eval(RELEASE, 1, record_key(poll_id), record.transfer_id),
            )
            votes += sum(record.counts.values())

    async def _copy(self, poll_id: str, record: Record) -> None:
        target = record.target
        client = self.client(target)
        if record.options:
            await self.run(target, "options", client.sadd(options_key(poll_id), *record.options))
        if record.counts:
            keys = [marker_key(poll_id, record.transfer_id), poll_key(poll_id), aside_key(poll_id)]
            args: list[str | int] = [record.transfer_id, 0, len(record.counts)]
            for option_id, n in record.counts.items():
                args += [option_id, n]
            await self.run(target, "copy", client.eval(COPY, len(keys), *keys, *args))

    async def scan(self, dry_run: bool = False) -> Report:
        """Every ad-hoc poll on every node (and staged move) whose owner is another node:
        listed (dry run) or moved; progress in the log after each SCAN batch."""
        report = Report()
        for source in self.sources:
            scanned = 0
            seen: set[str] = set()
            for pattern in ("move:*", "poll:*"):
                cursor = 0
                while True:
                    cursor, keys = await self.run(
                        source,
                        "scan",
                        self.client(source).scan(cursor, match=pattern, count=SCAN_COUNT),
                    )
                    scanned += len(keys)
                    polls = {poll_of(str(k)) for k in keys} - seen
                    seen |= polls
                    await self._batch(source, polls, pattern, report, dry_run)
                    logger.info(
                        "rebalance: %s: %d keys scanned, %d of %d polls %s so far",
                        source,
                        scanned,
                        report.moved,
                        report.polls,
                        "to move" if dry_run else "moved",
                    )
                    if cursor == 0:
                        break
            seen.clear()
        return report

    async def _batch(
        self, source: str, polls: set[str], pattern: str, report: Report, dry_run: bool
    ) -> None:
        for poll_id in sorted(polls):
            owner = self.manager.node_for(poll_id)
            if pattern == "poll:*":
                report.seen.add(poll_id)
                if owner == source:
                    continue
            moved = report.moves.setdefault((source, owner), [])
            if poll_id not in moved:
                moved.append(poll_id)
            if not dry_run:
                report.votes += await self.move_poll(source, poll_id)
