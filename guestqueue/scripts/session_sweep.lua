--! include session_end_one
-- The sessions past their exp end.
-- KEYS: sessions jtis   ARGV: prefix   -> the lengths (ms) of the sessions it ended
local ended = {}
for _, owner in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 500)) do
  local id = redis.call('HGET', KEYS[2], string.match(owner, '^s:(%S+)'))
  local length = id and end_session(id, 'expired', ARGV[1]) or 0
  if length > 0 then ended[#ended + 1] = length end
  if not id then redis.call('ZREM', KEYS[1], owner) end
end
return ended
