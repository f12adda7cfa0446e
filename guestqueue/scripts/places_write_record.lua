-- A request's record is written by its holder only, and never again once it has its ending: a late
-- write of an instance that was let go (or of one that came back) cannot turn a finished request
-- back into a running one, nor take a guest back from the instance it moved to.
-- KEYS: record held holders   ARGV: instance ttl_s ending(0/1) add_holder(0/1) request_id field value ...
local holder = redis.call('HGET', KEYS[1], 'holder')
if (holder and holder ~= ARGV[1]) or redis.call('HEXISTS', KEYS[1], 'terminal') == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
if ARGV[3] == '1' then redis.call('SREM', KEYS[2], ARGV[5]) else redis.call('SADD', KEYS[2], ARGV[5]) end
if ARGV[4] == '1' then
  redis.call('SADD', KEYS[3], ARGV[1])
  redis.call('EXPIRE', KEYS[3], tonumber(ARGV[2]))
end
return 1
