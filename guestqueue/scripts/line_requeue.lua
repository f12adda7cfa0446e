-- A flight this instance started goes back into line at its old number, ahead of everyone admitted
-- after it (lines/redis/instances.py): its call stopped before it said anything. Only while its slot
-- is still this instance's: a slot whose lease ran out was given up already (live_active.lua put the
-- flight back, or another instance runs it now), and must not be taken from its new holder.
-- KEYS: slots line request(flight)   ARGV: flight_id instance_id wake_channel
-- Returns 1 if it went back, else 0.
local owner = redis.call('HGET', KEYS[1], ARGV[1])
if not owner or string.match(owner, '^(%S+)') ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
local seq = redis.call('HGET', KEYS[3], 'seq')
if not seq then return 0 end -- its request is gone (the call ended meanwhile)
redis.call('ZADD', KEYS[2], seq, ARGV[1])
redis.call('PUBLISH', ARGV[3], 'requeue')
return 1
