--[[ hold: set credits aside for a bounded time, to be captured or released later.

KEYS[1] account hash        KEYS[5] account holds hash
KEYS[2] partition cfg hash  KEYS[6] account hold-expiry zset
KEYS[3] partition outbox    KEYS[7] partition hold-expiry index
KEYS[4] idempotency record  KEYS[8] account rate-limit state
KEYS[9]                     unused (the account scripts share one KEYS layout)

ARGV[1] hold id             ARGV[6] units
ARGV[2] account id          ARGV[7] idempotency key ("" for none)
ARGV[3] amount (credits)    ARGV[8] request fingerprint (16 characters)
ARGV[4] time to live in ms  ARGV[9] idempotency TTL in ms
ARGV[5] resource ("" when the hold names an amount)

Reply  {"ok", hold id, amount, expires at (ms), available after, replayed 0|1}
Record (KEYS[4]) the 16-character fingerprint, then the reply's hold, amount, expires, available,
       space-separated: what a replay answers
Errors {"err", "invalid_argument", name} {"err", "idempotency_conflict"}
       {"err", "account_not_loaded"} {"err", "account_not_found"} {"err", "account_banned"}
       {"err", "rate_limited", retry after ms} {"err", "insufficient_credits", required, available}
A hold changes `reserved`, not the balance, so it appends nothing to the outbox.
Counts against the tier's rate limit like a consume.
]]
local MAX_AMOUNT = 1000000000000

local function int_arg(v, lo, hi)
  if not string.match(v, '^%-?%d+$') or #v > 17 then return nil end
  local n = tonumber(v)
  if n < lo or n > hi then return nil end
  return n
end
local function s(n) return string.format('%d', n) end

local hold_id, account, resource, idem, fp = ARGV[1], ARGV[2], ARGV[5], ARGV[7], ARGV[8]
local amount = int_arg(ARGV[3], 1, MAX_AMOUNT)
local ttl = int_arg(ARGV[4], 1, 1e11)
local units = int_arg(ARGV[6], 1, MAX_AMOUNT)
local idem_ttl = int_arg(ARGV[9], 1, 1e11)
if #hold_id < 1 or #hold_id > 64 or string.find(hold_id, '|', 1, true) then
  return {'err', 'invalid_argument', 'hold_id'}
end
if string.find(resource, '|', 1, true) then return {'err', 'invalid_argument', 'resource'} end
if not amount then return {'err', 'invalid_argument', 'amount'} end
if not ttl then return {'err', 'invalid_argument', 'ttl'} end
if not units then return {'err', 'invalid_argument', 'units'} end
if not idem_ttl then return {'err', 'invalid_argument', 'idempotency_ttl'} end

if idem ~= '' then
  if #fp ~= 16 then return {'err', 'invalid_argument', 'fingerprint'} end
  local rec = redis.call('GET', KEYS[4])
  if rec then
    if string.sub(rec, 1, 16) ~= fp then return {'err', 'idempotency_conflict'} end
    local first_hold, first_amount, first_expires, first_available = string.match(rec, '^(%S+) (%S+) (%S+) (%S+)$', 17)
    return {'ok', first_hold, first_amount, first_expires, first_available, '1'}
  end
end

local a = redis.call('HMGET', KEYS[1], 'm', 'b', 'r', 'od', 'st', 'tier')
if not a[1] then
  if redis.call('HGET', KEYS[2], 'ready') ~= '1' then return {'err', 'account_not_loaded'} end
  return {'err', 'account_not_found'}
end
if a[5] ~= 'active' then return {'err', 'account_banned'} end
local m, b, r, od = tonumber(a[1]), tonumber(a[2]), tonumber(a[3]), tonumber(a[4])

local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)

local new_tat = nil
local rl = redis.call('HGET', KEYS[2], 't:' .. a[6])
if rl then
  local interval, burst = string.match(rl, '^(%d+) (%d+)$')
  interval, burst = tonumber(interval), tonumber(burst)
  if interval > 0 then
    local tat = tonumber(redis.call('GET', KEYS[8]) or '0')
    if tat < now_us then tat = now_us end
    new_tat = tat + interval
    local allow_at = new_tat - interval * burst
    if now_us < allow_at then
      return {'err', 'rate_limited', s(math.ceil((allow_at - now_us) / 1000))}
    end
  end
end

local due = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now_ms)
if #due > 0 then
  for _, hid in ipairs(due) do
    local h = redis.call('HGET', KEYS[5], hid)
    if h then r = r - tonumber(string.match(h, '^(%d+)')) end
    redis.call('HDEL', KEYS[5], hid)
    redis.call('ZREM', KEYS[6], hid)
  end
  local first = redis.call('ZRANGE', KEYS[6], 0, 0, 'WITHSCORES')
  if first[1] then redis.call('ZADD', KEYS[7], first[2], account) else redis.call('ZREM', KEYS[7], account) end
  redis.call('HSET', KEYS[1], 'r', s(r))
end

local available = m + b - r + od
if available < amount then
  return {'err', 'insufficient_credits', s(amount), s(available)}
end
if redis.call('HEXISTS', KEYS[5], hold_id) == 1 then return {'err', 'invalid_argument', 'hold_id'} end

local expires = now_ms + ttl
r = r + amount
redis.call('HSET', KEYS[1], 'r', s(r))
redis.call('HSET', KEYS[5], hold_id, s(amount) .. '|' .. s(expires) .. '|' .. resource .. '|' .. s(units))
redis.call('ZADD', KEYS[6], expires, hold_id)
redis.call('ZADD', KEYS[7], 'LT', expires, account)
if new_tat then redis.call('SET', KEYS[8], s(new_tat), 'PX', math.ceil((new_tat - now_us) / 1000) + 1) end

local reply = {'ok', hold_id, s(amount), s(expires), s(available - amount), '0'}
if idem ~= '' then
  redis.call('SET', KEYS[4], fp .. reply[2] .. ' ' .. reply[3] .. ' ' .. reply[4] .. ' ' .. reply[5], 'PX', idem_ttl)
end
return reply
