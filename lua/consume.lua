--[[ consume: check and decrement an account's credits in one step, with the tier's rate limit.

KEYS[1] account hash        KEYS[5] account holds hash
KEYS[2] partition cfg hash  KEYS[6] account hold-expiry zset
KEYS[3] partition outbox    KEYS[7] partition hold-expiry index
KEYS[4] idempotency record  KEYS[8] account rate-limit state
KEYS[9..10]                 unused (the account scripts share one KEYS layout)
KEYS[11] the pool's account hash, for a member of a pool ("<pool>~<name>"), else absent

ARGV[1] transaction id      ARGV[6] description
ARGV[2] account id          ARGV[7] metadata (JSON text, "" for none)
ARGV[3] cost (credits)      ARGV[8] idempotency key ("" for none)
ARGV[4] resource            ARGV[9] request fingerprint (16 characters)
ARGV[5] units               ARGV[10] idempotency TTL in ms
ARGV[11..] more charges of the same account, 10 arguments each as above, none with an
           idempotency key: run in order, as that many calls in a row at one instant would be

Reply  {"ok", transaction id, cost, available after, balance after, replayed "0"|"1",
        rate limit (burst, -1 when none), rate remaining, rate reset ms}: the numbers as
       integers, or as text (a replay answers the record's text)
       for a member of a pool, then: credits its pool paid, the pool's balance after, and the
       member's limit left in the pool's period (-1: no limit)
       for several charges, an array of their replies (ok or error), in order
Record (KEYS[4]) the 16-character fingerprint, then the reply's txn, cost, available, balance,
       space-separated: what a replay answers (with no rate-limit state: a replay is not
       counted against the rate)
Errors {"err", "invalid_argument", name} {"err", "idempotency_conflict"}
       {"err", "account_not_loaded"} {"err", "account_not_found"} {"err", "account_banned"}
       {"err", "rate_limited", retry after ms} {"err", "insufficient_credits", required, available}
       {"err", "shadow_tier"}: the account's tier is in shadow mode; nothing was done
       for a member: {"err", "pool_not_found"} {"err", "pool_banned"}
       {"err", "member_limit", required, available}: the pool would pass the member's limit
Takes from the account's grants in spend order (wallet_spend: with no explicit grants,
monthly credits first, then purchased ones). Writes nothing unless it charges, but expires
grants found past their expiry and ends holds found past their deadline, each by its policy
(released, or captured into the outbox).
A member's charge takes its own credits first when it says so (pf), and the pool pays the
rest: a spend of the pool naming the member (pm), within the member's limit in the pool's
period (pl, pu counted in pp). Its available credits are what it may still spend: its own
(when they go first) and what the pool may still pay it. The pool's grants past their expiry
expire here too; its holds past their deadline are left to its own scripts and the sweep
(until then they still set their credits aside).
]]

-- Every charge's arguments are checked before anything is read or written.
local n = #ARGV / 10
if n < 1 or #ARGV % 10 ~= 0 then return {'err', 'invalid_argument', 'arguments'} end
local costs = {}  -- the units and TTL are used as their checked text, ARGV[o + 5] and [o + 10]
for i = 1, n do
  local o = (i - 1) * 10
  local cost, u, ttl = amount_arg(ARGV[o + 3]), amount_arg(ARGV[o + 5]), ttl_arg(ARGV[o + 10])
  local bad = nil
  if not id_arg(ARGV[o + 1]) then bad = 'transaction_id'
  elseif not cost then bad = 'cost'
  elseif not u then bad = 'units'
  elseif not ttl then bad = 'idempotency_ttl'
  elseif ARGV[o + 2] ~= ARGV[2] then bad = 'account_id'
  elseif n > 1 and ARGV[o + 8] ~= '' then bad = 'idempotency_key'
  end
  if bad then return same_reply(n, {'err', 'invalid_argument', bad}) end
  costs[i] = cost
end
local account, idem, fp = ARGV[2], ARGV[8], ARGV[9]  -- only a single charge may carry a key

local refused, first = replay(idem, fp)
if refused then return refused end
if first then return {'ok', first[1], first[2], first[3], first[4], '1', '-1', '-1', '-1'} end

local a, missing = account_fields('m', 'b', 'r', 'od', 'st', 'tier', 'g')
if not a then return same_reply(n, missing) end
local limit, shadow_tier = tier_rate(a[6])
-- A tier in shadow mode: nothing here; the engine sends the charges to shadow.lua.
if shadow_tier then return same_reply(n, {'err', 'shadow_tier'}) end
if a[5] ~= 'active' then return same_reply(n, {'err', 'account_banned'}) end
local w, r, od = wallet(a[1], a[2], a[7], a[6]), num(a[3]), num(a[4])
local pool = nil
if KEYS[11] then
  pool, missing = member_pool(account)
  if not pool then return same_reply(n, missing) end
end

-- TIME only when something needs the clock: a rate limit, an open hold or a grant that
-- expires (the outbox entry takes its time from its stream id).
local now = nil
if limit or r > 0 or wallet_expires(w) or (pool and wallet_expires(pool.w)) then now = now_us() end
if limit then rate_start(limit, now) end
local tat_moved = false

