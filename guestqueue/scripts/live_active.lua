--! include names
--! include forgive_gap
-- LIVE_ACTIVE: the slots held by live instances. A slot of a dead instance is given up where it is
-- found, before any start: a call that had said nothing (its event stream holds no chunk and no
-- ending) goes back into line at its old number at once, so nobody admitted after it can start
-- first; any other moves to the orphans hash, for one survivor to end (lines/redis/relay.py).
-- (slots, instances, orphans, line: keys; prefix: the keys' prefix)
local function live_active(slots, instances, orphans, line, prefix)
  forgive_gap(instances, named(prefix, KEY.beat))
  local active = 0
  local all = redis.call('HGETALL', slots)
  for i = 1, #all, 2 do
    local owner = string.match(all[i + 1], '^(%S+)')
    local lease = tonumber(redis.call('ZSCORE', instances, owner) or '0')
    if lease >= now then
      active = active + 1
    else
      local id = all[i]
      local last = redis.call('XREVRANGE', named(prefix, KEY.events, id), '+', '-', 'COUNT', 1)[1]
      local said = last and cjson.decode(last[2][2])['t'] ~= 'started'
      local seq = redis.call('HGET', named(prefix, KEY.request, id), 'seq')
      if seq and not said then
        redis.call('ZADD', line, seq, id)
      else
        redis.call('HSET', orphans, id, all[i + 1])
      end
      redis.call('HDEL', slots, id)
    end
  end
  -- An admission line's sessions hold slots till their exp, whoever admitted them (waitingroom/sessions.py).
  return active + redis.call('ZCOUNT', named(prefix, KEY.sessions), now, '+inf')
end
