--[[ expire_holds: release every hold of one account that is past its deadline.
The sweep job reads the partition's hold-expiry index and calls this per account; the other
scripts do the same lazily, so this is what makes expiry timely on idle accounts.

KEYS[1] account hash        KEYS[5] account holds hash
KEYS[2..4], KEYS[8..9]      unused (the account scripts share one KEYS layout)
KEYS[6] account hold-expiry zset
KEYS[7] partition hold-expiry index

ARGV[1] account id

Reply  {"ok", holds released, credits released}
]]
local account = ARGV[1]

if redis.call('EXISTS', KEYS[1]) == 0 then
  -- The account is gone: nothing to give back to; drop what pointed at it.
  redis.call('DEL', KEYS[5], KEYS[6])
  redis.call('ZREM', KEYS[7], account)
  return {'ok', '0', '0'}
end

local due, credits = due_holds(now_ms())
drop_holds(account, due)
if #due > 0 then redis.call('HINCRBY', KEYS[1], 'r', -credits) end
return {'ok', s(#due), s(credits)}
