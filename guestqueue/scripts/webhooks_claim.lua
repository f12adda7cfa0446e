--! include time
-- Due webhook deliveries, claimed by one instance for a lease (webhooks.py).
-- KEYS: due pending   ARGV: lease_ms max  -> pending JSONs claimed (their due moved past the lease)
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))) do
  local body = redis.call('HGET', KEYS[2], id)
  if body then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), id)
    out[#out + 1] = body
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
