-- Puts one instance's catalog in Redis if Redis has none, or an older one (tenancy/store.py).
-- KEYS: version applications keys lines
-- ARGV: version, how many applications, keys and lines, then their (id, body) pairs in that order
-- Returns 1 if it wrote, 0 if Redis already had this version or a newer one (never a step back:
-- of several instances seeding at once, the newest catalog wins).
local current = redis.call('GET', KEYS[1])
if current and tonumber(current) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
local i = 5
for table = 2, 4 do
  for _ = 1, tonumber(ARGV[table]) do
    redis.call('HSET', KEYS[table], ARGV[i], ARGV[i + 1])
    i = i + 2
  end
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
