--! include names
--! include time
-- An instance's share of a forgotten line, written back at once: the flights it runs hold their
-- slots again, and they and the flights it ran that ended lately leave the line if another
-- instance put them back (its guests' instance, which had not heard of the start yet) and are
-- kept in `ran` so that no later share puts them back; its guests' waiting flights go back at
-- their old numbers (so the line re-forms in admission order whoever rebuilds first), the counter
-- goes past them, and the pacing mark past this instance's last start.
-- KEYS: slots line seq pace aging ran   ARGV: instance prefix interval_ms last_start_ago_ms ttl_s
-- running_json [[id, elapsed_ms]...]   waiting_json [[id, score, number, aging_ms, {field, value...}]...]
-- ended_json [id...]
local function ran(id)
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZREM', KEYS[5], id)
  redis.call('SADD', KEYS[6], id)
  redis.call('EXPIRE', KEYS[6], tonumber(ARGV[5]))
end
for _, run in ipairs(cjson.decode(ARGV[6])) do
  redis.call('HSET', KEYS[1], run[1], ARGV[1] .. ' ' .. string.format('%.0f', now - run[2]))
  ran(run[1])
end
for _, id in ipairs(cjson.decode(ARGV[8])) do ran(id) end
local top = 0
for _, w in ipairs(cjson.decode(ARGV[7])) do
  if redis.call('HEXISTS', KEYS[1], w[1]) == 0 and redis.call('SISMEMBER', KEYS[6], w[1]) == 0 then
    redis.call('ZADD', KEYS[2], string.format('%.0f', w[2]), w[1])
    if w[4] > 0 then redis.call('ZADD', KEYS[5], now + w[4], w[1]) end
    local request = named(ARGV[2], KEY.request, w[1])
    redis.call('HSET', request, 'seq', string.format('%.0f', w[3]), unpack(w[5]))
    redis.call('EXPIRE', request, tonumber(ARGV[5]))
  end
  top = math.max(top, w[3])
end
if top > tonumber(redis.call('GET', KEYS[3]) or '0') then redis.call('SET', KEYS[3], string.format('%.0f', top)) end
local ago = tonumber(ARGV[4])
if ago >= 0 then
  local pace = now - ago + tonumber(ARGV[3])
  if pace > tonumber(redis.call('GET', KEYS[4]) or '0') then redis.call('SET', KEYS[4], string.format('%.0f', pace)) end
end
redis.call('PUBLISH', named(ARGV[2], KEY.wake), 'rebuilt')
return top
