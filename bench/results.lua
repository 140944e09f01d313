-- GET the results of one of 1,000 polls, chosen at random per request.
request = function()
  return wrk.format("GET", "/api/v1/results/" .. math.random(1, 1000))
end
