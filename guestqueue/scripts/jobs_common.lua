--! include names
--! include time
-- Shared by a pull line's job board scripts (pull/redisboard.py), put before each of them.
-- KEYS[1] offers (list of job ids)  KEYS[2] leases (receipt -> deadline ms)  KEYS[3] the line's epoch
-- KEYS[4] when a worker last asked for jobs or reported (ms)
-- Per job and per receipt keys are named from the line's prefix (named(), from lines/redis/keys.py).
local DAY_MS = 86400000

-- A worker was here (its ask or report): guests waiting on the line are not told none is.
local function worker_seen()
  redis.call('SET', KEYS[4], now, 'PX', DAY_MS)
end

-- The line's epoch (lines/redis/line.py): a random name made when Redis has none, so a new one after
-- Redis forgot everything (a restart without persistence, a FLUSHALL); made here too if a job
-- script comes first. A receipt carries the epoch it was issued in: "<line>.<epoch>.<random>".
local function epoch(candidate)
  local current = redis.call('GET', KEYS[3])
  if current then return current end
  redis.call('SET', KEYS[3], candidate)
  return candidate
end

local function issued_now(receipt)
  return string.match(receipt, '^[^.]*%.([^.]*)%.') == redis.call('GET', KEYS[3])
end

-- A receipt's job id while its lease is live; else false and why: 'gone' (it ended or ran out, or
-- was never issued) or 'forgotten' (issued before Redis lost its data: its owner puts it back).
local function holder(prefix, receipt)
  local id = redis.call('GET', named(prefix, KEY.receipt, receipt))
  local deadline = redis.call('ZSCORE', KEYS[2], receipt)
  if id and id ~= '' and deadline and tonumber(deadline) >= now then return id end
  if id or deadline or issued_now(receipt) then return false, 'gone' end
  return false, 'forgotten'
end

-- The receipt dies. One issued in an earlier epoch keeps a tombstone (''): without it, it would
-- read as forgotten again.
local function bury(prefix, receipt)
  redis.call('ZREM', KEYS[2], receipt)
  if issued_now(receipt) then
    redis.call('DEL', named(prefix, KEY.receipt, receipt))
  else
    redis.call('SET', named(prefix, KEY.receipt, receipt), '', 'PX', DAY_MS)
  end
end
