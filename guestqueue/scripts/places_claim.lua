-- An instance takes a guest's request over (the guest reconnected to it).
-- KEYS: ticket record   ARGV: instance   -> the previous holder ('' if none); nil if no record
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local previous = redis.call('HGET', KEYS[1], 'holder') or ''
redis.call('HSET', KEYS[1], 'holder', ARGV[1])
return previous
