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
local function s(n) return string.format('%d', n) end

local account, period, expire_txn, grant_txn, event_id = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if not string.match(period, '^%d%d%d%d%-%d%d$') then return {'err', 'invalid_argument', 'period'} end
if #expire_txn < 1 or #grant_txn < 1 or #(event_id or '') < 1 then return {'err', 'invalid_argument', 'transaction_id'} end

local a = redis.call('HMGET', KEYS[1], 'm', 'b', 'st', 'rp', 'tier', 'od', 'ca')
if not a[1] then
  if redis.call('HGET', KEYS[2], 'ready') ~= '1' then return {'err', 'account_not_loaded'} end
  return {'err', 'account_not_found'}
end
local terms = redis.call('HGET', KEYS[2], 'r:' .. a[5])
if not terms then return {'err', 'unknown_tier', a[5]} end
local policy, grant, limit = string.match(terms, '^(%a+) (%d+) (%d+)$')
grant, limit = tonumber(grant), tonumber(limit)
local m, b = tonumber(a[1]), tonumber(a[2])
if a[3] ~= 'active' then return {'ok', '0', '0', '0', s(m + b), 'banned'} end
if a[4] == period then return {'ok', '0', '0', '0', s(m + b), 'already_renewed'} end

local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local granted, expired = 0, 0
if policy == 'reset' then
  if m > 0 then
    expired = m
    m = 0
    redis.call('XADD', KEYS[3], '*', 'id', expire_txn, 'a', account, 'amt', s(-expired), 't', 'expire',
      'res', '', 'u', '0', 'd', 'monthly credits expired (' .. period .. ')', 'md', '', 'ts', s(now_ms),
      'bal', s(m + b), 'dm', s(-expired), 'ik', '')
  end
  granted = grant
else
  granted = math.max(0, math.min(grant, limit - (m + b)))
end
if granted > 0 then
  m = m + granted
  redis.call('XADD', KEYS[3], '*', 'id', grant_txn, 'a', account, 'amt', s(granted), 't', 'grant',
    'res', '', 'u', '0', 'd', 'monthly grant (' .. period .. ')', 'md', '', 'ts', s(now_ms),
    'bal', s(m + b), 'dm', s(granted), 'ik', '')
end
redis.call('HSET', KEYS[1], 'm', s(m), 'rp', period, 'rst', s(now_ms))
redis.call('XADD', KEYS[3], '*', 'id', event_id, 'a', account, 't', 'account', 'tier', a[5],
  'st', a[3], 'od', a[6], 'rst', s(now_ms), 'ca', a[7], 'ts', s(now_ms), 'rp', period)
return {'ok', '1', s(granted), s(expired), s(m + b), ''}
