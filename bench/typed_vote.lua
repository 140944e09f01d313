-- POST a vote in one poll of type BENCH_TYPE (BENCH_POLL), one per voter: each request
-- carries a new X-Voter-Id, "<BENCH_ROUND>-<thread>-<counter>". The bodies are those of
-- bench/question_types.py, chosen at random per request.
local poll = os.getenv("BENCH_POLL")
local kind = os.getenv("BENCH_TYPE")
local round = os.getenv("BENCH_ROUND") or "0"
local bodies = {
  single = {'{"option_id": "A"}', '{"option_id": "B"}', '{"option_id": "C"}'},
  multiple = {'{"option_ids": ["A", "C"]}', '{"option_ids": ["B"]}', '{"option_ids": ["C", "B"]}'},
  rating = {'{"value": 1}', '{"value": 3}', '{"value": 5}'},
  words = {'{"words": ["Rust", "go"]}', '{"words": ["python"]}', '{"words": ["Zig", "rust"]}'},
}
local chosen = bodies[kind]
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
  return wrk.format(nil, "/api/v1/polls/" .. poll .. "/vote", nil, chosen[math.random(1, 3)])
end
