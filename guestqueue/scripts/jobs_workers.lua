--! include jobs_common
-- What the line's waiting guests and /health hear about its workers (pull/redisboard.py).
-- Returns {ms since a worker last asked or reported (-1: not since Redis last forgot), live leases}.
local seen = redis.call('GET', KEYS[4])
return {seen and now - tonumber(seen) or -1, redis.call('ZCOUNT', KEYS[2], now, '+inf')}
