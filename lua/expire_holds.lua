--[[ expire_holds: release every hold of one account that is past its deadline.
The sweep job reads the partition's hold-expiry index and calls this per account; the other
scripts do the same lazily, so this is what makes expiry timely on idle accounts.

KEYS[1] account hash        KEYS[5] account holds hash
KEYS[2..4], KEYS[8..9]      unused (the account scripts share one KEYS layout)
KEYS[6] account hold-expiry zset
KEYS[7] partition hold-expiry index

ARGV[1] account id

Reply  {"ok", holds released, credits released}
]]
local account = ARGV[1]
local function s(n) return string.format('%d', n) end

if redis.call('EXISTS', KEYS[1]) == 0 then
  -- The account is gone: nothing to give back to; drop what pointed at it.
  redis.call('DEL', KEYS[5], KEYS[6])
  redis.call('ZREM', KEYS[7], account)
  return {'ok', '0', '0'}
end

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local r = tonumber(redis.call('HGET', KEYS[1], 'r'))
local due = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now_ms)
local credits = 0
for _, hid in ipairs(due) do
  local h = redis.call('HGET', KEYS[5], hid)
  if h then credits = credits + tonumber(string.match(h, '^(%d+)')) end
  redis.call('HDEL', KEYS[5], hid)
  redis.call('ZREM', KEYS[6], hid)
end
local first = redis.call('ZRANGE', KEYS[6], 0, 0, 'WITHSCORES')
if first[1] then redis.call('ZADD', KEYS[7], first[2], account) else redis.call('ZREM', KEYS[7], account) end
if #due > 0 then redis.call('HSET', KEYS[1], 'r', s(r - credits)) end
return {'ok', s(#due), s(credits)}
