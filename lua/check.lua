--[[ check: would a charge of `cost` be allowed now? Reads only; charges nothing.

KEYS[1] account hash        KEYS[5] account holds hash
KEYS[2] partition cfg hash  KEYS[6] account hold-expiry zset
KEYS[3..4], KEYS[7..10]     unused (the account scripts share one KEYS layout)
KEYS[11] the pool's account hash, for a member of a pool, else absent

ARGV[1] cost (credits)      ARGV[2] account id (read for a member: it names the pool)

Reply  {"ok", allowed 0|1, cost, available}
Errors {"err", "invalid_argument", "cost"} {"err", "account_not_loaded"}
       {"err", "account_not_found"} {"err", "account_banned"}
       for a member: {"err", "pool_not_found"} {"err", "pool_banned"}
Holds past their deadline are counted as their policy ends them (released, or charged
what they hold), and grants past their expiry as expired, without writing. A member's
available credits are what consume.lua would let it spend: its own when they go first, and
what its pool may still pay it within its limit.
]]
local cost = amount_arg(ARGV[1])
if not cost then return {'err', 'invalid_argument', 'cost'} end

local a, missing = account_fields('m', 'b', 'r', 'od', 'st', 'g')
if not a then return missing end
if a[5] ~= 'active' then return {'err', 'account_banned'} end
local w, r = wallet(a[1], a[2], a[6]), tonumber(a[3])
local pool = nil
if KEYS[11] then
  pool, missing = member_pool(ARGV[2])
  if not pool then return missing end
end
local due = 0
if r > 0 or wallet_expires(w) or (pool and wallet_expires(pool.w)) then
  local now = now_ms()
  if r > 0 then r = r - due_release_credits(now) end
  due = wallet_due(w, now)
  if pool then pool.due = wallet_due(pool.w, now) end
end

local own = wallet_balance(w) - due - r
local available = own + tonumber(a[4])
if pool then
  available = pool_share(pool)
  if pool.own_first then available = available + math.max(0, own) end
end
local allowed = '0'
if available >= cost then allowed = '1' end
return {'ok', allowed, s(cost), s(available)}
