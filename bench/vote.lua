-- POST a vote for one of 1,000 polls and 4 options, chosen at random per request.
local options = {"A", "B", "C", "D"}
local bodies = {}
for i, o in ipairs(options) do bodies[i] = '{"option_id": "' .. o .. '"}' end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  local path = "/api/v1/vote/" .. math.random(1, 1000)
  return wrk.format(nil, path, nil, bodies[math.random(1, 4)])
end
