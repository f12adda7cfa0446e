--! include names
--! include jobs_common
-- The job ended (answered, timed out, its guests left): it leaves the offers, its receipt dies.
-- ARGV: prefix job_id
local prefix, id = ARGV[1], ARGV[2]
local receipt = redis.call('HGET', named(prefix, KEY.job, id), 'receipt')
redis.call('LREM', KEYS[1], 0, id)
if receipt then bury(prefix, receipt) end
redis.call('DEL', named(prefix, KEY.job, id), named(prefix, KEY.job_reports, id))
return 1
