--! include time
-- The slot line_start.lua gave this instance becomes the session's: it leaves the slots hash (which stays
-- as short as the calls running) for the sessions set, ``s:<jti> <opened ms>`` scored by exp.
-- KEYS: slots sessions session(id) jtis totals epoch   ARGV: flight_id jti exp_ms request_id epoch
-- -1: Redis forgot the line since (the slot comes back with the rebuild: ask again after it).
if redis.call('GET', KEYS[6]) ~= ARGV[5] then return -1 end
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
local owner = 's:' .. ARGV[2] .. ' ' .. now
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[3], owner)
redis.call('HSET', KEYS[3], 'owner', owner, 'flight', ARGV[1], 'exp', ARGV[3], 'state', 'active', 'opened', now,
           'jti', ARGV[2])
redis.call('PEXPIREAT', KEYS[3], tonumber(ARGV[3]) + 86400000)
redis.call('HSET', KEYS[4], ARGV[2], ARGV[4])
redis.call('HINCRBY', KEYS[5], 'admitted', 1)
return 1
