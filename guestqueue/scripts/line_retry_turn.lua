--! include time
-- A retry takes the next pacing turn before the flights still waiting (lines/redis/line.py).
-- KEYS: pace retrying   ARGV: token interval_ms   -> 0 (turn taken) or ms to wait
local pace = tonumber(redis.call('GET', KEYS[1]) or '0')
if pace > now then
  redis.call('ZADD', KEYS[2], now + 60000, ARGV[1])
  return pace - now
end
redis.call('SET', KEYS[1], now + tonumber(ARGV[2]))
redis.call('ZREM', KEYS[2], ARGV[1])
return 0
