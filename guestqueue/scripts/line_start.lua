--! include names
--! include live_active
--! include releases
--! include aging
--! include line_epoch
--! include fair
-- The head of the line starts, if a slot, the pacing and the release rate allow (lines/redis/line.py).
-- A fair flight (its request has a share) charges its share the expected service of a call (fair.lua).
-- KEYS: slots instances orphans line pace retrying releases aging epoch rebuilding fair_counters fair_clock
-- ARGV: instance_id max_concurrent interval_ms prefix release_per_minute epoch expected
-- Returns {'go', flight_id, request fields...} | {'pace', ms} | {'busy'} | {'empty'} | {'retry'} | {'forgotten'}
local lost = forgotten(KEYS[9], KEYS[10], ARGV[6])
if lost == 'forgotten' then return {'forgotten'} end
if lost then return {'pace', tostring(lost)} end
promote(KEYS[4], KEYS[8])
redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now)
if redis.call('ZCARD', KEYS[6]) > 0 then return {'retry'} end
if live_active(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[4]) >= tonumber(ARGV[2]) then return {'busy'} end
local front = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
local head = front[1]
if not head then return {'empty'} end
local pace = tonumber(redis.call('GET', KEYS[5]) or '0')
if pace > now then return {'pace', tostring(pace - now)} end
local release = release_wait(KEYS[7], tonumber(ARGV[5]))
if release > 0 then return {'pace', tostring(release)} end
redis.call('ZREM', KEYS[4], head)
redis.call('HSET', KEYS[1], head, ARGV[1] .. ' ' .. now)
redis.call('SET', KEYS[5], now + tonumber(ARGV[3]))
if tonumber(ARGV[5]) > 0 then
  redis.call('RPUSH', KEYS[7], now)
  redis.call('PEXPIRE', KEYS[7], 120000)
end
local out = {'go', head}
local fields = redis.call('HGETALL', named(ARGV[4], KEY.request, head))
for i = 1, #fields, 2 do
  if fields[i] == 'share' and fields[i + 1] ~= '' then
    fair_started(KEYS[11], KEYS[12], ARGV[4], fields[i + 1], head, tonumber(front[2]) % TIER_SPAN, tonumber(ARGV[7]))
  end
end
for i = 1, #fields do out[#out + 1] = fields[i] end
return out
