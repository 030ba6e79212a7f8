--[[ check: would a charge of `cost` be allowed now? Reads only; charges nothing.

KEYS[1] account hash        KEYS[5] account holds hash
KEYS[2] partition cfg hash  KEYS[6] account hold-expiry zset
KEYS[3..4], KEYS[7..9]      unused (the account scripts share one KEYS layout)

ARGV[1] cost (credits)

Reply  {"ok", allowed 0|1, cost, available}
Errors {"err", "invalid_argument", "cost"} {"err", "account_not_loaded"}
       {"err", "account_not_found"} {"err", "account_banned"}
Holds past their deadline are counted as released, without writing.
]]
local cost = ARGV[1]
if not string.match(cost, '^%d+$') or #cost > 13 then return {'err', 'invalid_argument', 'cost'} end
cost = tonumber(cost)
if cost < 1 or cost > 1000000000000 then return {'err', 'invalid_argument', 'cost'} end

local a = redis.call('HMGET', KEYS[1], 'm', 'b', 'r', 'od', 'st')
if not a[1] then
  if redis.call('HGET', KEYS[2], 'ready') ~= '1' then return {'err', 'account_not_loaded'} end
  return {'err', 'account_not_found'}
end
if a[5] ~= 'active' then return {'err', 'account_banned'} end
local r = tonumber(a[3])

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, hid in ipairs(redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now_ms)) do
  local h = redis.call('HGET', KEYS[5], hid)
  if h then r = r - tonumber(string.match(h, '^(%d+)')) end
end

local available = tonumber(a[1]) + tonumber(a[2]) - r + tonumber(a[4])
local allowed = '0'
if available >= cost then allowed = '1' end
return {'ok', allowed, string.format('%d', cost), string.format('%d', available)}
