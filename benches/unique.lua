-- wrk script: every request asks for a token never asked before (the miss path), in this
-- run or an earlier one: tokens carry a random run id (so a cache that keeps cards from
-- one run does not answer the next from memory). PREFIX is the path the token is appended to.
local prefix = os.getenv("PREFIX") or "/rest/chat/client/id/"
local f = io.open("/proc/sys/kernel/random/uuid")
local run = f and f:read("*l"):sub(1, 8) or tostring(os.time())
if f then f:close() end
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", prefix .. "u" .. run .. "-" .. n)
end
