--! include time
-- An upstream's Retry-After holds every start (lines/redis/line.py).
-- KEYS: pace held   ARGV: delay_ms
local untill = now + tonumber(ARGV[1])
if tonumber(redis.call('GET', KEYS[1]) or '0') < untill then redis.call('SET', KEYS[1], untill) end
if tonumber(redis.call('GET', KEYS[2]) or '0') < untill then redis.call('SET', KEYS[2], untill) end
return untill
