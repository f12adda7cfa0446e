--! include time
-- Priority tiers: a flight's score is rank * TIER_SPAN + its number (rank 0 = the highest tier),
-- so the sorted set orders by tier, then ticket. A flight of a lower tier is put in the aging set
-- with its deadline; once it passed, it is promoted to rank 0 at its own number: nobody waits
-- longer than max_starvation_sec behind higher-tier guests who came after it. Ran at the start of
-- line_start and line_view, so every view and start sees it.
local TIER_SPAN = 1e12
local function promote(line, aging)
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', aging, '-inf', now)) do
    local score = redis.call('ZSCORE', line, id)
    if score then redis.call('ZADD', line, string.format('%.0f', tonumber(score) % TIER_SPAN), id) end
    redis.call('ZREM', aging, id)
  end
end
