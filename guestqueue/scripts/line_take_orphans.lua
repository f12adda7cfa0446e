--! include names
--! include live_active
-- The calls of dead instances that had said something, taken over by the caller (lines/redis/relay.py ends them).
-- KEYS: slots instances orphans line   ARGV: prefix  -> {flight_id, request json}...
live_active(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1])
local out = {}
local all = redis.call('HGETALL', KEYS[3])
for i = 1, #all, 2 do
  local fields = redis.call('HGETALL', named(ARGV[1], KEY.request, all[i]))
  out[#out + 1] = all[i]
  out[#out + 1] = cjson.encode(fields)
end
redis.call('DEL', KEYS[3])
return out
