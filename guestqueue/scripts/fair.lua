--! include names
--! include aging
-- Fair shares (guestqueue/fairness.py): a fair flight's score is rank * TIER_SPAN + its tag, the
-- counter its share will have when the flight is next of its share. KEYS the callers pass:
-- counters (HASH share -> counter) and clock (the tag of the last start); each share's waiting
-- flights are named(prefix, KEY.fair_waiting, share), by number, cleaned lazily (a flight that left
-- the line is dropped when met). Tags are whole numbers (characters), so '%.0f' keeps them.

-- The tag of a flight of `share` joining tier `rank` now: one call after its share's newest waiting
-- flight, else its share's counter lifted to just after the least tag waiting in its tier (nobody: the clock).
local function fair_tag(line, counters, clock, prefix, share, rank, expected)
  local mine = named(prefix, KEY.fair_waiting, share)
  while true do
    local newest = redis.call('ZREVRANGE', mine, 0, 0)[1]
    if not newest then break end
    local score = redis.call('ZSCORE', line, newest)
    if score then return tonumber(score) % TIER_SPAN + expected end
    redis.call('ZREM', mine, newest)
  end
  local floor = tonumber(redis.call('GET', clock) or '0')
  local front = redis.call('ZRANGEBYSCORE', line, string.format('%.0f', rank * TIER_SPAN),
                           string.format('(%.0f', (rank + 1) * TIER_SPAN), 'WITHSCORES', 'LIMIT', 0, 1)
  if front[2] then floor = tonumber(front[2]) % TIER_SPAN + 1 end -- just after it: it came later
  local tag = math.max(tonumber(redis.call('HGET', counters, share) or '0'), floor)
  redis.call('HSET', counters, share, string.format('%.0f', tag))
  return tag
end

-- A fair flight starts at `tag`: its share is charged `expected` (corrected when its call ends).
local function fair_started(counters, clock, prefix, share, flight_id, tag, expected)
  local counter = math.max(tonumber(redis.call('HGET', counters, share) or '0'), tag) + expected
  redis.call('HSET', counters, share, string.format('%.0f', counter))
  redis.call('SET', clock, string.format('%.0f', tag))
  redis.call('ZREM', named(prefix, KEY.fair_waiting, share), flight_id)
end
