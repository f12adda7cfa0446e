-- One of a client's places on the shared line, if it has one left.
-- KEYS: client counter   ARGV: limit ttl_s  -> 1 (taken) or 0 (the client is at its limit)
local n = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
if n > tonumber(ARGV[1]) then redis.call('DECR', KEYS[1]) return 0 end
return 1
