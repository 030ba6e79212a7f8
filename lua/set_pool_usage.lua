--[[ set_pool_usage: a repair of what a member's pool paid for it in the pool's period (`pu`),
to the figure the ledger and the outbox give, only while nothing moved it since it was read.

KEYS[1] the member's account hash   KEYS[2..10] unused (the account scripts' layout)
KEYS[11] its pool's account hash

ARGV[1] `pu` as reconciliation found it   ARGV[2] what the ledger and the outbox count

Reply  {"ok", set 1|0}: 0 when `pu` is no longer ARGV[1] (a charge of the member counted
       since: reconcile again) or the pool renewed since (its usage counts from 0 anyway).
Errors {"err", "invalid_argument", name} {"err", "account_not_found"}
]]
local found, expected = amount_arg(ARGV[1], 0), amount_arg(ARGV[2], 0)
if not found then return {'err', 'invalid_argument', 'found'} end
if not expected then return {'err', 'invalid_argument', 'expected'} end
local a = redis.call('HMGET', KEYS[1], 'pu', 'pp', 'st')
if not a[3] then return {'err', 'account_not_found'} end
local rp = redis.call('HGET', KEYS[11], 'rp')
if a[2] ~= rp or tonumber(a[1] or '0') ~= found then return {'ok', '0'} end
redis.call('HSET', KEYS[1], 'pu', s(expected))
return {'ok', '1'}
