-- POST /api/v1/votes with 1,000 entries over 1,000 polls, as an edge aggregator sends them:
-- each entry a tally of 1 to 20 votes (mean 10.5) for one poll and option.
local token = os.getenv("BENCH_TOKEN")
local options = {"A", "B", "C", "D"}
local bodies = {}
math.randomseed(42)
for b = 1, 8 do
  local entries = {}
  for i = 1, 1000 do
    entries[i] = string.format('{"poll_id":"%d","option_id":"%s","count":%d}',
      math.random(1, 1000), options[math.random(1, 4)], math.random(1, 20))
  end
  bodies[b] = "[" .. table.concat(entries, ",") .. "]"
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. token
request = function()
  return wrk.format(nil, "/api/v1/votes", nil, bodies[math.random(1, 8)])
end
