--! include names
--! include live_active
--! include releases
--! include aging
-- The whole line at once (lines/redis/line.py).
-- KEYS: slots instances orphans line pace held releases aging   ARGV: prefix release_per_minute
promote(KEYS[4], KEYS[8])
live_active(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1])
local running = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 2, #all, 2 do running[#running + 1] = string.match(all[i], '%S+ (%d+)') end
for _, owner in ipairs(redis.call('ZRANGEBYSCORE', named(ARGV[1], KEY.sessions), now, '+inf')) do
  running[#running + 1] = string.match(owner, ' (%d+)$')
end
local infos = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], now, '+inf')) do
  infos[#infos + 1] = cjson.encode({id = id, info = redis.call('HGETALL', named(ARGV[1], KEY.instance, id))})
end
local pace = math.max(tonumber(redis.call('GET', KEYS[5]) or '0'), now + release_wait(KEYS[7], tonumber(ARGV[2])))
return {now, redis.call('ZRANGE', KEYS[4], 0, -1), running, tostring(pace),
        redis.call('GET', KEYS[6]) or '0', infos}
