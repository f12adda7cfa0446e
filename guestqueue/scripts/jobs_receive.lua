--! include names
--! include jobs_common
-- A worker takes up to max_jobs offered jobs, in line order, each with a new receipt and lease.
-- ARGV: max_jobs visibility_ms prefix line epoch_candidate, then max_jobs random strings
-- Returns job_id, request_json, receive_count, receipt for each job taken.
local prefix, visibility = ARGV[3], tonumber(ARGV[2])
local current = epoch(ARGV[5])
worker_seen()
local out = {}
for n = 1, tonumber(ARGV[1]) do
  local id = redis.call('LPOP', KEYS[1])
  if not id then break end
  local job = named(prefix, KEY.job, id)
  local request = redis.call('HGET', job, 'request')
  if request then
    local receipt = ARGV[4] .. '.' .. current .. '.' .. ARGV[5 + n]
    local count = redis.call('HINCRBY', job, 'receive_count', 1)
    -- next: the chunks taken from this receipt so far; restored: set when Redis had forgotten the job
    redis.call('HSET', job, 'receipt', receipt, 'lease_ms', visibility, 'next', 0)
    redis.call('HDEL', job, 'restored')
    redis.call('SET', named(prefix, KEY.receipt, receipt), id, 'PX', visibility + DAY_MS)
    redis.call('ZADD', KEYS[2], now + visibility, receipt)
    local taken = {kind = 'taken', data = {receipt = receipt, receive_count = count, lease_ms = visibility}}
    redis.call('XADD', named(prefix, KEY.job_reports, id), '*', 'r', cjson.encode(taken))
    out[#out + 1] = id
    out[#out + 1] = request
    out[#out + 1] = count
    out[#out + 1] = receipt
  end
end
return out