-- One charge of a member (arguments at ARGV[o + 1..10]): its own part first when its credits
-- go first, the pool's part within its limit; both rows, or a refusal that writes nothing.
-- Made only for a member: a closure of this many upvalues costs Redis about 3,500
-- instructions a call (callgrind), a fortieth of a charge.
local member_charge = nil
if pool then
  member_charge = function(i, o, cost, rl_burst, rl_remaining, rl_reset)
    local own_share, share = member_own_share(pool, w, r), pool_share(pool)
    local own = math.min(cost, own_share)
    local part = cost - own
    if part > share then
      local limited = pool.limit and pool.limit - pool.used < part
      local code = limited and 'member_limit' or 'insufficient_credits'
      return {'err', code, s(cost), s(own_share + share)}
    end
    local id, units_text = ARGV[o + 1], ARGV[o + 5]
    if own > 0 then
      local from_monthly, draws = wallet_spend(w, own)
      local res, u = ARGV[o + 4], units_text
      if part > 0 then res, u = '', '' end  -- the units go on the pool's row
      append_transaction(id, account, -own, 'spend', res, u, ARGV[o + 6], ARGV[o + 7], nil,
        wallet_balance(w), -from_monthly, ARGV[o + 8], draws)
    end
    if part > 0 then
      local from_monthly, draws = wallet_spend(pool.w, part)
      local extra = {'pm', account}
      if draws then extra[3], extra[4] = draws[1], draws[2] end
      local pool_id, idem_field = id, ARGV[o + 8]
      if own > 0 then pool_id, idem_field = pool_part_id(id), '' end
      append_transaction(pool_id, pool.id, -part, 'spend', ARGV[o + 4], units_text, ARGV[o + 6],
        ARGV[o + 7], nil, wallet_balance(pool.w), -from_monthly, idem_field, extra)
      pool.used, pool.paid = pool.used + part, true
    end
    local available, balance = own_share - own + share - part, wallet_balance(w)
    remember(idem, fp, ARGV[o + 10], id, ARGV[o + 3], s(available), s(balance))
    local left = -1
    if pool.limit then left = math.max(0, pool.limit - pool.used) end  -- a lowered limit
    return {'ok', id, s(cost), s(available), s(balance), '0', s(rl_burst), s(rl_remaining),
      s(rl_reset), s(part), s(wallet_balance(pool.w)), s(left)}
  end
end

local expired = false
local replies, charged = {}, false
for i = 1, n do
  local o, cost = (i - 1) * 10, costs[i]
  local rl_burst, rl_remaining, rl_reset, new_tat = -1, -1, -1, nil
  local reply = nil
  if limit then
    local admitted, left_or_retry, reset_ms = rate_admit(limit, now)
    if admitted then
      new_tat, rl_burst, rl_remaining, rl_reset = admitted, limit.burst, left_or_retry, reset_ms
    else
      reply = {'err', 'rate_limited', s(left_or_retry)}
    end
  end
  if not reply and not expired then
    expired = true  -- once, before the first charge counts (`now` is read when r > 0)
    if now then r = expire_due(account, math.floor(now / 1000), r, w, od) end
    if now and pool then wallet_expire(pool.w, pool.id, math.floor(now / 1000)) end
  end
  if not reply and pool then
    reply = member_charge(i, o, cost, rl_burst, rl_remaining, rl_reset)
    if reply[1] == 'ok' then
      if new_tat then limit.tat, tat_moved = new_tat, true end
      charged = true
    end
  elseif not reply then
    local available = wallet_balance(w) - r + od
    if available < cost then
      reply = {'err', 'insufficient_credits', s(cost), s(available)}
    else
      local from_monthly, draws = wallet_spend(w, cost)
      local balance = wallet_balance(w)
      if new_tat then limit.tat, tat_moved = new_tat, true end
      -- The checked arguments are canonical text: stored as given, with no string.format.
      append_transaction(ARGV[o + 1], account, '-' .. ARGV[o + 3], 'spend', ARGV[o + 4],
        ARGV[o + 5], ARGV[o + 6], ARGV[o + 7], nil, balance, -from_monthly, ARGV[o + 8], draws)
      -- Integers, not text, in the reply: Redis sends a Lua number as an integer reply, which
      -- costs less than the string.format that would make it text here.
      reply = {'ok', ARGV[o + 1], cost, available - cost, balance, '0', rl_burst, rl_remaining,
        rl_reset}
      remember_charge(idem, fp, ARGV[o + 10], ARGV[o + 1], ARGV[o + 3], available - cost,
        balance)
      charged = true
    end
  end
  replies[i] = reply
end

if charged then
  if pool and pool.paid then wallet_save(w, 'pu', s(pool.used), 'pp', pool.period)
  else wallet_save(w) end
  if tat_moved then rate_save(limit.tat, now) end
else
  wallet_keep(w)
end
if pool then
  if pool.paid then wallet_save(pool.w) else wallet_keep(pool.w) end
end
if n == 1 then return replies[1] end
return replies
