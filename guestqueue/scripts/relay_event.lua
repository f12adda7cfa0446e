-- One event of a flight, for its guests on every instance (lines/redis/relay.py), unless Redis forgot the line.
-- An ending that frees the slot frees it here, with the ending: never a free slot without an ending.
-- KEYS: stream epoch slots request(flight)   ARGV: epoch_known event_json ttl_s channel flight_id frees_slot(0/1) wake
-- -> 1, or 0 if Redis forgot the line
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('XADD', KEYS[1], '*', 'e', ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
redis.call('PUBLISH', ARGV[4], ARGV[5])
if ARGV[6] == '1' then
  redis.call('HDEL', KEYS[3], ARGV[5])
  redis.call('DEL', KEYS[4])
  redis.call('PUBLISH', ARGV[7], 'finish')
end
return 1
