-- wrk script: tokens w0 .. w(COUNT-1) over and over, the same sequence on every run.
local count = tonumber(os.getenv("COUNT") or "10000")
local prefix = os.getenv("PREFIX") or "/rest/chat/client/id/"
local n = 0
request = function()
  n = (n + 1) % count
  return wrk.format("GET", prefix .. "w" .. n)
end
