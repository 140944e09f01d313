"""Idempotency-Key markers that move with what they protect.

A keyed request is applied per node, all or nothing; what says "this part was applied" is
kept per poll, under the poll's hash tag, so it lives wherever the poll's counts live and a
ring change moves it with them (`app/storage/moves.py`):
- `poll:{<poll_id>}:once:<day>`: hash, request key -> digest of the request's fingerprint,
  for the requests that counted in the poll on that UTC day (`day` = Unix time // 86400);
  it expires `PART_TTL` after the end of its day, so a marker lives 25 to 49 hours, longer
  than the claim (24 h), and a poll keeps at most three such hashes.
  The day and the expiry are the *node's*: the script reads `TIME` itself, so a service
  whose clock is skewed or stepped (by hours or days) cannot miss a marker or write one
  that expires at once (docs/journal-and-clock.md).
A retry, on any instance, after any restart or ring change, finds the marker of each poll it
had counted in and counts only in the others.

The claim `idem:{<key>}` (same fingerprint, 24 h) lives on the node the key maps to; a ring
change moves it too (copy with its TTL, then delete), so a different request with the same
key keeps getting 409.
"""

from __future__ import annotations

import hashlib

IDEMPOTENCY_TTL = 24 * 3600  # seconds a request's Idempotency-Key is remembered
PART_TTL = IDEMPOTENCY_TTL + 3600  # a marker outlives its claim: no late repeat
DAY = 86_400
CHECKED_DAYS = (-1, 0, 1)  # a retry within 24 h finds its marker, clocks a little apart
MOVED_DAYS = (-2, -1, 0, 1)  # every day whose markers may still be alive


def today(now: float) -> int:
    """The day of a Unix time; callers pass a node's `TIME`, never the service's clock."""
    return int(now // DAY)


def once_base(poll_id: str) -> str:
    """The key APPLY_ONCE declares for a poll's markers (its slot); the script adds the day."""
    return f"poll:{{{poll_id}}}:once"


def once_key(poll_id: str, day: int) -> str:
    return f"poll:{{{poll_id}}}:once:{day}"


def digest(fingerprint: str) -> str:
    """What a marker stores: 16 characters of the fingerprint's BLAKE2b (a bulk fingerprint
    is 69 characters; a marker is written per poll)."""
    return hashlib.blake2b(fingerprint.encode(), digest_size=8).hexdigest()


def claim_key(key: str) -> str:
    """Where a request's Idempotency-Key is claimed: on the node the key itself maps to."""
    return f"idem:{{{key}}}"


def once_args(
    key: str, fingerprint: str, counts: dict[str, dict[str, int]]
) -> tuple[list[str], list[str | int]]:
    """KEYS and ARGV of APPLY_ONCE for these polls (see the script)."""
    polls = list(counts)
    keys = [once_base(p) for p in polls]
    args: list[str | int] = [key, digest(fingerprint), DAY, PART_TTL]
    for poll_id in polls:
        keys += [f"poll:{{{poll_id}}}", f"poll:{{{poll_id}}}:aside"]
        args.append(len(counts[poll_id]))
        for option_id, n in counts[poll_id].items():
            args += [option_id, n]
    return keys, args


# Appended to ADD_COUNTS (app/storage/redis_store.py). KEYS: for each of the n polls its
# marker base key (`once_base`: the script appends `:<day>` for the days CHECKED_DAYS around
# the node's own `TIME`; same hash tag, so same slot), then for each poll its hash and aside
# hash; ARGV[1] = request key, ARGV[2] = fingerprint digest, ARGV[3] = DAY, ARGV[4] =
# PART_TTL, ARGV[5..] = the counts as ADD_COUNTS reads them. Replies {1, set aside...}
# when applied now, {2} when every poll has this request's marker, {3} when a poll has
# another request's marker under this key (nothing applied), {4, i, ...} when only some
# polls have it (0-based indices; nothing applied: the caller sends the others again).
APPLY_ONCE_BODY = """
local n = #KEYS / 3
local day = math.floor(tonumber(redis.call('TIME')[1]) / tonumber(ARGV[3]))
local marked = {}
for i = 1, n do
  local found = false
  for d = -1, 1 do
    local v = redis.call('HGET', KEYS[i] .. ':' .. (day + d), ARGV[1])
    if v then
      if v ~= ARGV[2] then return {3} end
      found = true
    end
  end
  if found then table.insert(marked, i - 1) end
end
if #marked == n then return {2} end
if #marked > 0 then
  local reply = {4}
  for _, i in ipairs(marked) do table.insert(reply, i) end
  return reply
end
local reply = add_counts({1}, n + 1, 5)
if reply['err'] then return reply end
local expires = (day + 1) * tonumber(ARGV[3]) + tonumber(ARGV[4])
for i = 1, n do
  local marker = KEYS[i] .. ':' .. day
  redis.call('HSET', marker, ARGV[1], ARGV[2])
  redis.call('EXPIREAT', marker, expires)
end
return reply
"""

# Moving a poll's markers: read on the old node (by the ad-hoc STAGE script,
# app/storage/moves.py, which replies, per key of MOVED_DAYS, {expire time in ms (-1: none,
# -2: no key), field, value, ...}, or {} when none exists), written on the new one (PUT),
# then removed from the old (DROP): a marker is on one node or both at every moment, never
# on neither, and two copies say the same thing.
# ARGV: per key, its expire time (ms, or <= 0: none), m, then m fields and values. Writes a
# field only where absent, and the recorded expire time.
MARKERS_PUT = """
local a = 1
for i = 1, #KEYS do
  local at, m = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  for j = 0, m - 1 do redis.call('HSETNX', KEYS[i], ARGV[a + 2 + 2 * j], ARGV[a + 3 + 2 * j]) end
  if m > 0 and at > 0 then redis.call('PEXPIREAT', KEYS[i], at) end
  a = a + 2 + 2 * m
end
return 1
"""

# Same ARGV as MARKERS_PUT: removes exactly the fields taken.
MARKERS_DROP = """
local a = 1
for i = 1, #KEYS do
  local m = tonumber(ARGV[a + 1])
  for j = 0, m - 1 do redis.call('HDEL', KEYS[i], ARGV[a + 2 + 2 * j]) end
  a = a + 2 + 2 * m
end
return 1
"""


def markers_args(taken: list[list[str | int]]) -> list[str | int]:
    """The markers STAGE read, as MARKERS_PUT's (and MARKERS_DROP's) ARGV; [] if none."""
    args: list[str | int] = []
    for flat in taken:
        fields = flat[1:]
        args += [int(flat[0]), len(fields) // 2, *fields]
    return args if any(len(flat) > 1 for flat in taken) else []


# A claim's move. TAKE: {value or false, PTTL}. PUT: SET NX PX (a claim made on the new
# node since is kept). DROP: delete the old claim only if it still holds the value taken.
CLAIM_TAKE = "return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}"
CLAIM_DROP = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
