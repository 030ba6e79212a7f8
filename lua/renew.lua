--[[ renew: the monthly renewal of one account, at most once per period.

KEYS[1] account hash        KEYS[3] partition outbox
KEYS[2] partition cfg hash  KEYS[4..9] unused (the account scripts share one KEYS layout)

ARGV[1] account id          ARGV[3] transaction id for the expiry (policy reset)
ARGV[2] period, "YYYY-MM"   ARGV[4] transaction id for the grant
ARGV[5] id of the account event that records the renewal

The terms come from the account's tier in the cfg hash, field "r:<tier>" = "<policy> <grant>
<credit limit>", so a renewal needs no read before it and many can share one pipeline.

Reply  {"ok", renewed 0|1, granted, expired, balance after, why ("" | "banned" | "already_renewed")}
Errors {"err", "invalid_argument", name} {"err", "account_not_loaded"} {"err", "account_not_found"}
       {"err", "unknown_tier", tier}
add:   monthly += min(grant, max(0, limit - balance)), one "grant" transaction when > 0.
reset: unused monthly credits expire ("expire" transaction), then monthly = grant ("grant").
The period stamp makes a second run in the same period change nothing. Every completed
renewal, also one that granted and expired nothing, appends an "account" event carrying the
period ("rp"): the flush keeps it in user_credits.renewed_period and recovery restores it, so
a Redis rebuilt from the ledger does not renew the same period again.
]]
local account = ARGV[1]
local period = period_arg(ARGV[2])
local expire_txn, grant_txn, event_id = id_arg(ARGV[3]), id_arg(ARGV[4]), id_arg(ARGV[5])
if not period then return {'err', 'invalid_argument', 'period'} end
if not expire_txn or not grant_txn or not event_id then
  return {'err', 'invalid_argument', 'transaction_id'}
end

local a, missing = account_fields('m', 'b', 'st', 'rp', 'tier', 'od', 'ca', 'g', 'pl', 'pf')
if not a then return missing end
local terms = redis.call('HGET', KEYS[2], 'r:' .. a[5])
if not terms then return {'err', 'unknown_tier', a[5]} end
local policy, grant, limit = string.match(terms, '^(%a+) (%d+) (%d+)$')
grant, limit = tonumber(grant), tonumber(limit)
local w = wallet(a[1], a[2], a[8])
if a[3] ~= 'active' or a[4] == period then
  -- Nothing to do: the balance answered leaves out grants past their expiry, as reads do.
  local balance = wallet_balance(w)
  if wallet_expires(w) then balance = balance - wallet_due(w, now_ms()) end
  local why = 'already_renewed'
  if a[3] ~= 'active' then why = 'banned' end
  return {'ok', '0', '0', '0', s(balance), why}
end

local now = now_ms()
wallet_expire(w, account, now)
local granted, expired = 0, 0
if policy == 'reset' then
  if w.m > 0 then
    expired = w.m
    w.m = 0
    append_transaction(expire_txn, account, -expired, 'expire', '', '',
      'monthly credits expired (' .. period .. ')', '', now, wallet_balance(w), -expired, '')
  end
  granted = grant
else
  granted = math.max(0, math.min(grant, limit - wallet_balance(w)))
end
if granted > 0 then
  w.m = w.m + granted
  append_transaction(grant_txn, account, granted, 'grant', '', '',
    'monthly grant (' .. period .. ')', '', now, wallet_balance(w), granted, '')
end
wallet_save(w, 'rp', period, 'rst', s(now))
append_account_event(event_id, account, a[5], a[3], a[6], s(now), a[7], period, a[9], a[10])
return {'ok', '1', s(granted), s(expired), s(wallet_balance(w)), ''}
