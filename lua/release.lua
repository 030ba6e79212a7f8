--[[ release: end a hold without charging; its credits become available again.

KEYS[1] account hash        KEYS[5] account holds hash
KEYS[2] partition cfg hash  KEYS[6] account hold-expiry zset
KEYS[3] unused              KEYS[7] partition hold-expiry index
KEYS[4] idempotency record  KEYS[8..9] unused

ARGV[1] account id          ARGV[4] request fingerprint (16 characters)
ARGV[2] hold id             ARGV[5] idempotency TTL in ms
ARGV[3] idempotency key ("" for none)

Reply  {"ok", released amount, available after, replayed 0|1}
Record (KEYS[4]) the 16-character fingerprint, then the reply's released, available,
       space-separated: what a replay answers
Errors {"err", "invalid_argument", name} {"err", "idempotency_conflict"}
       {"err", "account_not_loaded"} {"err", "account_not_found"} {"err", "hold_not_found"}
]]
local account, hold_id, idem, fp = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local idem_ttl = ARGV[5]
if not string.match(idem_ttl, '^%d+$') or #idem_ttl > 12 or tonumber(idem_ttl) < 1 then
  return {'err', 'invalid_argument', 'idempotency_ttl'}
end
local function s(n) return string.format('%d', n) end

if idem ~= '' then
  if #fp ~= 16 then return {'err', 'invalid_argument', 'fingerprint'} end
  local rec = redis.call('GET', KEYS[4])
  if rec then
    if string.sub(rec, 1, 16) ~= fp then return {'err', 'idempotency_conflict'} end
    local first_released, first_available = string.match(rec, '^(%S+) (%S+)$', 17)
    return {'ok', first_released, first_available, '1'}
  end
end

local a = redis.call('HMGET', KEYS[1], 'm', 'b', 'r', 'od')
if not a[1] then
  if redis.call('HGET', KEYS[2], 'ready') ~= '1' then return {'err', 'account_not_loaded'} end
  return {'err', 'account_not_found'}
end
local m, b, r, od = tonumber(a[1]), tonumber(a[2]), tonumber(a[3]), tonumber(a[4])

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local h = redis.call('HGET', KEYS[5], hold_id)
if not h then return {'err', 'hold_not_found'} end
local held, expires = string.match(h, '^(%d+)|(%d+)|')
held, expires = tonumber(held), tonumber(expires)
if expires <= now_ms then return {'err', 'hold_not_found'} end

redis.call('HDEL', KEYS[5], hold_id)
redis.call('ZREM', KEYS[6], hold_id)
r = r - held
for _, hid in ipairs(redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now_ms)) do
  local other = redis.call('HGET', KEYS[5], hid)
  if other then r = r - tonumber(string.match(other, '^(%d+)')) end
  redis.call('HDEL', KEYS[5], hid)
  redis.call('ZREM', KEYS[6], hid)
end
local first = redis.call('ZRANGE', KEYS[6], 0, 0, 'WITHSCORES')
if first[1] then redis.call('ZADD', KEYS[7], first[2], account) else redis.call('ZREM', KEYS[7], account) end
redis.call('HSET', KEYS[1], 'r', s(r))

local reply = {'ok', s(held), s(m + b - r + od), '0'}
if idem ~= '' then
  redis.call('SET', KEYS[4], fp .. reply[2] .. ' ' .. reply[3], 'PX', tonumber(idem_ttl))
end
return reply
