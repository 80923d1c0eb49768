-- wrk script: every request asks for a token never asked before (the miss path).
-- PREFIX is the path the token is appended to.
local prefix = os.getenv("PREFIX") or "/rest/chat/client/id/"
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", prefix .. "u" .. n .. "-" .. math.random(1, 1000000000))
end
