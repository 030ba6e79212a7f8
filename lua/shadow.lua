--[[ shadow: the answer consume would give, recorded, with nothing charged.

A route or tier in shadow mode prices its requests exactly as it would charge them, against
a shadow balance: the account's available credits less what its shadow charges have taken
(KEYS[4]). The decision goes to the partition's shadow stream, which the flush writes to the
ledger's shadow_charges table; the account itself is never written.

KEYS[1] account hash        KEYS[3] partition shadow stream
KEYS[2] partition cfg hash  KEYS[4] account shadow spend (credits, a counter)
KEYS[8] account shadow rate-limit state
KEYS[5..7], KEYS[9..10] unused (names of the account's own slot: the account scripts share
                         one layout)
KEYS[11] the pool's account hash, for a member of a pool, else absent

ARGV[1] entry id            ARGV[4] resource
ARGV[2] account id          ARGV[5] units
ARGV[3] cost (credits)      ARGV[6] description

Reply  {"ok", entry id, decision, cost, shadow available after, balance}
       decision: charged | insufficient_credits | rate_limited | account_banned |
       account_not_found; only "charged" moves the shadow spend and the shadow rate state
Errors {"err", "invalid_argument", name} {"err", "account_not_loaded"} (nothing recorded)
Entry  id a res u c dec av [d]   (time: the entry id's; av: shadow available before)
A member of a pool is priced as consume.lua would charge it: against its own credits when they
go first and what its pool may still pay it (within its limit), less its own shadow spend; a
missing pool records account_not_found, a banned one account_banned.
]]
local id, account, resource, description = ARGV[1], ARGV[2], ARGV[4], ARGV[6]
local cost, units = amount_arg(ARGV[3]), amount_arg(ARGV[5])
if not id_arg(id) then return {'err', 'invalid_argument', 'entry_id'} end
if not cost then return {'err', 'invalid_argument', 'cost'} end
if not units then return {'err', 'invalid_argument', 'units'} end

local balance = 0
local function record(decision, available, after)
  append_shadow(id, account, resource, s(units), s(cost), decision, available, description)
  return {'ok', id, decision, s(cost), s(after), s(balance)}
end

local a, missing = account_fields('m', 'b', 'r', 'od', 'st', 'tier', 'g')
if not a then
  if missing[2] == 'account_not_found' then return record('account_not_found', 0, 0) end
  return missing
end
local w = wallet(a[1], a[2], a[7])
local now, new_tat = nil, nil
local pool = nil
if KEYS[11] then
  pool, missing = member_pool(account)
  if not pool then
    local decision = 'account_banned'
    if missing[2] == 'pool_not_found' then decision = 'account_not_found' end
    return record(decision, 0, 0)
  end
end
balance = wallet_balance(w)
if wallet_expires(w) or (pool and wallet_expires(pool.w)) then
  now = now_us()
  balance = balance - wallet_due(w, math.floor(now / 1000))
  if pool then pool.due = wallet_due(pool.w, math.floor(now / 1000)) end
end
local spent = shadow_spent()
local available = balance - tonumber(a[3]) + tonumber(a[4]) - spent
if pool then
  available = pool_share(pool) - spent
  if pool.own_first then available = available + math.max(0, balance - tonumber(a[3])) end
end
if a[5] ~= 'active' then return record('account_banned', available, available) end

local limit = tier_rate(a[6])
if limit then
  now = now or now_us()
  rate_start(limit, now)
  new_tat = rate_admit(limit, now)
  if not new_tat then return record('rate_limited', available, available) end
end
if available < cost then return record('insufficient_credits', available, available) end
add_shadow_spend(cost)
if new_tat then rate_save(new_tat, now) end
return record('charged', available, available - cost)
