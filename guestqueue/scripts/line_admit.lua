--! include live_active
--! include aging
--! include line_epoch
-- A flight joins the line (lines/redis/line.py).
-- KEYS: slots instances orphans line seq pace request(flight) aging epoch rebuilding
-- ARGV: flight_id max_size max_concurrent interval_ms rank starvation_ms prefix epoch, then field/value pairs
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
redis.call('HSET', KEYS[7], 'seq', seq, unpack(ARGV, 9))
return {redis.call('ZRANK', KEYS[4], ARGV[1]) + 1, redis.call('ZCARD', KEYS[4]), seq}
