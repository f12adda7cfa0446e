--! include names
--! include live_active
-- The calls of dead instances that had said something, ended `interrupted` here, in the script that
-- takes them, so that no caller can die between taking a call and ending it (lines/redis/relay.py).
-- An ending is numbered after the last event its stream holds, so a follower applies it once; a
-- call whose stream already ends had only its slot left.
-- KEYS: slots instances orphans line   ARGV: prefix ending_json_without_n ttl_s channel  -> ids ended
live_active(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1])
local ENDINGS = {completed = true, timeout = true, error = true, admitted = true}
local ended = {}
for _, id in ipairs(redis.call('HKEYS', KEYS[3])) do
  local stream = named(ARGV[1], KEY.events, id)
  local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)[1]
  local event = last and cjson.decode(last[2][2]) or nil
  if not (event and ENDINGS[event.t]) then
    if not event then  -- its story is gone (expired): it starts again here, so followers count from 0
      redis.call('XADD', stream, '*', 'e', cjson.encode({t = 'started', n = 0}))
    end
    local ending = cjson.decode(ARGV[2])
    ending.n = event and (tonumber(event.n) or redis.call('XLEN', stream) - 1) + 1 or 1
    redis.call('XADD', stream, '*', 'e', cjson.encode(ending))
    redis.call('EXPIRE', stream, tonumber(ARGV[3]))
    redis.call('PUBLISH', ARGV[4], id)
    ended[#ended + 1] = id
  end
  redis.call('DEL', named(ARGV[1], KEY.request, id))
end
redis.call('DEL', KEYS[3])
return ended
