--[[ upsert_account: create an account, or change its tier, status or overdraft limit.

KEYS[1] account hash        KEYS[3] partition outbox
KEYS[2] partition cfg hash  KEYS[4] idempotency record
KEYS[5..8]                  unused (the account scripts share one KEYS layout)
KEYS[9] partition account index

ARGV[1] account id          ARGV[7] transaction id of the opening grant
ARGV[2] tier ("" = keep; a new account gets ARGV[12])
ARGV[3] status: active | banned ("" = keep; new accounts are active)
ARGV[4] overdraft limit ("" = keep; new accounts have 0)
ARGV[5] event id            ARGV[8] current period, "YYYY-MM"
ARGV[6] opening grant for a new account (monthly credits; 0 for none)
ARGV[9] idempotency key ("" for none)   ARGV[10] request fingerprint (16 characters)
ARGV[11] idempotency TTL in ms          ARGV[12] default tier

Reply  {"ok", created 0|1, tier, status, overdraft limit, balance, available, replayed 0|1,
        outbox entry ids, comma-separated (the account event, then the opening grant if any)}
Record (KEYS[4]) the 16-character fingerprint, then the reply's created, tier, status, overdraft, balance, available, entries,
       space-separated: what a replay answers
Errors {"err", "invalid_argument", name} {"err", "unknown_tier", tier} {"err", "idempotency_conflict"}
       {"err", "account_not_loaded"}
Appends an "account" event to the outbox (so the ledger learns tier and status), and for a new
account with an opening grant, a "grant" transaction.
]]
local MAX_AMOUNT = 1000000000000

local function int_arg(v, lo, hi)
  if not string.match(v, '^%-?%d+$') or #v > 17 then return nil end
  local n = tonumber(v)
  if n < lo or n > hi then return nil end
  return n
end
local function s(n) return string.format('%d', n) end

local account, tier, status, od_arg, event_id, grant_txn, period, idem, fp, default_tier =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[12]
local grant = int_arg(ARGV[6], 0, MAX_AMOUNT)
local idem_ttl = int_arg(ARGV[11], 1, 1e11)
local od = nil
if od_arg ~= '' then
  od = int_arg(od_arg, 0, MAX_AMOUNT)
  if not od then return {'err', 'invalid_argument', 'overdraft_limit'} end
end
if status ~= '' and status ~= 'active' and status ~= 'banned' then return {'err', 'invalid_argument', 'status'} end
if not grant then return {'err', 'invalid_argument', 'opening_grant'} end
if not idem_ttl then return {'err', 'invalid_argument', 'idempotency_ttl'} end
if not string.match(period, '^%d%d%d%d%-%d%d$') then return {'err', 'invalid_argument', 'period'} end
if #event_id < 1 or #grant_txn < 1 then return {'err', 'invalid_argument', 'transaction_id'} end

if idem ~= '' then
  if #fp ~= 16 then return {'err', 'invalid_argument', 'fingerprint'} end
  local rec = redis.call('GET', KEYS[4])
  if rec then
    if string.sub(rec, 1, 16) ~= fp then return {'err', 'idempotency_conflict'} end
    local first_created, first_tier, first_status, first_overdraft, first_balance, first_available, first_entries = string.match(rec, '^(%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+)$', 17)
    return {'ok', first_created, first_tier, first_status, first_overdraft, first_balance, first_available, '1', first_entries}
  end
end

if redis.call('HGET', KEYS[2], 'ready') ~= '1' then return {'err', 'account_not_loaded'} end
-- The partition config names the tiers: without it (Redis lost its data) every tier would
-- look unknown.
if tier ~= '' and not redis.call('HGET', KEYS[2], 't:' .. tier) then return {'err', 'unknown_tier', tier} end

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local created = redis.call('EXISTS', KEYS[1]) == 0

if created then
  if tier == '' then tier = default_tier end
  if not redis.call('HGET', KEYS[2], 't:' .. tier) then return {'err', 'unknown_tier', tier} end
  if status == '' then status = 'active' end
  redis.call('HSET', KEYS[1], 'm', s(grant), 'b', '0', 'r', '0', 'od', s(od or 0),
    'st', status, 'tier', tier, 'ca', s(now_ms), 'rp', period, 'rst', s(now_ms))
  redis.call('SADD', KEYS[9], account)
else
  local fields = {}
  if tier ~= '' then table.insert(fields, 'tier'); table.insert(fields, tier) end
  if status ~= '' then table.insert(fields, 'st'); table.insert(fields, status) end
  if od then table.insert(fields, 'od'); table.insert(fields, s(od)) end
  if #fields > 0 then redis.call('HSET', KEYS[1], unpack(fields)) end
end

local a = redis.call('HMGET', KEYS[1], 'm', 'b', 'r', 'od', 'st', 'tier', 'rst', 'ca')
local entries = redis.call('XADD', KEYS[3], '*', 'id', event_id, 'a', account, 't', 'account',
  'tier', a[6], 'st', a[5], 'od', a[4], 'rst', a[7], 'ca', a[8], 'ts', s(now_ms))
local balance = tonumber(a[1]) + tonumber(a[2])
if created and grant > 0 then
  entries = entries .. ',' .. redis.call('XADD', KEYS[3], '*', 'id', grant_txn, 'a', account, 'amt', s(grant), 't', 'grant',
    'res', '', 'u', '0', 'd', 'monthly grant (new account)', 'md', '', 'ts', s(now_ms),
    'bal', s(balance), 'dm', s(grant), 'ik', '')
end

local c = '0'
if created then c = '1' end
local reply = {'ok', c, a[6], a[5], a[4], s(balance), s(balance - tonumber(a[3]) + tonumber(a[4])), '0', entries}
if idem ~= '' then
  redis.call('SET', KEYS[4], fp .. reply[2] .. ' ' .. reply[3] .. ' ' .. reply[4] .. ' ' .. reply[5] .. ' ' .. reply[6] .. ' ' .. reply[7] .. ' ' .. reply[9], 'PX', idem_ttl)
end
return reply
