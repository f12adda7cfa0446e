--! include live_active
--! include aging
--! include line_epoch
-- A flight joins the line (lines/redis/line.py), its request kept request_ttl_s, and every instance is
-- woken: with `reordered` (wake.py's REORDERED) if it joined ahead of others (a higher tier), else 'admit'.
-- KEYS: slots instances orphans line seq pace request(flight) aging epoch rebuilding
-- ARGV: flight_id max_size max_concurrent interval_ms rank starvation_ms prefix epoch request_ttl_s wake_channel reordered,
--       then field/value pairs
-- Returns {position, size, number} | {'forgotten'} | {'rebuilding', ms} | {'full'}
local lost = forgotten(KEYS[9], KEYS[10], ARGV[8])
if lost == 'forgotten' then return {'forgotten'} end
if lost then return {'rebuilding', lost} end
local active = live_active(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[7])
local free = math.max(0, tonumber(ARGV[3]) - active)
local startable = free
if tonumber(ARGV[4]) > 0 then
  local pace = tonumber(redis.call('GET', KEYS[6]) or '0')
  if pace <= now then startable = math.min(free, 1) else startable = 0 end
end
local waiting = redis.call('ZCARD', KEYS[4])
if waiting - math.min(waiting, startable) >= tonumber(ARGV[2]) then return {'full'} end
local seq = redis.call('INCR', KEYS[5])
local rank = tonumber(ARGV[5])
redis.call('ZADD', KEYS[4], string.format('%.0f', rank * TIER_SPAN + seq), ARGV[1])
if rank > 0 then redis.call('ZADD', KEYS[8], now + tonumber(ARGV[6]), ARGV[1]) end
redis.call('HSET', KEYS[7], 'seq', seq, unpack(ARGV, 12))
redis.call('EXPIRE', KEYS[7], tonumber(ARGV[9]))
local position, size = redis.call('ZRANK', KEYS[4], ARGV[1]) + 1, redis.call('ZCARD', KEYS[4])
redis.call('PUBLISH', ARGV[10], position < size and ARGV[11] or 'admit')
return {position, size, seq}
