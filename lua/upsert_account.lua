--[[ upsert_account: create an account, or change its tier, status or overdraft limit.

KEYS[1] account hash        KEYS[3] partition outbox
KEYS[2] partition cfg hash  KEYS[4] idempotency record
KEYS[5..8]                  unused (the account scripts share one KEYS layout)
KEYS[9] partition account index
KEYS[10] unused             KEYS[11] the pool's account hash, for a member ("<pool>~<name>")

ARGV[1] account id          ARGV[7] transaction id of the opening grant
ARGV[2] tier ("" = keep; a new account gets ARGV[12])
ARGV[3] status: active | banned ("" = keep; new accounts are active)
ARGV[4] overdraft limit ("" = keep; new accounts have 0)
ARGV[5] event id            ARGV[8] current period, "YYYY-MM"
ARGV[6] opening grant for a new account (monthly credits; 0 for none)
ARGV[9] idempotency key ("" for none)   ARGV[10] request fingerprint (16 characters)
ARGV[11] idempotency TTL in ms          ARGV[12] default tier
ARGV[13] a member's limit: credits its pool pays for it per period of the pool, "none" for no
         limit ("" = keep; a new member has none)
ARGV[14] whether a member's own credits go first: "1" or "0" ("" = keep; a new member: "0")

Reply  {"ok", created 0|1, tier, status, overdraft limit, balance, available, replayed 0|1,
        outbox entry ids, comma-separated (the account event, then the opening grant if any)}
Record (KEYS[4]) the 16-character fingerprint, then the reply's created, tier, status, overdraft, balance, available, entries,
       space-separated: what a replay answers
Errors {"err", "invalid_argument", name} {"err", "unknown_tier", tier} {"err", "idempotency_conflict"}
       {"err", "account_not_loaded"} {"err", "pool_not_found"}: a new member of no such pool
Appends an "account" event to the outbox (so the ledger learns tier and status), and for a new
account with an opening grant, a "grant" transaction.
]]
local account, tier, status, od_arg, period_text, idem, fp, default_tier =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[8], ARGV[9], ARGV[10], ARGV[12]
local event_id, grant_txn = id_arg(ARGV[5]), id_arg(ARGV[7])
local grant = amount_arg(ARGV[6], 0)
local idem_ttl = ttl_arg(ARGV[11])
local pl_arg, pf_arg, member = ARGV[13] or '', ARGV[14] or '', KEYS[11] ~= nil
if pl_arg ~= '' and (not member or (pl_arg ~= 'none' and not amount_arg(pl_arg, 0))) then
  return {'err', 'invalid_argument', 'member_limit'}
end
if pf_arg ~= '' and (not member or (pf_arg ~= '0' and pf_arg ~= '1')) then
  return {'err', 'invalid_argument', 'own_credits_first'}
end
local od = nil
if od_arg ~= '' then
  od = amount_arg(od_arg, 0)
  if not od then return {'err', 'invalid_argument', 'overdraft_limit'} end
end
if status ~= '' and status ~= 'active' and status ~= 'banned' then return {'err', 'invalid_argument', 'status'} end
if not grant then return {'err', 'invalid_argument', 'opening_grant'} end
if not idem_ttl then return {'err', 'invalid_argument', 'idempotency_ttl'} end
local period = period_arg(period_text)
if not period then return {'err', 'invalid_argument', 'period'} end
if not event_id or not grant_txn then return {'err', 'invalid_argument', 'transaction_id'} end

local refused, first = replay(idem, fp)
if refused then return refused end
if first then
  return {'ok', first[1], first[2], first[3], first[4], first[5], first[6], '1', first[7]}
end

if not partition_ready() then return {'err', 'account_not_loaded'} end
-- The partition config names the tiers: without it (Redis lost its data) every tier would
-- look unknown.
if tier ~= '' and not tier_entry(tier) then return {'err', 'unknown_tier', tier} end

local now_n = now_ms()
local now = s(now_n)
local created = redis.call('EXISTS', KEYS[1]) == 0
if created and member and redis.call('EXISTS', KEYS[11]) == 0 then return {'err', 'pool_not_found'} end

if created then
  if tier == '' then tier = default_tier end
  if not tier_entry(tier) then return {'err', 'unknown_tier', tier} end
  if status == '' then status = 'active' end
  redis.call('HSET', KEYS[1], 'm', s(grant), 'b', '0', 'r', '0', 'od', s(od or 0),
    'st', status, 'tier', tier, 'ca', now, 'rp', period, 'rst', now)
  redis.call('SADD', KEYS[9], account)
else
  local fields = {}
  if tier ~= '' then table.insert(fields, 'tier'); table.insert(fields, tier) end
  if status ~= '' then table.insert(fields, 'st'); table.insert(fields, status) end
  if od then table.insert(fields, 'od'); table.insert(fields, s(od)) end
  if #fields > 0 then redis.call('HSET', KEYS[1], unpack(fields)) end
end
if member then
  if pl_arg == 'none' then redis.call('HDEL', KEYS[1], 'pl')
  elseif pl_arg ~= '' then redis.call('HSET', KEYS[1], 'pl', s(tonumber(pl_arg))) end
  if pf_arg ~= '' then redis.call('HSET', KEYS[1], 'pf', pf_arg) end
end

local a = redis.call('HMGET', KEYS[1], 'm', 'b', 'r', 'od', 'st', 'tier', 'rst', 'ca', 'g', 'pl', 'pf')
local entries = append_account_event(event_id, account, a[6], a[5], a[4], a[7], a[8], nil,
  a[10], a[11])
-- Grants past their expiry are not counted (the next script that changes the account
-- writes their expiry); an opening grant's row is the only one written here, and a new
-- account has no explicit grants.
local w = wallet(a[1], a[2], a[9])
local balance = wallet_balance(w) - wallet_due(w, now_n)
if created and grant > 0 then
  entries = entries .. ',' .. append_transaction(grant_txn, account, grant, 'grant', '', '',
    'monthly grant (new account)', '', now, balance, grant, '')
end

local c = '0'
if created then c = '1' end
local reply = {'ok', c, a[6], a[5], a[4], s(balance), s(balance - tonumber(a[3]) + tonumber(a[4])), '0', entries}
remember(idem, fp, idem_ttl, reply[2], reply[3], reply[4], reply[5], reply[6], reply[7], reply[9])
return reply
