--! include names
--! include jobs_common
-- The owner's look at its job while no report comes: has the lease run out, or did Redis forget it?
-- ARGV: prefix job_id receipt('' when no worker took it) lease_ms request_json receive_count heard epoch_candidate
-- Returns 'expired' (the receipt dies here, once), 'restored' or 'ok'.
-- Restored: Redis lost its data (no job hash: the owner keeps it until the job ends) and the job
-- is put back as the owner knows it: the worker's receipt with a new lease of its visibility from
-- now, the chunks the owner heard as the offset the worker goes on from; or, not taken, back at
-- the front of the offers.
local prefix, id, receipt = ARGV[1], ARGV[2], ARGV[3]
local job = named(prefix, KEY.job, id)
if redis.call('EXISTS', job) == 0 then
  epoch(ARGV[8])
  redis.call('HSET', job, 'request', ARGV[5], 'receive_count', ARGV[6], 'next', ARGV[7], 'restored', 1)
  redis.call('EXPIRE', job, 86400)
  if receipt == '' then
    redis.call('LREM', KEYS[1], 0, id)
    redis.call('LPUSH', KEYS[1], id)
  else
    local lease = tonumber(ARGV[4])
    redis.call('HSET', job, 'receipt', receipt, 'lease_ms', lease)
    redis.call('SET', named(prefix, KEY.receipt, receipt), id, 'PX', lease + DAY_MS)
    redis.call('ZADD', KEYS[2], now + lease, receipt)
  end
  return 'restored'
end
if receipt == '' then return 'ok' end
local deadline = redis.call('ZSCORE', KEYS[2], receipt)
if not deadline or tonumber(deadline) >= now then return 'ok' end
bury(prefix, receipt)
return 'expired'
