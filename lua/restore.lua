--[[ restore: rebuild one account's Redis state from the durable ledger (recovery).

KEYS[1] account hash        KEYS[5] account holds hash
KEYS[2] partition cfg hash  KEYS[6] account hold-expiry zset
KEYS[3..4], KEYS[7..8]      unused (the account scripts share one KEYS layout)
KEYS[9] partition account index

ARGV[1] account id          ARGV[6] purchased credits
ARGV[2] tier                ARGV[7] renewed period ("YYYY-MM" or "")
ARGV[3] status              ARGV[8] last reset at (ms, or "")
ARGV[4] overdraft limit     ARGV[9] created at (ms)
ARGV[5] monthly credits     ARGV[10] "1" to overwrite an account that exists

Reply  {"ok", restored 0|1}
Errors {"err", "invalid_argument", name}
Holds are not durable: a restored account has none. Nothing goes to the outbox: the ledger
already holds every transaction this state sums up.
]]
local tier, status, force = ARGV[2], ARGV[3], ARGV[10]
local od = amount_arg(ARGV[4], 0)
local m = int_arg(ARGV[5], -4e15, 4e15)
local b = int_arg(ARGV[6], -4e15, 4e15)
local ca = int_arg(ARGV[9], 0, 1e14)
local period, rst = ARGV[7], ARGV[8]
if tier == '' then return {'err', 'invalid_argument', 'tier'} end
if status ~= 'active' and status ~= 'banned' then return {'err', 'invalid_argument', 'status'} end
if not od then return {'err', 'invalid_argument', 'overdraft_limit'} end
if not m or not b then return {'err', 'invalid_argument', 'credits'} end
if not ca then return {'err', 'invalid_argument', 'created_at'} end
if rst ~= '' and not int_arg(rst, 0, 1e14) then return {'err', 'invalid_argument', 'last_reset_at'} end
if period ~= '' and not period_arg(period) then return {'err', 'invalid_argument', 'period'} end

if force ~= '1' and redis.call('EXISTS', KEYS[1]) == 1 then return {'ok', '0'} end
redis.call('DEL', KEYS[1], KEYS[5], KEYS[6])
redis.call('HSET', KEYS[1], 'm', s(m), 'b', s(b), 'r', '0', 'od', s(od), 'st', status,
  'tier', tier, 'ca', s(ca), 'rp', period, 'rst', rst)
redis.call('SADD', KEYS[9], ARGV[1])
return {'ok', '1'}
