--! include jobs_common
-- The lease of a live receipt runs visibility_ms from now (-1: it has run out, the job is offered
-- again at its owner's next look; a long poll that took it had closed).
-- ARGV: receipt prefix visibility_ms   Returns 1 | 0 gone | -1 forgotten
worker_seen()
local id, why = holder(ARGV[2], ARGV[1])
if not id then return why == 'forgotten' and -1 or 0 end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
return 1
