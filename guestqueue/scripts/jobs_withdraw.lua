--! include jobs_common
-- The job ended (answered, timed out, its guests left): it leaves the offers, its receipt dies.
-- ARGV: prefix job_id
local prefix, id = ARGV[1], ARGV[2]
local receipt = redis.call('HGET', prefix .. ':job:' .. id, 'receipt')
redis.call('LREM', KEYS[1], 0, id)
if receipt then bury(prefix, receipt) end
redis.call('DEL', prefix .. ':job:' .. id, prefix .. ':job-reports:' .. id)
return 1
