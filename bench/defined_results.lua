-- GET the results of the defined poll BENCH_POLL (bench/pushpin.py).
local path = "/api/v1/polls/" .. os.getenv("BENCH_POLL") .. "/results"
request = function()
  return wrk.format("GET", path)
end
