--! include live_active
--! include aging
--! include line_epoch
--! include fair
-- A flight joins the line (lines/redis/line.py), its request kept request_ttl_s, and every instance is
-- woken: with `reordered` (wake.py's REORDERED) if it joined ahead of others (a higher tier), else 'admit'.
-- With a joiner (the guest it is admitted for, lines/base.py), in the same step: its client's count
-- (refused at its limit) and its place's record (as places_write_record.lua writes it), held here.
-- On a fair line (a share given), its score is its fair tag (fair.lua), else its number.
-- KEYS: slots instances orphans line seq pace request(flight) aging epoch rebuilding fair_counters fair_clock
--       [client_count ticket_record held_requests holders(flight): with a joiner]
-- ARGV: flight_id max_size max_concurrent interval_ms rank starvation_ms prefix epoch request_ttl_s wake_channel reordered
--       share ('': FIFO) expected (a call's service, for a fair tag)
--       joiner_limit (-1: no joiner; 0: its client counted already) instance_id record_ttl_s request_id n, then n record field/value items,
--       then the request's field/value pairs
-- Returns {position, size, number} | {'forgotten'} | {'rebuilding', ms} | {'full'} | {'client_limit'}
local lost = forgotten(KEYS[9], KEYS[10], ARGV[8])
if lost == 'forgotten' then return {'forgotten'} end
if lost then return {'rebuilding', lost} end
local joiner_limit, record_items = tonumber(ARGV[14]), tonumber(ARGV[18])
if joiner_limit > 0 and tonumber(redis.call('GET', KEYS[13]) or '0') >= joiner_limit then return {'client_limit'} end
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
local score, share = seq, ARGV[12]
if share ~= '' then
  score = fair_tag(KEYS[4], KEYS[11], KEYS[12], ARGV[7], share, rank, tonumber(ARGV[13]))
  local mine = named(ARGV[7], KEY.fair_waiting, share)
  redis.call('ZADD', mine, seq, ARGV[1])
  redis.call('EXPIRE', mine, tonumber(ARGV[9]))
end
redis.call('ZADD', KEYS[4], string.format('%.0f', rank * TIER_SPAN + score), ARGV[1])
if rank > 0 then redis.call('ZADD', KEYS[8], now + tonumber(ARGV[6]), ARGV[1]) end
redis.call('HSET', KEYS[7], 'seq', seq, unpack(ARGV, 19 + record_items))
redis.call('EXPIRE', KEYS[7], tonumber(ARGV[9]))
if joiner_limit >= 0 then
  local ttl = tonumber(ARGV[16])
  if joiner_limit > 0 then
    redis.call('INCR', KEYS[13])
    redis.call('EXPIRE', KEYS[13], ttl)
  end
  redis.call('HSET', KEYS[14], unpack(ARGV, 19, 18 + record_items))
  redis.call('HSET', KEYS[14], 'number', seq)
  redis.call('EXPIRE', KEYS[14], ttl)
  redis.call('SADD', KEYS[15], ARGV[17])
  redis.call('SADD', KEYS[16], ARGV[15])
  redis.call('EXPIRE', KEYS[16], ttl)
end
local position, size = redis.call('ZRANK', KEYS[4], ARGV[1]) + 1, redis.call('ZCARD', KEYS[4])
redis.call('PUBLISH', ARGV[10], position < size and ARGV[11] or 'admit')
return {position, size, seq}
