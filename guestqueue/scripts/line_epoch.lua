-- Redis forgot the line (its epoch is not the one this instance knows): the caller rebuilds first.
-- While the instances rebuild a forgotten line, nobody starts and nobody gets a new number.
local function forgotten(epoch, rebuilding, known)
  if redis.call('GET', epoch) ~= known then return 'forgotten' end
  local wait = redis.call('PTTL', rebuilding)
  if wait > 0 then return wait end
  return nil
end
