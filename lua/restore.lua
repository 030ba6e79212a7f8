--[[ restore: rebuild one account's Redis state from the durable ledger (recovery).

KEYS[1] account hash        KEYS[5] account holds hash
KEYS[2] partition cfg hash  KEYS[6] account hold-expiry zset
KEYS[3..4], KEYS[7..8]      unused (the account scripts share one KEYS layout)
KEYS[9] partition account index
KEYS[10] partition grant-expiry zset

ARGV[1] account id          ARGV[6] purchased credits
ARGV[2] tier                ARGV[7] renewed period ("YYYY-MM" or "")
ARGV[3] status              ARGV[8] last reset at (ms, or "")
ARGV[4] overdraft limit     ARGV[9] created at (ms)
ARGV[5] monthly credits     ARGV[10] "1" to overwrite an account that exists
ARGV[11] the explicit grants, as the `g` field holds them (docs/grants.md), in spend order:
         <id>|<remaining>|<expires_ms or 0>|<priority>|<source>|<amount>;... ("" for none)
ARGV[12..15] a pool's member only (docs/pools.md; all absent or "" for any other account):
ARGV[12] member limit `pl` ("": none)   ARGV[14] credits its pool paid for it in the period `pu`
ARGV[13] own credits first `pf` ("1")            ("": not written, the ledger has no pool)
                                        ARGV[15] that period `pp`, the pool's `rp` (may be "")

Reply  {"ok", restored 0|1}
Errors {"err", "invalid_argument", name}
Holds are not durable: a restored account has none. Nothing goes to the outbox: the ledger
already holds every transaction this state sums up. An account with a grant that expires is
scored in the grant-expiry index by its earliest expiry, so the sweep finds it.
]]
local GRANT_SOURCES = {renewal = true, purchase = true, promotion = true, refund = true,
  adjustment = true}

-- The earliest expiry of the grants in `g` (0: none expires), or nil when `g` is malformed.
local function earliest_grant_expiry(g)
  if g == '' then return 0 end
  local earliest = 0
  for grant in string.gmatch(g .. ';', '([^;]*);') do
    local id, left, expires, priority, source, amount =
      string.match(grant, '^([^|]+)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
    if not id or #id > MAX_ID_LENGTH or not GRANT_SOURCES[source] then return nil end
    local left_n, amount_n = amount_arg(left), amount_arg(amount)
    local expires_n, priority_n = int_arg(expires, 0, 1e14), int_arg(priority, 0, 100)
    if not left_n or not amount_n or not expires_n or not priority_n then return nil end
    if expires_n > 0 and (earliest == 0 or expires_n < earliest) then earliest = expires_n end
  end
  return earliest
end

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
local grants = ARGV[11] or ''
local grant_expiry = earliest_grant_expiry(grants)
if not grant_expiry then return {'err', 'invalid_argument', 'grants'} end
local member_limit, own_first = ARGV[12] or '', ARGV[13] or ''
local pool_used, pool_period = ARGV[14] or '', ARGV[15] or ''
local member = is_member(ARGV[1])
local member_fields = member_limit .. own_first .. pool_used .. pool_period
if member_fields ~= '' and not member then return {'err', 'invalid_argument', 'member'} end
if member_limit ~= '' and not amount_arg(member_limit, 0) then
  return {'err', 'invalid_argument', 'member_limit'}
end
if own_first ~= '' and own_first ~= '0' and own_first ~= '1' then
  return {'err', 'invalid_argument', 'own_credits_first'}
end
if pool_period ~= '' and not period_arg(pool_period) then
  return {'err', 'invalid_argument', 'pool_period'}
end
if pool_used ~= '' and not amount_arg(pool_used, 0) then
  return {'err', 'invalid_argument', 'pool_used'}
end
if pool_used == '' and pool_period ~= '' then return {'err', 'invalid_argument', 'pool_used'} end

if force ~= '1' and redis.call('EXISTS', KEYS[1]) == 1 then return {'ok', '0'} end
redis.call('DEL', KEYS[1], KEYS[5], KEYS[6])
redis.call('HSET', KEYS[1], 'm', s(m), 'b', s(b), 'r', '0', 'od', s(od), 'st', status,
  'tier', tier, 'ca', s(ca), 'rp', period, 'rst', rst)
if grants ~= '' then redis.call('HSET', KEYS[1], 'g', grants) end
if member_limit ~= '' then redis.call('HSET', KEYS[1], 'pl', member_limit) end
if own_first == '1' then redis.call('HSET', KEYS[1], 'pf', '1') end
if pool_used ~= '' then redis.call('HSET', KEYS[1], 'pu', pool_used, 'pp', pool_period) end
if grant_expiry > 0 then
  redis.call('ZADD', KEYS[10], grant_expiry, ARGV[1])
else
  redis.call('ZREM', KEYS[10], ARGV[1])
end
redis.call('SADD', KEYS[9], ARGV[1])
return {'ok', '1'}
