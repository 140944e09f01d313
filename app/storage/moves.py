"""Moving ad-hoc polls to their owner under a new ring, each count exactly once.

One poll moves from node X to node Y in four steps, three scripts (2 and 3 are one; the
mover, `app/storage/mover.py`, sends many polls per node call; docs/design.md, "Changing
the ring"):
1. STAGE on X: the poll's keys become one record `move:{<id>}` (transfer id T, target Y, the
   counts of `poll:{<id>}` and its aside key, its options), atomically; an existing record
   is returned as it is, so a restart resumes the same transfer.
2. SADD the options on Y (idempotent; in COPY's script).
3. COPY on Y: add the counts and set the marker `moved:{<id>}:<T>`, only if it is absent.
4. RELEASE on X: delete the record if it still holds T (and say whether poll keys came
   back meanwhile: then the poll is staged again, a new transfer).
A crash leaves either the poll's keys on X (nothing staged), or the record on X (steps 2-4
run again; the marker makes 3 a no-op if it had landed), or nothing on X: never both copies
counted, never neither. The marker is kept (a few bytes per moved poll).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TypeVar

from app.core.redis_manager import RedisManager
from app.storage.redis_store import ADD_COUNTS

logger = logging.getLogger("app.rebalance")

T = TypeVar("T")
RING_KEY = "ring:config"
# Set (to the ring being moved to, `ring_config`) on a node in the same pipeline as, and
# before, any STAGE or claim TAKE there; deleted by `Mover.record` once the ring is recorded.
# A start that finds it finishes the move even when `ring:config` matches (a ring change cut
# off, then rolled back; or an instance killed while another finished the move).
MOVING_KEY = "ring:moving"
SCAN_COUNT = 1_000

# KEYS[1] = the record, KEYS[2..4] = poll hash, aside hash, options set, KEYS[5..8] = the
# poll's Idempotency-Key marker hashes (app/storage/idempotency.py: read here, not moved);
# only KEYS[1] to resume a staged move on the poll's owner. ARGV[1] = a new transfer id,
# ARGV[2] = the target, ARGV[3], ARGV[4] = MOVING_KEY and its value, set in the same script
# as a new record (a node with a record always has the marker). Replies {record, markers}:
# the record as HGETALL ({} when nothing is there), with fields id, target, dropped
# (values that were no count: reads never showed them), c:<option> (count), o:<option> (an
# option of the poll); the markers, per key, {expire time in ms, field, value, ...} ({} when
# there are none).
STAGE = """
local function markers()
  if #KEYS < 8 or redis.call('EXISTS', KEYS[5], KEYS[6], KEYS[7], KEYS[8]) == 0 then
    return {}
  end
  local reply = {}
  for i = 5, 8 do
    local flat = redis.call('HGETALL', KEYS[i])
    table.insert(flat, 1, redis.call('PEXPIRETIME', KEYS[i]))
    reply[i - 4] = flat
  end
  return reply
end
if redis.call('EXISTS', KEYS[1]) == 1 then return {redis.call('HGETALL', KEYS[1]), markers()} end
if #KEYS == 1 or redis.call('EXISTS', KEYS[2], KEYS[3], KEYS[4]) == 0 then
  return {{}, markers()}
end
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
redis.call('SET', ARGV[3], ARGV[4])
return {record, markers()}
"""

# KEYS[1] = the marker, KEYS[2] = the options set, KEYS[3], KEYS[4] = poll hash and aside
# hash (ADD_COUNTS' layout); ARGV[1] = transfer id, ARGV[2] = m, ARGV[3..] = 1, option,
# count, ..., then the m options (added to the set: idempotent). Replies {1, ...} when
# added now, {2} when the marker says it was added before.
COPY = (
    ADD_COUNTS
    + """
local m = tonumber(ARGV[2])
for i = #ARGV - m + 1, #ARGV do redis.call('SADD', KEYS[2], ARGV[i]) end
if redis.call('EXISTS', KEYS[1]) == 1 then return {2} end
local reply = add_counts({1}, 3)
if reply['err'] then return reply end
redis.call('SET', KEYS[1], ARGV[1])
return reply
"""
)

# KEYS[1] = the record, KEYS[2..4] (when moving off a node that is not the owner) = the
# poll's keys; ARGV[1] = its transfer id. Replies {records deleted, poll keys that exist}:
# keys that reached the node after STAGE (a late batch) need a transfer of their own.
RELEASE = """
local deleted = 0
if redis.call('HGET', KEYS[1], 'id') == ARGV[1] then deleted = redis.call('DEL', KEYS[1]) end
if #KEYS == 1 then return {deleted, 0} end
return {deleted, redis.call('EXISTS', unpack(KEYS, 2))}
"""


def record_key(poll_id: str) -> str:
    return f"move:{{{poll_id}}}"


def marker_key(poll_id: str, transfer_id: str) -> str:
    return f"moved:{{{poll_id}}}:{transfer_id}"


def poll_of(key: str) -> str:
    return key[key.index("{") + 1 : key.rindex("}")]


def ring_config(manager: RedisManager, with_retiring: bool = False) -> str:
    """The ring as recorded on the nodes: labels, their URL identities, virtual nodes (and
    the retiring nodes too, for the `ring:moving` marker)."""
    nodes = {label: spec.safe_url for label, spec in manager.specs.items()}
    if with_retiring:
        nodes |= {label: spec.safe_url for label, spec in manager.retiring.items()}
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
