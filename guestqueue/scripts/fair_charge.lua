--! include fair
-- A fair flight's call ended (lines/redis/fair.py): its share is charged `delta`, the difference
-- between the call's service and what its start charged, and the share's waiting flights move by as
-- much (in their tier), so the line stays in tag order; if any moved, every instance is woken
-- (REORDERED: their guests hear their places at once). A few idle shares behind the clock are
-- forgotten (they would rejoin at it anyway).
-- KEYS: counters line clock   ARGV: prefix share delta wake_channel reordered
local delta = tonumber(ARGV[3])
local counter = tonumber(redis.call('HGET', KEYS[1], ARGV[2]) or '0') + delta
redis.call('HSET', KEYS[1], ARGV[2], string.format('%.0f', counter))
local mine = named(ARGV[1], KEY.fair_waiting, ARGV[2])
local moved = 0
for _, id in ipairs(delta ~= 0 and redis.call('ZRANGE', mine, 0, -1) or {}) do
  local score = redis.call('ZSCORE', KEYS[2], id)
  if score then
    score = tonumber(score)
    local tier = score - score % TIER_SPAN
    redis.call('ZADD', KEYS[2], string.format('%.0f', math.max(tier, score + delta)), id)
    moved = moved + 1
  else
    redis.call('ZREM', mine, id)
  end
end
local clock = tonumber(redis.call('GET', KEYS[3]) or '0')
for _, share in ipairs(redis.call('HRANDFIELD', KEYS[1], 8)) do
  if tonumber(redis.call('HGET', KEYS[1], share) or '0') <= clock
     and redis.call('EXISTS', named(ARGV[1], KEY.fair_waiting, share)) == 0 then
    redis.call('HDEL', KEYS[1], share)
  end
end
if moved > 0 then redis.call('PUBLISH', ARGV[4], ARGV[5]) end
return moved
