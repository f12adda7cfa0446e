-- One event of a flight, for its guests on every instance (lines/redis/relay.py), unless Redis forgot the line.
-- KEYS: stream epoch   ARGV: epoch_known event_json ttl_s channel flight_id  -> 1, or 0 if Redis forgot the line
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('XADD', KEYS[1], '*', 'e', ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
