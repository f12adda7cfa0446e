-- A session given back to a Redis that forgot it (restarted empty, flushed) by the instance that
-- issued it: it holds its slot again until its exp, and its token verifies again.
-- KEYS: sessions session(id) jtis client_sessions   ARGV: owner flight exp_ms opened_ms jti request_id
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[2], 'owner', ARGV[1], 'flight', ARGV[2], 'exp', ARGV[3], 'state', 'active',
           'opened', ARGV[4], 'jti', ARGV[5])
redis.call('PEXPIREAT', KEYS[2], tonumber(ARGV[3]) + 86400000)
redis.call('HSET', KEYS[3], ARGV[5], ARGV[6])
if KEYS[4] ~= KEYS[2] then
  redis.call('ZADD', KEYS[4], ARGV[3], ARGV[6])
  redis.call('PEXPIREAT', KEYS[4], tonumber(ARGV[3]) + 1000)
end
return 1
