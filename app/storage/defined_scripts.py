"""The defined-poll scripts the question types and events added: start, hide, redefine
(used by app/storage/defined.py)."""

# KEYS[1] = the definition. The first call stamps started_at and, for a time limit, closes_at.
START = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[1], 'started_at') == 1 then return 1 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'started_at', now)
local limit = redis.call('HGET', KEYS[1], 'time_limit')
if limit and limit ~= '' then
  local closes = now + tonumber(limit) * 1000
  local set = redis.call('HGET', KEYS[1], 'closes_at')
  if not set or set == '' or tonumber(set) > closes then
    redis.call('HSET', KEYS[1], 'closes_at', closes)
  end
end
return 1
"""

# KEYS[1] = the definition, KEYS[2] = hidden; ARGV[1] = the entry, ARGV[2] = '1' to hide.
HIDE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local changed
if ARGV[2] == '1' then changed = redis.call('SADD', KEYS[2], ARGV[1])
else changed = redis.call('SREM', KEYS[2], ARGV[1]) end
if changed == 1 then redis.call('HINCRBY', KEYS[1], 'moderated', 1) end
return 1
"""


# KEYS[1] = the definition; ARGV[1] = n, ARGV[2..n+1] = the locked fields, then field,
# value pairs. {'ok'}, {'locked', field} (nothing set) or {'missing'}. A change counts in
# 'redefined' (only grows), which the state's version counts (a reopen, a new question).
REDEFINE = """
if redis.call('HGET', KEYS[1], 'question') == false then return {'missing'} end
local n = tonumber(ARGV[1])
local locked = {}
for i = 2, n + 1 do locked[ARGV[i]] = true end
local votes = tonumber(redis.call('HGET', KEYS[1], 'total') or '0') > 0
for i = n + 2, #ARGV, 2 do
  if votes and locked[ARGV[i]] and (redis.call('HGET', KEYS[1], ARGV[i]) or '') ~= ARGV[i + 1] then
    return {'locked', ARGV[i]}
  end
end
redis.call('HSET', KEYS[1], unpack(ARGV, n + 2))
redis.call('HINCRBY', KEYS[1], 'redefined', 1)
return {'ok'}
"""
