-- POST a vote in one defined poll (BENCH_POLL, options A, B, C), one per voter: each request
-- carries a new X-Voter-Id, "<BENCH_ROUND>-<thread>-<counter>", so no voter repeats, within a
-- round or across rounds. The option is chosen at random per request.
local poll = os.getenv("BENCH_POLL")
local round = os.getenv("BENCH_ROUND") or "0"
local options = {"A", "B", "C"}
local bodies = {}
for i, o in ipairs(options) do bodies[i] = '{"option_id": "' .. o .. '"}' end
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
local counter = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  counter = counter + 1
  wrk.headers["X-Voter-Id"] = round .. "-" .. tid .. "-" .. counter
  return wrk.format(nil, "/api/v1/polls/" .. poll .. "/vote", nil, bodies[math.random(1, 3)])
end
