--! include names
--! include time
-- Ends one session (once, whoever asks): its length in ms (at least 1), or 0 if it was not open.
local function end_session(id, how, prefix)
  local key = named(prefix, KEY.session, id)
  if redis.call('HGET', key, 'state') ~= 'active' then return 0 end
  local jti = redis.call('HGET', key, 'jti')
  local flight = redis.call('HGET', key, 'flight')
  redis.call('ZREM', named(prefix, KEY.sessions), redis.call('HGET', key, 'owner'))
  redis.call('DEL', named(prefix, KEY.request, flight))
  redis.call('HDEL', named(prefix, KEY.session_jtis), jti)
  redis.call('HSET', key, 'state', how)
  redis.call('HINCRBY', named(prefix, KEY.session_totals), how, 1)
  redis.call('PUBLISH', named(prefix, KEY.wake), 'finish')
  redis.call('PUBLISH', named(prefix, KEY.session_ended), id)
  return math.max(1, now - tonumber(redis.call('HGET', key, 'opened') or now))
end
