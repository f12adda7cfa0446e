--! include time
-- Seed 001's release rate: at most per_minute starts in any minute. releases: the list of the last
-- minute's start times (oldest first). Returns the ms until the next start may come (0 = now).
local function release_wait(releases, per_minute)
  if per_minute <= 0 then return 0 end
  while true do
    local oldest = redis.call('LINDEX', releases, 0)
    if not oldest or tonumber(oldest) > now - 60000 then break end
    redis.call('LPOP', releases)
  end
  if redis.call('LLEN', releases) < per_minute then return 0 end
  return tonumber(redis.call('LINDEX', releases, -per_minute)) + 60000 - now
end
