"""Moving a defined poll's keys to another node, exactly, whatever step a crash cuts off.

The poll's keys (`def:{<id>}` and its parts in PARTS: app/storage/defined.py) are
not added up like ad-hoc counts: they move whole. From node X to node Y:
1. STAGE on X, one script: if the record `dmove:{<id>}` exists, return it (a resume); else
   RENAME each existing key to its staged name `dmove:{<id>}:<part>` and write the record
   (transfer id T, target Y, the parts present). The live keys are gone from X in the same
   step, so nothing can vote there any more.
   In the same pipeline, DUMP each staged key (read only).
2. COPY on Y, one pipeline: RESTORE the dumps (REPLACE) into `dcopy:{<id>}:<part>`, which no
   read or vote uses; then COMMIT, one script: if the marker `dmoved:{<id>}:<T>` exists,
   delete those copies (a repeat) and stop; else RENAME each copy to its live name and set
   the marker.
3. RELEASE on X: delete the record and the staged keys if the record still holds T.
The poll is always whole in exactly one place: X's live keys, X's staged keys (Y without
the marker), or Y's live keys (marker set). Repeating any step after a crash or a lost
reply changes nothing more; two movers finish the same transfer (the marker admits one
commit).
"""

from __future__ import annotations

# New parts go at the end: a staged record names its parts by their index here. Events use
# the same parts (`def:{<event id>}`, `:polls`, `:names`: app/storage/events.py), so an
# event and its join code move exactly as a poll does.
PARTS = ("def", "counts", "voters", "history", "mine", "hidden", "polls", "names")


def live_key(poll_id: str, part: str) -> str:
    return f"def:{{{poll_id}}}" if part == "def" else f"def:{{{poll_id}}}:{part}"


def staged_key(poll_id: str, part: str) -> str:
    return f"dmove:{{{poll_id}}}:{part}"


def copy_key(poll_id: str, part: str) -> str:
    return f"dcopy:{{{poll_id}}}:{part}"


def record_key(poll_id: str) -> str:
    return f"dmove:{{{poll_id}}}"


def marker_key(poll_id: str, transfer_id: str) -> str:
    return f"dmoved:{{{poll_id}}}:{transfer_id}"


def stage_keys(poll_id: str, resume_only: bool) -> list[str]:
    if resume_only:
        return [record_key(poll_id)]
    live = [live_key(poll_id, p) for p in PARTS]
    return [record_key(poll_id), *live, *(staged_key(poll_id, p) for p in PARTS)]


# KEYS[1] = the record, KEYS[2..n+1] = live keys, KEYS[n+2..2n+1] = staged keys (PARTS order);
# ARGV[1] = a new transfer id, ARGV[2] = the target, ARGV[3], ARGV[4] = the ring:moving
# marker and its value, set with a new record (app/storage/moves.py, MOVING_KEY). Replies
# the record's HGETALL ({} when nothing is there). Fields: id, target, parts (the indices of
# the parts present, "1,3").
STAGE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HGETALL', KEYS[1]) end
if #KEYS == 1 then return {} end
local n = (#KEYS - 1) / 2
local parts = {}
for i = 1, n do
  if redis.call('EXISTS', KEYS[1 + i]) == 1 then
    redis.call('RENAME', KEYS[1 + i], KEYS[1 + n + i])
    table.insert(parts, i)
  end
end
if #parts == 0 then return {} end
local record = {'id', ARGV[1], 'target', ARGV[2], 'parts', table.concat(parts, ',')}
redis.call('HSET', KEYS[1], unpack(record))
redis.call('SET', ARGV[3], ARGV[4])
return record
"""

# KEYS[1] = the marker, KEYS[2..n+1] = live keys, KEYS[n+2..2n+1] = copies; ARGV[1] =
# transfer id, ARGV[2] = the parts present ("1,3"). Replies 1 when committed now, 2 when it
# was before.
COMMIT = """
local n = (#KEYS - 1) / 2
if redis.call('EXISTS', KEYS[1]) == 1 then
  for i = 1, n do redis.call('DEL', KEYS[1 + n + i]) end
  return 2
end
for i = 1, n do
  if redis.call('EXISTS', KEYS[1 + i]) == 1 then
    return redis.error_reply('CONFLICT ' .. KEYS[2] .. ' already exists on the target')
  end
end
for i in string.gmatch(ARGV[2], '%d+') do
  local k = tonumber(i)
  if redis.call('EXISTS', KEYS[1 + n + k]) == 0 then
    return redis.error_reply('MISSING ' .. KEYS[1 + n + k] .. ' was not restored')
  end
end
for i in string.gmatch(ARGV[2], '%d+') do
  local k = tonumber(i)
  redis.call('RENAME', KEYS[1 + n + k], KEYS[1 + k])
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""

# KEYS[1] = the record, KEYS[2..] = staged keys; ARGV[1] = transfer id.
RELEASE = """
if redis.call('HGET', KEYS[1], 'id') == ARGV[1] then
  return redis.call('DEL', unpack(KEYS))
end
return 0
"""


def commit_keys(poll_id: str, transfer_id: str) -> list[str]:
    live = [live_key(poll_id, p) for p in PARTS]
    return [marker_key(poll_id, transfer_id), *live, *(copy_key(poll_id, p) for p in PARTS)]


def release_keys(poll_id: str) -> list[str]:
    return [record_key(poll_id), *(staged_key(poll_id, p) for p in PARTS)]
