"""Events (sessions) on the nodes: the event, its polls in order, its join code, the
display names of its voters, and the list of all events.

Every key is a defined-poll key of its own hash tag (`def:{<tag>}` and the parts of
app/storage/defined_moves.py), so the mover moves an event, its code and the list exactly
as it moves a poll. The tags hold a ':' that no poll id may hold, so they never meet a poll:
- `def:{ev:<id>}`: hash: kind=event, title, code, current (poll id or ""), created_at,
  version (increases with every change the event's stream shows);
- `def:{ev:<id>}:polls`: list of poll ids, in the presenter's order;
- `def:{ev:<id>}:names`: hash, voter key -> display name;
- `def:{code:<CODE>}`: hash: kind=code, event_id: the claim on a join code;
- `def:{events:all}`: hash, event id -> created_at (ms): the organiser's list.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from app.storage.defined import NodeClients

MAX_POLLS_PER_EVENT = 200
INDEX_TAG = "events:all"


def event_tag(event_id: str) -> str:
    return f"ev:{event_id}"


def code_tag(code: str) -> str:
    return f"code:{code}"


def key(tag: str, part: str = "") -> str:
    return f"def:{{{tag}}}" + (f":{part}" if part else "")


@dataclass(frozen=True)
class EventRecord:
    event_id: str
    title: str
    code: str
    current: str | None
    created_at: int
    version: int
    polls: list[str]


# KEYS[1] = the code's claim; ARGV[1] = the event id. 1 when claimed now.
CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'kind', 'code', 'event_id', ARGV[1])
return 1
"""

# KEYS[1] = the event; ARGV = field, value, ... Only if it does not exist.
CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'kind', 'event', 'current', '', 'version', '1', unpack(ARGV))
return 1
"""

# KEYS[1] = the event, KEYS[2] = its polls; ARGV[1] = poll id, ARGV[2] = the cap.
# -1: no such event; 0: at the cap; else the new number of polls.
ADD_POLL = """
if redis.call('HGET', KEYS[1], 'kind') ~= 'event' then return -1 end
if redis.call('LLEN', KEYS[2]) >= tonumber(ARGV[2]) then return 0 end
redis.call('HINCRBY', KEYS[1], 'version', 1)
return redis.call('RPUSH', KEYS[2], ARGV[1])
"""

# KEYS[1] = the event, KEYS[2] = its polls; ARGV[1] = poll id or ''. -1: no such event;
# 0: not a poll of the event; 1: set.
SET_CURRENT = """
if redis.call('HGET', KEYS[1], 'kind') ~= 'event' then return -1 end
if ARGV[1] ~= '' and not redis.call('LPOS', KEYS[2], ARGV[1]) then return 0 end
if redis.call('HGET', KEYS[1], 'current') ~= ARGV[1] then
  redis.call('HSET', KEYS[1], 'current', ARGV[1])
  redis.call('HINCRBY', KEYS[1], 'version', 1)
end
return 1
"""

# KEYS[1] = the event, KEYS[2] = its polls; ARGV = every poll id, in the new order.
# -1: no such event; 0: not the same polls; 1: reordered.
REORDER = """
if redis.call('HGET', KEYS[1], 'kind') ~= 'event' then return -1 end
local now = redis.call('LRANGE', KEYS[2], 0, -1)
if #now ~= #ARGV then return 0 end
local seen = {}
for _, p in ipairs(now) do seen[p] = true end
for _, p in ipairs(ARGV) do
  if not seen[p] then return 0 end
  seen[p] = nil
end
if #ARGV > 0 then
  redis.call('DEL', KEYS[2])
  redis.call('RPUSH', KEYS[2], unpack(ARGV))
end
redis.call('HINCRBY', KEYS[1], 'version', 1)
return 1
"""

# KEYS[1] = the event, KEYS[2] = names; ARGV[1] = voter, ARGV[2] = name. 0: no such event.
JOIN = """
if redis.call('HGET', KEYS[1], 'kind') ~= 'event' then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
"""

# KEYS[1] = the code's claim; ARGV[1] = the event id: released only if it is that event's.
RELEASE_CODE = """
if redis.call('HGET', KEYS[1], 'event_id') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

READ = """
return {redis.call('HGETALL', KEYS[1]), redis.call('LRANGE', KEYS[2], 0, -1)}
"""

