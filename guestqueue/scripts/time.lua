-- NOW: milliseconds on Redis's clock (every instance's leases and deadlines are on it).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
