--[[ expire_holds: end every hold of one account that is past its deadline, each by its policy:
released, or (a reservation with on_expiry "capture") charged what it holds.
The sweep job reads the partition's hold-expiry index and calls this per account; the other
scripts do the same lazily, so this is what makes expiry timely on idle accounts.

KEYS[1] account hash        KEYS[5] account holds hash
KEYS[2] partition cfg hash  KEYS[6] account hold-expiry zset
KEYS[3] partition outbox    KEYS[7] partition hold-expiry index
KEYS[4], KEYS[8..9]         unused (the account scripts share one KEYS layout)

ARGV[1] account id

Reply  {"ok", holds ended, credits released, credits captured}
]]
local account = ARGV[1]

local a = redis.call('HMGET', KEYS[1], 'm', 'b', 'r', 'od', 'g', 'tier', 'rp')
if not a[1] then
  -- The account is gone: nothing to give back to; drop what pointed at it.
  redis.call('DEL', KEYS[5], KEYS[6])
  redis.call('ZREM', KEYS[7], account)
  return {'ok', '0', '0', '0'}
end

local w = wallet(a[1], a[2], a[5], a[6], a[7])
local now = now_ms()
wallet_expire(w, account, now)
local _, ended, released, captured = end_due_holds(account, now, tonumber(a[3]), w, tonumber(a[4]))
wallet_keep(w)
return {'ok', s(ended), s(released), s(captured)}
