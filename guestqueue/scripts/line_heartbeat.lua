--! include forgive_gap
-- An instance's lease, and the line's epoch: made here when Redis has none (a new line, or one Redis
-- forgot); an instance that knew another one opens the rebuild window (every live instance beats
-- within it).
-- KEYS: instances info epoch rebuilding beat   ARGV: instance_id ttl_ms known_epoch new_epoch field/value pairs...
-- Returns {1 if the lease was new, the epoch, 1 if Redis forgot the epoch this instance knew}
forgive_gap(KEYS[1], KEYS[5])
if tonumber(ARGV[2]) > 0 then redis.call('HSET', KEYS[5], 'at', now, 'ttl', ARGV[2]) end
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = ARGV[4]
  redis.call('SET', KEYS[3], epoch)
end
local forgot = 0
if ARGV[3] ~= '' and ARGV[3] ~= epoch then
  forgot = 1
  redis.call('SET', KEYS[4], epoch, 'PX', ARGV[2], 'NX')
end
local fresh = redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
if #ARGV > 4 then redis.call('HSET', KEYS[2], unpack(ARGV, 5)) end
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]) * 3)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 3600000)
return {fresh, epoch, forgot}
