--[[ capture: charge the actual cost of a hold (at most the held amount); the rest returns.

KEYS[1] account hash        KEYS[5] account holds hash
KEYS[2] partition cfg hash  KEYS[6] account hold-expiry zset
KEYS[3] partition outbox    KEYS[7] partition hold-expiry index
KEYS[4] idempotency record  KEYS[8..9] unused

ARGV[1] transaction id      ARGV[6] metadata (JSON text, "" for none)
ARGV[2] account id          ARGV[7] idempotency key ("" for none)
ARGV[3] hold id             ARGV[8] request fingerprint (16 characters)
ARGV[4] amount ("" = all)   ARGV[9] idempotency TTL in ms
ARGV[5] description

Reply  {"ok", transaction id, cost, available after, balance after, replayed 0|1}
Record (KEYS[4]) the 16-character fingerprint, then the reply's txn, cost, available, balance,
       space-separated: what a replay answers
Errors {"err", "invalid_argument", name} {"err", "idempotency_conflict"}
       {"err", "account_not_loaded"} {"err", "account_not_found"}
       {"err", "hold_not_found"} {"err", "capture_exceeds_hold", held}
       {"err", "insufficient_credits", amount, available}
The held credits were set aside, so a capture fails for lack of credits only when the balance
fell behind the hold (a renewal expired the credits it held, a lower overdraft limit): then a
capture that would leave available (balance - held + overdraft) below zero is refused and the
hold stays, to be captured for less or released. A capture never lowers available.
]]
local MAX_AMOUNT = 1000000000000

local function int_arg(v, lo, hi)
  if not string.match(v, '^%-?%d+$') or #v > 17 then return nil end
  local n = tonumber(v)
  if n < lo or n > hi then return nil end
  return n
end
local function s(n) return string.format('%d', n) end

local txn, account, hold_id, desc, meta, idem, fp = ARGV[1], ARGV[2], ARGV[3], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local amount = nil
if ARGV[4] ~= '' then
  amount = int_arg(ARGV[4], 1, MAX_AMOUNT)
  if not amount then return {'err', 'invalid_argument', 'amount'} end
end
local idem_ttl = int_arg(ARGV[9], 1, 1e11)
if #txn < 1 or #txn > 64 then return {'err', 'invalid_argument', 'transaction_id'} end
if not idem_ttl then return {'err', 'invalid_argument', 'idempotency_ttl'} end

if idem ~= '' then
  if #fp ~= 16 then return {'err', 'invalid_argument', 'fingerprint'} end
  local rec = redis.call('GET', KEYS[4])
  if rec then
    if string.sub(rec, 1, 16) ~= fp then return {'err', 'idempotency_conflict'} end
    local first_txn, first_cost, first_available, first_balance = string.match(rec, '^(%S+) (%S+) (%S+) (%S+)$', 17)
    return {'ok', first_txn, first_cost, first_available, first_balance, '1'}
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
local held, expires, resource, units = string.match(h, '^(%d+)|(%d+)|([^|]*)|(%d+)$')
held, expires = tonumber(held), tonumber(expires)
if expires <= now_ms then return {'err', 'hold_not_found'} end
if amount == nil then amount = held end
if amount > held then return {'err', 'capture_exceeds_hold', s(held)} end

-- This hold ends now; any others past their deadline end with it.
local due = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now_ms)
for _, hid in ipairs(due) do
  local other = redis.call('HGET', KEYS[5], hid)
  if other then r = r - tonumber(string.match(other, '^(%d+)')) end
end
if m + b - amount - (r - held) + od < 0 then
  return {'err', 'insufficient_credits', s(amount), s(m + b - (r - held) + od)}
end
redis.call('HDEL', KEYS[5], hold_id)
redis.call('ZREM', KEYS[6], hold_id)
r = r - held
for _, hid in ipairs(due) do
  redis.call('HDEL', KEYS[5], hid)
  redis.call('ZREM', KEYS[6], hid)
end
local first = redis.call('ZRANGE', KEYS[6], 0, 0, 'WITHSCORES')
if first[1] then redis.call('ZADD', KEYS[7], first[2], account) else redis.call('ZREM', KEYS[7], account) end

local from_monthly = math.min(math.max(m, 0), amount)
m = m - from_monthly
b = b - (amount - from_monthly)
redis.call('HSET', KEYS[1], 'm', s(m), 'b', s(b), 'r', s(r))
redis.call('XADD', KEYS[3], '*', 'id', txn, 'a', account, 'amt', s(-amount), 't', 'spend',
  'res', resource, 'u', units, 'd', desc, 'md', meta, 'ts', s(now_ms),
  'bal', s(m + b), 'dm', s(-from_monthly), 'ik', idem, 'hold', hold_id)

local reply = {'ok', txn, s(amount), s(m + b - r + od), s(m + b), '0'}
if idem ~= '' then
  redis.call('SET', KEYS[4], fp .. reply[2] .. ' ' .. reply[3] .. ' ' .. reply[4] .. ' ' .. reply[5], 'PX', idem_ttl)
end
return reply
