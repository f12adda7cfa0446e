--! include names
--! include jobs_common
-- A worker's report on its receipt goes to the job's owner (its report stream), in order.
-- ARGV: receipt prefix kind offset ends(0|1) body, then for 'chunks' each text JSON-encoded
-- offset (-1: not given): for 'chunks' the index of the first text in the answer, for 'complete'
-- the answer's length in chunks. Texts the job already has are skipped (a post sent again); a gap
-- is refused. After Redis forgot the job (restored), only a worker that gives offsets goes on:
-- chunks Redis took but lost before the owner read them would otherwise be missing silently.
-- Returns {1, next} | {0, 0} the receipt is gone | {-1, 0} forgotten | {-2, next} send from next.
local receipt, prefix, kind, offset = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
worker_seen()
local id, why = holder(prefix, receipt)
if not id then return {why == 'forgotten' and -1 or 0, 0} end
local job = named(prefix, KEY.job, id)
local reports = named(prefix, KEY.job_reports, id)
local state = redis.call('HMGET', job, 'next', 'restored')
local taken = tonumber(state[1] or '0')
if kind == 'chunks' or kind == 'complete' then
  if offset < 0 then
    if state[2] then return {-2, taken} end
    offset = taken
  end
  if offset > taken or (kind == 'complete' and offset ~= taken) then return {-2, taken} end
end
if kind == 'chunks' then
  local new = {}
  for i = 7 + taken - offset, #ARGV do new[#new + 1] = ARGV[i] end
  if #new > 0 then
    redis.call('XADD', reports, '*', 'r', '{"kind":"chunks","data":{"texts":[' .. table.concat(new, ',') .. ']}}')
    taken = taken + #new
    redis.call('HSET', job, 'next', taken)
  end
  return {1, taken}
end
redis.call('XADD', reports, '*', 'r', ARGV[6])
if ARGV[5] == '1' then bury(prefix, receipt) end
return {1, taken}
