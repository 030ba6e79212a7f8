--[[ credit: add credits (grant, earn, refund) or correct a balance (adjust, signed).

KEYS[1] account hash        KEYS[3] partition outbox
KEYS[2] partition cfg hash  KEYS[4] idempotency record
KEYS[5..9]                  unused (the account scripts share one KEYS layout)

ARGV[1] transaction id      ARGV[6] metadata (JSON text, "" for none)
ARGV[2] account id          ARGV[7] idempotency key ("" for none)
ARGV[3] amount (signed; only adjust may be negative)
ARGV[4] type: grant | earn | refund | adjust
ARGV[5] description         ARGV[8] request fingerprint (16 characters)
                            ARGV[9] idempotency TTL in ms
                            ARGV[10] largest balance allowed

Reply  {"ok", transaction id, balance after, available after, replayed 0|1, outbox entry id}
Record (KEYS[4]) the 16-character fingerprint, then the reply's txn, balance, available, entry,
       space-separated: what a replay answers
Errors {"err", "invalid_argument", name} {"err", "idempotency_conflict"}
       {"err", "account_not_loaded"} {"err", "account_not_found"}
       {"err", "balance_limit", balance, max}
Credits go to the purchased bucket (they do not expire). Banned accounts may be credited.
]]
local MAX_AMOUNT = 1000000000000

local function int_arg(v, lo, hi)
  if not string.match(v, '^%-?%d+$') or #v > 17 then return nil end
  local n = tonumber(v)
  if n < lo or n > hi then return nil end
  return n
end
local function s(n) return string.format('%d', n) end

local txn, account, typ, desc, meta, idem, fp = ARGV[1], ARGV[2], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local idem_ttl = int_arg(ARGV[9], 1, 1e11)
local max_balance = int_arg(ARGV[10], 1, 4e15)
local amount
if typ == 'adjust' then
  amount = int_arg(ARGV[3], -MAX_AMOUNT, MAX_AMOUNT)
  if amount == 0 then amount = nil end
elseif typ == 'grant' or typ == 'earn' or typ == 'refund' then
  amount = int_arg(ARGV[3], 1, MAX_AMOUNT)
else
  return {'err', 'invalid_argument', 'type'}
end
if #txn < 1 or #txn > 64 then return {'err', 'invalid_argument', 'transaction_id'} end
if not amount then return {'err', 'invalid_argument', 'amount'} end
if not idem_ttl then return {'err', 'invalid_argument', 'idempotency_ttl'} end
if not max_balance then return {'err', 'invalid_argument', 'max_balance'} end

if idem ~= '' then
  if #fp ~= 16 then return {'err', 'invalid_argument', 'fingerprint'} end
  local rec = redis.call('GET', KEYS[4])
  if rec then
    if string.sub(rec, 1, 16) ~= fp then return {'err', 'idempotency_conflict'} end
    local first_txn, first_balance, first_available, first_entry = string.match(rec, '^(%S+) (%S+) (%S+) (%S+)$', 17)
    return {'ok', first_txn, first_balance, first_available, '1', first_entry}
  end
end

local a = redis.call('HMGET', KEYS[1], 'm', 'b', 'r', 'od')
if not a[1] then
  if redis.call('HGET', KEYS[2], 'ready') ~= '1' then return {'err', 'account_not_loaded'} end
  return {'err', 'account_not_found'}
end
local m, b, r, od = tonumber(a[1]), tonumber(a[2]), tonumber(a[3]), tonumber(a[4])
local balance = m + b + amount
if balance > max_balance or balance < -max_balance then
  return {'err', 'balance_limit', s(m + b), s(max_balance)}
end

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
b = b + amount
redis.call('HSET', KEYS[1], 'b', s(b))
local entry = redis.call('XADD', KEYS[3], '*', 'id', txn, 'a', account, 'amt', s(amount), 't', typ,
  'res', '', 'u', '0', 'd', desc, 'md', meta, 'ts', s(now_ms),
  'bal', s(balance), 'dm', '0', 'ik', idem)

local reply = {'ok', txn, s(balance), s(balance - r + od), '0', entry}
if idem ~= '' then
  redis.call('SET', KEYS[4], fp .. reply[2] .. ' ' .. reply[3] .. ' ' .. reply[4] .. ' ' .. reply[6], 'PX', idem_ttl)
end
return reply
