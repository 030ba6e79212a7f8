--[[ check: would a charge of `cost` be allowed now? Reads only; charges nothing.

KEYS[1] account hash        KEYS[5] account holds hash
KEYS[2] partition cfg hash  KEYS[6] account hold-expiry zset
KEYS[3..4], KEYS[7..9]      unused (the account scripts share one KEYS layout)

ARGV[1] cost (credits)

Reply  {"ok", allowed 0|1, cost, available}
Errors {"err", "invalid_argument", "cost"} {"err", "account_not_loaded"}
       {"err", "account_not_found"} {"err", "account_banned"}
Holds past their deadline are counted as their policy ends them (released, or charged
what they hold), and grants past their expiry as expired, without writing.
]]
local cost = amount_arg(ARGV[1])
if not cost then return {'err', 'invalid_argument', 'cost'} end

local a, missing = account_fields('m', 'b', 'r', 'od', 'st', 'g')
if not a then return missing end
if a[5] ~= 'active' then return {'err', 'account_banned'} end
local w, r = wallet(a[1], a[2], a[6]), tonumber(a[3])
local due = 0
if r > 0 or wallet_expires(w) then
  local now = now_ms()
  if r > 0 then r = r - due_release_credits(now) end
  due = wallet_due(w, now)
end

local available = wallet_balance(w) - due - r + tonumber(a[4])
local allowed = '0'
if available >= cost then allowed = '1' end
return {'ok', allowed, s(cost), s(available)}
