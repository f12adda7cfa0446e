--! include time
-- Leases run out only while someone beats: after two thirds of a lease without any heartbeat (Redis
-- was away or asleep, not the instances), every instance live at the last beat gets a lease to beat
-- again, so no slot, place or running call is taken from a live instance. Two thirds, not a whole
-- lease: an instance beats every third of one, so its lease may end 2/3 of a lease after the last
-- beat anyone made (a stall between the two took a live instance's silent call for an orphan).
local function forgive_gap(instances, beat)
  local last = redis.call('HMGET', beat, 'at', 'ttl')
  local at, ttl = tonumber(last[1] or '0'), tonumber(last[2] or '0')
  if at > 0 and 3 * (now - at) > 2 * ttl then
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', instances, at, '+inf')) do
      redis.call('ZADD', instances, now + ttl, id)
    end
    redis.call('HSET', beat, 'at', now)
  end
end
