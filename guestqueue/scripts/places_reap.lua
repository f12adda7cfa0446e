--! include names
--! include forgive_gap
-- Requests of instances dead for longer than the grace (nobody took them over) let go of their
-- places: their records end as `disconnected`, and a flight nobody holds any more leaves the line.
-- KEYS: instances line   ARGV: grace_ms prefix terminal_json  -> number of places released
forgive_gap(KEYS[1], named(ARGV[2], KEY.beat))
local released = 0
for _, dead in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))) do
  local held = named(ARGV[2], KEY.held, dead)
  for _, request_id in ipairs(redis.call('SMEMBERS', held)) do
    local record = named(ARGV[2], KEY.ticket, request_id)
    local values = redis.call('HMGET', record, 'holder', 'status', 'flight_id', 'client')
    if values[1] == dead and (values[2] == 'queued' or values[2] == 'processing') then
      redis.call('HSET', record, 'status', 'cancelled', 'terminal', ARGV[3])
      released = released + 1
      if values[4] and redis.call('DECR', named(ARGV[2], KEY.client, values[4])) <= 0 then
        redis.call('DEL', named(ARGV[2], KEY.client, values[4]))
      end
      if values[3] then
        local holders = named(ARGV[2], KEY.holders, values[3])
        redis.call('SREM', holders, dead)
        if redis.call('SCARD', holders) == 0 and redis.call('ZREM', KEYS[2], values[3]) == 1 then
          redis.call('DEL', named(ARGV[2], KEY.request, values[3]))
        end
      end
    end
  end
  redis.call('DEL', held)
  redis.call('ZREM', KEYS[1], dead)
end
return released
