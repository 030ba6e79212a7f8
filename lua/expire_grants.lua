--[[ expire_grants: expire every explicit grant of one account past its expiry.
The sweep job reads the partition's grant-expiry index and calls this per account; the other
scripts do the same lazily, so this is what makes expiry timely on idle accounts.

KEYS[1] account hash        KEYS[3] partition outbox
KEYS[2] partition cfg hash  KEYS[4..9] unused (the account scripts share one KEYS layout)
KEYS[10] partition grant-expiry index

ARGV[1] account id

Reply  {"ok", grants expired, credits expired}
Scores the account in the index by its next expiry, or takes it out when none is left.
]]
local account = ARGV[1]

local a = redis.call('HMGET', KEYS[1], 'm', 'b', 'g')
if not a[1] then
  redis.call('ZREM', KEYS[10], account)  -- the account is gone
  return {'ok', '0', '0'}
end
local w = wallet(a[1], a[2], a[3])
local count, credits = wallet_expire(w, account, now_ms())
wallet_keep(w)

local next_expiry = nil
for _, gr in ipairs(w.grants or {}) do
  if gr.exp > 0 and (not next_expiry or gr.exp < next_expiry) then next_expiry = gr.exp end
end
if next_expiry then redis.call('ZADD', KEYS[10], next_expiry, account)
else redis.call('ZREM', KEYS[10], account) end
return {'ok', s(count), s(credits)}