# One command on one key, as a script: `eval` is the one call every node client offers
# (our ring's redis-py clients and the cluster's ClusterClient alike).
HSET = "return redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])"
HDEL = "return redis.call('HDEL', KEYS[1], ARGV[1])"
HGET = "return redis.call('HGET', KEYS[1], ARGV[1])"
HGETALL = "return redis.call('HGETALL', KEYS[1])"
DELETE = "return redis.call('DEL', unpack(KEYS))"
READ_ONLY_SCRIPTS = (READ, HGET, HGETALL)  # they write nothing: no durability wait


def _pairs(flat: list[Any]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


class RedisEventStore:
    def __init__(
        self, manager: NodeClients, call: Callable[[str, Awaitable[Any]], Awaitable[Any]]
    ) -> None:
        self.manager = manager
        self.call = call

    async def _eval(self, tag: str, script: str, keys: list[str], *args: str) -> Any:
        node = self.manager.node_for(tag)
        client = self.manager.client(node)
        return await self.call(node, client.eval(script, len(keys), *keys, *args))

    async def index_add(self, event_id: str, created_at: int) -> None:
        await self._eval(INDEX_TAG, HSET, [key(INDEX_TAG)], event_id, str(created_at))

    async def index_remove(self, event_id: str) -> None:
        await self._eval(INDEX_TAG, HDEL, [key(INDEX_TAG)], event_id)

    async def index(self) -> dict[str, int]:
        found = _pairs(await self._eval(INDEX_TAG, HGETALL, [key(INDEX_TAG)]))
        return {str(e): int(ms) for e, ms in found.items()}

    async def claim_code(self, code: str, event_id: str) -> bool:
        return bool(await self._eval(code_tag(code), CLAIM, [key(code_tag(code))], event_id))

    async def release_code(self, code: str, event_id: str) -> None:
        await self._eval(code_tag(code), RELEASE_CODE, [key(code_tag(code))], event_id)

    async def code_event(self, code: str) -> str | None:
        found = await self._eval(code_tag(code), HGET, [key(code_tag(code))], "event_id")
        return str(found) if found else None

    async def create(self, event_id: str, title: str, code: str, created_at: int) -> bool:
        tag = event_tag(event_id)
        args = ("title", title, "code", code, "created_at", str(created_at))
        return bool(await self._eval(tag, CREATE, [key(tag)], *args))

    async def load(self, event_id: str) -> EventRecord | None:
        tag = event_tag(event_id)
        raw, polls = await self._eval(tag, READ, [key(tag), key(tag, "polls")])
        fields = _pairs(raw)
        if fields.get("kind") != "event":
            return None
        return EventRecord(
            event_id,
            fields["title"],
            fields["code"],
            fields.get("current") or None,
            int(fields["created_at"]),
            int(fields.get("version", 1)),
            [str(p) for p in polls],
        )

    async def add_poll(self, event_id: str, poll_id: str) -> int:
        tag = event_tag(event_id)
        keys = [key(tag), key(tag, "polls")]
        return int(await self._eval(tag, ADD_POLL, keys, poll_id, str(MAX_POLLS_PER_EVENT)))

    async def set_current(self, event_id: str, poll_id: str | None) -> int:
        tag = event_tag(event_id)
        keys = [key(tag), key(tag, "polls")]
        return int(await self._eval(tag, SET_CURRENT, keys, poll_id or ""))

    async def reorder(self, event_id: str, poll_ids: list[str]) -> int:
        tag = event_tag(event_id)
        return int(await self._eval(tag, REORDER, [key(tag), key(tag, "polls")], *poll_ids))

    async def join(self, event_id: str, voter: str, name: str) -> bool:
        tag = event_tag(event_id)
        return bool(await self._eval(tag, JOIN, [key(tag), key(tag, "names")], voter, name))

    async def names(self, event_id: str) -> dict[str, str]:
        tag = event_tag(event_id)
        found = _pairs(await self._eval(tag, HGETALL, [key(tag, "names")]))
        return {str(v): str(n) for v, n in found.items()}

    async def delete(self, event_id: str) -> None:
        tag = event_tag(event_id)
        await self._eval(tag, DELETE, [key(tag), key(tag, "polls"), key(tag, "names")])
