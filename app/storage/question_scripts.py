"""The vote scripts of the question types, one per type, each checking and counting a
group of votes for one poll atomically on its node.

KEYS[1] = the definition `def:{<id>}`, KEYS[2] = counts, KEYS[3] = voters (voter -> answers
used), KEYS[4] = mine (voter -> `<Idempotency-Key>` TAB `<payload>`, the voter's own record;
a quiz appends TAB and the answer time in ms). ARGV = triples (voter, Idempotency-Key or
'', payload). The payload was checked and normalised by the service
(app/services/question_types.py); each script checks again what a definition change could
make stale (options, range, caps), so the node decides.

Per vote the reply is one of: ok, repeat (the same key and payload as the voter's last
counted vote: counted before, nothing added), key_reused (same key, another payload),
already_voted, closed, unknown_option, out_of_range, too_many_entries, changed (the poll is
of another type now: the service reads it again); {'missing'} when the poll does not exist.
A counted vote adds to `total` the entries it counted (one for single,
rating and quiz; one per option or word for multiple and words), so `total` is always the
sum of the counts.
"""

from __future__ import annotations

# The common head: the node's clock closes the poll at `closes_at`, so every instance agrees
# on the moment; `retry` says whether a vote repeats the voter's last one under its key (a
# retry is answered even after the close; a new vote then is 'closed', as before).
HEAD = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
local f = redis.call('HMGET', KEYS[1], 'state', 'closes_at', 'votes_per_voter', 'option_ids',
  'max_choices', 'scale_min', 'scale_max', 'max_entries', 'started_at', 'created_at', 'type')
if (f[11] or 'single') ~= KIND then
  -- the poll's type was changed (before any vote) since this instance read it
  local changed = {}
  for i = 1, #ARGV, 3 do changed[#changed + 1] = 'changed' end
  return changed
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local closed = f[1] == 'closed'
if not closed and f[2] and f[2] ~= '' and now >= tonumber(f[2]) then
  closed = true
  redis.call('HSET', KEYS[1], 'state', 'closed')
end
local limit = tonumber(f[3] or '1') or 1
local function known(option)
  return string.find(f[4] or '', '\\n' .. option .. '\\n', 1, true) ~= nil
end
-- A retry: the same Idempotency-Key as the voter's last counted vote ('repeat' when the
-- payload is the same too, else 'key_reused'); nil when it is none. Also the votes used.
local function retry(voter, key, payload)
  local used = tonumber(redis.call('HGET', KEYS[3], voter) or '0')
  if used == 0 or key == '' then return nil, used end
  local mine = redis.call('HGET', KEYS[4], voter) or ''
  local tab = string.find(mine, '\\t', 1, true)
  if not tab or string.sub(mine, 1, tab - 1) ~= key then return nil, used end
  local last = string.sub(mine, tab + 1)
  local cut = string.find(last, '\\t', 1, true)
  if cut then last = string.sub(last, 1, cut - 1) end
  local nl = string.find(last, '\\n[^\\n]*$')
  if limit > 1 and nl then last = string.sub(last, nl + 1) end
  if last == payload then return 'repeat', used end
  return 'key_reused', used
end
local function remember(voter, key, payload)
  redis.call('HINCRBY', KEYS[3], voter, 1)
  redis.call('HSET', KEYS[4], voter, key .. '\\t' .. payload)
end
local function split(s)
  local out = {}
  for part in string.gmatch(s, '[^\\n]+') do out[#out + 1] = part end
  return out
end
local reply = {}
local accepted = 0
"""

TAIL = """
for i = 1, #ARGV, 3 do
  local outcome, used = retry(ARGV[i], ARGV[i + 1], ARGV[i + 2])
  if outcome then
  elseif closed then outcome = 'closed'
  elseif used >= limit then outcome = 'already_voted'
  else outcome = count(ARGV[i], ARGV[i + 1], ARGV[i + 2]) end
  reply[#reply + 1] = outcome
end
if accepted > 0 then redis.call('HINCRBY', KEYS[1], 'total', accepted) end
return reply
"""

# single: one option per vote, up to votes_per_voter votes; the record keeps every choice.
SINGLE = """
local function count(voter, key, payload)
  if not known(payload) then return 'unknown_option' end
  local mine = redis.call('HGET', KEYS[4], voter)
  local choices = payload
  if mine then
    local tab = string.find(mine, '\\t', 1, true)
    if tab then choices = string.sub(mine, tab + 1) .. '\\n' .. payload end
  end
  redis.call('HINCRBY', KEYS[3], voter, 1)
  redis.call('HSET', KEYS[4], voter, key .. '\\t' .. choices)
  redis.call('HINCRBY', KEYS[2], payload, 1)
  accepted = accepted + 1
  return 'ok'
end
"""

# multiple: distinct options (checked by the service), at most max_choices, in one vote.
MULTIPLE = """
local function count(voter, key, payload)
  local chosen = split(payload)
  if #chosen > tonumber(f[5]) then return 'unknown_option' end
  for _, option in ipairs(chosen) do
    if not known(option) then return 'unknown_option' end
  end
  for _, option in ipairs(chosen) do redis.call('HINCRBY', KEYS[2], option, 1) end
  remember(voter, key, payload)
  accepted = accepted + #chosen
  return 'ok'
end
"""

# rating: one integer from scale_min to scale_max; counts per value.
RATING = """
local function count(voter, key, payload)
  local value = tonumber(payload)
  if not value or value ~= math.floor(value) or value < tonumber(f[6])
    or value > tonumber(f[7]) then
    return 'out_of_range'
  end
  redis.call('HINCRBY', KEYS[2], payload, 1)
  remember(voter, key, payload)
  accepted = accepted + 1
  return 'ok'
end
"""

# words: normalised entries; the counts hash holds at most max_entries distinct entries.
WORDS = """
local function count(voter, key, payload)
  local entries = split(payload)
  local new = 0
  for _, entry in ipairs(entries) do
    if redis.call('HEXISTS', KEYS[2], entry) == 0 then new = new + 1 end
  end
  if new > 0 and redis.call('HLEN', KEYS[2]) + new > tonumber(f[8]) then
    return 'too_many_entries'
  end
  for _, entry in ipairs(entries) do redis.call('HINCRBY', KEYS[2], entry, 1) end
  remember(voter, key, payload)
  accepted = accepted + #entries
  return 'ok'
end
"""

# quiz: a single answer; the record adds the time since the question started.
QUIZ = """
local function count(voter, key, payload)
  if not known(payload) then return 'unknown_option' end
  local started = tonumber(f[9] or '') or tonumber(f[10])
  redis.call('HINCRBY', KEYS[2], payload, 1)
  redis.call('HINCRBY', KEYS[3], voter, 1)
  redis.call('HSET', KEYS[4], voter, key .. '\\t' .. payload .. '\\t' .. (now - started))
  accepted = accepted + 1
  return 'ok'
end
"""

BODIES = {"single": SINGLE, "multiple": MULTIPLE, "rating": RATING, "words": WORDS, "quiz": QUIZ}
SCRIPTS = {kind: HEAD.replace("KIND", f"'{kind}'") + body + TAIL for kind, body in BODIES.items()}
